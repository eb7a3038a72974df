"""Forward-Forward family: locality on a real batch, learning on digits, per-layer scores."""

import pytest
import torch

from locallearn import create_network, create_rule, train
from locallearn.errors import UserError
from locallearn.rules._norm import rms_normalise
from locallearn.rules.ff_common import NORM_EPS, LabelEmbedding, goodness, wrong_labels
from locallearn.testing import assert_local, gradient_reach


def test_label_embedding_images_overwrite_first_pixels_vectors_append(digits):
    net = create_network("mlp:16", digits.input_shape, digits.num_classes)
    embed = LabelEmbedding(net, digits.task, scale=5.0)
    x = digits.train.x[:4]
    out = embed(x, torch.tensor([0, 3, 9, 3]))
    assert out.shape == x.shape
    flat = out.flatten(1)
    assert flat[1, 3] == 5.0 and flat[1, :10].sum() == 5.0
    assert torch.equal(flat[:, 10:], x.flatten(1)[:, 10:])
    neutral = embed(x, None).flatten(1)
    assert torch.allclose(neutral[:, :10], torch.full((4, 10), 0.5))

    from locallearn.data.base import Task
    task = Task(num_classes=3, input_shape=(5,), kind="vector")
    vnet = create_network("mlp:8", (5,), 3)
    vembed = LabelEmbedding(vnet, task, scale=1.0)
    v = vembed(torch.zeros(2, 5), torch.tensor([2, 0]))
    assert v.shape == (2, 8) and v[0, 7] == 1.0 and v[1, 5] == 1.0
    assert vnet(v).shape == (2, 3)  # the first layer was widened to take the label


