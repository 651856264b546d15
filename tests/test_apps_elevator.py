import json

import numpy as np
import pytest

from sabr.apps import Elevator, ElevatorSettings, ScriptStep, read_script, render_elevator, run_elevator
from sabr.errors import ConfigError

from ._apps_fixtures import sign_photos, sign_preprocess, tiny_checkpoint, trained_checkpoint  # noqa: F401 (fixture)


def _stops(car):
    return [e.floor for e in car.log if e.event == "arrive"]


def test_nearest_first_in_travel_direction():
    car = Elevator(10, floors_per_second=1.0, door_seconds=2.0)
    car.request(5)
    car.step(1.0)  # moving up, between floors 1 and 2... at 1.0
    assert car.moving and car.direction == 1 and car.position == pytest.approx(1.0)
    car.request(0)  # behind: served after turning round
    car.request(3)  # ahead: served on the way up
    car.step(30)
    assert _stops(car) == [3, 5, 0]
    arrive = {e.floor: e.t for e in car.log if e.event == "arrive"}
    # 3 floors in 3 s; doors 2 s; 2 floors; doors; 5 floors down
    assert arrive == pytest.approx({3: 3.0, 5: 7.0, 0: 14.0})
    assert not car.pending and not car.moving and not car.doors_open and car.direction == 0


def test_idle_car_takes_nearest_request_first():
    car = Elevator(10, start_floor=4)
    car.request(9)
    car.request(2)
    car.step(60)
    assert _stops(car) == [2, 9]  # 2 is two floors away, 9 five


def test_event_sequence_and_timing():
    car = Elevator(6, floors_per_second=2.0, door_seconds=1.5)
    car.request(4)
    events = car.step(10)
    assert [(e.event, e.floor) for e in events] == [("depart", 0), ("arrive", 4), ("doors_open", 4), ("doors_close", 4)]
    assert [e.t for e in events] == pytest.approx([0.0, 2.0, 2.0, 3.5])
    assert car.current_floor == 4


def test_duplicates_and_current_floor_are_ignored():
    car = Elevator(8, start_floor=2)
    assert car.request(2) is False  # standing there
    assert car.request(6) is True
    assert car.request(6) is False  # already pending
    car.step(2.5)  # passing floor 4.5 going up
    assert car.request(4) is True  # passed by, not stood at: a real request
    car.step(2.5)  # at 6 (t=4), doors open
    assert car.doors_open and car.current_floor == 6
    assert car.request(6) is False
    assert [e.floor for e in car.log if e.event == "request"] == [6, 4]
    with pytest.raises(ConfigError):
        car.request(8)


def test_state_and_bad_arguments():
    car = Elevator(3)
    car.request(2)
    car.step(0.5)
    assert car.pending == [2] and car.position == pytest.approx(0.5) and car.log[0].event == "request"
    with pytest.raises(ConfigError):
        Elevator(1)
    with pytest.raises(ConfigError):
        Elevator(5, floors_per_second=0)


