"""Per-frame latency of the recognition loop (`sabr recognize --headless`), dense vs pruned model.

For each repeat, each phase of the run (interleaved, same process) runs the whole headless loop over
the same video: ``model ms`` is the recogniser's preprocessing + forward pass per frame (the
``latency_ms`` of predictions.jsonl, median over frames), ``loop ms`` the wall time per frame of the
whole loop (decode, ROI crop, recognise, smooth, draw, write video and JSONL). Reported: medians
over repeats. Prints a table and writes JSON.

    python benchmarks/apps_latency.py --run RUN_DIR --source demo.mp4 --out latency.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time

import torch

from sabr.apps import RecognizeSettings, Recognizer, open_source, recognize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a `sabr run` folder")
    p.add_argument("--source", required=True, help="video file or image folder")
    p.add_argument("--phases", nargs="+", default=["base", "pruned"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU threads to compare")
    p.add_argument("--out", default="apps_latency.json")
    args = p.parse_args()

    recognizers = {ph: Recognizer.from_path(args.run, ph) for ph in args.phases}
    infos = {ph: r.info() for ph, r in recognizers.items()}
    keys = [(ph, n) for n in args.threads for ph in args.phases]
    model_ms: dict[tuple, list[float]] = {k: [] for k in keys}
    loop_ms: dict[tuple, list[float]] = {k: [] for k in keys}
    frames = 0
    for _ in range(args.repeats):
        for ph, n in keys:
            torch.set_num_threads(n)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                s = recognize(recognizers[ph], open_source(args.source), RecognizeSettings(out=tmp, headless=True))
                elapsed = time.perf_counter() - start
            frames = s.frames
            model_ms[ph, n].append(s.latency_ms_median)
            loop_ms[ph, n].append(1000 * elapsed / s.frames)
    rows = []
    for key in keys:
        ph, n = key
        i = infos[ph]
        rows.append({"phase": ph, "threads": n, "model": i.name, "input": f"{i.channels}x{i.image_size}x{i.image_size}",
                     "sparsity": i.sparsity, "macs_dense": i.macs_dense, "macs_pruned": i.macs_pruned,
                     "model_ms_median": statistics.median(model_ms[key]),
                     "loop_ms_median": statistics.median(loop_ms[key]),
                     "fps": 1000 / statistics.median(loop_ms[key]), "model_ms_runs": model_ms[key],
                     "loop_ms_runs": loop_ms[key]})
    print(f"{'phase':<7} {'threads':>7} {'model':<12} {'input':<9} {'sparsity':>8} {'MACs (pruned)':>14} {'model ms':>9} "
          f"{'loop ms':>8} {'FPS':>6}")
    for r in rows:
        print(f"{r['phase']:<7} {r['threads']:>7} {r['model']:<12} {r['input']:<9} {100 * r['sparsity']:>7.2f}% "
              f"{r['macs_pruned']:>14,.0f} {r['model_ms_median']:>9.2f} {r['loop_ms_median']:>8.2f} {r['fps']:>6.1f}")
    result = {"run": args.run, "source": args.source, "frames": frames, "repeats": args.repeats,
              "machine": platform.processor() or platform.machine(),
              "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\n{frames} frames x {args.repeats} repeats; wrote {args.out}")


if __name__ == "__main__":
    main()
