"""Graph data, GNN networks and the ForwardGNN rules (node classification, link prediction)."""

import json
import pickle
from collections import defaultdict

import numpy as np
import pytest
import torch

from locallearn import create_network, create_rule, train
from locallearn.cli.main import main
from locallearn.data import IGNORE_INDEX, load_dataset
from locallearn.errors import UserError
from locallearn.testing import assert_local

GRAPH_RULES = ["sf", "sf-top-input", "sf-top-loss", "ff-label", "ff-vn"]
LINK_RULES = ["sf", "sf-top-input", "sf-top-loss", "ff-link"]
GENERIC_RULES = ["backprop", "mono-forward", "dfa", "local"]  # rules for any network, on GNN blocks


@pytest.fixture(autouse=True)
def one_thread():
    # Message passing scatters: on a shared 2-core machine two OpenMP threads can be
    # ten times slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small(task="node", **options):
    return load_dataset("csbm", seed=0, task=task, nodes=120, classes=3, avg_degree=6,
                        features=8, **options)


def built(rule, data, spec="gcn:16,16,16"):
    net = create_network(spec, data.input_shape, data.num_classes, task=data.graph_task)
    return create_rule(rule, net, data.task)


# -- data ----------------------------------------------------------------------
def test_csbm_homophily_and_node_split():
    for h in (0.9, 0.3):
        d = load_dataset("csbm", homophily=h, nodes=600)
        u, v = d.edge_index
        assert abs(float((d.node_y[u] == d.node_y[v]).float().mean()) - h) < 0.05
    d = load_dataset("csbm", nodes=500)
    sizes = {s: int((next(d.loader(s))[1] != IGNORE_INDEX).sum()) for s in ("train", "val", "test")}
    assert sizes == {"train": 320, "val": 80, "test": 100}
    graph, y = next(d.loader("val"))
    assert graph.x.shape == (500, 32) and graph.edge_index.shape[0] == 2
    # training labels travel with every split's graph, never the split's own labels
    assert ((graph.train_y != IGNORE_INDEX) & (y != IGNORE_INDEX)).sum() == 0
    other = load_dataset("csbm", nodes=500, seed=1)
    assert torch.equal(next(other.loader("test"))[1], next(d.loader("test"))[1])


def test_link_split_holds_out_edges():
    d = small("link")
    train_g, train_y = next(d.loader("train", seed=0))
    test_g, test_y = next(d.loader("test"))
    assert d.num_classes == 2 and set(train_y.tolist()) == {0, 1}
    assert float(test_y.float().mean()) == 0.5
    code = lambda ei: set((ei[0] * 1000 + ei[1]).tolist())  # noqa: E731
    held_out = test_g.edge_label_index[:, test_y == 1]
    assert not code(held_out) & code(train_g.edge_index)  # test edges never pass messages
    negatives = test_g.edge_label_index[:, test_y == 0]
    assert not code(negatives) & code(d.edge_index)       # sampled non-edges are non-edges
    again = next(d.loader("train", seed=1))[0]
    assert not torch.equal(again.edge_label_index, train_g.edge_label_index)  # redrawn


def write_planetoid(folder, prefix="cora"):
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n_all, n_test, f, c = 12, 4, 5, 3
    feats = lambda n: sp.csr_matrix(rng.random((n, f)).astype(np.float32))  # noqa: E731
    onehot = lambda n: np.eye(c)[rng.integers(0, c, n)]  # noqa: E731
    parts = {"x": feats(6), "y": onehot(6), "allx": feats(n_all), "ally": onehot(n_all),
             "tx": feats(n_test), "ty": onehot(n_test)}
    graph = defaultdict(list)
    for i in range(n_all + n_test):
        graph[i].append((i + 1) % (n_all + n_test))
    parts["graph"] = graph
    for name, obj in parts.items():
        with open(folder / f"ind.{prefix}.{name}", "wb") as fh:
            pickle.dump(obj, fh)
    (folder / f"ind.{prefix}.test.index").write_text(
        "\n".join(str(i) for i in range(n_all, n_all + n_test)))
    return n_all + n_test


