"""report.md / report.html from bench rows; the page renders in headless Chromium.

The Chromium test is never skipped: without a browser it fails and says how to
install one (`apt-get install -y chromium`; `.ci/run` does this before `make test`).
Set LOCALLEARN_CHROMIUM to use another Chromium/Chrome binary.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from locallearn.report import write_report
from locallearn.report.html import frozen_table, memory_table

HW = {"cpu": "Test CPU 9000", "cpu_count": 2, "torch_threads": 2, "torch_version": "2.x",
      "python": "3.11", "gpu": None, "device": "cpu"}
RULES = ["backprop", "mono-forward", "ff"]


def synthetic_rows() -> list[dict]:
    """Rows of all three kinds, as `locallearn bench` writes them."""
    rows = []
    for i, rule in enumerate(RULES):
        for seed in (0, 1):
            acc = 0.8 + 0.05 * i + 0.01 * seed
            rows.append({
                "suite": "t", "kind": "train", "key": f"train/{rule}/{seed}", "status": "ok",
                "rule": rule, "data": "digits", "net": "mlp:32,32", "seed": seed,
                "options": {}, "rule_options": {}, "hardware": HW, "epochs": 3,
                "test_accuracy": acc, "train_seconds": 1.0 + i, "samples_per_second": 1000.0,
                "peak_memory_bytes": 2**20, "per_layer_test_accuracy":
                    None if rule == "backprop" else [acc - 0.1, acc],
                "history": [{"epoch": e, "val_accuracy": acc - 0.1 * (2 - e),
                             "elapsed_train_seconds": (e + 1) * (1.0 + i)} for e in range(3)],
            })
        for depth in (2, 8):
            act = depth * 2**21 if rule == "backprop" else (2**21 if rule == "ff" else 2**22)
            rows.append({"suite": "t", "kind": "memory", "key": f"memory/{rule}/{depth}",
                         "status": "ok", "rule": rule, "data": "mnist5k", "depth": depth,
                         "net": "mlp:" + ",".join(["1024"] * depth), "seed": 0, "hardware": HW,
                         "activation_peak_bytes": act, "peak_memory_bytes": act + 2**24})
        rows.append({"suite": "t", "kind": "efficiency", "key": f"eff/{rule}", "status": "ok",
                     "rule": rule, "data": "mnist5k", "net": "mlp:2048", "seed": 0,
                     "hardware": HW, "batch_size": 1024, "flops_per_sample": 3e7,
                     "step_seconds_median": 0.5, "achieved_flops": 6e10,
                     "peak_matmul_flops": 1e11, "efficiency": 0.6})
    for rule, gap in (("backprop", 0.05), ("ff", -0.02)):  # frozen controls of two rules
        for seed in (0, 1):
            trained = next(r for r in rows if r["kind"] == "train" and r["rule"] == rule
                           and r["seed"] == seed)
            rows.append({**trained, "key": f"train/{rule}/{seed}/frozen",
                         "options": {"freeze_blocks": True}, "freeze_blocks": True,
                         "test_accuracy": trained["test_accuracy"] - gap - 0.01 * seed})
    rows.append({"suite": "t", "kind": "train", "key": "train/gnn-only", "status": "skipped",
                 "rule": "gnn-only", "data": "digits", "net": "mlp:32,32", "seed": 0,
                 "hardware": HW, "reason": "gnn-only supports graph data, digits is image"})
    return rows


def write_results(folder, rows) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_memory_table_judges_the_target():
    table = memory_table(synthetic_rows())
    by_rule = {line[0]: line for line in table[1:]}
    # ff: 2 MiB vs backprop 16 MiB at depth 8 -> 0.125 <= 1.25/8; mono-forward 0.25 is not.
    assert by_rule["ff"][2].endswith("/ 2.0 (0.12)") and by_rule["ff"][-3] == "yes"
    assert by_rule["mono-forward"][-3] == "no"
    # Peaks: (2 + 16) MiB for ff against (16 + 16) MiB for backprop.
    assert by_rule["ff"][2].startswith("18.0 (0.56) /")


def test_frozen_table_pairs_each_rule_with_its_control_by_seed():
    table = frozen_table(synthetic_rows())
    by_rule = {line[0]: line for line in table[1:]}
    assert set(by_rule) == {"backprop", "ff"}  # mono-forward has no frozen control
    # backprop beats its control by 0.05 and 0.06 (seed 0, 1); ff loses by 0.02 and 0.01.
    assert by_rule["backprop"][3:8] == ["2", "0.8050 ± 0.0071", "0.7500 ± 0.0000",
                                        "+0.0550 ± 0.0071", "yes"]
    assert by_rule["ff"][6] == "-0.0150 ± 0.0071" and by_rule["ff"][7] == "no"
    # Beside it: backprop's trained figure on the same task, epochs, seconds, and the time
    # to the validation target (ff reaches 0.90 at its third epoch, 9 s; backprop never).
    assert by_rule["ff"][8:] == ["0.8050 ± 0.0071", "3", "3.0 ± 0.0", "9.0 to 0.90 (2/2)"]
    assert by_rule["backprop"][11] == "- to 0.90 (0/2)"


def test_report_rebuilds_from_results(tmp_path, cli):
    write_results(tmp_path, synthetic_rows())
    r = cli("report", str(tmp_path))
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "report.md").read_text()
    assert "Test CPU 9000, 2 cores, 2 torch threads" in md
    # Rows of an older version record no command, commit or load: the page says so.
    assert "- Commit: not recorded" in md
    assert "- Load average (1 min) at cell starts: not recorded (0 of " in md
    assert "| mono-forward | no | digits | mlp:32,32 | - | 2 | 3 | 0.8550 ± 0.0071 |" in md
    assert "| ff | yes | digits | mlp:32,32 | options={\"freeze_blocks\": true} | 2 | 3 |" in md
    assert "| backprop | digits | mlp:32,32 | 2 | 0.8050 ± 0.0071 | 0.7500 ± 0.0000 |" in md
    assert "| skipped | gnn-only: 1 cell | gnn-only supports graph data, digits is image |" in md
    page = (tmp_path / "report.html").read_text()
    assert page.count("<img") == 4  # accuracy curves, per-layer, memory, efficiency; and
    # nothing to fetch: every image is inline
    assert not re.search(r"(src|href)=['\"](?!data:)", page)
    assert cli("report", str(tmp_path / "missing")).returncode == 2


def chromium() -> str:
    found = os.environ.get("LOCALLEARN_CHROMIUM") or next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
         if shutil.which(n)), None)
    if not found:
        pytest.fail("headless Chromium is needed to check report.html: install it with "
                    "`apt-get install -y chromium` (Debian/Ubuntu; .ci/run does this) or set "
                    "LOCALLEARN_CHROMIUM=/path/to/chrome")
    return found


PROBE = """<script>window.addEventListener("load", () => {
  const ok = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute("data-images-ok", ok);
  document.body.setAttribute("data-images", document.images.length);
  for (const i of document.images) if (!i.naturalWidth) console.error("broken image " + i.alt);
});</script></body>"""


def render(page, tmp_path, *flags) -> tuple[str, list[str]]:
    """Open ``page`` in headless Chromium; its stdout and the console messages."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=5000", *flags, page.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line]
    return r.stdout, console


