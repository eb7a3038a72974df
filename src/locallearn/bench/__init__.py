"""Benchmarks: suites of cells (rule x data x net x seed), resumable, with reports.

``locallearn bench --suite smoke --out runs/bench`` or, in Python::

    from locallearn.bench import load_suite, run_suite
    run_suite(load_suite("smoke"), "runs/bench")
"""

from locallearn.bench.cells import CELL_KINDS
from locallearn.bench.runner import latest_rows, read_results, run_suite
from locallearn.bench.suite import Cell, Suite, builtin_suites, load_suite

__all__ = ["CELL_KINDS", "Cell", "Suite", "builtin_suites", "latest_rows", "load_suite",
           "read_results", "run_suite"]
