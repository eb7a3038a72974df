"""docs/extending.md runs as written: its Python blocks, in order, in one namespace."""

import re
from pathlib import Path

from locallearn.data import DATASETS
from locallearn.networks import NETWORKS
from locallearn.rules import RULES

GUIDE = Path(__file__).parents[1] / "docs" / "extending.md"


def test_extending_guide_examples_run(monkeypatch, tmp_path, capsys):
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert len(blocks) >= 4  # rule, its check, network family, dataset, all together
    # The guide registers new entries: keep them out of the other tests' registries.
    for registry in (RULES, NETWORKS, DATASETS):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_help", dict(registry._help))
    monkeypatch.chdir(tmp_path)  # anything a run writes stays in the test's folder
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{GUIDE.name}[block {i}]", "exec"), namespace)
    out = capsys.readouterr().out
    assert "label_smoothing must be a float between 0 and 1, got 2" in out
    assert "tower bias must be true or false, got 'no'" in out
    assert {"readout-ce", "tower", "rings"} <= set(RULES.names()) | set(NETWORKS.names()) \
        | set(DATASETS.names())
