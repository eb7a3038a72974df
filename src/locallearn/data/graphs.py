"""Graph datasets for node classification and link prediction (kind ``"graph"``).

Every graph dataset is one whole graph. ``loader(split, ...)`` yields a single
full-graph batch ``(graph, y)``, where ``graph`` is a torch_geometric ``Data``:

* node task (``task="node"``): ``graph.x`` (nodes, features), ``graph.edge_index``
  (2, edges, both directions), ``graph.train_y`` (labels of training nodes,
  IGNORE_INDEX elsewhere: transductive rules such as ForwardGNN's virtual label
  nodes may use them, also at inference); ``y`` holds the labels of the split's
  nodes and IGNORE_INDEX for every other node.
* link task (``task="link"``): the undirected edges are split 64/16/20. Message
  passing uses the training edges (the test split also the validation edges, as
  torch_geometric's ``RandomLinkSplit`` does); ``graph.edge_label_index`` (2, pairs)
  holds the split's positive edges and as many sampled non-edges, and ``y`` is 1
  for an edge, 0 for a non-edge. Training non-edges are redrawn every epoch
  (from the loader's seed); validation and test ones are fixed.

Splits: test nodes (or edges) are a fixed 20 % for every seed, so test scores of
different seeds are comparable; train / validation (64 / 16 of the whole) are
drawn from the rest by the seed, the proportions ForwardGNN uses.

Evaluation (:meth:`GraphDataset.evaluate`, used by the Trainer): node task,
accuracy over the split's nodes; link task, ``accuracy`` (argmax of the two-class
scores), ``auc`` (ROC AUC of ``score[:, 1] - score[:, 0]``) and ``hits_at_K``
(fraction of positive pairs scored above the K-th best negative, as in OGB).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from locallearn.data import DATASETS
from locallearn.data.base import (
    IGNORE_INDEX,
    TEST_FRACTION,
    VAL_FRACTION,
    Task,
    TaskView,
    fixed_permutation,
)
from locallearn.errors import UserError
from locallearn.options import Option, declare

GRAPH_TASKS = ("node", "link")
HITS_AT = (10, 50)
GRAPH_TASK = Option("task", str, "predict node classes or held-out links", choices=GRAPH_TASKS)
GRAPH_VAL_FRACTION = replace(VAL_FRACTION, help="share of the nodes (or links) held out for "
                             "validation")


def check_graph(name: str, x: Tensor, edge_index: Tensor, y: Tensor | None) -> None:
    """Reject graphs that would fail later deep inside torch_geometric."""
    if x.dim() != 2 or x.shape[0] == 0:
        raise UserError(f"dataset {name}: the graph is empty (node features of shape "
                        f"{tuple(x.shape)}); it needs at least one node with features")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise UserError(f"dataset {name}: node features contain NaN or infinite values; "
                        f"clean or impute them first")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise UserError(f"dataset {name}: edge_index must have shape (2, edges), "
                        f"got {tuple(edge_index.shape)}")
    if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= x.shape[0]):
        bad = int(edge_index.max()) if edge_index.max() >= x.shape[0] else int(edge_index.min())
        raise UserError(f"dataset {name}: an edge points at node {bad}, but the graph has "
                        f"nodes 0..{x.shape[0] - 1}; fix the edge list or the feature matrix")
    if y is not None:
        if y.shape[0] != x.shape[0]:
            raise UserError(f"dataset {name}: {x.shape[0]} nodes but {y.shape[0]} labels")
        if y.unique().numel() < 2:
            raise UserError(f"dataset {name}: only one class in the node labels; need two")


def undirected_pairs(edge_index: Tensor) -> Tensor:
    """Unique undirected edges as (2, E) pairs with u < v; self-loops dropped."""
    u, v = edge_index
    keep = u != v
    lo, hi = torch.minimum(u[keep], v[keep]), torch.maximum(u[keep], v[keep])
    return torch.unique(torch.stack([lo, hi]), dim=1)


def both_directions(pairs: Tensor) -> Tensor:
    return torch.cat([pairs, pairs.flip(0)], dim=1)


def sample_non_edges(num_nodes: int, count: int, forbidden: Tensor,
                     generator: torch.Generator) -> Tensor:
    """``count`` node pairs (u != v) that are not edges in ``forbidden`` (either direction)."""
    if count == 0:
        return torch.empty(2, 0, dtype=torch.long)
    taken = set((forbidden[0] * num_nodes + forbidden[1]).tolist())
    taken |= set((forbidden[1] * num_nodes + forbidden[0]).tolist())
    capacity = num_nodes * (num_nodes - 1) - len(taken)
    if capacity < count:
        raise UserError(f"graph too dense to sample {count} non-edges for link prediction")
    out: list[int] = []
    while len(out) < count:
        cand = torch.randint(0, num_nodes * num_nodes, (2 * (count - len(out)) + 16,),
                             generator=generator)
        for c in cand.tolist():
            u, v = divmod(c, num_nodes)
            if u != v and c not in taken:
                taken.add(c)
                taken.add(v * num_nodes + u)
                out.append(c)
                if len(out) == count:
                    break
    codes = torch.tensor(out, dtype=torch.long)
    return torch.stack([codes // num_nodes, codes % num_nodes])


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    if not (0 <= val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(f"graph split fractions must leave training data: val_fraction "
                        f"{val_fraction}, test_fraction {test_fraction}")
    return int(round(val_fraction * n)), max(1, int(round(test_fraction * n)))


def three_way(n: int, seed: int, val_fraction: float, test_fraction: float
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Indices of train / val / test: test fixed for every seed, train/val by ``seed``."""
    n_val, n_test = split_sizes(n, val_fraction, test_fraction)
    order = fixed_permutation(n)
    test, rest = order[:n_test], order[n_test:]
    rest = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))]
    return rest[n_val:], rest[:n_val], test


