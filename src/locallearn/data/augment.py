"""The standard CIFAR augmentation: random crop with zero padding, horizontal flip.

Two forms, the same transform:

* :func:`crop_flip` on a whole batch (N, C, H, W) with a seeded generator: what the
  in-memory datasets use (``cifar10`` / ``cifar100`` with ``augment=True``), applied to
  training batches only, with a generator seeded from the epoch's seed so that a resumed
  run sees the same crops and flips.
* :class:`ImageArrays`, a torch ``Dataset`` over uint8 images that crops and flips one
  sample at a time in ``__getitem__`` (torch's global generator, seeded per worker by
  the DataLoader): for streaming through a ``DataLoader`` with workers and pinned memory
  (``benchmarks/cifar10.py``).

Padding is black (0 in raw pixels), as in the usual ``RandomCrop(32, padding=4)``; on
standardised images black is ``-mean / std`` per channel.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset


def crop_flip(x: Tensor, generator: torch.Generator, padding: int = 4,
              fill: Tensor | None = None) -> Tensor:
    """Each image shifted by a random offset in [-padding, padding] (padded with ``fill``,
    per channel, default 0) and mirrored left-right with probability 1/2."""
    n, c, h, w = x.shape
    p = padding
    padded = x.new_zeros(n, c, h + 2 * p, w + 2 * p)
    if fill is not None:
        padded += fill.reshape(1, c, 1, 1).to(x)
    padded[:, :, p:p + h, p:p + w] = x
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)  # (n, h)
    cols = torch.arange(w)[None, :].expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # mirrored columns
    cols = (dx[:, None] + cols).to(x.device)  # (n, w)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


class ImageArrays(Dataset):
    """uint8 images (N, C, H, W) and labels as float tensors in [0, 1], cropped and
    flipped per sample when ``augment`` (training data only)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int,
                 augment: bool = False, padding: int = 4) -> None:
        self.images, self.labels = images, labels
        self.augment, self.padding = augment, padding
        self.classes = list(range(num_classes))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x = torch.from_numpy(np.ascontiguousarray(self.images[i])).float() / 255.0
        if self.augment:
            p, (_, h, w) = self.padding, x.shape
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            dy, dx = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
            x = padded[:, dy:dy + h, dx:dx + w]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return x, int(self.labels[i])


__all__ = ["ImageArrays", "crop_flip"]
