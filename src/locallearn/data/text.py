"""``stdlib-text``: a character-level corpus from the Python standard library's source.

Every machine with Python has it, so nothing is downloaded. The file list is the
sorted top-level ``*.py`` files of the running interpreter's stdlib; files are
assigned to splits by their position (every 10th file to validation, the next
to test), so a split never shares a file with another. The corpus therefore
depends on the Python version; ``info`` records which.
"""

from __future__ import annotations

import math
import sysconfig
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from locallearn.data import DATASETS
from locallearn.data.base import VAL_FRACTION, Dataset, Split, Task
from locallearn.errors import UserError
from locallearn.options import Option, declare

# Printable ASCII plus newline and tab; id 0 stands for any other character.
VOCAB = ["<unk>", "\n", "\t"] + [chr(c) for c in range(32, 127)]
CHAR_TO_ID = {c: i for i, c in enumerate(VOCAB)}


def encode(text: str) -> torch.Tensor:
    return torch.tensor([CHAR_TO_ID.get(c, 0) for c in text], dtype=torch.long)


def decode(ids: torch.Tensor) -> str:
    return "".join(VOCAB[i] if i else "?" for i in ids.tolist())


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if p.is_file())


def windows(ids: torch.Tensor, context: int) -> Split:
    """Non-overlapping windows: inputs are characters t..t+L-1, targets t+1..t+L."""
    n = (len(ids) - 1) // context
    if n < 1:
        raise UserError(f"stdlib-text: too little text for context {context}; "
                        f"raise max_chars or lower context")
    x = ids[: n * context].view(n, context)
    y = ids[1 : n * context + 1].view(n, context)
    return Split(x, y)


@dataclass
class TextDataset(Dataset):
    """Next-character prediction; evaluation adds perplexity."""

    @torch.no_grad()
    def evaluate(self, rule, split: str, device: torch.device, batch_size: int) -> dict[str, Any]:
        was_training = rule.training
        rule.eval()
        nll = correct = tokens = 0.0
        block_correct: list[float] | None = None
        for x, y in self.loader(split, batch_size):
            x, y = x.to(device), y.to(device)
            scores = rule.predict(x)
            nll += float(F.cross_entropy(scores.reshape(-1, scores.shape[-1]), y.reshape(-1),
                                         reduction="sum"))
            correct += float((scores.argmax(-1) == y).sum())
            tokens += y.numel()
            per_block = rule.block_scores(x)
            if per_block is not None:
                counts = [float((s.argmax(-1) == y).sum()) for s in per_block]
                block_correct = counts if block_correct is None else [
                    a + b for a, b in zip(block_correct, counts, strict=True)]
        rule.train(was_training)
        return {
            "accuracy": correct / tokens,
            "perplexity": math.exp(nll / tokens),
            "per_block_accuracy": None if block_correct is None
            else [c / tokens for c in block_correct],
        }


@DATASETS.register("stdlib-text",
                   help="characters of the Python stdlib's own source; next-character prediction")
@declare(Option("context", int, "characters per example", low=2),
         Option("max_chars", int, "training characters read (validation and test: a tenth "
                "each)", low=20),
         replace(VAL_FRACTION, nullable=True, help="ignored (accepted like other "
                 "datasets'): validation text is every tenth stdlib file"))
def stdlib_text(seed: int = 0, data_dir=None, context: int = 64, max_chars: int = 1_000_000,
                val_fraction: float | None = None) -> TextDataset:
    if context < 2 or max_chars < 10 * context:
        raise UserError("stdlib-text needs context >= 2 and max_chars >= 10 * context")
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    budget = {"train": max_chars, "val": max_chars // 10, "test": max_chars // 10}
    for i, path in enumerate(stdlib_files()):
        split = "val" if i % 10 == 8 else "test" if i % 10 == 9 else "train"
        if budget[split] <= 0:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")[: budget[split]]
        parts[split].append(text)
        budget[split] -= len(text)
    if not parts["test"]:
        raise UserError("stdlib-text: found no standard-library source files")
    splits = {k: windows(encode("".join(v)), context) for k, v in parts.items()}
    task = Task(num_classes=len(VOCAB), input_shape=(context,), kind="text")
    info = {"files": len(stdlib_files()), "python_stdlib": sysconfig.get_paths()["stdlib"],
            "chars": {k: sum(map(len, v)) for k, v in parts.items()}}
    return TextDataset("stdlib-text", splits["train"], splits["val"], splits["test"], task,
                       info=info)
