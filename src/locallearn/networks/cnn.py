"""A small convolutional stack for 28x28 / 32x32x3 images and 1-D signals.

Each block is conv -> ReLU -> max-pool; the head flattens and classifies.
The dimension (1-D or 2-D) follows the input shape: (C, L) or (C, H, W).
"""

from __future__ import annotations

import math

from torch import nn

from locallearn.errors import UserError
from locallearn.networks import NETWORKS, parse_int_list
from locallearn.networks.network import Block, Network
from locallearn.options import Option, declare


@NETWORKS.register(
    "cnn", help="cnn[:C1,C2,...] conv blocks (default 32,64,128), 1-D or 2-D by input"
)
@declare(Option("kernel_size", int, "side of the convolution kernels", low=1))
def cnn(
    argument: str, input_shape: tuple[int, ...], num_classes: int, kernel_size: int = 3,
) -> Network:
    channels = parse_int_list(f"cnn:{argument}", argument, default=[32, 64, 128])
    if len(input_shape) == 3:
        conv, pool = nn.Conv2d, nn.MaxPool2d
    elif len(input_shape) == 2:
        conv, pool = nn.Conv1d, nn.MaxPool1d
    else:
        raise UserError(
            f"cnn needs image (C,H,W) or signal (C,L) inputs, got shape {input_shape}; "
            f"use an mlp for tabular data"
        )
    blocks = []
    in_ch, size = input_shape[0], min(input_shape[1:])
    for i, out_ch in enumerate(channels):
        layers: list[nn.Module] = [conv(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
                                   nn.ReLU()]
        if size >= 4:  # pool while there is room, so small inputs (8x8 digits) still work
            layers.append(pool(2))
            size //= 2
        blocks.append(Block(nn.Sequential(*layers), name=f"conv{i}"))
        in_ch = out_ch
    net = Network(blocks, None, input_shape, num_classes)
    head = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(net.blocks[-1].out_shape), num_classes))
    return Network(list(net.blocks), head, input_shape, num_classes)
