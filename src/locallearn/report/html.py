"""Write ``report.md`` and a self-contained ``report.html`` (plots embedded as PNG).

Input is a list of result rows: the ``results.jsonl`` of a ``locallearn bench``
folder, or run directories (``summary.json`` + ``metrics.jsonl``) turned into
rows. Rows of kind ``train`` give the results table (mean ± std over seeds),
accuracy against epoch and against training time, and per-layer accuracy;
``memory`` rows give memory against depth; ``efficiency`` rows give achieved
FLOP/s against ``torch.matmul``'s peak. The page has no scripts and fetches
nothing when it opens.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from locallearn.report.diagnostics import diagnostics_plots, diagnostics_table, robustness_table

# A local rule's activation memory should be at most this many times backprop's
# divided by the depth (issue 7's target, for depth >= MEMORY_TARGET_MIN_DEPTH).
MEMORY_TARGET_FACTOR = 1.25
MEMORY_TARGET_MIN_DEPTH = 8
EFFICIENCY_TARGET = 0.6



def per_block(row: dict) -> list | None:
    """Per-block test accuracies of a result row (rows written before the rename hold
    them as ``per_layer_test_accuracy``)."""
    return row.get("per_block_test_accuracy") or row.get("per_layer_test_accuracy")

def load_runs(root: Path) -> list[dict[str, Any]]:
    """Every run under ``root`` (``summary.json`` plus its epoch metrics)."""
    runs = []
    from locallearn.training.runfolder import read_metrics

    for summary_path in sorted(Path(root).rglob("summary.json")):
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            summary = None
        if not isinstance(summary, dict):  # a damaged run does not hide the others
            print(f"locallearn: warning: {summary_path} is damaged (not a JSON object); "
                  f"skipped", file=sys.stderr)
            continue
        metrics_path = summary_path.with_name("metrics.jsonl")
        metrics = read_metrics(metrics_path) if metrics_path.exists() else []
        runs.append({"dir": str(summary_path.parent), "summary": summary, "metrics": metrics})
    return runs


def run_to_row(run: dict[str, Any]) -> dict[str, Any]:
    """A run directory (as :func:`load_runs` gives it) in the shape of a bench row."""
    s = run["summary"]
    history = [{"epoch": m["epoch"], "val_accuracy": m["val_accuracy"],
                "elapsed_train_seconds": m["elapsed_train_seconds"],
                "diagnostics": m.get("diagnostics")} for m in run["metrics"]]
    return {**s, "kind": "train", "status": "ok", "key": run["dir"], "history": history}


# -- formatting -----------------------------------------------------------------

def _mean_std(values: list[float], fmt: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def _same_or_range(values: list[Any]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return str(values[0]) if len(set(values)) == 1 else f"{min(values)}-{max(values)}"


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _html_table(rows: list[list[str]], css_class: str) -> str:
    out = f"<table class='{css_class}'><thead><tr>"
    out += "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr></thead><tbody>"
    for r in rows[1:]:
        out += "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
    return out + "</tbody></table>"


def hardware_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per distinct machine/threads/torch combination in the rows."""
    seen = []
    unknown = 0
    for r in rows:
        hw = r.get("hardware") or {}
        if not hw:
            unknown += 1
            continue
        gpu = f", GPU {hw['gpu']}" if hw.get("gpu") else ", no GPU"
        line = (f"{hw.get('cpu', '?')}, {hw.get('cpu_count', '?')} cores, "
                f"{hw.get('torch_threads', '?')} torch threads{gpu}; "
                f"device {hw.get('device', r.get('device', '?'))}; "
                f"torch {hw.get('torch_version', '?')}, Python {hw.get('python', '?')}")
        if line not in seen:
            seen.append(line)
    if unknown:
        seen.append(f"{unknown} result(s) without a recorded machine (made by an older version)")
    return seen


