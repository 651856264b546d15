"""The applications: real-time gesture recognition and the gesture-driven elevator.

Library entry points (the ``sabr recognize`` and ``sabr elevator`` commands are thin shells over them)::

    from sabr.apps import RecognizeSettings, Recognizer, open_source, recognize
    rec = Recognizer.from_path("runs/my-run", phase="pruned")
    recognize(rec, open_source("demo.mp4"), RecognizeSettings(out="out/", headless=True))

The settings (:class:`RecognizeSettings`, :class:`ElevatorSettings`) are the commands' flags as dataclasses.

Needs OpenCV (``pip install "torch-sabr[apps]"``; ``opencv-python`` instead of the headless build for windows).
"""

from ..app_config import AppSettings, ElevatorSettings, RecognizeSettings
from .elevator import Elevator, Event, render_elevator
from .loops import ElevatorSummary, RecognizeSummary, ScriptStep, read_script, recognize, run_elevator
from .recognizer import ModelInfo, Prediction, Recognizer, load_any, training_data_folder
from .render import draw_recognition, load_references, reference_panel
from .roi import Roi, RoiDragger
from .smoothing import Smoothed, StableGesture, TemporalSmoother
from .sources import FrameSource, SourceError, demo_frames, open_source, write_video

__all__ = [
    "AppSettings", "ElevatorSettings", "RecognizeSettings", "Elevator", "Event", "render_elevator", "ElevatorSummary", "RecognizeSummary", "ScriptStep", "read_script",
    "recognize", "run_elevator", "ModelInfo", "Prediction", "Recognizer", "load_any",
    "training_data_folder", "draw_recognition", "load_references", "reference_panel", "Roi", "RoiDragger",
    "Smoothed", "StableGesture", "TemporalSmoother", "FrameSource", "SourceError", "demo_frames", "open_source",
    "write_video",
]
