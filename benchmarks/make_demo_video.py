"""Make a demo video for `sabr recognize` / `sabr elevator` from real photos of an image folder.

Each photo is scaled into the default centred ROI (``--roi-fraction``, as the apps use it) of a
320x240 frame and held for ``--hold`` frames. Photos are taken from the held-out *test* split of
``sabr run`` (same stratified split, seed and order), so the model has never seen them, provided
the run used the whole folder (no ``--max-per-class``).

    python benchmarks/make_demo_video.py --data ../shared/data/sign-language-digits/Dataset \
        --sequence 0 1 2 3 4 5 6 7 8 9 --out /tmp/demo.mp4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from sabr.apps import demo_frames, write_video
from sabr.data import ImageDataset, list_image_folder, open_image, split_dataset


def test_split_files(folder: Path, seed: int = 0) -> tuple[list[str], dict[int, list[Path]]]:
    """Class names and, per class index, the files of ``sabr run``'s test split (whole folder, ``seed``)."""
    classes, files = list_image_folder(folder)
    flat = [(label, f) for label, fs in enumerate(files) for f in fs]
    labels = torch.tensor([label for label, _ in flat])
    stub = ImageDataset(folder.name, torch.empty(0), labels, classes)  # split_dataset reads labels only
    splits = split_dataset(stub, seed=seed)
    by_class: dict[int, list[Path]] = {}
    for i in splits.test:
        label, f = flat[int(i)]
        by_class.setdefault(label, []).append(f)
    return classes, by_class


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="image folder with one sub-folder per class")
    p.add_argument("--sequence", nargs="+", help="class names to show, in order (default: every class once)")
    p.add_argument("--hold", type=int, default=15, help="frames per photo (default: 15)")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second (default: 10)")
    p.add_argument("--roi-fraction", type=float, default=0.75, help="as in the apps (default: 0.75)")
    p.add_argument("--seed", type=int, default=0, help="the run's --seed (default: 0)")
    p.add_argument("--out", required=True, help="the .mp4 to write")
    args = p.parse_args()

    classes, by_class = test_split_files(Path(args.data), args.seed)
    sequence = args.sequence or classes
    used: dict[int, int] = {}
    images, shown = [], []
    for name in sequence:
        k = classes.index(name)
        f = by_class[k][used.get(k, 0) % len(by_class[k])]
        used[k] = used.get(k, 0) + 1
        images.append(np.asarray(open_image(f).convert("RGB")))
        shown.append({"class": name, "file": str(f)})
    n = write_video(demo_frames(images, args.hold, fraction=args.roi_fraction), args.out, args.fps)
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"frames": n, "fps": args.fps, "hold": args.hold, "photos": shown}, indent=2) + "\n")
    print(f"wrote {args.out}: {n} frames, {len(images)} test-split photos ({', '.join(sequence)})")


if __name__ == "__main__":
    main()
