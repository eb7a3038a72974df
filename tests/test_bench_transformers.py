"""benchmarks/transformers.py: ``--frozen`` puts each rule's frozen control beside it (issue 15)."""

from __future__ import annotations

from runhelpers import load_benchmark


def test_frozen_cells_difference_per_seed():
    bench = load_benchmark("transformers")
    trained = [{"test_accuracy": 0.9}, {"test_accuracy": 0.8}]
    frozen = [{"test_accuracy": 0.5}, {"test_accuracy": 0.6}]
    # per seed: +0.4, +0.2 -> mean +0.3, std 0.1414
    assert bench.frozen_cells(trained, frozen, "test_accuracy", 2) == (
        "0.55 ± 0.07 | +0.30 ± 0.14 | ")
    assert bench.frozen_cells(trained, None, "test_accuracy", 2) == ""  # controls not run


def test_vit_bench_frozen_columns(capsys):
    bench = load_benchmark("transformers")
    bench.main(["vit", "--net", "vit:1x16", "--epochs", "1", "--rules", "backprop",
                "--frozen"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| rule | test accuracy | frozen test accuracy | trained - frozen |")
    trained = float(out.split("backprop seed 0: test accuracy ")[1].split(",")[0])
    frozen = float(out.split("backprop seed 0 frozen: test accuracy ")[1].split(",")[0])
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells[0] == "backprop"
    assert float(cells[2]) == frozen
    assert abs(float(cells[3]) - (trained - frozen)) < 1e-4