def write_npz(path, n=10, f=4, edges=None, nan=False):
    rng = np.random.default_rng(0)
    edges = edges if edges is not None else [(i, (i + 1) % n) for i in range(n)]
    rows = [[] for _ in range(n)]
    for u, v in edges:
        rows[u].append(v)
    indptr = np.cumsum([0] + [len(r) for r in rows])
    attr = rng.random((n, f)).astype(np.float32)
    if nan:
        attr[1, 2] = np.nan
    np.savez(path, adj_data=np.ones(len(edges), np.float32),
             adj_indices=np.array([v for r in rows for v in r], dtype=np.int64),
             adj_indptr=indptr, adj_shape=np.array([n, n]),
             attr_data=attr.reshape(-1), attr_indices=np.tile(np.arange(f), n),
             attr_indptr=np.arange(0, n * f + 1, f), attr_shape=np.array([n, f]),
             labels=np.arange(n) % 3)


def test_planetoid_citationfull_amazon_and_karate_loaders(tmp_path):
    raw = tmp_path / "Cora" / "raw"
    raw.mkdir(parents=True)
    n = write_planetoid(raw)
    d = load_dataset("planetoid:cora", data_dir=tmp_path)
    assert d.x.shape == (n, 5) and d.num_classes == 3 and d.edge_index.shape[1] == 2 * n
    assert torch.allclose(d.x.sum(1), torch.ones(n))  # row-normalised features
    write_npz(tmp_path / "cora_ml.npz")
    d = load_dataset("citationfull:cora_ml", data_dir=tmp_path)
    assert d.x.shape == (10, 4) and d.edge_index.shape[1] == 20
    (tmp_path / "Photo").mkdir()
    write_npz(tmp_path / "Photo" / "amazon_electronics_photo.npz", n=9)
    assert load_dataset("amazon-photo", data_dir=tmp_path).x.shape == (9, 4)
    d = load_dataset("karate")
    assert d.x.shape == (34, 34) and d.num_classes == 2
    with pytest.raises(UserError, match="--data-dir"):
        load_dataset("planetoid:citeseer")