def made_by_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: the command(s) and commit(s) that wrote the rows, and the 1-minute
    load average at the start of their cells (timings move with it on a shared machine)."""
    from locallearn.report.provenance import load_summary

    def distinct(key: str) -> str:
        values = [str(r[key]) for r in rows if r.get(key)]
        missing = sum(1 for r in rows if not r.get(key))
        text = ", ".join(f"`{v}`" for v in dict.fromkeys(values)) or "not recorded"
        return text + (f" ({missing} of {len(rows)} rows made by an older version "
                       f"record none)" if values and missing else "")

    loads = [r.get("load_average") for r in rows]
    recorded = sum(1 for v in loads if v)
    return [f"- Command: {distinct('command')}", f"- Commit: {distinct('commit')}",
            f"- Load average (1 min) at cell starts: {load_summary(loads)} "
            f"({recorded} of {len(rows)} cells recorded)"]


def _rule_order(rule: str) -> tuple[int, str]:
    return (0 if rule == "backprop" else 1, rule)


# Settings that make two runs different experiments (everything but the seed and where /
# how the run was kept): runs that agree on all of them are averaged as seeds.
CONFIG_TRAIN_KEYS = ("epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
                     "schedule", "patience", "freeze_blocks", "extra")


def config_of(r: dict[str, Any]) -> dict[str, Any]:
    """The configuration of a result row, without its seed."""
    train = r.get("train_config") or {}
    return {"options": r.get("options") or None, "rule_options": r.get("rule_options") or None,
            "data_options": r.get("data_options") or None,
            "net_options": r.get("net_options") or None,
            "transforms": r.get("transforms") or None, "user_model": r.get("user_model"),
            "task": r.get("task"),
            **{f"train.{k}": train.get(k) for k in CONFIG_TRAIN_KEYS if k in train}}


def _groups(rows: list[dict[str, Any]], kind: str) -> dict[tuple, list[dict[str, Any]]]:
    """Rows of one kind grouped by their configuration (everything but the seed): a
    pruned or grown copy of a run, or a run with other settings, is its own group."""
    out: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("kind", "train") == kind and r.get("status", "ok") == "ok":
            opts = json.dumps(config_of(r), sort_keys=True, default=str)
            out[(r.get("data"), r.get("net"), r.get("rule"), opts)].append(r)
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], kv[0][1], _rule_order(kv[0][2]),
                                                       kv[0][3])))


def _transform_label(transforms: list[dict[str, Any]] | None) -> str:
    parts = []
    for t in transforms or []:
        if t.get("kind") == "prune":
            what = [f"skip {t['skip']}"] if t.get("skip") else []
            what += [f"cut after block {t['exit']}"] if t.get("exit") is not None else []
            parts.append("pruned (" + ", ".join(what or ["nothing"]) + ")")
        elif t.get("kind") == "grow":
            parts.append(f"grown (+{t.get('blocks')} blocks)")
    return "; ".join(parts)


def config_labels(rows: list[dict[str, Any]]) -> dict[str, str]:
    """A short label per configuration: the settings that vary across the rows."""
    configs = {json.dumps(config_of(r), sort_keys=True, default=str): config_of(r)
               for r in rows if r.get("kind", "train") == "train" and r.get("status", "ok") == "ok"}
    varying = {k for c in configs.values() for k in c
               if len({json.dumps(o.get(k), sort_keys=True, default=str)
                       for o in configs.values()}) > 1}
    labels = {}
    for key, c in configs.items():
        parts = [_transform_label(c.get("transforms"))] if "transforms" in varying else []
        parts += [f"{k.removeprefix('train.')}={json.dumps(c[k], default=str)}"
                  for k in sorted(varying) if k != "transforms" and c.get(k) is not None]
        labels[key] = "; ".join(p for p in parts if p) or "-"
    return labels


def grouping_lines(rows: list[dict[str, Any]]) -> list[str]:
    """What was averaged: one line per group of more than one run."""
    lines = []
    for (data, net, rule, _), group in _groups(rows, "train").items():
        seeds = [g.get("seed") for g in group]
        where = ", ".join(str(g.get("key", "?")) for g in group)
        if len(group) > 1:
            lines.append(f"{rule} on {data} ({net}): {len(group)} runs averaged as seeds "
                         f"{seeds} (same settings): {where}")
    return lines


# -- tables ----------------------------------------------------------------------

def results_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Train rows, mean ± std over seeds."""
    labels = config_labels(rows)
    table = [["rule", "frozen", "data", "net", "settings", "seeds", "epochs", "test accuracy",
              "train s",
              "samples/s", "peak memory MiB", "per-layer test accuracy"]]
    for (data, net, rule, config), group in _groups(rows, "train").items():
        per_layer = [per_block(g) for g in group if per_block(g)]
        per = "-"
        if per_layer and len({len(p) for p in per_layer}) == 1:
            per = " ".join(f"{statistics.mean(col):.3f}" for col in zip(*per_layer, strict=True))
        table.append([
            str(rule), "yes" if is_frozen(group[0]) else "no", str(data), str(net),
            labels.get(config, "-"), str(len(group)),
            _same_or_range([g.get("epochs") for g in group]),
            _mean_std([g.get("test_accuracy") for g in group], ".4f"),
            _mean_std([g.get("train_seconds") for g in group], ".1f"),
            _mean_std([g.get("samples_per_second") for g in group], ".0f"),
            _mean_std([(g.get("peak_memory_bytes") or 0) / 2**20 for g in group], ".1f"),
            per,
        ])
    return table