@dataclass
class GraphDataset(TaskView):
    """One graph with node or link splits; see the module docstring for the batches."""

    name: str
    x: Tensor
    edge_index: Tensor
    node_y: Tensor
    task: Task
    graph_task: str
    seed: int
    val_fraction: float = 0.16
    test_fraction: float = 0.2
    info: dict = field(default_factory=dict)

    @property
    def selection_metric(self) -> str:
        """What picks the best epoch: link scores are ranked (AUC); accuracy at a fixed
        threshold stays near 0.5 while the ranking improves."""
        return "auc" if self.graph_task == "link" else "accuracy"

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        self.pairs = undirected_pairs(self.edge_index)
        if self.graph_task == "node":
            train, val, test = three_way(n, self.seed, self.val_fraction, self.test_fraction)
            self.node_index = {"train": train, "val": val, "test": test}
            self.train_y = self._labels_of(train)
            self._batch = copy.copy(self._base(self.edge_index))
            self._batch.train_y = self.train_y
        else:
            if self.pairs.shape[1] < 5:
                raise UserError(f"dataset {self.name}: link prediction needs at least 5 edges, "
                                f"the graph has {self.pairs.shape[1]}")
            train, val, test = three_way(self.pairs.shape[1], self.seed, self.val_fraction,
                                         self.test_fraction)
            self.edge_split = {s: self.pairs[:, i] for s, i in
                               (("train", train), ("val", val), ("test", test))}
            g = torch.Generator().manual_seed(10_007 * self.seed + 1)
            self.fixed_negatives = {
                s: sample_non_edges(n, self.edge_split[s].shape[1], self.pairs, g)
                for s in ("val", "test")
            }
            self.message_edges = {
                "train": both_directions(self.edge_split["train"]),
                "val": both_directions(self.edge_split["train"]),
                "test": both_directions(torch.cat([self.edge_split["train"],
                                                   self.edge_split["val"]], dim=1)),
            }
        self.info.update(num_nodes=n, num_edges=int(self.pairs.shape[1]),
                         graph_task=self.graph_task)

    # -- Dataset surface ------------------------------------------------------
    @property
    def network_options(self) -> dict[str, Any]:
        """Options the network builder needs for this data (the GNN head)."""
        return {"task": self.graph_task}

    def _labels_of(self, index: Tensor) -> Tensor:
        y = torch.full_like(self.node_y, IGNORE_INDEX)
        y[index] = self.node_y[index]
        return y

    def _base(self, edge_index: Tensor):
        from torch_geometric.data import Data

        return Data(x=self.x, edge_index=edge_index, num_nodes=self.x.shape[0])

    def batch(self, split: str, seed: int = 0) -> tuple[Any, Tensor]:
        """The full-graph batch of one split (a fresh shallow copy each call)."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}")
        if self.graph_task == "node":
            return copy.copy(self._batch), self._labels_of(self.node_index[split])
        pos = self.edge_split[split]
        if split == "train":
            g = torch.Generator().manual_seed(seed)
            neg = sample_non_edges(self.x.shape[0], pos.shape[1], self.pairs, g)
        else:
            neg = self.fixed_negatives[split]
        graph = self._base(self.message_edges[split])
        graph.edge_label_index = torch.cat([pos, neg], dim=1)
        y = torch.cat([torch.ones(pos.shape[1]), torch.zeros(neg.shape[1])]).long()
        return graph, y

    def loader(self, split: str, batch_size: int = 0, shuffle: bool = False,
               seed: int = 0) -> Iterator[tuple[Any, Tensor]]:
        """One full-graph batch; ``batch_size`` is ignored (the graph is never cut)."""
        yield self.batch(split, seed)

    @torch.no_grad()
    def evaluate(self, rule, split: str, device: torch.device, batch_size: int = 0
                 ) -> dict[str, Any]:
        from locallearn.training.trainer import evaluate, to_device

        if self.graph_task == "node":
            return evaluate(rule, self.loader(split), device)
        was_training = rule.training
        rule.eval()
        graph, y = self.batch(split)
        graph, y = to_device(graph, device), y.to(device)
        scores = rule.predict(graph)
        per_block = rule.block_scores(graph)
        rule.train(was_training)
        result = link_metrics(scores, y)
        result["per_block_accuracy"] = None if per_block is None else [
            float((s.argmax(-1) == y).float().mean()) for s in per_block]
        return result


def link_metrics(scores: Tensor, y: Tensor) -> dict[str, float]:
    """Accuracy, ROC AUC and Hits@K of two-class pair scores against 0/1 targets."""
    from sklearn.metrics import roc_auc_score

    s = (scores[:, 1] - scores[:, 0]).float().cpu()
    y = y.cpu()
    accuracy = float((scores.argmax(-1).cpu() == y).float().mean())
    s = torch.nan_to_num(s, nan=0.0)
    auc = float(roc_auc_score(y.numpy(), s.numpy())) if 0 < int(y.sum()) < len(y) else math.nan
    pos, neg = s[y == 1], s[y == 0]
    out = {"accuracy": accuracy, "auc": auc}
    for k in HITS_AT:
        if len(neg) >= k:
            kth = torch.topk(neg, k).values[-1]
            out[f"hits_at_{k}"] = float((pos > kth).float().mean())
    return out


def make_graph_dataset(name: str, x: Tensor, edge_index: Tensor, y: Tensor, seed: int,
                       task: str, val_fraction: float, test_fraction: float,
                       info: dict | None = None) -> GraphDataset:
    x = torch.as_tensor(x).float()
    edge_index = torch.as_tensor(edge_index).long()
    y = torch.as_tensor(y).long()
    check_graph(name, x, edge_index, y)
    if task not in GRAPH_TASKS:
        raise UserError(f"graph task must be one of {', '.join(GRAPH_TASKS)}, got {task!r}")
    # Message passing treats every edge both ways.
    edge_index = both_directions(undirected_pairs(edge_index))
    num_classes = 2 if task == "link" else int(y.max()) + 1
    t = Task(num_classes=num_classes, input_shape=(x.shape[1],), kind="graph")
    return GraphDataset(name, x, edge_index, y, t, task, seed, val_fraction, test_fraction,
                        info=dict(info or {}))


# -- generated graphs -----------------------------------------------------------
def csbm_graph(nodes: int, classes: int, avg_degree: float, homophily: float, snr: float,
               features: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Contextual stochastic block model.

    Labels are uniform over ``classes``. Each of ``nodes * avg_degree / 2`` edges
    starts at a uniform node and ends, with probability ``homophily``, at a uniform
    node of the same class, else at one of another class (so ``homophily`` is the
    expected edge-homophily ratio). Features are ``snr * mu_y + noise`` with class
    means ``mu_c ~ N(0, I / features)`` (norm about 1) and noise ``N(0, I / features)``.
    """
    if nodes < 2 * classes or classes < 2:
        raise UserError(f"csbm needs classes >= 2 and nodes >= 2 * classes, got nodes={nodes}, "
                        f"classes={classes}")
    if not 0.0 <= homophily <= 1.0:
        raise UserError(f"csbm homophily must be in [0, 1], got {homophily}")
    if avg_degree <= 0 or snr < 0 or features < 1:
        raise UserError("csbm needs avg_degree > 0, snr >= 0 and features >= 1")
    y = torch.randint(0, classes, (nodes,), generator=generator)
    y[:classes] = torch.arange(classes)  # every class present
    # Nodes sorted by class: class c occupies order[start[c] : start[c] + count[c]].
    order = torch.argsort(y, stable=True)
    count = torch.bincount(y, minlength=classes)
    start = torch.cumsum(count, 0) - count
    m = max(1, int(round(nodes * avg_degree / 2)))
    src = torch.randint(0, nodes, (m,), generator=generator)
    same = torch.rand(m, generator=generator) < homophily
    pick = torch.rand(m, generator=generator)
    n_c, s_c = count[y[src]], start[y[src]]
    inside = s_c + (pick * n_c).long().clamp_max(n_c - 1)
    j = (pick * (nodes - n_c)).long().clamp_max(nodes - n_c - 1)
    outside = torch.where(j >= s_c, j + n_c, j)  # skip class c's block
    dst = order[torch.where(same, inside, outside)]
    means = torch.randn(classes, features, generator=generator) / math.sqrt(features)
    noise = torch.randn(nodes, features, generator=generator) / math.sqrt(features)
    x = snr * means[y] + noise
    return x, torch.stack([src, dst]), y


