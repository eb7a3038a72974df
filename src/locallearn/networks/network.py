"""A network is an ordered list of blocks and an output head.

A *block* is the unit that one local objective trains (one or more torch
layers). Learning rules decide what flows between blocks (detached or not,
normalised or not); the network only holds the modules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn


class Block(nn.Module):
    """One locally trained unit: ``body`` maps the previous block's output to this one's.

    ``differentiable=False`` marks a black box: rules must not ask for a
    gradient through it (backprop and feedback alignment refuse such networks).
    """

    def __init__(self, body: nn.Module, name: str = "", differentiable: bool = True) -> None:
        super().__init__()
        self.body = body
        self.name = name
        self.differentiable = differentiable
        self.in_shape: tuple[int, ...] = ()
        self.out_shape: tuple[int, ...] = ()

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    @property
    def out_features(self) -> int:
        """Number of units in the block's output (all dims but the batch)."""
        n = 1
        for d in self.out_shape:
            n *= d
        return n

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())


class BlackBox(nn.Module):
    """Wraps any callable on tensors (a NumPy function, a simulator) with no gradient."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            out = self.fn(x.detach())
        if not isinstance(out, Tensor):
            out = torch.as_tensor(out, dtype=x.dtype)
        return out.to(x.device)


class Network(nn.Module):
    """``blocks`` (feature extractors, each trained by one local objective) then ``head``."""

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        head: nn.Module | None,
        input_shape: Sequence[int],
        num_classes: int,
        spec: str = "custom",
        readout_builder: Callable[[Block, int], nn.Module] | None = None,
        input_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.readout_builder = readout_builder
        self.input_dtype = input_dtype
        self.blocks = nn.ModuleList(
            [b if isinstance(b, Block) else Block(b, name=f"block{i}")
             for i, b in enumerate(blocks)]
        )
        self.head = head
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.spec = spec
        self._infer_shapes()

    @torch.no_grad()
    def _infer_shapes(self) -> None:
        was_training = self.training
        self.eval()
        h = torch.zeros(2, *self.input_shape, dtype=self.input_dtype)
        for block in self.blocks:
            block.in_shape = tuple(h.shape[1:])
            h = block(h)
            block.out_shape = tuple(h.shape[1:])
        if self.head is not None:
            out = self.head(h)
            if out.shape[-1] != self.num_classes:
                raise ValueError(f"head gives {out.shape[-1]} outputs, expected {self.num_classes}")
        self.train(was_training)

    def __len__(self) -> int:
        return len(self.blocks)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x) if self.head is not None else x

    def rows(self, x: Any) -> int:
        """Rows of every block's output for the input batch ``x`` (its first dimension)."""
        return int(x.shape[0])

    def bind(self, x: Any) -> None:
        """Record what blocks read besides their input, for a stage that starts mid-network.

        A plain network needs nothing; a graph network records the batch's edges.
        """

    def features(self, x: Tensor) -> list[Tensor]:
        """Output of every block, in order (a plain forward pass, graph kept)."""
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs

    def make_readout(self, k: int, num_outputs: int | None = None) -> nn.Module:
        """A fresh readout from block ``k``'s output to class scores, for local rules.

        Flatten + linear by default; network families with structured outputs
        (token sequences, graphs) pass their own ``readout_builder``.
        """
        n = num_outputs or self.num_classes
        block = self.blocks[k]
        if self.readout_builder is not None:
            return self.readout_builder(block, n)
        return nn.Sequential(nn.Flatten(), nn.Linear(block.out_features, n))

    @property
    def has_black_box(self) -> bool:
        return any(not b.differentiable for b in self.blocks)

    def describe(self) -> str:
        shapes = " -> ".join("x".join(map(str, b.out_shape)) for b in self.blocks)
        inputs = "x".join(map(str, self.input_shape))
        return f"{self.spec}: {inputs} -> {shapes} -> {self.num_classes}"
