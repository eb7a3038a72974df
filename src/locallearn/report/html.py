"""Write ``report.md`` and a self-contained ``report.html`` (plots embedded as PNG).

Input is a list of run directories (each with ``summary.json`` and
``metrics.jsonl``); nothing is fetched from the network when the page opens.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any


def load_runs(root: Path) -> list[dict[str, Any]]:
    """Every run under ``root`` (``summary.json`` plus its epoch metrics)."""
    runs = []
    for summary_path in sorted(Path(root).rglob("summary.json")):
        summary = json.loads(summary_path.read_text())
        metrics_path = summary_path.with_name("metrics.jsonl")
        metrics = []
        if metrics_path.exists():
            metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
        runs.append({"dir": str(summary_path.parent), "summary": summary, "metrics": metrics})
    return runs


def _fmt_bytes(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def results_table(runs: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["rule", "data", "net", "seed", "epochs", "test acc", "train s", "samples/s",
             "peak memory", "per-block test acc"]]
    for r in runs:
        s = r["summary"]
        per = s.get("per_layer_test_accuracy")
        rows.append([
            str(s.get("rule")), str(s.get("data")), str(s.get("net")), str(s.get("seed")),
            str(s.get("epochs")), f"{s['test_accuracy']:.4f}", f"{s['train_seconds']:.1f}",
            f"{s.get('samples_per_second') or 0:.0f}", _fmt_bytes(s.get("peak_memory_bytes")),
            " ".join(f"{a:.3f}" for a in per) if per else "-",
        ])
    return rows


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _hardware_line(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return ""
    hw = runs[0]["summary"].get("hardware", {})
    gpu = f", GPU {hw['gpu']}" if hw.get("gpu") else ""
    return (f"Hardware: {hw.get('cpu', '?')}, {hw.get('cpu_count', '?')} cores, "
            f"{hw.get('torch_threads', '?')} torch threads{gpu}; torch {hw.get('torch_version')}")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(runs: list[dict[str, Any]]) -> dict[str, str]:
    """Base64 PNGs by title. Empty when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    out = {}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        s, m = r["summary"], r["metrics"]
        if not m:
            continue
        label = f"{s['rule']} {s['data']} s{s['seed']}"
        ax1.plot([e["epoch"] + 1 for e in m], [e["val_accuracy"] for e in m], label=label)
        ax2.plot([e["elapsed_train_seconds"] for e in m], [e["val_accuracy"] for e in m],
                 label=label)
    ax1.set(xlabel="epoch", ylabel="validation accuracy", title="Accuracy vs epoch")
    ax2.set(xlabel="training seconds", ylabel="validation accuracy",
            title="Accuracy vs training time")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    out["Validation accuracy"] = _png(fig)
    plt.close(fig)

    per_block = [r for r in runs if r["summary"].get("per_layer_test_accuracy")]
    if per_block:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in per_block:
            s = r["summary"]
            acc = s["per_layer_test_accuracy"]
            ax.plot(range(1, len(acc) + 1), acc, marker="o", label=f"{s['rule']} s{s['seed']}")
        ax.set(xlabel="block", ylabel="test accuracy of the block's readout",
               title="Per-block accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        out["Per-block accuracy"] = _png(fig)
        plt.close(fig)
    return out


def write_report(out_dir: Path, runs: list[dict[str, Any]] | None = None,
                 title: str = "locallearn report") -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    runs = load_runs(out_dir) if runs is None else runs
    rows = results_table(runs)
    hardware = _hardware_line(runs)
    md = f"# {title}\n\n{hardware}\n\n{_markdown_table(rows)}\n"
    (out_dir / "report.md").write_text(md)

    table = "<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    table += "</tr></thead><tbody>"
    for r in rows[1:]:
        table += "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
    table += "</tbody></table>"
    figures = "".join(
        f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,{b}'>"
        for t, b in plots(runs).items()
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;}} table{{border-collapse:collapse;}}
td,th{{border:1px solid #bbb;padding:4px 8px;text-align:right;}} th{{background:#eee;}}
img{{max-width:100%;}}</style></head>
<body><h1>{html.escape(title)}</h1><p>{html.escape(hardware)}</p>
<h2>Results</h2>{table}{figures}</body></html>
"""
    (out_dir / "report.html").write_text(page)
    return out_dir / "report.md", out_dir / "report.html"
