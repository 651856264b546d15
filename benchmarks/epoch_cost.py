"""What SABR's penalty costs per training epoch: plain epochs and SABR epochs, interleaved, same process.

A phase-2 epoch differs from a plain one by ``SABR.penalty()`` (an L1 sum over every regularised
tensor, added to the loss, and its gradient). On a shared machine the load changes over minutes, so
timing phase 1 and then phase 2 compares two different loads; here the two kinds of epoch alternate
(plain, SABR, plain, SABR, ...) on the same images, and the ratio of their medians is reported.
Nothing is frozen (freezing only makes SABR epochs cheaper) and dropout is off in both.

    python benchmarks/epoch_cost.py                     # lenet5, small_vgg, mobilenet_v2, vgg11
    python benchmarks/epoch_cost.py --models lenet5 --repeats 9
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from sabr import SABR, RunConfig
from sabr.models import set_dropout
from sabr.pipeline import prepare
from sabr.train import Split, train_epoch

ROOT = Path(__file__).resolve().parents[1]
# model -> (dataset: the flag that names its folder, image size, images per epoch)
SETUPS = {
    "lenet5": ("fashion", 28, 6400),
    "small_vgg": ("fashion", 28, 1280),
    "mobilenet_v2": ("signs", 64, 640),
    "vgg11": ("signs", 64, 320),
}


def measure(model_name: str, data: str, repeats: int, teta1: float = 0.01) -> dict:
    """Interleaved plain and SABR epochs of ``model_name`` on the images in folder ``data``."""
    _, size, n = SETUPS[model_name]
    exp = prepare(RunConfig(data=data, model=model_name, image_size=size, device="cpu"), progress=False)
    split = Split(exp.train.images[:n], exp.train.labels[:n])
    torch.manual_seed(0)
    model = exp.new_model()
    set_dropout(model, 0.0)
    reg = SABR(model, teta1=teta1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def epoch(penalty) -> float:
        return train_epoch(model, opt, split, exp.preprocess, exp.device, 64, gen, penalty=penalty).seconds

    epoch(None)  # warm-up: allocator, kernels
    plain, sabr = [], []
    for _ in range(repeats):
        plain.append(epoch(None))
        sabr.append(epoch(reg.penalty))
    p, s = statistics.median(plain), statistics.median(sabr)
    return {"model": model_name, "images_per_epoch": len(split), "image_size": size, "repeats": repeats,
            "tensors": len(reg.params), "plain_seconds": plain, "sabr_seconds": sabr,
            "plain_median": p, "sabr_median": s, "ratio": s / p}


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
    print(f"{'model':<13} {'images':>6} {'plain s':>8} {'SABR s':>8} {'ratio':>6}")
    for name in args.models:
        data = getattr(args, SETUPS[name][0])
        if not Path(data).is_dir():
            print(f"{name}: skipped, {data} is absent")
            continue
        r = measure(name, data, args.repeats)
        rows.append(r)
        print(f"{name:<13} {r['images_per_epoch']:>6} {r['plain_median']:>8.2f} {r['sabr_median']:>8.2f} "
              f"{r['ratio']:>5.2f}x", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": torch.get_num_threads(), "command": " ".join(
        ["python benchmarks/epoch_cost.py", *(argv if argv is not None else sys.argv[1:])]), "rows": rows},
        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
