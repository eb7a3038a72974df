"""Multi-layer perceptron: each hidden layer (Linear + activation) is one block."""

from __future__ import annotations

import math

from torch import nn

from locallearn.errors import UserError
from locallearn.networks import NETWORKS, parse_int_list
from locallearn.networks.blackbox import numpy_block
from locallearn.networks.network import Block, Network
from locallearn.options import Option, declare

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
               "leaky_relu": nn.LeakyReLU}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


BLACK_BOX_TOKENS = ("bb", "blackbox")


@NETWORKS.register(
    "mlp", help="mlp:W1,W2,... hidden widths (a 'bb' entry inserts a NumPy black-box layer)"
)
@declare(
    Option("activation_name", str, "the hidden layers' activation", choices=tuple(ACTIVATIONS)),
    Option("bias", bool, "hidden layers have a bias"),
)
def mlp(
    argument: str, input_shape: tuple[int, ...], num_classes: int, activation_name: str = "relu",
    bias: bool = True,
) -> Network:
    tokens = argument.split(",") if argument else []
    black_boxes = {i for i, t in enumerate(tokens) if t.strip().lower() in BLACK_BOX_TOKENS}
    if 0 in black_boxes:
        raise UserError(f"mlp:{argument}: a black-box layer cannot come first; "
                        f"put a trainable layer before 'bb'")
    plain = ",".join(t for i, t in enumerate(tokens) if i not in black_boxes)
    widths = parse_int_list(f"mlp:{argument}", plain, default=[500, 500])
    for i in sorted(black_boxes):
        widths.insert(i, -1)
    in_features = math.prod(input_shape)
    blocks = []
    for i, width in enumerate(widths):
        if width == -1:
            blocks.append(numpy_block(in_features, seed=i))
            continue
        layers: list[nn.Module] = [nn.Flatten()] if i == 0 else []
        layers += [nn.Linear(in_features, width, bias=bias), activation(activation_name)]
        blocks.append(Block(nn.Sequential(*layers), name=f"fc{i}"))
        in_features = width
    head = nn.Linear(in_features, num_classes)
    return Network(blocks, head, input_shape, num_classes)
