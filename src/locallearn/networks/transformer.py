"""Transformer blocks (pre-norm attention + MLP) for images (``vit``) and text (``gpt``).

Block 0 carries the embedding (patches or tokens plus positions) together with
the first transformer layer, so that every trainable module belongs to exactly
one locally trained block. Readouts for local rules pool tokens (vit) or act
per position (gpt), see :meth:`Network.make_readout`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from locallearn.errors import UserError
from locallearn.networks import NETWORKS
from locallearn.networks.network import Block, Network
from locallearn.options import Option, declare


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool) -> None:
        super().__init__()
        if width % heads:
            raise UserError(f"transformer width {width} is not divisible by {heads} heads")
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(out.transpose(1, 2).reshape(b, n, w))


class TransformerLayer(nn.Module):
    """Pre-norm: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, width: int, heads: int, causal: bool = False, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, causal)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(),
                                 nn.Linear(mlp_ratio * width, width))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbedding(nn.Module):
    """Non-overlapping patches of an image (C,H,W) or signal (C,L) -> tokens + positions."""

    def __init__(self, input_shape: tuple[int, ...], width: int, patch: int) -> None:
        super().__init__()
        conv = nn.Conv2d if len(input_shape) == 3 else nn.Conv1d
        self.proj = conv(input_shape[0], width, patch, stride=patch)
        n_tokens = 1
        for size in input_shape[1:]:
            n_tokens *= size // patch
        self.pos = nn.Parameter(torch.randn(1, n_tokens, width) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2) + self.pos


class TokenEmbedding(nn.Module):
    """Token ids (B, L) -> vectors (B, L, W) with learned positions."""

    def __init__(self, vocab: int, width: int, max_len: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(1, max_len, width) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        return self.tokens(x) + self.pos[:, : x.shape[1]]


class PooledReadout(nn.Module):
    """LayerNorm, mean over tokens, linear: class scores from a token sequence."""

    def __init__(self, width: int, num_outputs: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, num_outputs)

    def forward(self, h: Tensor) -> Tensor:
        return self.linear(self.norm(h).mean(dim=1))


class TokenReadout(nn.Module):
    """LayerNorm and linear at every position: next-token scores (B, L, V)."""

    def __init__(self, width: int, num_outputs: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, num_outputs)

    def forward(self, h: Tensor) -> Tensor:
        return self.linear(self.norm(h))


def parse_depth_width(spec: str, argument: str, default: tuple[int, int]) -> tuple[int, int]:
    if not argument:
        return default
    try:
        depth, width = (int(v) for v in argument.lower().split("x"))
    except ValueError:
        raise UserError(f"malformed network spec {spec!r}: expected DEPTHxWIDTH, "
                        f"e.g. {spec.split(':')[0]}:4x128") from None
    if depth <= 0 or width <= 0:
        raise UserError(f"malformed network spec {spec!r}: depth and width must be positive")
    return depth, width


def _heads(width: int) -> int:
    return max(1, width // 32)


@NETWORKS.register("vit", help="vit[:DxW] patch embedding + D transformer blocks of width W")
@declare(Option("patch", int, "side of the square patches (None: a quarter of the input's "
                "smaller side)", low=1, nullable=True))
def vit(argument: str, input_shape: tuple[int, ...], num_classes: int,
        patch: int | None = None) -> Network:
    depth, width = parse_depth_width(f"vit:{argument}", argument, (4, 64))
    if len(input_shape) not in (2, 3):
        raise UserError(f"vit needs image (C,H,W) or signal (C,L) inputs, got {input_shape}")
    patch = patch or max(1, min(input_shape[1:]) // 4)
    layers = [TransformerLayer(width, _heads(width)) for _ in range(depth)]
    blocks = [Block(nn.Sequential(PatchEmbedding(input_shape, width, patch), layers[0]),
                    name="embed+tf0")]
    blocks += [Block(layer, name=f"tf{i}") for i, layer in enumerate(layers[1:], start=1)]
    return Network(blocks, PooledReadout(width, num_classes), input_shape, num_classes,
                   readout_builder=lambda block, n: PooledReadout(width, n))


@NETWORKS.register("gpt", help="gpt[:DxW] token embedding + D causal transformer blocks + LM head")
def gpt(argument: str, input_shape: tuple[int, ...], num_classes: int) -> Network:
    depth, width = parse_depth_width(f"gpt:{argument}", argument, (4, 128))
    if len(input_shape) != 1:
        raise UserError(f"gpt needs token sequences (text data such as stdlib-text), "
                        f"got inputs of shape {input_shape}")
    layers = [TransformerLayer(width, _heads(width), causal=True) for _ in range(depth)]
    blocks = [Block(nn.Sequential(TokenEmbedding(num_classes, width, input_shape[0]), layers[0]),
                    name="embed+tf0")]
    blocks += [Block(layer, name=f"tf{i}") for i, layer in enumerate(layers[1:], start=1)]
    return Network(blocks, TokenReadout(width, num_classes), input_shape, num_classes,
                   readout_builder=lambda block, n: TokenReadout(width, n),
                   input_dtype=torch.long)
