"""benchmarks/defaults.py: the tables it prints from finished run folders (no training)."""

from __future__ import annotations

import json
from pathlib import Path

from runhelpers import load_benchmark


def fake_run(folder: Path, best_val: float, val_curve: list[float]) -> None:
    folder.mkdir(parents=True)
    # test_accuracy is deliberately far off: the tables must never print it.
    (folder / "summary.json").write_text(json.dumps(
        {"best_val_accuracy": best_val, "test_accuracy": 0.123}))
    (folder / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": i, "val_accuracy": v}) + "\n"
                for i, v in enumerate(val_curve)))


def test_option_table_reads_best_val_accuracy_per_seed(tmp_path):
    bench = load_benchmark("defaults")
    for i, vals in enumerate(([0.90, 0.92], [0.80, 0.84])):
        for seed, v in enumerate(vals):
            fake_run(bench.folder(tmp_path, "cff-predict", i, seed), v, [v])
    table = bench.table(tmp_path, "cff-predict", [0, 1]).splitlines()
    assert table[2] == "| `predict=goodness` (default) | 0.9000 | 0.9200 | 0.9100 ± 0.0141 |"
    assert table[3].startswith("| `rule.predict=readout` | 0.8000 | 0.8400 | 0.8200 ± ")
    assert "0.123" not in "\n".join(table)


def test_curve_table_takes_the_best_within_the_first_e_epochs(tmp_path):
    bench = load_benchmark("defaults")
    curve = [0.5, 0.7, 0.6, 0.65] + [0.6] * 5 + [0.75] + [0.8] * 10  # 20 epochs
    fake_run(bench.folder(tmp_path, "noprop-dt-epochs", 0, 0), 0.8, curve)
    rows = bench.table(tmp_path, "noprop-dt-epochs", [0]).splitlines()
    assert rows[0] == "| candidate, seed | E = 5 | E = 10 | E = 15 | E = 20 |"
    assert rows[2] == "| defaults, 0 | 0.7000 | 0.7500 | 0.8000 | 0.8000 |"


def test_every_sweep_lists_its_default_first_and_a_real_rule():
    from locallearn.rules import RULES

    bench = load_benchmark("defaults")
    for name, sweep in bench.SWEEPS.items():
        assert sweep.rule in RULES, name
        first_label, first_args = next(iter(sweep.candidates.items()))
        assert first_args == () or sweep.curve, name  # the default runs with no extra flag
        assert "(default)" in first_label or sweep.curve, name