@DATASETS.register("csbm", help="contextual stochastic block model (set nodes, classes, "
                   "avg_degree, homophily, snr, features, task)")
@declare(Option("nodes", int, "number of nodes", low=2),
         Option("classes", int, "number of blocks (classes)", low=2),
         Option("avg_degree", float, "mean number of neighbours", above=0),
         Option("homophily", float, "share of edges inside a block", low=0, high=1),
         Option("snr", float, "distance of the class means in feature space", low=0),
         Option("features", int, "node feature dimension", low=1),
         Option("graph_seed", int, "seed of the graph itself (runs' seeds vary split and init)",
                low=0),
         GRAPH_TASK, GRAPH_VAL_FRACTION, TEST_FRACTION)
def csbm(seed: int = 0, data_dir=None, nodes: int = 1000, classes: int = 4,
         avg_degree: float = 10.0, homophily: float = 0.8, snr: float = 1.0, features: int = 32,
         graph_seed: int = 0, task: str = "node", val_fraction: float = 0.16,
         test_fraction: float = 0.2) -> GraphDataset:
    # The graph depends on graph_seed only: training seeds vary the split and the init.
    x, edge_index, y = csbm_graph(int(nodes), int(classes), float(avg_degree), float(homophily),
                                  float(snr), int(features),
                                  torch.Generator().manual_seed(int(graph_seed)))
    info = {"nodes": nodes, "classes": classes, "avg_degree": avg_degree,
            "homophily": homophily, "snr": snr, "features": features, "graph_seed": graph_seed}
    return make_graph_dataset("csbm", x, edge_index, y, seed, task, val_fraction, test_fraction,
                              info)