@pytest.mark.parametrize("net", ["mlp:8", "cnn:4"])
def test_label_is_appended_to_signals_not_written_over_them(net):
    """A signal's leading entries carry data: the label goes beside them (positions for
    an mlp, channels for a cnn), and every input entry reaches block 0 unchanged."""
    from locallearn.data.base import Task

    task = Task(num_classes=3, input_shape=(1, 12), kind="signal")
    torch.manual_seed(0)
    network = create_network(net, task.input_shape, 3)
    rule = create_rule("ff", network, task)
    x = torch.randn(4, 1, 12)
    out = rule.embed(x, torch.tensor([0, 2, 1, 2]))
    if net.startswith("mlp"):
        assert rule.embed.mode == "append" and out.shape == (4, 15)
        assert torch.equal(out[:, :12], x.flatten(1)) and out[1, 14] == rule.embed.scale
    else:
        assert rule.embed.mode == "channel" and out.shape == (4, 4, 12)
        assert torch.equal(out[:, :1], x) and (out[1, 3] == rule.embed.scale).all()
        assert (out[1, 1:3] == 0).all()
        # Spread over 12 positions, the label has the energy of one entry of label_scale
        # (at full scale per position it swamped mnist1d's signal: docs/results/ff.md).
        assert torch.allclose(out[1, 3].square().sum(), torch.tensor(5.0 ** 2))
    rule.losses(x, torch.tensor([0, 2, 1, 2]))  # block 0 takes the widened input
    assert rule.predict(x).shape == (4, 3)
    fast = rule.label_goodness(x)
    rule._first_layer_for_labels = lambda x: None
    for a, b in zip(fast, rule.label_goodness(x), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_goodness_normalise_and_negatives():
    h = torch.tensor([[1.0, -1.0, 2.0, 0.0]])
    assert goodness(h, "mean").item() == pytest.approx(1.5)
    assert goodness(h, "sum").item() == pytest.approx(6.0)
    assert rms_normalise(3 * h, NORM_EPS).square().mean().item() == pytest.approx(1.0, rel=1e-5)
    y = torch.randint(0, 10, (500,))
    assert (wrong_labels(y, 10) != y).all()
    scores = torch.zeros(500, 10)
    scores[:, 4] = 1.0
    hard = wrong_labels(y, 10, scores)
    assert (hard[y != 4] == 4).all() and (hard[y == 4] != 4).all()


def test_ff_rejects_bad_options(digits):
    net = create_network("mlp:16", digits.input_shape, digits.num_classes)
    with pytest.raises(UserError, match="negatives"):
        create_rule("ff", net, digits.task, negatives="worst")


@pytest.mark.parametrize("negatives", ["random", "hardest", "readout"])
def test_ff_is_local(digits, negatives):
    net = create_network("mlp:32,32,32", digits.input_shape, digits.num_classes)
    rule = create_rule("ff", net, digits.task, negatives=negatives)
    assert [g.name for g in rule.param_groups()] == ["block0", "block1", "block2", "head"]
    assert_local(rule, digits.train.x[:64], digits.train.y[:64])


def test_ff_learns_digits_with_goodness_and_readout():
    s = train(rule="ff", data="digits", net="mlp:64,64", epochs=10, quiet=True,
              checkpoint=False).summary
    assert s["test_accuracy"] > 0.85  # readout (default)
    per_layer = s["per_layer_test_accuracy"]
    assert len(per_layer) == 2 and min(per_layer) > 0.3  # goodness over labels, per layer
    g = train(rule="ff", data="digits", net="mlp:64,64", epochs=10, quiet=True,
              checkpoint=False, rule_options={"predict": "goodness"}).summary
    assert g["test_accuracy"] > 0.8


# -- cff, symba, sff, cafo ---------------------------------------------------------

LOCAL_CASES = [
    ("cff", "mlp:32,32,32", {}),
    ("cff", "mlp:32,32,32", {"gamma": 0.5, "negatives": "random"}),
    ("symba", "mlp:32,32,32", {}),
    ("sff", "cnn:8,8,8", {}),
    ("sff", "cnn:8,8,8", {"goodness": "position"}),
    ("sff", "cnn:8,8,8", {"blocks_per_unit": 2}),
    ("sff", "mlp:32,32", {}),
    ("cafo", "mlp:32,32,32", {}),
    ("cafo", "mlp:32,32,32", {"blocks": "local", "loss": "mse"}),
    ("cafo", "cnn:8,8", {"blocks": "random"}),
]


@pytest.mark.parametrize("rule_name,net,options", LOCAL_CASES)
def test_family_is_local(digits, rule_name, net, options):
    network = create_network(net, digits.input_shape, digits.num_classes)
    rule = create_rule(rule_name, network, digits.task, **options)
    # Each block's loss (with its own readout / predictor / class map) reaches that block only.
    assert_local(rule, digits.train.x[:64], digits.train.y[:64])


def test_cff_couples_layers_so_it_does_not_stream(digits):
    from locallearn.parallel.stages import check_stageable

    torch.manual_seed(0)
    net = create_network("mlp:32,32", digits.input_shape, digits.num_classes)
    cff = create_rule("cff", net, digits.task, negatives="random")
    assert not cff.streams_losses
    check_stageable(cff, staleness=2)  # stages exchange the summed goodness
    with pytest.raises(UserError, match="negatives=random"):
        check_stageable(create_rule("cff", create_network("mlp:8", digits.input_shape, 10),
                                    digits.task))
    # ff and symba stream (each layer's graph freed before the next); staged only with
    # random negatives and goodness prediction (hard negatives and the readout need
    # every layer), and then with nothing sent backward.
    symba = create_rule("symba", create_network("mlp:8", digits.input_shape, 10), digits.task)
    assert symba.streams_losses
    with pytest.raises(UserError, match="cannot be split into stages"):
        check_stageable(symba)
    ff = create_rule("ff", create_network("mlp:8", digits.input_shape, 10), digits.task,
                     negatives="random", predict="goodness")
    check_stageable(ff)
    with pytest.raises(UserError, match="sends nothing backward"):
        check_stageable(ff, staleness=1)
    # Nothing uses the readout then: it is not built and the head stays fixed.
    assert not ff.projections and not any(p.requires_grad for p in ff.network.head.parameters())
    # Layer 0's loss depends on layer 1's goodness (detached): scaling layer 1's weights
    # changes loss 0 but gives layer 1 no gradient from it.
    x, y = digits.train.x[:64], digits.train.y[:64]
    torch.manual_seed(1)
    before = cff.losses(x, y)[0].item()
    with torch.no_grad():
        net.blocks[1].body[0].weight.mul_(3.0)
    torch.manual_seed(1)
    loss0 = cff.losses(x, y)[0]
    assert abs(loss0.item() - before) > 1e-4
    loss0.backward()
    assert net.blocks[1].body[0].weight.grad is None
    assert net.blocks[0].body[1].weight.grad.abs().sum() > 0  # body: Flatten, Linear, ReLU
    with pytest.raises(UserError, match="gamma"):
        create_rule("cff", net, digits.task, gamma=-1.0)


def test_symba_loss_depends_on_the_gap_only(digits):
    net = create_network("mlp:16", digits.input_shape, digits.num_classes)
    rule = create_rule("symba", net, digits.task, alpha=4.0)
    g_pos, g_neg = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 1.0])
    expected = torch.nn.functional.softplus(-4.0 * (g_pos - g_neg)).mean()
    assert torch.allclose(rule.pair_loss(g_pos, g_neg), expected)
    assert torch.allclose(rule.pair_loss(g_pos + 7.0, g_neg + 7.0), expected)  # no threshold
    with pytest.raises(UserError, match="alpha"):
        create_rule("symba", net, digits.task, alpha=0.0)


