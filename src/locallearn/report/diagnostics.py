"""The per-epoch diagnostics of runs (``metrics.jsonl`` ``"diagnostics"``, see
:mod:`locallearn.measure.diagnostics`) in the report: a table of the last epoch's
values and figures by epoch, each mean over seeds.

* alignment (feedback-based rules): weight and gradient alignment angle per layer;
* activity (every rule): sparsity and dead units per block;
* goodness (Forward-Forward family): mean goodness of positive and negative data.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

FIGURES = {
    "Alignment angles by epoch (degrees; 90 = orthogonal to backprop's direction)":
        (("weight_alignment", "weight alignment: angle(B, W)"),
         ("gradient_alignment", "gradient alignment: angle(update, backprop gradient)")),
    "Activity by epoch (fixed training batch)":
        (("sparsity", "fraction of zero activations"),
         ("dead_units", "fraction of units never active")),
    "Forward-Forward goodness by epoch (fixed training batch)":
        (("goodness_positive", "mean goodness, positive data"),
         ("goodness_negative", "mean goodness, negative data")),
}


def _diag(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's diagnostics by epoch (epochs without any left out)."""
    return [h["diagnostics"] for h in row.get("history") or [] if h.get("diagnostics")]


def mean_by_epoch(group: list[dict[str, Any]], key: str) -> list[list[float | None]]:
    """``[epoch][layer]`` mean over the group's seeds of diagnostic ``key``."""
    per_seed = [[d.get(key) for d in _diag(r)] for r in group]
    per_seed = [s for s in per_seed if s and all(v is not None for v in s)]
    if not per_seed:
        return []
    epochs = min(len(s) for s in per_seed)
    out = []
    for e in range(epochs):
        layers = [s[e] for s in per_seed]
        if len({len(v) for v in layers}) != 1:
            return out
        out.append([None if any(v is None for v in col) else statistics.mean(col)
                    for col in zip(*layers, strict=True)])
    return out


def _fmt(values: list[float | None], fmt: str) -> str:
    return " ".join("-" if v is None else format(v, fmt) for v in values)


def diagnostics_table(groups: dict[tuple, list[dict[str, Any]]]) -> list[list[str]]:
    """Last epoch's diagnostics per (data, net, rule), one column per kind."""
    columns = [("weight_alignment", ".0f"), ("gradient_alignment", ".0f"), ("sparsity", ".2f"),
               ("dead_units", ".2f"), ("goodness_positive", ".2f"),
               ("goodness_negative", ".2f")]
    from locallearn.report.html import is_frozen

    table = [["rule", "frozen", "data", "net", "weight align. deg", "gradient align. deg",
              "sparsity", "dead units", "goodness pos", "goodness neg"]]
    for (data, net, rule, _), group in groups.items():
        cells = []
        for key, fmt in columns:
            curve = mean_by_epoch(group, key)
            cells.append(_fmt(curve[-1], fmt) if curve else "-")
        if any(c != "-" for c in cells):
            table.append([str(rule), "yes" if is_frozen(group[0]) else "no", str(data),
                          str(net), *cells])
    return table if len(table) > 1 else []


def diagnostics_plots(groups: dict[tuple, list[dict[str, Any]]], plt,
                      colors: dict[str, Any]) -> dict[str, Any]:
    """Figures (matplotlib) by title; a figure only when some run logged its keys."""
    from matplotlib.ticker import MaxNLocator

    out = {}
    styles = ("-", "--", ":", "-.")
    for title, panels in FIGURES.items():
        curves: dict[str, list] = defaultdict(list)
        for (data, net, rule, _), group in groups.items():
            for key, _ in panels:
                curve = mean_by_epoch(group, key)
                if curve:
                    curves[key].append((f"{rule} ({data}, {net})", rule, curve))
        if not curves:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(12, 4.2))
        for ax, (key, label) in zip(axes, panels, strict=True):
            for name, rule, curve in curves.get(key, []):
                for layer in range(len(curve[0])):
                    ys = [c[layer] for c in curve]
                    if all(v is None for v in ys):
                        continue
                    ax.plot(range(1, len(ys) + 1), ys, color=colors.get(rule),
                            ls=styles[layer % len(styles)], marker=".",
                            label=f"{name} layer {layer}")
            ax.set(xlabel="epoch", title=label)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, ncol=2)
        out[title] = fig
    return out


def robustness_table(groups: dict[tuple, list[dict[str, Any]]]) -> list[list[str]]:
    """Clean and attacked test accuracy of suites run with ``settings: {attack: ...}``."""
    from locallearn.report.html import is_frozen

    table = [["rule", "frozen", "data", "net", "attack", "eps (raw input units)", "seeds",
              "clean accuracy", "attacked accuracy"]]
    for (data, net, rule, _), group in groups.items():
        hits = [g["robustness"] for g in group if g.get("robustness")]
        if not hits:
            continue
        attack = hits[0]["attack"] + (f" ({hits[0]['steps']} steps)"
                                      if hits[0]["attack"] == "pgd" else "")
        table.append([str(rule), "yes" if is_frozen(group[0]) else "no", str(data), str(net),
                      attack, f"{hits[0]['eps']:g}",
                      str(len(hits)), _mean_std([h["clean_accuracy"] for h in hits]),
                      _mean_std([h["attacked_accuracy"] for h in hits])])
    return table if len(table) > 1 else []


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
