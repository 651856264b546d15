import numpy as np
import pytest

from sabr.apps import Roi, RoiDragger
from sabr.data import open_image
from sabr.errors import ConfigError

from ._apps_fixtures import sign_photos


def test_centered_square_default():
    roi = Roi.centered(320, 240, 0.75)
    assert (roi.width, roi.height) == (180, 180)
    assert (roi.x, roi.y) == (70, 30)
    assert Roi.centered(100, 100, 1.0) == Roi(0, 0, 100, 100)
    with pytest.raises(ConfigError):
        Roi.centered(100, 100, 1.5)


def test_parse_and_errors():
    assert Roi.parse("1,2,30,40") == Roi(1, 2, 30, 40)
    with pytest.raises(ConfigError, match="x,y,w,h"):
        Roi.parse("1,2,3")
    with pytest.raises(ConfigError):
        Roi.parse("0,0,0,5")


def test_clamp_keeps_box_inside_frame():
    assert Roi(-10, -5, 50, 50).clamped(100, 80) == Roi(0, 0, 50, 50)
    assert Roi(90, 70, 50, 50).clamped(100, 80) == Roi(50, 30, 50, 50)
    assert Roi(0, 0, 500, 500).clamped(100, 80) == Roi(0, 0, 100, 80)


def test_crop_of_a_real_photo():
    image = np.asarray(open_image(sign_photos(1, [5])[0]).convert("RGB"))
    crop = Roi(10, 20, 40, 30).crop(image)
    assert crop.shape == (30, 40, 3)
    np.testing.assert_array_equal(crop, image[20:50, 10:50])
    assert Roi(80, 80, 40, 40).crop(image).shape == (40, 40, 3)  # clamped, never smaller


def test_dragging_moves_box_only_when_grabbed_inside():
    d = RoiDragger(Roi(10, 10, 20, 20), (100, 100))
    d.press(5, 5)  # outside: no drag
    assert not d.dragging
    assert d.move(50, 50) == Roi(10, 10, 20, 20)
    d.press(15, 12)  # inside, 5 px right / 2 px below the corner
    assert d.dragging
    assert d.move(40, 42) == Roi(35, 40, 20, 20)
    assert d.move(200, 200) == Roi(80, 80, 20, 20)  # clamped to the frame
    d.release()
    assert d.move(0, 0) == Roi(80, 80, 20, 20)


def test_opencv_mouse_callback():
    cv2 = pytest.importorskip("cv2")
    d = RoiDragger(Roi(0, 0, 10, 10), (50, 50))
    d.on_mouse(cv2.EVENT_LBUTTONDOWN, 5, 5)
    d.on_mouse(cv2.EVENT_MOUSEMOVE, 25, 15)
    d.on_mouse(cv2.EVENT_LBUTTONUP, 25, 15)
    assert d.roi == Roi(20, 10, 10, 10) and not d.dragging