@DATASETS.register("karate", help="Zachary's karate club (networkx): 34 nodes, 2 clubs")
@declare(GRAPH_TASK, GRAPH_VAL_FRACTION, TEST_FRACTION)
def karate(seed: int = 0, data_dir=None, task: str = "node", val_fraction: float = 0.16,
           test_fraction: float = 0.2) -> GraphDataset:
    import networkx as nx

    g = nx.karate_club_graph()
    n = g.number_of_nodes()
    edge_index = torch.tensor(list(g.edges()), dtype=torch.long).t()
    y = torch.tensor([0 if g.nodes[i]["club"] == "Mr. Hi" else 1 for i in range(n)])
    x = torch.eye(n)  # no node attributes: one-hot node identity, as is customary
    return make_graph_dataset("karate", x, edge_index, y, seed, task, val_fraction,
                              test_fraction)


# -- standard raw files ---------------------------------------------------------
def find_file(data_dir: Path | None, dataset: str, file_name: str, folders: list[str]) -> Path:
    if data_dir is None:
        raise UserError(f"dataset {dataset} reads {file_name} from --data-dir; nothing is "
                        f"downloaded, so pass --data-dir pointing at the raw files")
    for folder in folders:
        path = data_dir / folder / file_name
        if path.is_file():
            return path
    raise UserError(f"dataset {dataset}: {file_name} not found under {data_dir} "
                    f"(looked in {', '.join(str(data_dir / f) for f in folders)})")