def _reach(v: dict[str, Any] | None) -> str:
    """'S to T (k/n)': mean training seconds to the validation target T of the k of n
    runs that reached it."""
    if not v:
        return "-"
    mean = "-" if v["mean_seconds"] is None else f"{v['mean_seconds']:.1f}"
    return f"{mean} to {v['target']:.2f} ({len(v['seconds'])}/{v['runs']})"


def is_frozen(row: dict[str, Any]) -> bool:
    """Whether a row is a frozen control (``freeze_blocks``: random blocks, only what lies
    outside them learns)."""
    for source in (row, row.get("options") or {}, row.get("train_config") or {}):
        if source.get("freeze_blocks"):
            return True
    return False


def frozen_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Each rule beside its frozen control: test accuracy of both and the difference,
    paired by seed, mean ± std over the seeds both have; then backprop's test accuracy
    on the same task, the rule's epochs, training seconds and time to the validation
    target (see :mod:`locallearn.bench.efficiency`), so one table carries a rule's figure
    with both of its baselines."""
    from locallearn.bench.efficiency import times_to_accuracy

    trained: dict[tuple, dict[int, dict[str, Any]]] = defaultdict(dict)
    frozen: dict[tuple, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        if r.get("kind", "train") != "train" or r.get("status", "ok") != "ok":
            continue
        if r.get("test_accuracy") is None:
            continue
        options = {k: v for k, v in (r.get("options") or {}).items() if k != "freeze_blocks"}
        key = (r.get("data"), r.get("net"), r.get("rule"),
               json.dumps({"o": options, "r": r.get("rule_options")}, sort_keys=True))
        (frozen if is_frozen(r) else trained)[key][r.get("seed")] = r
    def task(k: tuple) -> tuple:  # data, net and train options: backprop's comparable run
        return k[0], k[1], json.dumps(json.loads(k[3])["o"], sort_keys=True)

    backprop = {task(k): [r["test_accuracy"] for r in by_seed.values()]
                for k, by_seed in trained.items() if k[2] == "backprop"}
    tta = times_to_accuracy(rows)
    table = [["rule", "data", "net", "seeds", "trained test acc", "frozen test acc",
              "trained - frozen (mean ± std over seeds)", "beats frozen by >= 0.01",
              "backprop test acc", "epochs", "train s", "train s to val target (seeds)"]]
    for key in sorted(set(trained) & set(frozen),
                      key=lambda k: (k[0], k[1], _rule_order(k[2]), k[3])):
        seeds = sorted(set(trained[key]) & set(frozen[key]))
        if not seeds:
            continue
        a = [trained[key][s]["test_accuracy"] for s in seeds]
        b = [frozen[key][s]["test_accuracy"] for s in seeds]
        diff = [x - y for x, y in zip(a, b, strict=True)]
        reach_cell = _reach(tta.get(key[:3]))
        table.append([str(key[2]), str(key[0]), str(key[1]), str(len(seeds)),
                      _mean_std(a, ".4f"), _mean_std(b, ".4f"),
                      ("+" if statistics.mean(diff) >= 0 else "") + _mean_std(diff, ".4f"),
                      "yes" if statistics.mean(diff) >= 0.01 else "no",
                      _mean_std(backprop.get(task(key), []), ".4f"),
                      _same_or_range([trained[key][s].get("epochs") for s in seeds]),
                      _mean_std([trained[key][s].get("train_seconds") for s in seeds], ".1f"),
                      reach_cell])
    return table if len(table) > 1 else []


def memory_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Allocator-level peak and activation peak by rule and depth, each with its ratio to
    backprop's at that depth; fixed state and the saved-tensor peak at the largest depth."""
    cells = {(r["rule"], r["depth"]): r for r in rows
             if r.get("kind") == "memory" and r.get("status") == "ok"}
    if not cells:
        return []
    depths = sorted({d for _, d in cells})
    rules = sorted({r for r, _ in cells}, key=_rule_order)
    top = depths[-1]
    header = ["rule"] + [f"depth {d}: peak MiB (×bp) / act MiB (×bp)" for d in depths]
    header += [f"act meets ≤{MEMORY_TARGET_FACTOR}/depth at depth ≥{MEMORY_TARGET_MIN_DEPTH}",
               f"depth {top}: fixed state MiB", f"depth {top}: saved-tensor peak MiB"]
    table = [header]

    def ratio(value, base) -> str:
        return f" ({value / base:.2f})" if base else ""

    for rule in rules:
        line, meets = [rule], []
        for d in depths:
            r = cells.get((rule, d))
            bp = cells.get(("backprop", d)) or {}
            if r is None:
                line.append("-")
                continue
            act, peak = r["activation_peak_bytes"], r.get("peak_memory_bytes")
            bp_act = bp.get("activation_peak_bytes")
            line.append(f"{_mib(peak)}{ratio(peak or 0, bp.get('peak_memory_bytes'))} / "
                        f"{_mib(act)}{ratio(act, bp_act)}")
            if bp_act and rule != "backprop" and d >= MEMORY_TARGET_MIN_DEPTH:
                meets.append(act / bp_act <= MEMORY_TARGET_FACTOR / d)
        line.append("-" if rule == "backprop" or not meets else ("yes" if all(meets) else "no"))
        last = cells.get((rule, top)) or {}
        line.append(_mib(last.get("fixed_state_bytes")))
        line.append(_mib(last.get("saved_tensor_peak_bytes")))
        table.append(line)
    return table