def test_script_debounce_and_event_log(tmp_path):
    script = tmp_path / "gestures.txt"
    script.write_text("# t gesture hold\n0.0 0 1.0\n1.5 4 0.5\n2.5 6 2.0\n3.0 6 1.0\n")
    steps = read_script(script, [str(i) for i in range(10)])
    assert steps[0] == ScriptStep(0.0, 0, 1.0)
    settings = ElevatorSettings(out=tmp_path / "out", headless=True, fps=10, stable_frames=8, min_confidence=0.7,
                                window=3, threshold=0.6)
    summary = run_elevator([str(i) for i in range(10)], script=steps, settings=settings)
    # gesture 0: the current floor, ignored; gesture 4: held 5 frames < 8, ignored; gesture 6 held 2 s: one request
    requests = [e for e in summary.events if e["event"] == "request"]
    assert [r["floor"] for r in requests] == [6]
    assert requests[0]["t"] == pytest.approx(2.5 + 0.7, abs=0.11)
    lines = [json.loads(x) for x in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    assert lines == summary.events
    assert [e["event"] for e in lines] == ["request", "depart", "arrive", "doors_open", "doors_close"]
    assert set(lines[0]) == {"t", "event", "floor"}
    cv2 = pytest.importorskip("cv2")
    cap = cv2.VideoCapture(str(tmp_path / "out" / "elevator.mp4"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == summary.frames
    cap.release()


def test_script_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("0.0 twelve\n")
    with pytest.raises(ConfigError, match="twelve"):
        read_script(bad, ["a", "b"])
    with pytest.raises(ConfigError, match="does not exist"):
        read_script(tmp_path / "missing.txt", ["a", "b"])


def test_render_shows_shaft_and_camera():
    car = Elevator(10)
    car.request(7)
    car.step(1.0)
    camera = np.full((100, 100, 3), 200, dtype=np.uint8)
    view = render_elevator(car, [str(i) for i in range(10)], camera, "gesture 7 95%", height=480)
    assert view.shape[0] == 480 and view.dtype == np.uint8
    assert (view == 200).all(axis=2).sum() > 100 * 100  # the camera frame is in the view


def test_cli_script_without_model(tmp_path, capsys):
    from sabr.cli import main

    script = tmp_path / "s.txt"
    script.write_text("0 3 1.5\n2 1 1.5\n")
    out = tmp_path / "out"
    assert main(["elevator", "--script", str(script), "--floors", "5", "--headless", "--out", str(out),
                 "--floors-per-second", "2", "--door-seconds", "1", "--quiet"]) == 0
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert [e["floor"] for e in events if e["event"] == "arrive"] == [3, 1]
    assert "arrive" in capsys.readouterr().out
    assert main(["elevator", "--script", str(script), "--headless", "--out", str(out)]) == 2  # no model, no --floors


def _two_gesture_checkpoint(images, labels, folder):
    """A compact_cnn trained until it tells ``images`` apart as ``labels`` (the session's tiny checkpoint calls
    every photo 0, the car's own floor, so it would request nothing)."""
    import torch
    from PIL import Image

    pre = sign_preprocess()
    x = torch.stack([pre(Image.fromarray(im)) for im in images])
    return trained_checkpoint(x, torch.tensor(labels), 40, folder / "pruned")


def test_video_source_with_model_requests_the_floors_shown_and_the_car_serves_them(tmp_path):
    from sabr.apps import Recognizer, demo_frames, open_source, write_video
    from sabr.data import open_image

    images = [np.asarray(open_image(f).convert("RGB")) for f in sign_photos(1, [2, 6])]
    rec = Recognizer.from_path(_two_gesture_checkpoint(images, [2, 6], tmp_path))
    assert [rec.predict(im).label for im in images] == [2, 6]  # the gestures shown, as the model sees them
    video = tmp_path / "v.mp4"
    write_video(demo_frames(images, hold=6), video, fps=10)
    settings = ElevatorSettings(out=tmp_path / "out", headless=True, stable_frames=3, min_confidence=0.0,
                                threshold=0.0, window=2)
    summary = run_elevator(rec.classes, rec, source=open_source(video), settings=settings)
    requested = [e["floor"] for e in summary.events if e["event"] == "request"]
    arrived = [e["floor"] for e in summary.events if e["event"] == "arrive"]
    assert requested == [2, 6]  # each gesture held for 6 frames asked for its floor once
    assert arrived == [2, 6]  # the video ended, the car still served every request, on its way up
    times = [e["t"] for e in summary.events]
    assert times == sorted(times)
    assert summary.frames >= 12


def test_window_without_gui_says_what_to_do():
    cv2 = pytest.importorskip("cv2")
    from sabr.apps.loops import Window
    from sabr.errors import SabrError

    try:
        cv2.namedWindow("probe")
        cv2.destroyWindow("probe")
        pytest.skip("this OpenCV build has GUI support")
    except cv2.error:
        pass
    with pytest.raises(SabrError, match="install opencv-python for a window, or use --headless"):
        Window("x")
