"""Issue 35 end to end: on the default run's pruned model (98% zeros), the recogniser claims the right digit on a
video of the run's TEST digits, the elevator arrives at 3 then 7, and blank and noise frames are not claimed.

The threshold and temperature come from the model's metadata (fitted by `sabr run` on validation), never from here.
"""

import pytest

from benchmarks.apps_check import check
from sabr.cli import main


@pytest.mark.slow
def test_the_default_runs_pruned_model_drives_the_apps(tmp_path):
    pytest.importorskip("cv2")
    run = tmp_path / "default"
    assert main(["run", "--quiet", "--seed", "0", "--threads", "1", "--out", str(run)]) == 0  # the default run
    r = check(run, "pruned", tmp_path / "videos")
    assert r["calibration"]["temperature"] != 1.0 and "ece_val_after" in r["calibration"]  # fitted, not defaults
    assert r["right_claimed_last20"]["3"] >= 15 and r["right_claimed_last20"]["7"] >= 15, r
    assert r["arrivals"] == [3, 7], r
    assert r["background_frames"] == 60 and r["background_claimed"] <= 3, r
