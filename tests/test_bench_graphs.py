"""benchmarks/graphs.py: frozen controls (issue 15) run, are saved and sit beside each rule."""

from __future__ import annotations

import json

from runhelpers import load_benchmark


def test_graph_bench_frozen_controls(tmp_path, capsys):
    bench = load_benchmark("graphs")
    out = tmp_path / "r.jsonl"
    bench.main(["--tasks", "node", "--homophily", "0.9", "--seeds", "0", "--nodes", "60",
                "--epochs", "2", "--net", "gcn:8", "--node-rules", "backprop", "sf",
                "--frozen", "--json", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["net"] == "gcn:8" and r["epochs"] == 2 for r in rows)
    assert [(r["rule"], r["frozen"]) for r in rows] == [
        ("backprop", False), ("backprop", True), ("sf", False), ("sf", True)]
    capsys.readouterr()
    # An old file (no "frozen" key: trained runs) and the new rows print together.
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({k: v for k, v in rows[0].items() if k != "frozen"} | {"seed": 1})
                   + "\n")
    bench.main(["--from-json", str(out), str(old)])
    text = capsys.readouterr().out
    assert "| homophily | rule | test accuracy | frozen | trained - frozen |" in text
    assert "seeds [0, 1]; frozen controls at seeds [0]" in text


def test_graph_bench_table_differences_are_per_seed():
    bench = load_benchmark("graphs")

    def row(rule, seed, metric, frozen):
        return {"rule": rule, "task": "node", "homophily": 0.5, "seed": seed, "metric": metric,
                "frozen": frozen, "train_seconds": 1.0, "peak_mib": 2.0}

    rows = [row("backprop", 0, 0.8, False), row("backprop", 1, 0.9, False),
            row("backprop", 0, 0.5, True), row("backprop", 1, 0.7, True),
            row("sf", 0, 0.6, False), row("sf", 1, 0.6, True)]  # sf: no seed with both
    lines = bench.table(rows, "node", [0.5], ["backprop", "sf"])
    bp = next(x for x in lines if x.startswith("| 0.5 | backprop |"))
    # trained 0.85 ± 0.071, frozen 0.6 ± 0.141, per-seed differences 0.3 and 0.2
    assert bp.startswith("| 0.5 | backprop | 0.850 ± 0.071 | 0.600 ± 0.141 | +0.250 ± 0.071 |")
    sf = next(x for x in lines if x.startswith("| 0.5 | sf |"))
    assert sf.startswith("| 0.5 | sf | 0.600 | 0.600 |  | -0.250 |")


def test_graph_bench_refuses_to_mix_networks(tmp_path, capsys):
    import pytest

    bench = load_benchmark("graphs")
    row = {"rule": "sf", "task": "link", "homophily": 0.9, "seed": 0, "metric": 0.8,
           "train_seconds": 1.0, "peak_mib": 2.0}
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(row | {"net": "gcn:8"}) + "\n")
    b.write_text(json.dumps(row | {"net": "gcn:8,8"}) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--from-json", str(a), str(b)])
    assert exit_info.value.code == 2 and "different networks" in capsys.readouterr().err


def test_graph_bench_counts_a_run_in_two_files_once(tmp_path, capsys):
    """A seed re-run into a second file must not weigh twice in the mean."""
    bench = load_benchmark("graphs")
    row = {"rule": "sf", "task": "link", "homophily": 0.9, "metric": 0.8,
           "train_seconds": 1.0, "peak_mib": 2.0}
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(row | {"seed": 0, "metric": 0.6}) + "\n"
                 + json.dumps(row | {"seed": 1}) + "\n")
    b.write_text(json.dumps(row | {"seed": 1}) + "\n")
    bench.main(["--from-json", str(a), str(b)])
    # seeds 0 and 1 once each: mean 0.7 (0.733 if seed 1 counted twice)
    assert "| 0.9 | sf | 0.700 ± 0.141 |" in capsys.readouterr().out