def row_sum_normalise(x: Tensor) -> Tensor:
    """Each row divided by its sum (torch_geometric's NormalizeFeatures)."""
    return x / x.sum(1, keepdim=True).clamp_min(1e-12)


PLANETOID = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}
PLANETOID_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


@DATASETS.register("planetoid", help="planetoid:cora|citeseer|pubmed from the raw ind.* files "
                   "under --data-dir")
@declare(GRAPH_TASK, GRAPH_VAL_FRACTION, TEST_FRACTION)
def planetoid(seed: int = 0, data_dir=None, argument: str = "cora", task: str = "node",
              val_fraction: float = 0.16, test_fraction: float = 0.2) -> GraphDataset:
    key = argument.lower()
    if key not in PLANETOID:
        raise UserError(f"unknown planetoid dataset {argument!r}; use cora, citeseer or pubmed")
    name = f"planetoid:{key}"
    folders = [".", PLANETOID[key], f"{PLANETOID[key]}/raw", key, f"{key}/raw"]
    paths = {p: find_file(data_dir, name, f"ind.{key}.{p}", folders) for p in PLANETOID_PARTS}
    try:
        x, edge_index, y = read_planetoid(paths)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as exc:  # pickles of any shape: report in one line, don't trace
        raise UserError(f"dataset {name}: cannot read the raw files in "
                        f"{paths['x'].parent} ({type(exc).__name__}: {exc})") from None
    return make_graph_dataset(name, row_sum_normalise(x), edge_index, y, seed, task,
                              val_fraction, test_fraction)


def read_planetoid(paths: dict[str, Path]) -> tuple[Tensor, Tensor, Tensor]:
    """Planetoid's ind.* files: pickled ``allx``/``tx`` feature matrices and ``ally``/``ty``
    one-hot labels, the ``graph`` adjacency dict and the test node ids. Test ids missing
    from the file (CiteSeer's isolated nodes) get zero features and label 0."""
    import numpy as np

    from locallearn.data.safe_pickle import PLANETOID, safe_load

    def load(part: str) -> Any:
        # Through the allow-list: a crafted ind.* file (or a run folder naming a data_dir
        # inside itself) may describe arrays and matrices but never call anything else.
        with open(paths[part], "rb") as f:
            return safe_load(f, PLANETOID, encoding="latin1")  # written by Python 2

    def dense(m: Any) -> Tensor:
        if not (isinstance(m, np.ndarray) or hasattr(m, "todense")):
            raise UserError(f"planetoid file holds a {type(m).__name__}, expected a matrix")
        m = m.todense() if hasattr(m, "todense") else m
        return torch.as_tensor(np.asarray(m), dtype=torch.float32)

    allx, ally = dense(load("allx")), dense(load("ally"))
    tx, ty = dense(load("tx")), dense(load("ty"))
    test_index = torch.tensor([int(v) for v in paths["test.index"].read_text().split()])
    if len(test_index) != tx.shape[0] or allx.shape[0] != ally.shape[0]:
        raise UserError(f"planetoid files in {paths['x'].parent} disagree: {len(test_index)} "
                        f"test ids for {tx.shape[0]} test rows")
    n = max(allx.shape[0], int(test_index.max()) + 1)
    x = torch.zeros(n, allx.shape[1])
    labels = torch.zeros(n, ally.shape[1])
    x[: allx.shape[0]], labels[: allx.shape[0]] = allx, ally
    x[test_index], labels[test_index] = tx, ty  # row i of tx is node test_index[i]
    graph = load("graph")
    if not isinstance(graph, dict):
        raise UserError(f"{paths['graph']} holds a {type(graph).__name__}, expected the "
                        f"adjacency dict of Planetoid")
    pairs = [(int(u), int(v)) for u, vs in graph.items() for v in vs]
    edge_index = torch.tensor(pairs, dtype=torch.long).t() if pairs else \
        torch.empty(2, 0, dtype=torch.long)
    return x, edge_index, labels.argmax(1)


