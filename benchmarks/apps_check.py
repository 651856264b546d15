"""Do the applications work on a run's model? Issue 35's check, on videos made from the run's own TEST digits.

Three MJPG videos (OpenCV, 320x240, 10 fps) are written and run through ``sabr.apps`` exactly as
``sabr recognize --roi-fraction 1.0`` / ``sabr elevator --roi-fraction 1.0`` run them, with the model's
own decision rule (temperature, claim threshold, OOD check from its metadata):

* ``digits``: the first test image of class A then of class B (default 3 and 7; never seen in training),
  each drawn 240 px large (nearest neighbour, grey on the digits' black) for 30 frames;
* ``background``: 30 blank frames (grey levels black to white) and 30 noise frames (uniform, Gaussian,
  blocky), made with their own seed, not the frames the OOD threshold was set on.

Reported per phase: right claimed labels on the last 20 frames of each digit, top-1 right, median
confidence, frames claimed, the elevator's arrivals, and labels claimed on the 60 background frames.
Prints a table and writes JSON::

    python benchmarks/apps_check.py --run RUN_DIR [--phases base sabr pruned] [--out results.json] [--videos DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from sabr import load_experiment
from sabr.apps import ElevatorSettings, RecognizeSettings, Recognizer, open_source, recognize, run_elevator

SIZE = (320, 240)


def _write_mjpg(frames: list[np.ndarray], path: Path, fps: float = 10.0) -> Path:
    """RGB frames -> an MJPG ``.avi`` (OpenCV)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, SIZE)
    assert writer.isOpened(), "this OpenCV build cannot write MJPG"
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def digit_frames(run: str | Path, sequence: tuple[int, ...] = (3, 7), hold: int = 30, side: int = 240) -> list:
    """``hold`` frames of the first test image of each class in ``sequence``, drawn ``side`` px large."""
    import cv2

    exp = load_experiment(run)
    frames = []
    for label in sequence:
        index = int(torch.nonzero(exp.test.labels == label)[0])
        grey = exp.test.images[index][0].numpy()  # uint8 (H, W), as training saw it
        canvas = np.zeros((SIZE[1], SIZE[0], 3), np.uint8)
        x, y = (SIZE[0] - side) // 2, (SIZE[1] - side) // 2
        canvas[y:y + side, x:x + side] = cv2.resize(grey, (side, side), interpolation=cv2.INTER_NEAREST)[..., None]
        frames += [canvas] * hold
    return frames


def background_frames(seed: int = 1234) -> list[np.ndarray]:
    """30 blank frames (grey levels from black to white) and 30 noise frames (uniform, Gaussian, blocky)."""
    rng = np.random.default_rng(seed)
    h, w = SIZE[1], SIZE[0]
    frames = [np.full((h, w, 3), int(v), np.uint8) for v in np.linspace(0, 255, 30)]
    for i in range(30):
        if i % 3 == 0:
            f = rng.integers(0, 256, (h, w, 3))
        elif i % 3 == 1:
            f = rng.normal(rng.uniform(40, 210), 40, (h, w, 1)).repeat(3, 2)
        else:
            f = np.kron(rng.integers(0, 256, (6, 8, 1)), np.ones((40, 40, 3)))
        frames.append(np.clip(f, 0, 255).astype(np.uint8))
    return frames


def _rows(rec: Recognizer, video: Path, out: Path) -> list[dict]:
    recognize(rec, open_source(video), RecognizeSettings(out=out, headless=True, roi_fraction=1.0))
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def check(run: str | Path, phase: str = "pruned", folder: str | Path | None = None) -> dict:
    """The figures of one phase of ``run`` (videos written to ``folder``, default a temporary one)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(folder or tmp)
        root.mkdir(parents=True, exist_ok=True)
        digits = _write_mjpg(digit_frames(run), root / "digits-3-7.avi")
        background = _write_mjpg(background_frames(), root / "background.avi")
        rec = Recognizer.from_path(run, phase)
        rows = _rows(rec, digits, root / f"{phase}-digits")
        bg = _rows(rec, background, root / f"{phase}-background")
        summary = run_elevator(rec.classes, rec, source=open_source(digits),
                               settings=ElevatorSettings(headless=True, out=str(root / f"{phase}-elevator"),
                                                         roi_fraction=1.0))
    truth = ["3"] * 30 + ["7"] * 30
    return {
        "phase": phase, "calibration": rec.calibration.to_dict(),
        "right_claimed_last20": {d: sum(r["smoothed_label"] == d for r in rows[s + 10:s + 30])
                                 for d, s in (("3", 0), ("7", 30))},
        "top1_right": sum(r["label"] == t for r, t in zip(rows, truth)), "frames": len(rows),
        "median_confidence": statistics.median(r["confidence"] for r in rows),
        "claimed": sum(r["smoothed_label"] is not None for r in rows),
        "arrivals": [e["floor"] for e in summary.events if e["event"] == "arrive"],
        "background_claimed": sum(r["smoothed_label"] is not None for r in bg), "background_frames": len(bg),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a `sabr run` folder (digits)")
    p.add_argument("--phases", nargs="+", default=["base", "sabr", "pruned"])
    p.add_argument("--out", default="benchmarks/results/apps_check.json")
    p.add_argument("--videos", help="keep the videos and the apps' outputs in this folder (default: a temporary one)")
    args = p.parse_args()
    torch.set_num_threads(1)
    results = [check(args.run, ph, args.videos) for ph in args.phases]
    print("| phase | T | threshold | right claimed, last 20 of 3 / of 7 | top-1 right | median conf. | claimed "
          "| elevator arrives at | claimed on 60 blank/noise |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        c, rc = r["calibration"], r["right_claimed_last20"]
        print(f"| {r['phase']} | {c['temperature']:.3g} | {c['threshold']:.3f} | {rc['3']} / {rc['7']} | "
              f"{r['top1_right']}/{r['frames']} | {r['median_confidence']:.3f} | {r['claimed']} | "
              f"{', '.join(map(str, r['arrivals'])) or 'never moves'} | {r['background_claimed']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"run": str(args.run), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
