"""One run description: which dataset, network and rule, by name, with their options.

:class:`RunSpec` is what ``locallearn train`` and ``ll.train`` (by name), a pipeline
stage, the stage launcher's check, a benchmark cell and a saved run's ``config.json``
(:mod:`locallearn.anytime.runs`) all build from, so the three are built one way::

    dataset, network, rule = RunSpec("mono-forward", "mnist5k", "mlp:500,500").build()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from locallearn.data import load_dataset
from locallearn.errors import UserError
from locallearn.networks import NETWORKS, create_network, network_options
from locallearn.networks.network import Network
from locallearn.rules import RULES, Rule, create_rule


def check_names(rule: Any, data: Any, net: Any, data_dir: Any = None, **options: Any) -> None:
    """The run's names and option mappings have the right types (from any source: flags,
    config files, ``--set``, a run folder's config.json)."""
    for key, value in (("rule", rule), ("data", data), ("net", net)):
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"setting {key!r} must be a name like "
                            f"{ {'rule': 'backprop', 'data': 'digits', 'net': 'mlp:64'}[key]!r}, "
                            f"got {value!r}")
    if data_dir is not None and not isinstance(data_dir, str | Path):
        raise UserError(f"setting 'data_dir' must be a path, got {data_dir!r}")
    for key, value in options.items():
        if value is not None and not isinstance(value, dict):
            raise UserError(f"setting {key!r} must be a mapping of options, got {value!r}")


def memory_available() -> int | None:
    """Bytes of memory the kernel says are available (Linux), else None."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_network_size(net: str, input_shape, num_classes: int, net_options: dict) -> None:
    """Refuse a network too large for memory in one line, before allocating it: the spec
    is built on the meta device (shapes only, no storage) and its parameters counted.
    Training holds about four copies (weights, gradients, two Adam moments)."""
    try:
        with torch.device("meta"):
            probe = create_network(net, input_shape, num_classes, **net_options)
        n_bytes = sum(p.numel() * p.element_size() for p in probe.parameters())
        n_params = sum(p.numel() for p in probe.parameters())
    except UserError:
        raise
    except Exception:  # a layer that cannot be built on meta: no estimate, build for real
        return
    available = memory_available()
    if available is not None and 4 * n_bytes > available:
        raise UserError(f"network {net!r} has {n_params:,} parameters ({n_bytes / 2**30:.1f} "
                        f"GiB; training needs about {4 * n_bytes / 2**30:.1f} GiB) but "
                        f"{available / 2**30:.1f} GiB of memory is available; use a smaller "
                        f"--net")


def suggested_options(data: str, net: str, dataset: Any) -> dict[str, Any]:
    """The network options a dataset sets (``network_options``), with one line when the
    network family has no such option (graph data on an mlp)."""
    suggested = dict(getattr(dataset, "network_options", {}))
    family = net.partition(":")[0]
    known = {o.name for o in network_options(family)}
    for key in suggested:
        if key not in known:
            fit = [n for n in NETWORKS.names() if key in {o.name for o in network_options(n)}]
            raise UserError(f"data {data!r} needs a network with option {key!r} "
                            f"({', '.join(fit) or 'none registered'}); {net!r} has none")
    return suggested


# The keys of a run's description in config.json (beside "train", the TrainConfig).
SPEC_KEYS = ("rule", "data", "net", "data_dir", "rule_options", "data_options", "net_options")


@dataclass
class RunSpec:
    """Dataset, network and rule by name with their options, and the seed that builds them."""

    rule: str
    data: str
    net: str
    seed: int = 0
    data_dir: str | None = None
    rule_options: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)
    net_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_names(self.rule, self.data, self.net, self.data_dir,
                    rule_options=self.rule_options, data_options=self.data_options,
                    net_options=self.net_options)
        self.data_dir = str(self.data_dir) if self.data_dir else None
        self.rule_options = dict(self.rule_options or {})
        self.data_options = dict(self.data_options or {})
        self.net_options = dict(self.net_options or {})

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], seed: int | None = None) -> RunSpec:
        """From a dict holding the :data:`SPEC_KEYS` (CLI settings, config.json's run
        description); ``seed`` defaults to ``settings["seed"]`` (or 0)."""
        if seed is None:
            seed = settings.get("seed") or 0
        return cls(**{k: settings.get(k) for k in SPEC_KEYS}, seed=int(seed))

    def info(self) -> dict[str, Any]:
        """The description recorded in config.json and summary.json (without the seed,
        which the training settings hold)."""
        return {"rule": self.rule, "data": self.data, "net": self.net,
                "rule_options": self.rule_options, "data_options": self.data_options,
                "net_options": self.net_options, "data_dir": self.data_dir}

    def load_data(self) -> Any:
        return load_dataset(self.data, seed=self.seed, data_dir=self.data_dir,
                            **self.data_options)

    def build(self, dataset: Any = None, seed_offset: int = 0,
              adapt_network: Callable[[Network], None] | None = None
              ) -> tuple[Any, Network, Rule]:
        """Dataset, network and rule, seeded so the same seed gives the same start.

        ``dataset``: reuse one already loaded; ``adapt_network``: change the network
        before the rule is built on it (e.g. a grown run's extra blocks).
        """
        RULES.get(self.rule)  # fail on an unknown rule before any work
        if dataset is None:
            dataset = self.load_data()
        torch.manual_seed(self.seed + seed_offset)
        # A dataset may set network options (graph data: the GNN head for node or link).
        net_options = {**suggested_options(self.data, self.net, dataset), **self.net_options}
        check_network_size(self.net, dataset.task.input_shape, dataset.task.num_classes,
                           net_options)
        network = create_network(self.net, dataset.task.input_shape, dataset.task.num_classes,
                                 **net_options)
        if adapt_network is not None:
            adapt_network(network)
        rule = create_rule(self.rule, network, dataset.task, **self.rule_options)
        return dataset, network, rule
