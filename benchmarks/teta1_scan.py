"""Short scan of SABR's lambda factor ``teta1``: how much sparsity a few phase-2 epochs buy, per value.

The L1 pull per epoch grows with the number of optimizer steps per epoch (dataset size / batch size),
so a ``teta1`` that suits 20 steps per epoch is far too strong at 750. This trains one base model,
then runs a short SABR phase 2 from it for each value and prints the pruned sparsity and test accuracy
at a few pruning factors. ``benchmarks/compare.py`` took its per-configuration ``teta1`` from these scans.

    python benchmarks/teta1_scan.py --model lenet5 --epochs-base 8 --epochs-sabr 5 --teta1 0.003 0.01 0.03
    python benchmarks/teta1_scan.py --model mobilenet_v2 --data ../shared/data/sign-language-digits/Dataset \\
        --image-size 64 --epochs-base 15 --epochs-sabr 6 --teta1 0.0005 0.002
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from sabr import RunConfig
from sabr.pipeline import prepare, sweep, train_base, train_sabr
from sabr.train import evaluate

FACTORS = [0.1, 0.2, 0.5, 1.0, 2.0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="dataset folder (default: Fashion-MNIST)")
    p.add_argument("--model", required=True)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--max-per-class", type=int, default=None)
    p.add_argument("--epochs-base", type=int, default=8)
    p.add_argument("--epochs-sabr", type=int, default=5)
    p.add_argument("--teta1", type=float, nargs="+", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file for the results (default: print only)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = RunConfig(data=args.data, model=args.model, image_size=args.image_size, max_per_class=args.max_per_class,
                    epochs_base=args.epochs_base, epochs_sabr=args.epochs_sabr, device="cpu")
    exp = prepare(cfg, progress=False)
    torch.manual_seed(0)
    base, rows = train_base(exp, exp.new_model(), progress=False)
    base_acc = evaluate(base, exp.test, exp.preprocess, exp.device)[1]
    print(f"{args.model}: base test {100 * base_acc:.2f}%, val {100 * rows[-1]['val_accuracy']:.2f}%", flush=True)
    results = {"model": args.model, "data": args.data, "base_test_accuracy": base_acc, "scans": []}
    for t in args.teta1:
        t0 = time.time()
        settings = dataclasses.replace(cfg.sabr_settings(), teta1=t)
        model, reg, r = train_sabr(exp, copy.deepcopy(base), settings=settings, progress=False)
        curve = sweep(exp, model, FACTORS, cfg.gamma)
        print(f"teta1={t}: val {[round(x['val_accuracy'], 4) for x in r]} actions "
              f"{''.join(x['action'][0] for x in r)} frozen {len(reg.frozen)} ({time.time() - t0:.0f} s)")
        for c in curve:
            print(f"   prune factor {c['teta1']}: sparsity {100 * c['sparsity']:.2f}%  test {100 * c['test_accuracy']:.2f}%")
        results["scans"].append({"teta1": t, "val_accuracy": [x["val_accuracy"] for x in r],
                                 "frozen": len(reg.frozen), "curve": curve})
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
