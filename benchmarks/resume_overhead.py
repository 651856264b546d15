"""Cost of the per-epoch resume state: training-epoch time vs ``save_state`` time (medians, same process).

    PYTHONPATH=src python benchmarks/resume_overhead.py --model compact_cnn --epochs 3 --json resume_overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sabr.config import RunConfig
from sabr.pipeline import _plateau, _state_common, prepare
from sabr.resume import save_state
from sabr.train import train_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="compact_cnn")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cfg = RunConfig(model=args.model, data=args.data, image_size=args.image_size, device="cpu")
    exp = prepare(cfg, progress=False)
    model = exp.new_model()
    opt = torch.optim.Adam(model.parameters())
    sched, gen = _plateau(opt, 0.1), torch.Generator().manual_seed(0)
    epochs, saves = [], []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "resume.safetensors"
        for i in range(args.epochs):
            t = time.perf_counter()
            train_epoch(model, opt, exp.train, exp.preprocess, exp.device, cfg.batch_size, gen)
            epochs.append(time.perf_counter() - t)
            t = time.perf_counter()
            save_state(path, {**_state_common(i, model, opt, sched, gen, []), "best_model": model.state_dict()})
            saves.append(time.perf_counter() - t)
        size = path.stat().st_size
    row = {"model": args.model, "data": args.data, "epoch_s": statistics.median(epochs),
           "save_s": statistics.median(saves), "state_mb": size / 1e6}
    row["overhead"] = row["save_s"] / row["epoch_s"]
    print(f"{'model':<14}{'epoch s':>9}{'save s':>9}{'state MB':>10}{'overhead':>10}")
    print(f"{row['model']:<14}{row['epoch_s']:>9.3f}{row['save_s']:>9.3f}{row['state_mb']:>10.1f}{100 * row['overhead']:>9.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
