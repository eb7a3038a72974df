"""CIFAR-10 recipe: backprop and the best local rules on a conv net, the standard way.

Data: the python batches under ``--data-dir`` (``cifar-10-batches-py/``), nothing
downloaded. Training images are streamed through a ``DataLoader`` (``--workers``
processes, ``--pin-memory``) with the standard augmentation applied per sample
(``--augment``: random crop with 4 pixels of black padding, horizontal flip;
:class:`locallearn.data.augment.ImageArrays`); validation (the last 5,000 training
images) and test (the 10,000 test images) stay in memory. The library standardises with
training statistics (stored with the model, so the exported ``model.pt2`` takes raw
[0, 1] images). ``--amp`` runs the training steps under ``torch.autocast`` (bfloat16).
Each rule trains with its own defaults unless ``--epochs`` / ``--batch-size`` are given.

    PYTHONPATH=src python benchmarks/cifar10.py --data-dir ~/data --device cuda --amp \\
        --workers 8 --pin-memory --augment
    PYTHONPATH=src python benchmarks/cifar10.py --data-dir ~/data --rules backprop,local \\
        --epochs 2 --net cnn:32,64                        # a quick CPU try

Prints one table row per rule (test accuracy, training seconds, samples/s, peak memory)
and the hardware; ``--json FILE`` appends one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader

from locallearn.data.augment import ImageArrays
from locallearn.data.files import cifar_arrays
from locallearn.measure import hardware_info
from locallearn.training import train

# Local rules that did best on conv nets here (docs/results/feedback.md, ff.md).
RULES = ["backprop", "local", "mono-forward", "sff", "ccl"]
VAL_SIZE = 5000


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--net", default="cnn:64,128,256")
    p.add_argument("--epochs", type=int, help="override every rule's default")
    p.add_argument("--batch-size", type=int, help="override every rule's default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--amp", action="store_true", help="torch.autocast (bfloat16) training steps")
    p.add_argument("--augment", action="store_true", help="random crop (pad 4) + flip")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--pin-memory", action="store_true", help="page-locked batches (GPU)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", help="keep each run under OUT/<rule> (with model.pt2)")
    p.add_argument("--json", help="append one JSON line per run to this file")
    p.add_argument("--val-size", type=int, default=VAL_SIZE)
    args = p.parse_args(argv)

    x, y, x_test, y_test, classes = cifar_arrays("cifar10", args.data_dir)
    n_val = min(args.val_size, max(1, len(y) // 10))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234)).numpy()
    val_idx, train_idx = order[:n_val], order[n_val:]
    train_set = ImageArrays(x[train_idx], y[train_idx], classes, augment=args.augment)

    def in_memory(images, labels):
        return torch.from_numpy(images).float() / 255.0, torch.from_numpy(labels)

    val, test = in_memory(x[val_idx], y[val_idx]), in_memory(x_test, y_test)
    hw = hardware_info(args.device if args.device != "auto" else None)
    print(f"# cifar10: {len(train_idx)} train (streamed, {args.workers} workers, "
          f"augment={args.augment}) / {n_val} val / {len(y_test)} test; net {args.net}; "
          f"amp={args.amp}; {hw.get('cpu')} ({hw.get('cpu_count')} cores), GPU "
          f"{hw.get('gpu') or 'none'}, torch {hw.get('torch_version')}, threads={args.threads}")
    header = ("rule", "epochs", "test accuracy", "train s", "samples/s", "peak MiB", "device")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for rule in args.rules.split(","):
        options = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size))
                   if v is not None}
        # The loader's batch size is the rule's own unless --batch-size gives one.
        from locallearn.rules import RULES as REGISTRY

        batch = args.batch_size or REGISTRY.get(rule).defaults.get("batch_size", 128)
        loader = DataLoader(train_set, batch_size=batch, shuffle=True,
                            num_workers=args.workers, pin_memory=args.pin_memory,
                            persistent_workers=False)
        t0 = time.perf_counter()
        result = train(rule=rule, net=args.net, train=loader, val=val, test=test,
                       seed=args.seed, device=args.device, amp=args.amp, threads=args.threads,
                       quiet=True, out=f"{args.out}/{rule}" if args.out else None,
                       overwrite=True, early_exit=False, **options)
        s = result.summary
        print(f"| {rule} | {s['epochs']} | {s['test_accuracy']:.4f} | {s['train_seconds']:.1f} | "
              f"{s['samples_per_second'] or 0:.0f} | {s['peak_memory_bytes'] / 2**20:.0f} | "
              f"{s['device']} |", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"rule": rule, "net": args.net, "amp": args.amp,
                                    "augment": args.augment, "workers": args.workers,
                                    "wall_seconds": time.perf_counter() - t0,
                                    **{k: s.get(k) for k in (
                                        "epochs", "test_accuracy", "best_val_accuracy",
                                        "train_seconds", "samples_per_second",
                                        "peak_memory_bytes", "device", "hardware",
                                        "train_config", "normalisation")}}) + "\n")


if __name__ == "__main__":
    from locallearn.report.provenance import run_with_provenance

    run_with_provenance(main)  # then the command, commit, hardware and load average
