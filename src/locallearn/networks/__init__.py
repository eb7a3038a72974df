"""Networks: spec strings (``mlp:500,500``, ``cnn``) -> :class:`Network`.

``create_network("mlp:500,500", input_shape=(1, 28, 28), num_classes=10)``.
Builders register under the spec's family name; the part after ``:`` is
passed to the builder as ``argument``. Keyword options (``--set net.X=...``) are
declared with :func:`locallearn.options.declare` and checked by the one validator
of :mod:`locallearn.options` before the builder runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from locallearn.errors import UserError
from locallearn.networks.network import BlackBox, Block, Network
from locallearn.options import Option, builder_options, validate
from locallearn.registry import Registry, import_submodules

NETWORKS: Registry = Registry("network")
# A builder's parameters that come from the spec and the data, not from options.
BUILDER_ARGUMENTS = ("argument", "input_shape", "num_classes")


def network_options(family: str) -> tuple[Option, ...]:
    """The options a network family's builder declares, with their defaults."""
    return builder_options(NETWORKS.get(family), skip=BUILDER_ARGUMENTS)


def create_network(
    spec: str, input_shape: Sequence[int], num_classes: int, **options: Any
) -> Network:
    family, colon, argument = spec.partition(":")
    builder = NETWORKS.get(family)
    if colon and not argument.strip():
        raise UserError(f"network spec {spec!r} has nothing after ':'; give the sizes (e.g. "
                        f"'{family}:500,500') or write '{family}' for its default")
    options = validate("network", family, network_options(family), options)
    net = builder(argument, tuple(input_shape), num_classes, **options)
    net.spec = spec
    return net


def from_modules(
    blocks: Sequence[nn.Module], head: nn.Module | None, input_shape: Sequence[int],
    num_classes: int,
) -> Network:
    """Wrap any list of modules as blocks (Python API)."""
    return Network(blocks, head, input_shape, num_classes, spec="custom")


def parse_int_list(spec: str, argument: str, default: Sequence[int]) -> list[int]:
    """``"500,500"`` -> ``[500, 500]``, with a one-line error for anything else."""
    if not argument:
        return list(default)
    try:
        values = [int(v) for v in argument.split(",")]
    except ValueError:
        raise UserError(
            f"malformed network spec {spec!r}: expected comma-separated positive integers "
            f"like 'mlp:500,500'"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise UserError(f"malformed network spec {spec!r}: sizes must be positive integers")
    return values


import_submodules(__name__)

__all__ = ["NETWORKS", "BlackBox", "Block", "Network", "create_network", "from_modules",
           "network_options", "parse_int_list"]
