"""Take a trained model out: ``torch.export`` programs and a uniform predictor.

:class:`Predictor` is what every export and :func:`load` answer with: raw inputs in,
the data's normalisation (if the run used one) applied, then the rule's own
prediction (``rule.predict``: goodness per label for Forward-Forward, the readout of
the kept block for a pruned net, ...), never the bare network, whose output differs
from the rule's prediction for many rules.

:func:`export` writes ``DIR/model.pt2``: ``torch.export.export`` of the predictor with a
dynamic batch dimension, which ``torch.export.load(path).module()`` runs without
locallearn installed; ``DIR/state_dict.pt`` (its weights and normalisation statistics,
``torch.load(..., weights_only=True)``); ``DIR/export.json`` (rule, input shape,
classes, normalisation). The export is checked against the predictor on held-out
batches of several sizes before it is written; a rule whose prediction does not trace
(or does not match) is refused with a one-line reason.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from locallearn.errors import UserError

MODEL_FILE = "model.pt2"
STATE_FILE = "state_dict.pt"
INFO_FILE = "export.json"


class Predictor(nn.Module):
    """``rule.predict(normalise(x))``: class scores (batch, classes) from raw inputs."""

    def __init__(self, rule: nn.Module, mean: Tensor | None = None,
                 std: Tensor | None = None) -> None:
        super().__init__()
        self.rule = rule
        self.normalises = mean is not None
        if mean is not None:
            self.register_buffer("mean", mean.detach().clone().float())
            self.register_buffer("std", std.detach().clone().float())

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        if self.normalises:
            x = (x - self.mean) / self.std
        return self.rule.predict(x)


def predictor_for(rule, dataset) -> Predictor:
    """The predictor of a trained rule on raw inputs of ``dataset`` (its own statistics)."""
    if rule.task.kind not in ("image", "signal", "vector"):
        raise UserError(f"cannot export a model for {rule.task.kind} data: its prediction "
                        f"needs the graph or sequence context, not one input tensor")
    mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
    pred = Predictor(rule, mean, std)
    pred.eval()
    return pred


def raw_batch(dataset, n: int = 16) -> Tensor:
    """Up to ``n`` held-out inputs as the user gave them (normalisation undone)."""
    x, _ = next(iter(dataset.loader("test", n)))
    x = x[:n]
    mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
    return x * std + mean if mean is not None else x


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


@torch.no_grad()
def export_predictor(pred: Predictor, example: Tensor, out: str | Path,
                     info: dict[str, Any] | None = None) -> Path:
    """Write ``out/model.pt2`` (+ state dict, info) after checking it against ``pred``."""
    name = getattr(pred.rule, "name", "rule")
    refusal = getattr(pred.rule, "export_refusal", None)
    if refusal:
        raise UserError(f"rule {name!r} cannot be exported: {refusal}")
    pred.eval()
    if example.shape[0] < 2:  # a batch of one would fix the batch size at 1
        example = torch.cat([example, example])
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(pred, (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:  # a trace failure is the rule's limitation, said in one line
        raise UserError(f"rule {name!r} cannot be exported with torch.export: "
                        f"{_first_line(exc)}") from None
    module = program.module()
    for part in (example, example[:1], example[: max(1, example.shape[0] - 1)]):
        try:
            got = module(part)
        except Exception as exc:
            raise UserError(f"rule {name!r}: the exported program fails on a batch of "
                            f"{part.shape[0]}: {_first_line(exc)}") from None
        want = pred(part)
        if got.shape != want.shape or not torch.equal(got.argmax(-1), want.argmax(-1)):
            raise UserError(f"rule {name!r} cannot be exported: the traced prediction differs "
                            f"from rule.predict (data-dependent control flow)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, out / MODEL_FILE)
    torch.save({k: v.detach().cpu().clone() for k, v in pred.state_dict().items()},
               out / STATE_FILE)
    meta = {"rule": name, "input_shape": list(example.shape[1:]),
            "input": "raw (normalisation inside the program)" if pred.normalises
            else "as given to training (no normalisation)",
            "output": "class scores (batch, classes); argmax = rule.predict",
            "torch_version": torch.__version__, **(info or {})}
    (out / INFO_FILE).write_text(json.dumps(meta, indent=1, default=str))
    return out / MODEL_FILE


def export(run: Any, out: str | Path, device: str = "cpu") -> Path:
    """Export a run directory or a :class:`~locallearn.training.run.TrainResult` to ``out``."""
    if hasattr(run, "rule") and hasattr(run, "dataset"):
        pred = predictor_for(run.rule.to("cpu"), run.dataset)
        return export_predictor(pred, raw_batch(run.dataset), out,
                                {"num_classes": run.rule.task.num_classes})
    run_dir = Path(run)
    if (run_dir / MODEL_FILE).exists():  # a run of your own model: exported when trained
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for f in (MODEL_FILE, STATE_FILE, INFO_FILE):
            if (run_dir / f).exists() and (run_dir / f).resolve() != (out / f).resolve():
                shutil.copyfile(run_dir / f, out / f)
        return out / MODEL_FILE
    from locallearn.anytime.runs import load_run

    _refuse_user_run(run_dir)
    loaded = load_run(run_dir, device="cpu")
    pred = predictor_for(loaded.rule, loaded.dataset)
    info = {"run": str(run_dir), "num_classes": loaded.rule.task.num_classes,
            "transforms": loaded.transforms}
    return export_predictor(pred, raw_batch(loaded.dataset), out, info)


def _refuse_user_run(run_dir: Path) -> None:
    path = run_dir / "config.json"
    if path.exists():
        try:
            config = json.loads(path.read_text())
        except ValueError:
            return
        if isinstance(config, dict) and config.get("user_model"):
            raise UserError(f"{run_dir} trained your own model and has no {MODEL_FILE} (its "
                            f"rule could not be exported); rebuild it in Python to use it")


class LoadedModel:
    """Predictions on raw inputs, the same for every rule: ``predict`` gives class indices,
    ``predict_proba`` the softmax of the class scores (for goodness-based rules a
    normalised confidence, not a calibrated probability)."""

    def __init__(self, module: nn.Module, info: dict[str, Any]) -> None:
        self.module = module
        self.info = info

    @torch.no_grad()
    def scores(self, x: Any) -> Tensor:
        x = torch.as_tensor(x)
        if x.dim() == len(self.info.get("input_shape", x.shape[1:])):
            x = x.unsqueeze(0)  # one sample
        return self.module(x)

    def predict(self, x: Any) -> Tensor:
        return self.scores(x).argmax(-1)

    def predict_proba(self, x: Any) -> Tensor:
        return torch.softmax(self.scores(x).float(), dim=-1)

    def __call__(self, x: Any) -> Tensor:
        return self.scores(x)


def load(run: Any) -> LoadedModel:
    """A trained model from an export folder, a run directory or a ``TrainResult``."""
    if hasattr(run, "rule") and hasattr(run, "dataset"):
        pred = predictor_for(run.rule, run.dataset)
        return LoadedModel(pred, {"rule": run.rule.name,
                                  "input_shape": list(run.dataset.task.input_shape)})
    path = Path(run)
    if path.is_file() and path.suffix == ".pt2":
        path = path.parent
    if (path / MODEL_FILE).exists():
        info = {}
        if (path / INFO_FILE).exists():
            info = json.loads((path / INFO_FILE).read_text())
        return LoadedModel(torch.export.load(str(path / MODEL_FILE)).module(), info)
    from locallearn.anytime.runs import load_run

    _refuse_user_run(path)
    loaded = load_run(path, device="cpu")
    pred = predictor_for(loaded.rule, loaded.dataset)
    return LoadedModel(pred, {"rule": loaded.rule.name,
                              "input_shape": list(loaded.dataset.task.input_shape)})


__all__ = ["LoadedModel", "Predictor", "export", "export_predictor", "load", "predictor_for"]
