"""The two application loops, on screen or headless: :func:`recognize` and :func:`run_elevator`.

Each loop reads frames from a :class:`~sabr.apps.sources.FrameSource`, classifies the ROI with a
:class:`~sabr.apps.recognizer.Recognizer`, smooths the predictions, draws the view, and either shows
it in a window (ROI draggable with the mouse; ``q`` or Esc quits) or writes it to ``out``: an
annotated video (or annotated PNG frames for an image folder) and a JSONL record.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import ConfigError, SabrError
from .elevator import Elevator, render_elevator
from .recognizer import Recognizer
from .render import draw_recognition
from .roi import Roi, RoiDragger
from .smoothing import Smoothed, StableGesture, TemporalSmoother
from .sources import Frame, FrameSource, ImageFolderSource, VideoWriter

log = logging.getLogger(__name__)

WINDOW_HINT = "install opencv-python for a window, or use --headless (with --out DIR)"


class Window:
    """An OpenCV window; raises :class:`SabrError` when this OpenCV build has no GUI support."""

    def __init__(self, title: str, dragger: RoiDragger | None = None) -> None:
        import cv2

        self.title = title
        try:
            cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)
        except cv2.error as exc:
            raise SabrError(f"cannot open a window: this OpenCV build has no GUI support ({WINDOW_HINT}).") from exc
        if dragger is not None:
            cv2.setMouseCallback(title, dragger.on_mouse)

    def show(self, rgb: np.ndarray, wait_ms: int = 1) -> bool:
        """Show a frame; returns ``False`` when the user pressed ``q`` or Esc."""
        import cv2

        cv2.imshow(self.title, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        return (cv2.waitKey(wait_ms) & 0xFF) not in (ord("q"), 27)

    def close(self) -> None:
        import cv2

        cv2.destroyWindow(self.title)


class _Output:
    """Headless output: annotated frames (video, or PNGs for an image folder), a JSONL file, a snapshot."""

    def __init__(self, out: Path, jsonl_name: str, video_name: str, fps: float, png_frames: bool,
                 snapshot: int | None) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.jsonl_path = out / jsonl_name
        self._jsonl = self.jsonl_path.open("w")
        self.frames_dir = out / "frames" if png_frames else None
        self.video = None if png_frames else VideoWriter(out / video_name, fps)
        self.snapshot = snapshot
        self.count = 0

    def record(self, row: dict) -> None:
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()

    def frame(self, rgb: np.ndarray, name: str) -> None:
        from PIL import Image

        if self.frames_dir is not None:
            self.frames_dir.mkdir(exist_ok=True)
            Image.fromarray(rgb).save(self.frames_dir / f"{Path(name).stem}.png")
        else:
            self.video.write(rgb)
        if self.snapshot is not None and self.count == self.snapshot:
            Image.fromarray(rgb).save(self.out / "snapshot.png")
        self.count += 1

    def close(self) -> None:
        self._jsonl.close()
        if self.video is not None:
            self.video.close()


def _open_output(out, headless, jsonl, video, fps, png, snapshot):
    if headless and out is None:
        raise ConfigError("--headless needs --out DIR for the annotated frames and the JSONL file.")
    return _Output(Path(out), jsonl, video, fps, png, snapshot) if out is not None else None


class _Fps:
    """Frames per second over the last ``n`` frames (wall clock)."""

    def __init__(self, n: int = 20) -> None:
        self.times: list[float] = []
        self.n = n

    def tick(self) -> float | None:
        self.times = (self.times + [time.perf_counter()])[-self.n:]
        if len(self.times) < 2:
            return None
        return (len(self.times) - 1) / max(self.times[-1] - self.times[0], 1e-9)


@dataclass
class RecognizeSummary:
    """What a recognition run did: frames classified, and the per-frame latency (milliseconds)."""

    frames: int
    latency_ms_median: float | None
    latency_ms_p90: float | None
    out: str | None


def recognize(recognizer: Recognizer, source: FrameSource, out: str | Path | None = None, headless: bool = False,
              roi: Roi | None = None, roi_fraction: float = 0.75, window: int = 5, threshold: float = 0.6,
              references: Sequence[np.ndarray] | None = None, max_frames: int | None = None,
              snapshot: int | None = None) -> RecognizeSummary:
    """Classify the ROI of every frame of ``source``.

    Args:
        recognizer: the model and its training preprocessing.
        source: the frames (webcam, video or image folder).
        out: folder for ``predictions.jsonl`` and the annotated ``annotated.mp4`` (``frames/*.png`` for
            an image folder); required when ``headless``.
        headless: no window (a server); otherwise frames are shown and the ROI can be dragged.
        roi: the box to classify, in pixels; default a centred square of ``roi_fraction`` of the shorter side.
        window, threshold: temporal smoothing over ``window`` frames; labels below ``threshold`` confidence
            (fraction) are not claimed.
        references: one RGB image per class for the reference panel (``None``: empty frames).
        max_frames: stop after this many frames.
        snapshot: index of a frame to also save as ``out/snapshot.png``.
    """
    output = _open_output(out, headless, "predictions.jsonl", "annotated.mp4", source.fps,
                          isinstance(source, ImageFolderSource), snapshot)
    smoother = TemporalSmoother(window, threshold)
    fps_meter = _Fps()
    classes = recognizer.classes
    screen, dragger = None, None
    latencies: list[float] = []
    try:
        for frame in _limit(source, max_frames):
            h, w = frame.image.shape[:2]
            if dragger is None or dragger.frame_size != (w, h):
                dragger = RoiDragger(roi or Roi.centered(w, h, roi_fraction), (w, h))
                if not headless and screen is None:
                    screen = Window("sabr recognize (drag the box; q quits)", dragger)
            box = dragger.roi
            pred = recognizer.predict(box.crop(frame.image))
            smoothed = smoother.update(pred.probs)
            latencies.append(pred.latency_ms)
            fps = fps_meter.tick()
            view = draw_recognition(frame.image, box, pred, smoothed, classes, fps, references)
            if output is not None:
                output.record(_prediction_row(frame, pred, smoothed, classes, box))
                output.frame(view, frame.name)
            if screen is not None and not screen.show(view):
                break
    finally:
        source.close()
        if output is not None:
            output.close()
        if screen is not None:
            screen.close()
    lat = np.asarray(latencies)
    return RecognizeSummary(len(lat), float(np.median(lat)) if len(lat) else None,
                            float(np.percentile(lat, 90)) if len(lat) else None,
                            str(out) if out is not None else None)


def _limit(source: FrameSource, max_frames: int | None) -> Iterator[Frame]:
    for i, frame in enumerate(source):
        if max_frames is not None and i >= max_frames:
            return
        yield frame


def _prediction_row(frame: Frame, pred, smoothed: Smoothed, classes: Sequence[str], roi: Roi) -> dict:
    """One JSONL line: ``frame``, ``label``, ``confidence``, ``top3``, ``smoothed_label``, ``latency_ms``."""
    return {
        "frame": frame.index,
        "name": frame.name,
        "label": classes[pred.label],
        "confidence": round(pred.confidence, 5),
        "top3": [[classes[k], round(p, 5)] for k, p in pred.top3],
        "smoothed_label": classes[smoothed.label] if smoothed.label is not None else None,
        "smoothed_confidence": round(smoothed.confidence, 5),
        "latency_ms": round(pred.latency_ms, 3),
        "roi": [roi.x, roi.y, roi.width, roi.height],
    }


# --------------------------------------------------------------------------- elevator
@dataclass(frozen=True)
class ScriptStep:
    """A scripted gesture: class index ``label`` shown from ``t`` for ``hold`` seconds."""

    t: float
    label: int
    hold: float


def read_script(path: str | Path, classes: Sequence[str]) -> list[ScriptStep]:
    """Read a gesture script: one ``<time s> <gesture> [<hold s, default 1.5>]`` per line, ``#`` comments.

    ``<gesture>`` is a class name of the model, or a class index.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"script {path} does not exist.")
    steps = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = re.split(r"[\s,]+", line)
        try:
            t, hold = float(parts[0]), float(parts[2]) if len(parts) > 2 else 1.5
            name = parts[1]
        except (ValueError, IndexError):
            raise ConfigError(f"{path}:{n}: expected '<time s> <gesture> [<hold s>]', got {line!r}.") from None
        if name in classes:
            label = list(classes).index(name)
        elif name.isdigit() and int(name) < len(classes):
            label = int(name)
        else:
            raise ConfigError(f"{path}:{n}: gesture {name!r} is not one of the model's classes {list(classes)}.")
        steps.append(ScriptStep(t, label, hold))
    if not steps:
        raise ConfigError(f"script {path} holds no gesture line ('<time s> <gesture> [<hold s>]').")
    return sorted(steps, key=lambda s: s.t)


@dataclass
class ElevatorSummary:
    """What an elevator run did: simulated seconds, frames rendered, and the event log."""

    seconds: float
    frames: int
    events: list[dict]
    out: str | None


def run_elevator(classes: Sequence[str], recognizer: Recognizer | None = None, source: FrameSource | None = None,
                 script: Sequence[ScriptStep] | None = None, out: str | Path | None = None, headless: bool = False,
                 references: Sequence[np.ndarray] | None = None, fps: float | None = None,
                 floors_per_second: float = 1.0, door_seconds: float = 2.0, stable_frames: int = 8,
                 min_confidence: float = 0.7, window: int = 5, threshold: float = 0.6,
                 roi_fraction: float = 0.75, max_seconds: float = 120.0, snapshot: int | None = None) -> ElevatorSummary:
    """Drive an :class:`Elevator` (one floor per class) with stable gestures.

    Input is either ``source`` (frames classified by ``recognizer``) or ``script`` (timed gestures; with a
    ``recognizer`` and ``references`` the reference photo of each gesture is the camera frame and is
    classified for real, otherwise the scripted gesture is taken as recognised with confidence 1).

    Args:
        classes: class names, one floor each (floor k = class k).
        fps: simulation frame rate (default: the source's, or 10 for a script).
        floors_per_second, door_seconds: the car's speed and how long its doors stay open.
        stable_frames, min_confidence: a request needs the same smoothed label for ``stable_frames`` frames
            with smoothed confidence >= ``min_confidence``.
        window, threshold: temporal smoothing (see :class:`TemporalSmoother`).
        max_seconds: stop the simulation after this many simulated seconds.
        out: folder for ``events.jsonl`` and ``elevator.mp4``; required when ``headless``.
    """
    if (source is None) == (script is None):
        raise ConfigError("the elevator needs exactly one input: a --source or a --script.")
    if source is not None and recognizer is None:
        raise ConfigError("a --source needs a --model to recognise its gestures.")
    fps = fps or (source.fps if source is not None else 10.0)
    dt = 1.0 / fps
    car = Elevator(len(classes), floors_per_second, door_seconds)
    smoother = TemporalSmoother(window, threshold)
    stable = StableGesture(stable_frames, min_confidence)
    output = _open_output(out, headless, "events.jsonl", "elevator.mp4", fps, False, snapshot)
    screen = None if headless else Window("sabr elevator (q quits)")
    frames = 0  # frames simulated so far; car.log[:written] already recorded
    written = 0

    def tick(image, gesture: str) -> bool:
        """Advance the car one frame, draw it, record new events; False when the window was closed."""
        nonlocal frames, written
        car.step(dt)
        frames += 1
        view = render_elevator(car, classes, image, gesture)
        if output is not None:
            for e in car.log[written:]:
                output.record(e.to_dict())
            written = len(car.log)
            output.frame(view, f"{frames:06d}")
        return screen is None or screen.show(view, max(1, int(1000 * dt)))

    frame_iter = _script_frames(script, classes, references, fps) if script is not None else \
        ((f.image, None) for f in source)
    drain = script is not None or not source.is_live  # a finite input: let the car finish its queue after it
    try:
        for image, scripted in frame_iter:
            if car.t >= max_seconds:
                break
            gesture = "no gesture"
            if recognizer is not None and image is not None:
                h, w = image.shape[:2]
                pred = recognizer.predict(Roi.centered(w, h, roi_fraction).crop(image)) if scripted is None \
                    else recognizer.predict(image)
                probs = pred.probs
            elif scripted is not None:
                probs = np.eye(len(classes))[scripted]
            else:
                probs = None
                smoother.reset()
                stable.update(Smoothed(None, 0.0))  # no hand in view: a held gesture ends here
            if probs is not None:
                smoothed = smoother.update(probs)
                if smoothed.label is not None:
                    gesture = f"gesture {classes[smoothed.label]}  {100 * smoothed.confidence:.0f}%"
                floor = stable.update(smoothed)
                if floor is not None:
                    car.request(floor)
            if not tick(image, gesture):
                break
        # let the car finish its queue after a script, video or image folder ends (a camera never "ends")
        while drain and (car.pending or car.doors_open or car.moving) and car.t < max_seconds:
            if not tick(None, "no gesture"):
                break
    finally:
        if source is not None:
            source.close()
        if output is not None:
            output.close()
        if screen is not None:
            screen.close()
    return ElevatorSummary(car.t, frames, [e.to_dict() for e in car.log], str(out) if out is not None else None)


def _script_frames(script: Sequence[ScriptStep], classes: Sequence[str], references, fps: float):
    """``(camera image or None, scripted label or None)`` per frame, until the last gesture ends."""
    end = max(s.t + s.hold for s in script)
    for i in range(int(np.ceil(end * fps))):
        t = i / fps
        active = [s for s in script if s.t <= t < s.t + s.hold]
        label = active[-1].label if active else None
        image = references[label] if (references is not None and label is not None) else None
        yield image, label
