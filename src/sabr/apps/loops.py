"""The two application loops, on screen or headless: :func:`recognize` and :func:`run_elevator`.

Each loop reads frames from a :class:`~sabr.apps.sources.FrameSource`, classifies the ROI with a
:class:`~sabr.apps.recognizer.Recognizer`, smooths the predictions, draws the view, and either shows
it in a window (ROI draggable with the mouse; ``q`` or Esc quits) or writes it to ``out``: an
annotated video (or annotated PNG frames for an image folder) and a JSONL record.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..app_config import ElevatorSettings, RecognizeSettings
from ..calibration import DEFAULT_THRESHOLD
from ..errors import ConfigError, SabrError
from .elevator import Elevator, render_elevator
from .recognizer import Prediction, Recognizer
from .render import draw_recognition
from .roi import Roi, RoiDragger, start_roi
from .output import open_output, Output
from .smoothing import Smoothed, StableGesture, TemporalSmoother
from .sources import Frame, FrameSource, ImageFolderSource

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
        """Close the window."""
        import cv2

        cv2.destroyWindow(self.title)


class _Fps:
    """Frames per second over the last ``n`` frames (wall clock)."""

    def __init__(self, n: int = 20) -> None:
        self.times: list[float] = []
        self.n = n

    def tick(self) -> float | None:
        """Count one frame; the rate so far (``None`` before the second frame)."""
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


def recognize(recognizer: Recognizer, source: FrameSource, settings: RecognizeSettings | None = None,
              references: Sequence[np.ndarray] | None = None) -> RecognizeSummary:
    """Classify the ROI of every frame of ``source``.

    Args:
        recognizer: the model and its training preprocessing.
        source: the frames (webcam, video or image folder); closed at the end.
        settings: the loop's options (default: :class:`~sabr.app_config.RecognizeSettings`'s defaults); it reads
            ``out`` (folder for ``predictions.jsonl`` and the annotated ``annotated.mp4``, ``frames/*.png``
            for an image folder; required when ``headless``), ``headless`` (no window; otherwise frames are
            shown and the ROI can be dragged), ``roi`` (``"x,y,w,h"`` in pixels; default a centred square of
            ``roi_fraction`` of the shorter side), ``window`` and ``threshold`` (temporal smoothing over
            ``window`` frames; below ``threshold``, ``None``: :meth:`Recognizer.threshold`, nothing is claimed; nor
            on frames its OOD check rejects), ``smooth_stills`` (smooth across a folder's files), ``max_frames`` (stop
            after this many frames) and ``snapshot`` (index of a frame to also save as ``out/snapshot.png``).
        references: one RGB image per class for the reference panel (``None``: empty frames).
    """
    s = settings or RecognizeSettings()
    roi = Roi.parse(s.roi) if s.roi else None
    smoother = TemporalSmoother(s.window, recognizer.threshold(s.threshold))
    stills = isinstance(source, ImageFolderSource)
    output = open_output(s.out, s.headless, "predictions.jsonl", "annotated.mp4", source.fps, stills, s.snapshot,
                         s.model)
    fps_meter = _Fps()
    classes = recognizer.classes
    screen, dragger = None, None
    latencies: list[float] = []
    try:
        for frame in _limit(source, s.max_frames):
            h, w = frame.image.shape[:2]
            if dragger is None or dragger.frame_size != (w, h):
                dragger = RoiDragger(start_roi(roi, w, h, s.roi_fraction), (w, h))
                if not s.headless and screen is None:
                    screen = Window("sabr recognize (drag the box; q quits)", dragger)
            box = dragger.roi
            pred = recognizer.predict(box.crop(frame.image))
            if stills and not s.smooth_stills:
                smoother.reset()  # separate photos, not a video: each is judged alone
            smoothed = smoother.update(pred.evidence)
            latencies.append(pred.latency_ms)
            fps = fps_meter.tick()
            view = draw_recognition(frame.image, box, pred, smoothed, classes, fps, references)
            if output is not None:
                output.record(_prediction_row(frame, pred, smoothed, classes, box))
                output.frame(view, frame.name)
            if screen is not None and not screen.show(view):
                break
    finally:
        _close(source, output, screen)
    lat = np.asarray(latencies)
    return RecognizeSummary(len(lat), float(np.median(lat)) if len(lat) else None,
                            float(np.percentile(lat, 90)) if len(lat) else None,
                            str(s.out) if s.out is not None else None)


def _close(*things: object) -> None:
    """Close each of ``things`` that is not ``None``, in order."""
    for thing in things:
        if thing is not None:
            thing.close()


def _limit(source: FrameSource, max_frames: int | None) -> Iterator[Frame]:
    for i, frame in enumerate(source):
        if max_frames is not None and i >= max_frames:
            return
        yield frame


def _prediction_row(frame: Frame, pred: Prediction, smoothed: Smoothed, classes: Sequence[str], roi: Roi) -> dict:
    """One JSONL line: ``frame``, ``label``, ``confidence``, ``top3``, ``known``, ``ood_score``,
    ``smoothed_label``, ``latency_ms``."""
    return {
        "frame": frame.index,
        "name": frame.name,
        "label": classes[pred.label],
        "confidence": round(pred.confidence, 5),
        "top3": [[classes[k], round(p, 5)] for k, p in pred.top3],
        "known": pred.known,
        "ood_score": None if pred.ood_score is None else round(pred.ood_score, 5),
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
        if not (math.isfinite(t) and math.isfinite(hold) and t >= 0 and hold > 0):
            raise ConfigError(f"{path}:{n}: the time must be a finite number >= 0 and the hold one > 0, got "
                              f"{line!r}.")
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


class _GestureInput:
    """Turns each frame (or scripted gesture) into a floor request: classify, smooth, wait until stable."""

    def __init__(self, classes: Sequence[str], recognizer: Recognizer | None, s: ElevatorSettings,
                 stills: bool = False) -> None:
        self.classes, self.recognizer, self.roi_fraction = classes, recognizer, s.roi_fraction
        threshold = recognizer.threshold(s.threshold) if recognizer is not None else \
            DEFAULT_THRESHOLD if s.threshold is None else s.threshold
        self.smoother = TemporalSmoother(s.window, threshold)
        self.stable = StableGesture(s.stable_frames, threshold if s.min_confidence is None else s.min_confidence)
        self.stills = stills and not s.smooth_stills  # each file of an image folder judged alone

    def update(self, image: np.ndarray | None, scripted: int | None) -> tuple[int | None, str]:
        """``(floor to request or None, gesture caption)`` for one frame."""
        gesture = "no gesture"
        if self.recognizer is not None and image is not None:
            h, w = image.shape[:2]
            crop = Roi.centered(w, h, self.roi_fraction).crop(image) if scripted is None else image
            probs = self.recognizer.predict(crop).evidence
            if self.stills:
                self.smoother.reset()
        elif scripted is not None:
            probs = np.eye(len(self.classes))[scripted]
        else:
            self.smoother.reset()
            self.stable.update(Smoothed(None, 0.0))  # no hand in view: a held gesture ends here
            return None, gesture
        smoothed = self.smoother.update(probs)
        if smoothed.label is not None:
            gesture = f"gesture {self.classes[smoothed.label]}  {100 * smoothed.confidence:.0f}%"
        return self.stable.update(smoothed), gesture


class _ElevatorView:
    """Advances the car one frame at a time, draws it, records its new events, shows the view."""

    def __init__(self, car: Elevator, classes: Sequence[str], fps: float, output: Output | None,
                 screen: Window | None) -> None:
        self.car, self.classes, self.dt, self.output, self.screen = car, classes, 1.0 / fps, output, screen
        self.frames = 0  # frames simulated so far
        self.written = 0  # car.log[:written] already recorded

    def tick(self, image: np.ndarray | None, gesture: str) -> bool:
        """One frame; ``False`` when the window was closed."""
        self.car.step(self.dt)
        self.frames += 1
        view = render_elevator(self.car, self.classes, image, gesture)
        if self.output is not None:
            for e in self.car.log[self.written:]:
                self.output.record(e.to_dict())
            self.written = len(self.car.log)
            self.output.frame(view, f"{self.frames:06d}")
        return self.screen is None or self.screen.show(view, max(1, int(1000 * self.dt)))


def run_elevator(classes: Sequence[str], recognizer: Recognizer | None = None, source: FrameSource | None = None,
                 script: Sequence[ScriptStep] | None = None, references: Sequence[np.ndarray] | None = None,
                 settings: ElevatorSettings | None = None) -> ElevatorSummary:
    """Drive an :class:`Elevator` (one floor per class) with stable gestures.

    Input is either ``source`` (frames classified by ``recognizer``) or ``script`` (timed gestures; with a
    ``recognizer`` and ``references`` the reference photo of each gesture is the camera frame and is
    classified for real, otherwise the scripted gesture is taken as recognised with confidence 1).

    Args:
        classes: class names, one floor each (floor k = class k).
        settings: the simulation's options (default: :class:`~sabr.app_config.ElevatorSettings`'s defaults); it
            reads ``fps`` (simulation frame rate; ``None``: the source's, or 10 for a script),
            ``floors_per_second`` and ``door_seconds`` (the car's speed and how long its doors stay open),
            ``stable_frames`` and ``min_confidence`` (a request needs the same smoothed label for
            ``stable_frames`` frames with smoothed confidence >= ``min_confidence``, ``None``: the claim
            threshold), ``window``, ``threshold``, ``smooth_stills`` (see :func:`recognize`), ``roi_fraction``
            (the centred square classified in a source's frames), ``max_seconds`` (simulated time limit), ``out`` (folder
            for ``events.jsonl`` and ``elevator.mp4``; required when ``headless``), ``headless`` and ``snapshot``.
    """
    s = settings or ElevatorSettings()
    if (source is None) == (script is None):
        raise ConfigError("the elevator needs exactly one input: a --source or a --script.")
    if source is not None and recognizer is None:
        raise ConfigError("a --source needs a --model to recognise its gestures.")
    fps = s.fps or (source.fps if source is not None else 10.0)
    car = Elevator(len(classes), s.floors_per_second, s.door_seconds)
    gestures = _GestureInput(classes, recognizer, s, isinstance(source, ImageFolderSource))
    output = open_output(s.out, s.headless, "events.jsonl", "elevator.mp4", fps, False, s.snapshot, s.model)
    view = _ElevatorView(car, classes, fps, output, None if s.headless else Window("sabr elevator (q quits)"))
    frame_iter = _script_frames(script, classes, references, fps) if script is not None else \
        ((f.image, None) for f in source)
    drain = script is not None or not source.is_live  # a finite input: let the car finish its queue after it
    try:
        for image, scripted in frame_iter:
            if car.t >= s.max_seconds:
                break
            floor, gesture = gestures.update(image, scripted)
            if floor is not None:
                car.request(floor)
            if not view.tick(image, gesture):
                break
        # let the car finish its queue after a script, video or image folder ends (a camera never "ends")
        while drain and (car.pending or car.doors_open or car.moving) and car.t < s.max_seconds:
            if not view.tick(None, "no gesture"):
                break
    finally:
        _close(source, output, view.screen)
    return ElevatorSummary(car.t, view.frames, [e.to_dict() for e in car.log], str(s.out) if s.out is not None else None)


def _script_frames(script: Sequence[ScriptStep], classes: Sequence[str], references: Sequence[np.ndarray] | None,
                   fps: float) -> Iterator[tuple[np.ndarray | None, int | None]]:
    """``(camera image or None, scripted label or None)`` per frame, until the last gesture ends."""
    end = max(s.t + s.hold for s in script)
    for i in range(int(np.ceil(end * fps))):
        t = i / fps
        active = [s for s in script if s.t <= t < s.t + s.hold]
        label = active[-1].label if active else None
        image = references[label] if (references is not None and label is not None) else None
        yield image, label