def efficiency_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Per rule: FLOPs per training sample and relative to backprop's, step time, time to
    a validation-accuracy target (from train rows in the same report), and the fraction
    of matmul peak (MLPs only; see :mod:`locallearn.bench.efficiency`)."""
    from locallearn.bench.efficiency import relative_flops, times_to_accuracy

    rel = relative_flops(rows)
    tta = times_to_accuracy(rows)
    table = [["rule", "net", "batch", "GFLOP/sample", "FLOPs × backprop", "step s (median)",
              "achieved GFLOP/s", "matmul peak GFLOP/s", "fraction of peak (MLP only)",
              "train s to val target (seeds reaching)"]]
    for (data, net, rule, _), group in _groups(rows, "efficiency").items():
        for r in group:
            eff, ratio = r.get("efficiency"), rel.get(r.get("key"))
            reach = [v for (d, _, ru), v in tta.items() if d == data and ru == rule]
            reach_cell = _reach(reach[0] if reach else None)
            table.append([
                str(rule), str(net), str(r.get("batch_size")),
                f"{r['flops_per_sample'] / 1e9:.4f}",
                "-" if ratio is None else f"{ratio:.2f}", f"{r['step_seconds_median']:.3f}",
                f"{r['achieved_flops'] / 1e9:.1f}", f"{r['peak_matmul_flops'] / 1e9:.1f}",
                "-" if eff is None else f"{eff:.2f}", reach_cell,
            ])
    # Train rows only (e.g. the rules suite): the times alone, one line per rule and task.
    only_times = [] if len(table) > 1 else sorted(
        tta.items(), key=lambda kv: (kv[0][0], kv[0][1], _rule_order(kv[0][2])))
    for (_data, net, rule), v in only_times:
        table.append([str(rule), str(net), "-", "-", "-", "-", "-", "-", "-", _reach(v)])
    return table if len(table) > 1 else []


def status_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Failed cells one a row; skipped cells one row per rule (a rule that does not take
    the suite's data is skipped in every cell, which would otherwise bury the errors)."""
    table = [["status", "cell", "reason"]]
    skipped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("status") == "error":
            table.append(["error", str(r.get("key")), str(r.get("reason", ""))[:300]])
        elif r.get("status") == "skipped":
            skipped[str(r.get("rule", r.get("key")))].append(r)
    for rule, group in sorted(skipped.items()):
        reasons = sorted({str(r.get("reason", "")) for r in group})
        cells = f"{rule}: {len(group)} cell{'s' if len(group) != 1 else ''}"
        table.append(["skipped", cells, "; ".join(reasons)[:300]])
    return table if len(table) > 1 else []


