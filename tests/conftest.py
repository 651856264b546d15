import shutil
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _threads():
    torch.manual_seed(0)
    yield


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test saying why."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not present (the shared data folder sits beside the checkout)")
    return path


TINY = ["--quiet", "--max-per-class", "10", "--epochs-base", "1", "--epochs-sabr", "1", "--sweep", "0.2",
        "--device", "cpu"]
"""``sabr run`` flags for a real run of a few seconds (digits, 10 images per class)."""


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny real run interrupted before its budget search saved anything (``killed``: config, checkpoints,
    phase 2's resume state) and the same run resumed to the end (``done``)."""
    root = tmp_path_factory.mktemp("tiny-runs")
    from sabr.cli import main
    from sabr.rundir import RunDir

    save = RunDir.save_resume

    def save_until_the_search(self, state):
        if state.phase == "budget":
            raise KeyboardInterrupt
        save(self, state)

    mp = pytest.MonkeyPatch()
    mp.setattr(RunDir, "save_resume", save_until_the_search)
    assert main(["run", *TINY, "--out", str(root / "done")]) == 130
    mp.undo()
    shutil.copytree(root / "done", root / "killed")
    assert main(["run", "--quiet", "--resume", str(root / "done")]) == 0
    return {"killed": root / "killed", "done": root / "done"}
