"""Multi-layer perceptron: each hidden layer (Linear + activation) is one block."""

from __future__ import annotations

import math

from torch import nn

from locallearn.errors import UserError
from locallearn.networks import NETWORKS, parse_int_list
from locallearn.networks.network import Block, Network

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
               "leaky_relu": nn.LeakyReLU}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


@NETWORKS.register("mlp", help="mlp:W1,W2,... hidden widths; input and output sizes from the data")
def mlp(
    argument: str, input_shape: tuple[int, ...], num_classes: int, activation_name: str = "relu",
    bias: bool = True,
) -> Network:
    widths = parse_int_list(f"mlp:{argument}", argument, default=[500, 500])
    in_features = math.prod(input_shape)
    blocks = []
    for i, width in enumerate(widths):
        layers: list[nn.Module] = [nn.Flatten()] if i == 0 else []
        layers += [nn.Linear(in_features, width, bias=bias), activation(activation_name)]
        blocks.append(Block(nn.Sequential(*layers), name=f"fc{i}"))
        in_features = width
    head = nn.Linear(in_features, num_classes)
    return Network(blocks, head, input_shape, num_classes)
