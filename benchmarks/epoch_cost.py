"""What SABR's penalty costs per training epoch: plain epochs and SABR epochs, interleaved, same process.

A phase-2 epoch differs from a plain one by ``SABR.penalty()`` (an L1 sum over every regularised
tensor, added to the loss, and its gradient) and by the budget's bookkeeping after it
(:class:`sabr.budget.BudgetTracker`: the prunable sparsity and, on a gain, a copy of the weights; timed
here as if every epoch gained). The one-off budget search after phase 2 (every pruning factor, BatchNorm
recalibrated, validated) is timed once and reported separately, in seconds and in plain epochs. On a shared machine the load changes over minutes, so
timing phase 1 and then phase 2 compares two different loads; here the two kinds of epoch alternate
(plain, SABR, plain, SABR, ...) on the same images, and the ratio of their medians is reported.
Nothing is frozen (freezing only makes SABR epochs cheaper) and dropout is off in both.

    python benchmarks/epoch_cost.py                     # compact_cnn (the default run), lenet5, small_vgg, ...
    python benchmarks/epoch_cost.py --models lenet5 --repeats 9
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from sabr import SABR, RunConfig
from sabr.budget import BudgetTracker, search_prune_factor
from sabr.models import set_dropout
from sabr.phases import bn_recalibrator, steps_per_epoch
from sabr.pipeline import prepare
from sabr.train import Split, evaluate, train_epoch

ROOT = Path(__file__).resolve().parents[1]
# model -> (dataset: the flag that names its folder, image size, images per epoch)
SETUPS = {
    "compact_cnn": ("digits", 8, None),
    "lenet5": ("fashion", 28, 6400),
    "small_vgg": ("fashion", 28, 1280),
    "mobilenet_v2": ("signs", 64, 640),
    "vgg11": ("signs", 64, 320),
}


def measure(model_name: str, data: str, repeats: int) -> dict:
    """Interleaved plain and SABR epochs of ``model_name`` on the images in folder ``data``, then the one-off
    budget search."""
    _, size, n = SETUPS[model_name]
    exp = prepare(RunConfig(data=data, model=model_name, image_size=size, device="cpu"), progress=False)
    split = Split(exp.train.images[:n], exp.train.labels[:n])
    torch.manual_seed(0)
    model = exp.new_model()
    set_dropout(model, 0.0)
    reg = SABR(model, steps_per_epoch=steps_per_epoch(exp))  # the library's default teta1, as `sabr run`
    tracker = BudgetTracker(floor=0.0, patience=10**9)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def epoch(penalty) -> float:
        return train_epoch(model, opt, split, exp.preprocess, exp.device, 64, gen, penalty=penalty).seconds

    def sabr_epoch(i: int) -> float:
        seconds = epoch(reg.penalty)
        started = time.perf_counter()
        tracker.best_sparsity = -1.0  # the worst case: every epoch gains, so every epoch copies the weights
        tracker.update(model, i, 1.0)
        return seconds + time.perf_counter() - started

    epoch(None)  # warm-up: allocator, kernels
    plain, sabr = [], []
    for i in range(repeats):
        plain.append(epoch(None))
        sabr.append(sabr_epoch(i))
    p, s = statistics.median(plain), statistics.median(sabr)
    started = time.perf_counter()
    search_prune_factor(model, lambda m: evaluate(m, exp.val, exp.preprocess, exp.device)[1], floor=0.0,
                        recalibrate=bn_recalibrator(exp))
    search = time.perf_counter() - started
    return {"model": model_name, "images_per_epoch": len(split), "image_size": size, "repeats": repeats,
            "tensors": len(reg.params), "plain_seconds": plain, "sabr_seconds": sabr,
            "plain_median": p, "sabr_median": s, "ratio": s / p, "budget_search_seconds": search,
            "budget_search_in_plain_epochs": search / p}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--repeats", type=int, default=5, help="plain/SABR epoch pairs per model")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--fashion", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST folder")
    p.add_argument("--signs", default=str(ROOT.parent / "shared" / "data" / "sign-language-digits" / "Dataset"),
                   help="Sign Language Digits folder (one sub-folder per class)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "epoch_cost.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print(f"{'model':<13} {'images':>6} {'plain s':>8} {'SABR s':>8} {'ratio':>6} {'search s':>9}")
    for name in args.models:
        data = "digits" if SETUPS[name][0] == "digits" else getattr(args, SETUPS[name][0])
        if data != "digits" and not Path(data).is_dir():
            print(f"{name}: skipped, {data} is absent")
            continue
        r = measure(name, data, args.repeats)
        rows.append(r)
        print(f"{name:<13} {r['images_per_epoch']:>6} {r['plain_median']:>8.2f} {r['sabr_median']:>8.2f} "
              f"{r['ratio']:>5.2f}x {r['budget_search_seconds']:>8.1f} ({r['budget_search_in_plain_epochs']:.1f} "
              "plain epochs)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": torch.get_num_threads(), "command": " ".join(
        ["python benchmarks/epoch_cost.py", *(argv if argv is not None else sys.argv[1:])]), "rows": rows},
        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