# -- plots -----------------------------------------------------------------------

def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _colors(names: list[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return {n: cmap(i % 20) for i, n in enumerate(sorted(set(names), key=_rule_order))}


def _mean_curve(group: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """Mean over seeds of val accuracy by epoch, and of ``key`` (x values) by epoch."""
    by_epoch: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for g in group:
        for h in g.get("history") or []:
            x = h["epoch"] + 1 if key == "epoch" else h.get(key)
            if x is not None and h.get("val_accuracy") is not None:
                by_epoch[h["epoch"]].append((x, h["val_accuracy"]))
    epochs = sorted(by_epoch)
    return ([statistics.mean(p[0] for p in by_epoch[e]) for e in epochs],
            [statistics.mean(p[1] for p in by_epoch[e]) for e in epochs])


def plots(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Base64 PNGs by title. Empty when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return {}
    out = {}
    groups = _groups(rows, "train")
    colors = _colors([k[2] for k in groups] + [r.get("rule", "") for r in rows])
    tasks = sorted({(k[0], k[1]) for k in groups})
    for data, net in tasks:
        mine = {k: g for k, g in groups.items() if (k[0], k[1]) == (data, net)}
        if not any(g.get("history") for group in mine.values() for g in group):
            continue
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
        for (_, _, rule, _), group in mine.items():
            for ax, key in ((ax1, "epoch"), (ax2, "elapsed_train_seconds")):
                xs, ys = _mean_curve(group, key)
                if xs:
                    frozen = is_frozen(group[0])
                    ax.plot(xs, ys, marker=".", color=colors[rule],
                            label=f"{rule} (frozen)" if frozen else rule,
                            ls="--" if frozen else "-", lw=2.5 if rule == "backprop" else 1.3)
        ax1.set(xlabel="epoch", ylabel="validation accuracy (mean over seeds)",
                title=f"Accuracy vs epoch: {data}, {net}")
        ax2.set(xlabel="training seconds", ylabel="validation accuracy (mean over seeds)",
                title=f"Accuracy vs training time: {data}, {net}")
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
        ax1.legend(fontsize=7, ncol=2)
        out[f"Accuracy vs epoch and vs training time: {data}, {net}"] = _png(fig)
        plt.close(fig)

    per_layer = {k: g for k, g in groups.items()
                 if any(per_block(r) for r in g)}
    if per_layer:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for (data, net, rule, _), group in per_layer.items():
            accs = [per_block(r) for r in group if per_block(r)]
            if len({len(a) for a in accs}) != 1:
                continue
            mean = [statistics.mean(col) for col in zip(*accs, strict=True)]
            ax.plot(range(1, len(mean) + 1), mean, marker="o", color=colors[rule],
                    label=f"{rule} ({data}, {net})")
        ax.set(xlabel="block", ylabel="test accuracy of the block's readout",
               title="Per-layer test accuracy (mean over seeds)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # blocks are whole numbers
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        out["Per-layer accuracy"] = _png(fig)
        plt.close(fig)

    for title, fig in diagnostics_plots(groups, plt, colors).items():
        out[title] = _png(fig)
        plt.close(fig)

    early = [r for r in rows if r.get("early_exit")]
    if early:
        out["Early exit: accuracy vs mean depth"] = early_exit_plot(early, plt, colors)

    memory = [r for r in rows if r.get("kind") == "memory" and r.get("status") == "ok"]
    if memory:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        by_rule: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in memory:
            by_rule[r["rule"]].append(r)
        for rule in sorted(by_rule, key=_rule_order):
            pts = sorted(by_rule[rule], key=lambda r: r["depth"])
            ax.plot([p["depth"] for p in pts], [p["activation_peak_bytes"] / 2**20 for p in pts],
                    marker="o", color=colors[rule], label=rule,
                    lw=2.5 if rule == "backprop" else 1.3)
        bp = sorted(by_rule.get("backprop", []), key=lambda r: r["depth"])
        if bp:
            ax.plot([p["depth"] for p in bp],
                    [MEMORY_TARGET_FACTOR * p["activation_peak_bytes"] / p["depth"] / 2**20
                     for p in bp], "k--", label=f"target: backprop × {MEMORY_TARGET_FACTOR}/depth")
        ax.set(xscale="log", yscale="log", xlabel="depth (blocks)",
               ylabel="activation peak (allocator-level), MiB", title="Memory vs depth")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
        out["Memory vs depth"] = _png(fig)
        plt.close(fig)

    eff = [r for r in rows if r.get("kind") == "efficiency" and r.get("status") == "ok"
           and r.get("efficiency") is not None]
    if eff:
        eff = sorted(eff, key=lambda r: _rule_order(r["rule"]))
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar([r["rule"] for r in eff], [r["efficiency"] for r in eff],
               color=[colors[r["rule"]] for r in eff])
        ax.axhline(EFFICIENCY_TARGET, color="k", ls="--", label=f"target {EFFICIENCY_TARGET}")
        ax.set(ylabel="training FLOP/s / matmul peak FLOP/s", title="Compute efficiency")
        ax.tick_params(axis="x", rotation=45)
        ax.legend(fontsize=7)
        out["Compute efficiency"] = _png(fig)
        plt.close(fig)
    return out


def early_exit_plot(rows: list[dict[str, Any]], plt, colors: dict[str, Any]) -> str:
    """Test accuracy against mean blocks used, one curve per run with ``early_exit``.

    The sweep's points are thresholds; the operating point (picked on validation)
    is circled, with its measured speed-ups in the legend.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        curve = sorted(r["early_exit"], key=lambda c: c["mean_blocks"])
        rule = r.get("rule", "?")
        color = colors.get(rule)
        point = r.get("early_exit_operating_point") or {}
        label = f"{rule} ({r.get('data')}, {r.get('net')}, seed {r.get('seed')})"
        # Speed-ups are left out (None) where their timing spread exceeded the effect.
        speed = [f"x{point[k]:.2f} at batch {n}" for k, n in (("speedup_batch_1", 1),
                                                             ("speedup_batch_256", 256))
                 if point.get(k)]
        if speed:
            label += "; " + ", ".join(speed)
        ax.plot([c["mean_blocks"] for c in curve], [c["accuracy"] for c in curve],
                marker=".", color=color, label=label)
        if point:
            ax.plot([point["mean_blocks"]], [point["accuracy"]], "o", mfc="none", ms=11,
                    color=color)
    ax.set(xlabel="mean blocks used per sample", ylabel="test accuracy",
           title="Early exit: accuracy vs depth (circles: threshold picked on validation)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    png = _png(fig)
    plt.close(fig)
    return png


# -- the report ------------------------------------------------------------------

def collect_rows(folder: Path) -> list[dict[str, Any]]:
    """Rows of a bench folder (results.jsonl, last row per cell) or of its run folders."""
    from locallearn.bench.runner import latest_rows, read_results

    rows = read_results(folder)
    if rows:
        return latest_rows(rows)
    return [run_to_row(r) for r in load_runs(folder)]


def write_report(out_dir: Path, runs: list[dict[str, Any]] | None = None,
                 title: str | None = None, description: str = "",
                 rows: list[dict[str, Any]] | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` in ``out_dir``.

    ``runs`` (from :func:`load_runs`) or ``rows`` (bench rows) give the content;
    with neither, the folder's ``results.jsonl`` or run folders are read.
    """
    out_dir = Path(out_dir)
    if rows is None:
        rows = [run_to_row(r) for r in runs] if runs is not None else collect_rows(out_dir)
    title = title or "locallearn report"
    if not description:
        description = next((str(r["suite"]) + " suite" for r in rows if r.get("suite")), "")
    hardware = hardware_lines(rows)
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [("Results (mean ± std over seeds)", results_table(rows), "results"),
                ("Each rule beside its frozen control (blocks kept at their random "
                 "initialisation, only head/readouts learn; same seed and settings)",
                 frozen_table(rows), "frozen"),
                ("Memory vs depth (allocator-level peak of a training step, and the "
                 "activation peak: what a step allocates and frees itself; × backprop at "
                 "the same depth)", memory_table(rows), "memory"),
                ("Efficiency (FLOPs of one real training step per sample and × backprop's; "
                 "training seconds until validation accuracy first reaches the target; "
                 "FLOP/s against torch.matmul on the same shapes, MLPs only)",
                 efficiency_table(rows), "efficiency"),
                ("Diagnostics at the last epoch (per layer / block, mean over seeds; "
                 "alignment angles in degrees)", diagnostics_table(_groups(rows, "train")),
                 "diagnostics"),
                ("Robustness: test accuracy under a white-box attack (mean ± std over seeds)",
                 robustness_table(_groups(rows, "train")), "robustness"),
                ("Skipped and failed cells", status_table(rows), "status")]
    sections = [(t, tab, c) for t, tab, c in sections if tab and len(tab) > 1]

    md = [f"# {title}", ""]
    if description:
        md += [description, ""]
    made = made_by_lines(rows)
    md += [f"Hardware: {line}" for line in hardware] + [""] + made
    md += ["", f"Generated {generated}.", ""]
    grouped = grouping_lines(rows)
    md += ["Grouped: runs agreeing on every setting but the seed are averaged; " + (
        "none were." if not grouped else f"{len(grouped)} group(s):"), ""]
    md += [f"- {line}" for line in grouped] + ([""] if grouped else [])
    for t, tab, _ in sections:
        md += [f"## {t}", "", _markdown_table(tab), ""]
    if not sections:
        md += ["No finished runs yet.", ""]
    (out_dir / "report.md").write_text("\n".join(md))

    figures = "".join(
        f"<h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='data:image/png;base64,{b}'>"
        for t, b in plots(rows).items()
    )
    body = "".join(f"<h2>{html.escape(t)}</h2>{_html_table(tab, c)}" for t, tab, c in sections)
    if not sections:
        body = "<p>No finished runs yet.</p>"
    hw = "".join(f"<li>{html.escape(line)}</li>" for line in hardware)
    made_html = "".join(f"<li>{html.escape(line.removeprefix('- '))}</li>" for line in made)
    groups_html = "<p>Grouped: runs agreeing on every setting but the seed are averaged; " + (
        "none were.</p>" if not grouped else "</p><ul>" + "".join(
            f"<li>{html.escape(line)}</li>" for line in grouped) + "</ul>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222;}} table{{border-collapse:collapse;
margin-bottom:1.5em;}} td,th{{border:1px solid #bbb;padding:3px 7px;text-align:right;
font-size:0.9em;}} th{{background:#eee;}} td:first-child{{text-align:left;font-weight:bold;}}
img{{max-width:100%;display:block;margin-bottom:1em;}} .status td{{text-align:left;}}</style>
</head>
<body><h1>{html.escape(title)}</h1><p>{html.escape(description)}</p>
<p>Hardware:</p><ul>{hw}</ul><ul>{made_html}</ul>{groups_html}<p>Generated {generated}.</p>
{body}{figures}</body></html>
"""
    (out_dir / "report.html").write_text(page)
    return out_dir / "report.md", out_dir / "report.html"