def test_sff_hybrid_backprops_inside_a_unit_only(digits):
    net = create_network("cnn:8,8,8", digits.input_shape, digits.num_classes)
    rule = create_rule("sff", net, digits.task, blocks_per_unit=2)
    assert [g.name for g in rule.param_groups()] == ["blocks0-1", "block2", "head"]
    assert rule.streams_losses and not rule.stageable
    reach = gradient_reach(rule, digits.train.x[:32], digits.train.y[:32])
    assert reach[0] == [True, False, False]
    # The unit's loss reaches both of its blocks (backprop inside the unit).
    rule.zero_grad(set_to_none=True)
    next(iter(rule.iter_losses(digits.train.x[:32], digits.train.y[:32]))).backward()
    assert all(b.body[0].weight.grad.abs().sum() > 0 for b in net.blocks[:2])
    assert net.blocks[2].body[0].weight.grad is None
    with pytest.raises(UserError, match="blocks_per_unit"):
        create_rule("sff", net, digits.task, blocks_per_unit=4)
    with pytest.raises(UserError, match="goodness"):
        create_rule("sff", net, digits.task, goodness="pixel")


@pytest.mark.parametrize("rule_name,net,epochs,options,least", [
    ("cff", "mlp:64,64", 8, {}, 0.85),
    ("cff", "mlp:64,64", 8, {"predict": "readout"}, 0.8),
    ("symba", "mlp:64,64", 8, {}, 0.85),
    ("sff", "cnn:16,32", 6, {}, 0.85),
    ("sff", "cnn:16,32", 6, {"blocks_per_unit": 2, "goodness": "position"}, 0.8),
    ("cafo", "mlp:64,64", 8, {}, 0.85),
    ("cafo", "mlp:64,64", 8, {"blocks": "random"}, 0.6),
])
def test_family_learns_digits(rule_name, net, epochs, options, least):
    s = train(rule=rule_name, data="digits", net=net, epochs=epochs, quiet=True,
              checkpoint=False, measure_memory=False, rule_options=options).summary
    assert s["test_accuracy"] > least  # chance is 0.1
    per_layer = s["per_layer_test_accuracy"]
    assert len(per_layer) == len(net.split(":")[1].split(","))  # one per block
    assert all(0.0 <= a <= 1.0 for a in per_layer)


def test_all_labels_first_layer_shortcut_matches_one_pass_per_label(digits):
    from locallearn.data.base import Task

    cases = [(create_network("mlp:32,16", digits.input_shape, 10), digits.task,
              digits.test.x[:50])]
    task = Task(num_classes=3, input_shape=(5,), kind="vector")
    cases.append((create_network("mlp:8,8", (5,), 3), task, torch.randn(7, 5)))
    for net, t, x in cases:
        rule = create_rule("ff", net, t)
        with torch.no_grad():
            fast = rule.label_goodness(x)
            rule._first_layer_for_labels = lambda x: None  # force one pass per label
            slow = rule.label_goodness(x)
        for a, b in zip(fast, slow, strict=True):
            assert torch.allclose(a, b, atol=1e-5)


def test_option_of_the_wrong_type_is_a_user_error(digits):
    net = create_network("cnn:8,8", digits.input_shape, digits.num_classes)
    with pytest.raises(UserError, match="blocks_per_unit must be an int"):
        create_rule("sff", net, digits.task, blocks_per_unit="abc")
    with pytest.raises(UserError, match="alpha must be a float"):
        create_rule("symba", create_network("mlp:8", digits.input_shape, 10), digits.task,
                    alpha="abc")
    assert create_rule("symba", create_network("mlp:8", digits.input_shape, 10), digits.task,
                       alpha=4).alpha == 4.0