CITATION_FULL = {"cora_ml": "cora_ml", "cora-ml": "cora_ml", "citeseer": "citeseer",
                 "pubmed": "pubmed"}


def read_npz_graph(name: str, path: Path) -> tuple[Tensor, Tensor, Tensor]:
    """The gnn-benchmark ``.npz`` format (CitationFull, Amazon): CSR arrays
    ``adj_data/adj_indices/adj_indptr/adj_shape``, ``attr_*`` the same way (or a dense
    ``attr_matrix``), and ``labels``."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # a truncated or foreign file: one line, no trace
        raise UserError(f"dataset {name}: cannot read {path} as .npz ({exc})") from None
    missing = [k for k in ("adj_indices", "adj_indptr", "adj_shape", "labels") if k not in arrays]
    if missing or not ("attr_indptr" in arrays or "attr_matrix" in arrays):
        raise UserError(f"dataset {name}: {path} lacks {', '.join(missing) or 'attr_*'}; "
                        f"expected the gnn-benchmark .npz layout (adj_*, attr_*, labels)")

    def csr_rows(prefix: str) -> tuple[Tensor, Tensor]:
        indptr = torch.as_tensor(arrays[f"{prefix}_indptr"]).long()
        rows = torch.repeat_interleave(torch.arange(len(indptr) - 1), indptr.diff())
        return rows, torch.as_tensor(arrays[f"{prefix}_indices"]).long()

    n = int(arrays["adj_shape"][0])
    if "attr_matrix" in arrays:
        x = torch.as_tensor(arrays["attr_matrix"]).float()
    else:
        rows, cols = csr_rows("attr")
        shape = tuple(int(v) for v in arrays["attr_shape"])
        if cols.numel() and (cols.max() >= shape[1] or rows.max() >= shape[0]):
            raise UserError(f"dataset {name}: {path} has feature indices outside attr_shape")
        data = torch.as_tensor(arrays.get("attr_data", np.ones(len(cols)))).float()
        x = torch.zeros(shape)
        x[rows, cols] = data
    if x.shape[0] != n:
        raise UserError(f"dataset {name}: {path} has {n} nodes in adj_shape but "
                        f"{x.shape[0]} feature rows")
    src, dst = csr_rows("adj")
    return x, torch.stack([src, dst]), torch.as_tensor(arrays["labels"]).long()


@DATASETS.register("citationfull", help="citationfull:cora_ml|citeseer|pubmed from NAME.npz "
                   "under --data-dir")
@declare(GRAPH_TASK, GRAPH_VAL_FRACTION, TEST_FRACTION)
def citationfull(seed: int = 0, data_dir=None, argument: str = "cora_ml", task: str = "node",
                 val_fraction: float = 0.16, test_fraction: float = 0.2) -> GraphDataset:
    key = CITATION_FULL.get(argument.lower())
    if key is None:
        raise UserError(f"unknown citationfull dataset {argument!r}; use cora_ml, citeseer "
                        f"or pubmed")
    name = f"citationfull:{key}"
    path = find_file(data_dir, name, f"{key}.npz", [".", key, f"{key}/raw"])
    x, edge_index, y = read_npz_graph(name, path)
    return make_graph_dataset(name, row_sum_normalise(x), edge_index, y, seed, task, val_fraction,
                              test_fraction)


@DATASETS.register("amazon-photo", help="Amazon-Photo co-purchase graph from "
                   "amazon_electronics_photo.npz under --data-dir")
@declare(GRAPH_TASK, GRAPH_VAL_FRACTION, TEST_FRACTION)
def amazon_photo(seed: int = 0, data_dir=None, task: str = "node", val_fraction: float = 0.16,
                 test_fraction: float = 0.2) -> GraphDataset:
    name = "amazon-photo"
    path = find_file(data_dir, name, "amazon_electronics_photo.npz",
                     [".", "Photo", "Photo/raw", "photo", "photo/raw"])
    x, edge_index, y = read_npz_graph(name, path)
    return make_graph_dataset(name, row_sum_normalise(x), edge_index, y, seed, task, val_fraction,
                              test_fraction)
