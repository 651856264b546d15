"""Cost of the per-epoch resume state: training-epoch time vs ``save_state`` time (medians, same process).

Phase 1 (:func:`sabr.pipeline.train_base`) runs for ``--epochs`` epochs; after each, the phase's full
state (the one ``sabr run`` writes to ``resume.safetensors``) is saved with :func:`sabr.resume.save_state`
to a temporary file and timed.

    python benchmarks/resume_overhead.py --model compact_cnn --epochs 3 --json resume_overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sabr import RunConfig
from sabr.pipeline import prepare, train_base
from sabr.resume import PhaseState, RunState, save_state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="compact_cnn")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cfg = RunConfig(model=args.model, data=args.data, image_size=args.image_size, epochs_base=args.epochs,
                    device="cpu")
    exp = prepare(cfg, progress=False)
    torch.manual_seed(cfg.seed)
    saves = []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "resume.safetensors"

        def on_epoch(state: PhaseState) -> None:
            t = time.perf_counter()
            save_state(path, RunState("base", {}, state))
            saves.append(time.perf_counter() - t)

        _, rows = train_base(exp, exp.new_model(), progress=False, on_epoch=on_epoch)
        size = path.stat().st_size
    row = {"model": args.model, "data": args.data, "epoch_s": statistics.median(r["seconds"] for r in rows),
           "save_s": statistics.median(saves), "state_mb": size / 1e6}
    row["overhead"] = row["save_s"] / row["epoch_s"]
    print(f"{'model':<14}{'epoch s':>9}{'save s':>9}{'state MB':>10}{'overhead':>10}")
    print(f"{row['model']:<14}{row['epoch_s']:>9.3f}{row['save_s']:>9.3f}{row['state_mb']:>10.1f}{100 * row['overhead']:>9.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