@pytest.mark.parametrize("case,message", [
    ({"edges": [(0, 1), (1, 42)]}, "points at node 42"),
    ({"n": 0, "edges": []}, "empty"),
    ({"nan": True}, "NaN"),
])
def test_bad_graphs_exit_2_with_one_line(capsys, tmp_path, case, message):
    write_npz(tmp_path / "cora_ml.npz", **case)
    code = main(["train", "--rule", "sf", "--data", "citationfull:cora_ml", "--net", "gcn:8",
                 "--data-dir", str(tmp_path), "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_graph_rule_refuses_non_graph_network(digits):
    net = create_network("mlp:16", digits.input_shape, digits.num_classes)
    with pytest.raises(UserError, match="graph"):
        create_rule("sf", net, digits.task)


# -- locality ----------------------------------------------------------------------
@pytest.mark.parametrize("rule_name,task", [(r, "node") for r in GRAPH_RULES]
                         + [(r, "link") for r in LINK_RULES]
                         + [(r, t) for r in GENERIC_RULES for t in ("node", "link")])
def test_graph_rules_are_local(rule_name, task):
    d = small(task)
    rule = built(rule_name, d)
    graph, y = next(d.loader("train"))
    # One group per GNN layer; dfa and local add the node head (the link head has no
    # weights); mono-forward's last layer owns the head.
    expected = 1 if rule_name == "backprop" else \
        4 if rule_name in ("dfa", "local") and task == "node" else 3
    assert len(rule.param_groups()) == expected
    assert_local(rule, graph, y)


def test_dfa_link_error_is_taken_at_the_embeddings():
    # Link heads have no weights: the last layer gets dL/dz itself, earlier layers
    # get it through their fixed random matrix, never through another layer.
    d = small("link")
    rule = built("dfa", d)
    graph, y = next(d.loader("train"))
    outs = rule.network.features(graph)
    z = outs[-1].detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(rule.network.head(z), y)
    (dz,) = torch.autograd.grad(loss, z)
    e = rule.embedding_error(outs[-1], y)
    assert torch.allclose(e, dz * len(y), atol=1e-6)
    assert torch.equal(rule.delta(2, e, outs[2]), e)
    assert torch.allclose(rule.delta(0, e, outs[0]), e @ rule.feedback(0))


def test_node_only_rules_refuse_links():
    with pytest.raises(UserError, match="ff-link"):
        built("ff-label", small("link"))
    with pytest.raises(UserError, match="node"):
        built("ff-link", small("node"))


def test_ff_label_prediction_tries_every_class():
    d = small()
    rule = built("ff-label", d)
    graph, _ = next(d.loader("test"))
    scores = rule.predict(graph)
    assert scores.shape == (d.x.shape[0], d.num_classes)
    # Each class's column is its own forward pass: the columns differ.
    assert not torch.allclose(scores[:, 0], scores[:, 1])


@pytest.mark.parametrize("rule_name", ["sf-top-input", "sf-top-loss"])
def test_top_down_states_are_detached_and_used(rule_name):
    d = small()
    rule = built(rule_name, d)
    graph, y = next(d.loader("train"))
    rule.losses(graph, y)  # first step: states from a bottom-up pass
    assert all(not s.requires_grad for s in rule._states)
    # The top-down signal matters: changing the state of the layer above changes layer 0's loss.
    before = rule.losses(graph, y)[0].item()
    rule._states = [s.clone() for s in rule._states]
    rule._states[2].mul_(-3.0).add_(1.0)
    assert rule.losses(graph, y)[0].item() != pytest.approx(before)


# -- learning ------------------------------------------------------------------------
@pytest.mark.parametrize("rule_name", GRAPH_RULES)
def test_graph_rules_learn_node_classification(rule_name, tmp_path):
    s = train(rule=rule_name, data="csbm", net="gcn:32,32", epochs=30, lr=0.01, quiet=True,
              data_options={"nodes": 300, "homophily": 0.8, "snr": 0.7},
              out=str(tmp_path / "run")).summary
    assert s["task"] == "node"
    assert s["test_accuracy"] > 0.7  # 4 classes: chance is 0.25
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["task"] == "node" and "test_auc" not in saved


@pytest.mark.parametrize("rule_name", ["mono-forward", "dfa", "local"])
def test_generic_rules_learn_node_classification_on_gnn_blocks(rule_name):
    s = train(rule=rule_name, data="csbm", net="gcn:32,32", epochs=30, lr=0.01, quiet=True,
              data_options={"nodes": 300, "homophily": 0.8, "snr": 0.7}).summary
    assert s["task"] == "node"
    assert s["test_accuracy"] > 0.7  # 4 classes: chance is 0.25


@pytest.mark.parametrize("rule_name", ["sf", "ff-link", "backprop", "mono-forward", "dfa",
                                       "local"])
def test_link_prediction_learns_and_reports_auc(rule_name):
    s = train(rule=rule_name, data="csbm", net="gcn:32,32", epochs=30, lr=0.01, quiet=True,
              data_options={"nodes": 300, "task": "link", "homophily": 0.9}).summary
    assert s["task"] == "link"
    assert s["test_auc"] > 0.7  # chance is 0.5
    assert 0 <= s["test_hits_at_10"] <= 1


def test_cli_task_flag(capsys, tmp_path):
    out = tmp_path / "run"
    code = main(["train", "--rule", "sf", "--data", "csbm", "--task", "link", "--net", "sage:16",
                 "--set", "data.nodes=100", "--epochs", "2", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert "AUC" in capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    assert s["task"] == "link" and 0 <= s["test_auc"] <= 1


def test_top_down_states_hold_no_graph_under_the_memory_meter():
    # Saved-tensor hooks (the Trainer's memory meter) kept every step's unused state graph
    # alive in sf-top-loss: the measured peak grew by one step's activations per step.
    from locallearn.measure import SavedTensorMeter

    d = small()
    rule = built("sf-top-loss", d)
    graph, y = next(d.loader("train"))
    meter = SavedTensorMeter()
    peaks = []
    for _ in range(6):
        with meter.track(rule):
            sum(rule.losses(graph, y)).backward()
        peaks.append(meter.peak)
    assert peaks[-1] == peaks[1]