def test_streamed_ff_losses_equal_the_summed_ones(digits):
    """ff hands its layer losses over one at a time; same values and gradients as a list."""
    torch.manual_seed(0)
    rule = create_rule("ff", create_network("mlp:32,32", digits.input_shape, 10), digits.task)
    x, y = digits.train.x[:64], digits.train.y[:64]
    torch.manual_seed(5)
    streamed = []
    for loss in rule.iter_losses(x, y):
        loss.backward()
        streamed.append(loss.item())
    grads = [p.grad.clone() for p in rule.parameters() if p.grad is not None]
    rule.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    listed = rule.losses(x, y)
    torch.stack(listed).sum().backward()
    assert streamed == pytest.approx([v.item() for v in listed])
    for a, b in zip(grads, [p.grad for p in rule.parameters() if p.grad is not None],
                    strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("predict", ["goodness", "readout"])
def test_refilled_input_buffer_gets_its_own_predictions(digits, predict):
    """One input tensor filled in place with two batches: each gets its own answers
    (predict, block_scores, the evaluation loop's pair, early exit)."""
    from locallearn.anytime.exits import Anytime

    torch.manual_seed(0)
    net = create_network("mlp:32,32", digits.input_shape, digits.num_classes)
    rule = create_rule("ff", net, digits.task, predict=predict).eval()
    a, b = digits.test.x[:64], digits.test.x[64:128]
    buffer = a.clone()
    anytime = Anytime(rule, probe=buffer)
    with torch.no_grad():
        fresh = {name: [rule.predict(x), rule.block_scores(x), anytime.all_scores(x)]
                 for name, x in (("a", a.clone()), ("b", b.clone()))}
    with torch.no_grad():
        for name, batch in (("a", a), ("b", b)):
            buffer.copy_(batch)  # same tensor object, new data
            pred, blocks = rule.predict_with_blocks(buffer)
            torch.testing.assert_close(rule.predict(buffer), fresh[name][0])
            torch.testing.assert_close(pred, fresh[name][0])
            for mine, ref in zip(rule.block_scores(buffer), fresh[name][1], strict=True):
                torch.testing.assert_close(mine, ref)
            for mine, ref in zip(blocks, fresh[name][1], strict=True):
                torch.testing.assert_close(mine, ref)
            for mine, ref in zip(anytime.all_scores(buffer), fresh[name][2], strict=True):
                torch.testing.assert_close(mine, ref)
    assert not torch.allclose(fresh["a"][0], fresh["b"][0])  # the batches differ


@pytest.mark.parametrize("rule_name", ["ff", "symba", "cff", "ff-recurrent"])
def test_label_pass_in_chunks_trains_the_same_weights(digits, rule_name):
    """The every-label goodness pass (hard negatives, goodness prediction) run one label
    at a time gives bit-for-bit the weights and scores of running all labels at once:
    chunking cuts its memory, not its result."""
    x, y = digits.train.x[:64], digits.train.y[:64]
    rules = {}
    for rows in (0, 1):
        torch.manual_seed(0)
        net = create_network("mlp:32,32", digits.input_shape, digits.num_classes)
        rule = create_rule(rule_name, net, digits.task, label_pass_rows=rows,
                           negatives="hardest")
        if rows == 0:
            initial = {k: v.clone() for k, v in rule.state_dict().items()}
        opt = torch.optim.Adam([p for p in rule.parameters() if p.requires_grad], lr=1e-2)
        for step in range(6):
            torch.manual_seed(step)
            opt.zero_grad()
            torch.stack(rule.losses(x, y)).sum().backward()
            opt.step()
        rules[rows] = rule
    whole, chunked = rules[0], rules[1]
    for (name, a), (_, b) in zip(whole.state_dict().items(), chunked.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, initial[name]) for name, a in whole.state_dict().items())
    with torch.no_grad():
        test = digits.test.x[:100]
        for a, b in zip(whole.label_goodness(test), chunked.label_goodness(test), strict=True):
            assert torch.equal(a, b)
        assert torch.equal(whole.predict(test), chunked.predict(test))


@pytest.mark.parametrize("rows, most", [(0, 10 * 20), (45, 40), (1, 20), (1000, 10 * 20)])
def test_label_pass_holds_at_most_its_row_budget(digits, rows, most):
    """Every block of the label pass sees at most label_pass_rows rows (whole labels, at
    least one label per chunk); every label is scored."""
    net = create_network("mlp:16,16", digits.input_shape, digits.num_classes)
    rule = create_rule("ff", net, digits.task, label_pass_rows=rows)
    seen = []
    for block in net.blocks[1:]:
        block.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    with torch.no_grad():
        scores = rule.label_goodness(digits.test.x[:20])
    assert max(seen) == most and sum(seen) == len(net.blocks[1:]) * 10 * 20
    assert all(s.shape == (20, 10) for s in scores)


@pytest.mark.parametrize("kind", ["mean", "sum"])
def test_goodness_gradient_is_autograds_bit_for_bit(kind):
    """goodness() has its own backward (fewer temporaries); its values and gradients are
    exactly those of the composed square-then-mean (or sum)."""
    for n, d, seed in [(7, 3, 0), (50, 500, 1), (33, 784, 2), (16, 4, 3)]:
        torch.manual_seed(seed)
        h = torch.randn(n, d, requires_grad=True)
        w = torch.randn(n) * 37.1
        sq = h.square()
        composed = sq.mean(1) if kind == "mean" else sq.sum(1)
        mine = goodness(h, kind)
        assert torch.equal(mine, composed)
        a = torch.autograd.grad((composed * w).sum(), h)[0]
        b = torch.autograd.grad((mine * w).sum(), h)[0]
        assert torch.equal(a, b)
    conv = torch.randn(4, 3, 5, 5, requires_grad=True)  # flattened per sample
    g = goodness(conv, kind)
    assert g.shape == (4,)
    g.sum().backward()
    assert conv.grad.shape == conv.shape
