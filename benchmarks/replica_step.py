"""Where a data-parallel step's time goes: one backprop step of mlp:1024x4 on random
data, in one process at the global batch B, in one process at B/2 (a replica's own
compute; its samples/s doubled is what 2 replicas would reach with free messages), and in 2 gloo
replicas at B/2 each: locallearn's GradientAverager (float32, and bf16
compression) and torch's DistributedDataParallel.

    python benchmarks/replica_step.py [--batch-sizes 256 1024] [--steps 20] [--repeat 2]

One torch thread per process, fused Adam (as ``locallearn train``). Prints, per
setting, the best over ``--repeat`` tries of the wall time per step and rank 0's
CPU time per step (all its threads: compute, and gloo's copies and sums),
samples/s with the speed-up over one process, and the CPU bound: one process's
CPU time per step over a replica's, the most 2 replicas can gain on 2 idle cores.
On a machine shared with other work the wall times stretch; CPU times stretch
less (caches are shared too).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SETTINGS = [("1 process, batch B", 1, "one"), ("B/2 in 1 process, x2 (free messages)", 1, "half"),
            ("2 replicas (GradientAverager)", 2, "avg"),
            ("2 replicas, bf16 compression", 2, "avg-bf16"),
            ("2 replicas (DistributedDataParallel)", 2, "ddp")]


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    layers, width = [], 784
    for _ in range(4):
        layers += [torch.nn.Linear(width, 1024), torch.nn.ReLU()]
        width = 1024
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))


def worker(rank: int, world: int, batch: int, steps: int, mode: str, port: int, queue) -> None:
    from locallearn.parallel.replicas import GradientAverager

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    net = network()
    rows = batch if mode == "one" else batch // 2
    x, y = torch.randn(rows, 784), torch.randint(0, 10, (rows,))
    model = (torch.nn.parallel.DistributedDataParallel(net, gradient_as_bucket_view=True)
             if mode == "ddp" else net)
    opt = torch.optim.Adam(net.parameters(), fused=True)
    averager = None
    if mode.startswith("avg"):
        averager = GradientAverager(None, world, compression="bf16" if "bf16" in mode else "none")
        averager.attach([opt])

    def step() -> None:
        if averager is not None:
            averager.weights.append(1 / world)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(2):
        step()
    dist.barrier()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    wall, cpu = (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps
    if rank == 0:
        queue.put((wall, cpu, batch))  # B/2: what 2 of it would do with free messages
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    best: dict[tuple[int, str], tuple[float, float, int]] = {}
    port = 29600 + os.getpid() % 1000
    for _ in range(args.repeat):
        for batch in args.batch_sizes:
            for _, world, mode in SETTINGS:
                queue = ctx.Queue()
                port += 1
                mp.spawn(worker, args=(world, batch, args.steps, mode, port, queue),
                         nprocs=world)
                result = queue.get()
                if (batch, mode) not in best or result[0] < best[(batch, mode)][0]:
                    best[(batch, mode)] = result
    print(f"backprop, mlp:1024,1024,1024,1024, fused Adam, gloo; best of {args.repeat} x "
          f"{args.steps} steps")
    print(f"{'B':>5}  {'setting':<38} {'ms/step':>8} {'CPU ms/step':>11} {'samples/s':>9} "
          f"{'speed-up':>8} {'CPU bound':>9}")
    for batch in args.batch_sizes:
        base = batch / best[(batch, "one")][0]
        one_cpu = best[(batch, "one")][1]
        for name, _, mode in SETTINGS:
            wall, cpu, samples = best[(batch, mode)]
            bound = "-" if mode == "one" else f"{one_cpu / cpu:.2f}x"
            print(f"{batch:>5}  {name:<38} {wall * 1e3:>8.1f} {cpu * 1e3:>11.1f} "
                  f"{samples / wall:>9.0f} {samples / wall / base:>7.2f}x {bound:>9}")
    print("CPU bound: one process's CPU per step over a replica's; the most 2 replicas can "
          "gain on 2 otherwise idle cores (each replica computing on its own core, "
          "no waiting)")


if __name__ == "__main__":
    from locallearn.report.provenance import run_with_provenance

    run_with_provenance(main)  # then the command, commit, hardware and load average
