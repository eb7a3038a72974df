"""What the locallearn loop costs over a plain PyTorch script, and what it reaches.

Both train the same network (``mlp:500,500``, identical initial weights) on the same
tensors (mnist5k's training split for that seed, already normalised) with Adam
(lr 1e-3), batch 128, for 20 epochs, and are timed the same way (training epochs
only; the loop's per-epoch validation, metrics and checkpoints are reported apart
as "fit wall"). The plain script is also run on all 4,000 train+val samples, the
set-up behind the issue's reference figure (0.949-0.954), to show what the 400
validation samples cost.

    PYTHONPATH=src python benchmarks/loop_overhead.py            # 3 seeds, 20 epochs
    PYTHONPATH=src python benchmarks/loop_overhead.py --seeds 0 --epochs 5 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch
from torch import nn

from locallearn.data import load_dataset
from locallearn.measure import hardware_info
from locallearn.networks import create_network
from locallearn.rules import create_rule
from locallearn.training import TrainConfig, Trainer


def plain_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int,
                seed: int) -> float:
    """The textbook loop; returns seconds spent in training epochs."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(batch):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - start


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(-1) == y).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared machine more threads wait on each other)")
    p.add_argument("--no-memory", action="store_true", help="loop without the memory meter")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    hw = hardware_info("cpu")
    print(f"# {hw['cpu']} ({hw['cpu_count']} cores), torch {hw['torch_version']} "
          f"threads={args.threads}, mlp:500,500 on mnist5k, Adam 1e-3, batch "
          f"{args.batch_size}, {args.epochs} epochs")
    header = ("seed", "plain acc", "plain s", "loop acc", "loop s", "ratio", "fit wall s",
              "plain4k acc")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    ratios, loop_accs = [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        ds = load_dataset("mnist5k", seed=seed)
        torch.manual_seed(seed)
        net = create_network("mlp:500,500", ds.input_shape, ds.num_classes)
        init = copy.deepcopy(net.state_dict())

        # Plain script on the loop's training split.
        plain = copy.deepcopy(net)
        plain_s = plain_train(plain, ds.train.x, ds.train.y, args.epochs, args.batch_size, seed)
        plain_acc = accuracy(plain, ds.test.x, ds.test.y)

        # Plain script on train + val (4,000 samples), as in the reference.
        ref = copy.deepcopy(net)
        ref.load_state_dict(init)
        x4k, y4k = torch.cat([ds.train.x, ds.val.x]), torch.cat([ds.train.y, ds.val.y])
        plain_train(ref, x4k, y4k, args.epochs, args.batch_size, seed)
        ref_acc = accuracy(ref, ds.test.x, ds.test.y)

        # The locallearn loop: same initial weights, same data tensors.
        net.load_state_dict(init)
        rule = create_rule("backprop", net, ds.task)
        with tempfile.TemporaryDirectory() as out:
            cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=1e-3,
                              optimizer="adam", seed=seed, device="cpu", out=out, quiet=True,
                              measure_memory=not args.no_memory)
            start = time.perf_counter()
            s = Trainer(cfg, {"rule": "backprop", "data": "mnist5k",
                              "net": "mlp:500,500"}).fit(rule, ds)
            wall = time.perf_counter() - start
        ratio = s["train_seconds"] / plain_s
        ratios.append(ratio)
        loop_accs.append(s["test_accuracy"])
        print(f"| {seed} | {plain_acc:.4f} | {plain_s:.2f} | {s['test_accuracy']:.4f} | "
              f"{s['train_seconds']:.2f} | {ratio:.2f} | {wall:.2f} | {ref_acc:.4f} |",
              flush=True)
    print(f"# loop/plain training time: mean {sum(ratios) / len(ratios):.2f}x; "
          f"loop test accuracy min {min(loop_accs):.4f}, mean "
          f"{sum(loop_accs) / len(loop_accs):.4f}")


if __name__ == "__main__":
    from locallearn.report.provenance import run_with_provenance

    run_with_provenance(main)  # then the command, commit, hardware and load average