def test_report_renders_in_headless_chromium(tmp_path):
    write_results(tmp_path, synthetic_rows())
    write_report(tmp_path)
    # The page has no scripts of its own; a copy gets a probe that checks every image decoded.
    probed = tmp_path / "probed.html"
    probed.write_text((tmp_path / "report.html").read_text().replace("</body>", PROBE))

    dom, console = render(probed, tmp_path, "--dump-dom")
    assert console == [], console
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-images="4"' in body and 'data-images-ok="4"' in body, body
    table = re.search(r"<table class=\"results\">.*?</table>", dom, re.S).group(0)
    assert all(f"<td>{rule}</td>" in table for rule in RULES)

    shot = tmp_path / "shot.png"
    render(tmp_path / "report.html", tmp_path, f"--screenshot={shot}", "--window-size=1200,1600")
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    ink = (pixels.min(axis=-1) < 0.9).mean()  # share of pixels that are not white
    assert pixels.shape[:2] == (1600, 1200) and 0.03 < ink < 0.9, ink

    # The checks can fail: a broken image and a script error are caught.
    broken = tmp_path / "broken.html"
    broken.write_text(probed.read_text().replace("base64,iVBOR", "base64,xx", 1)
                      .replace("</body>", "<script>no_such_function()</script></body>"))
    dom, console = render(broken, tmp_path, "--dump-dom")
    assert 'data-images-ok="3"' in dom
    assert any("broken image" in c for c in console)
    assert any("no_such_function" in c for c in console)


def test_provenance_lines_name_command_commit_hardware_and_load():
    from locallearn.report.provenance import command_line, load_summary, provenance_lines

    lines = provenance_lines(command="python benchmarks/x.py --seeds 0",
                             loads=[[3.0, 2.0, 1.0], None, [5.0, 4.0, 3.0], [4.0, 1.0, 1.0]])
    assert lines[0] == "- Command: `python benchmarks/x.py --seeds 0`"
    assert lines[1].startswith("- Commit: `") and "torch thread" in lines[2]
    assert "3.0-5.0 (median 4.0)" in lines[3]
    assert load_summary([None]) == "not recorded"
    assert command_line(["/x/src/locallearn/__main__.py", "bench", "--out", "a b"]) == \
        "locallearn bench --out 'a b'"


def test_report_with_a_second_folder_reads_both(tmp_path, cli):
    rows = synthetic_rows()
    train = [{**r, "data": "mnist5k"} for r in rows if r["kind"] == "train"]
    write_results(tmp_path / "eff", [r for r in rows if r["kind"] == "efficiency"])
    write_results(tmp_path / "rules", train)
    r = cli("report", str(tmp_path / "eff"), "--with", str(tmp_path / "rules"))
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "eff" / "report.md").read_text()
    # The efficiency rows get their time to accuracy from the other folder's train rows.
    ff_row = next(line for line in md.splitlines() if line.startswith("| ff | mlp:2048 |"))
    assert ff_row.endswith("| 9.0 to 0.90 (2/2) |")
    assert not (tmp_path / "rules" / "report.md").exists()
    assert cli("report", str(tmp_path / "eff"), "--with", str(tmp_path / "nope")).returncode == 2


def test_benchmark_scripts_print_provenance_after_their_table(capsys):
    from locallearn.report.provenance import run_with_provenance

    def main() -> int:
        print("| table |")
        return 7

    assert run_with_provenance(main, every_s=0.01) == 7
    out = capsys.readouterr().out
    assert out.index("| table |") < out.index("- Command: `python ") < out.index("- Load")
    with pytest.raises(SystemExit):  # --help and errors: nothing printed after them
        run_with_provenance(lambda: sys.exit(0))
    assert "- Command" not in capsys.readouterr().out
