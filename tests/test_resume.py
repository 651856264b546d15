"""Exact resume: a run killed with SIGKILL in phase 2 and resumed ends with the uninterrupted run's figures."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sabr.cli import main
from sabr.errors import CheckpointError
from sabr.resume import load_state, optimizer_state, rng_state, save_state, set_rng_state
from sabr.rundir import RunDir

STATE_FILE = RunDir.RESUME

SRC = Path(__file__).resolve().parents[1] / "src"
# `sabr run` in a subprocess, slowed down after every saved epoch so that the test can kill it mid-phase
SLOW_RUN = """
import sys, time
from sabr.rundir import RunDir
save = RunDir.save_resume
RunDir.save_resume = lambda self, state: (save(self, state), time.sleep(0.4))
from sabr.cli import main
sys.exit(main(sys.argv[1:]))
"""
FLAGS = ["--model", "lenet5", "--image-size", "16", "--max-per-class", "20", "--epochs-base", "2",
         "--epochs-sabr", "4", "--batch-size", "32", "--sweep", "0.2", "--device", "cpu"]


def test_state_round_trip_restores_optimizer_and_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_state(tmp_path / "s.safetensors", {"optimizer": opt.state_dict(), "rng": rng_state(), "x": float("inf")})
    expected = (random.random(), np.random.rand(), torch.rand(1))
    state = load_state(tmp_path / "s.safetensors")
    set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    opt2.load_state_dict(optimizer_state(state["optimizer"]))
    assert opt2.param_groups[0]["lr"] == 0.01 and opt2.param_groups[0]["betas"] == (0.9, 0.999)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert state["x"] == float("inf")


def test_damaged_state_is_refused(tmp_path):
    bad = tmp_path / STATE_FILE
    bad.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable sabr resume state"):
        load_state(bad)


def _rewrite_metadata(path: Path, edit) -> None:
    """Replace the JSON metadata of the resume state ``path`` by ``edit(metadata)`` (its tensors kept)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={"sabr_resume": json.dumps(edit(json.loads(meta["sabr_resume"])))})


def _set(key, value):
    def edit(payload):
        payload["state"][key] = value
        return payload
    return edit


def _unknown_tensor(payload):
    model = payload["state"]["model"]
    model[next(iter(model))] = {"__tensor__": "no.such.tensor"}
    return payload


def _missing_optimizer(payload):
    del payload["state"]["optimizer"]
    return payload


@pytest.mark.parametrize("edit, named", [
    (lambda payload: [payload], "list"),  # a list payload
    (_set("epoch", "x"), "'x'"),
    (_unknown_tensor, "no.such.tensor"),
    (_missing_optimizer, "'optimizer'"),
], ids=["list-payload", "epoch-x", "unknown-tensor", "missing-key"])
def test_damaged_resume_metadata_is_refused_in_one_sentence(runs, tmp_path, capsys, edit, named):
    folder = tmp_path / "run"
    shutil.copytree(runs["killed"], folder)
    _rewrite_metadata(folder / STATE_FILE, edit)
    capsys.readouterr()
    assert main(["run", "--quiet", "--resume", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "damaged" in err and named in err and "--overwrite" in err, err
    assert "\n" not in err and "Traceback" not in err
    assert not (folder / "summary.json").exists()  # nothing was trained or written


def test_a_resumed_run_trains_only_the_epochs_left(tmp_path, monkeypatch):
    """Killed after phase 2's first epoch, the run resumes there: it trains none of phase 1 and only phase 2's
    remaining epochs (counted twice: the epochs it saves, and every optimizer step it takes)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    flags = ["--quiet", "--max-per-class", "10", "--epochs-base", "2", "--epochs-sabr", "3", "--patience", "10",
             "--sweep", "0.2", "--finetune-epochs", "0", "--device", "cpu", "--out", str(tmp_path / "run")]
    save, saved, steps = RunDir.save_resume, [], []

    def recording_save(self, state):
        save(self, state)
        saved.append((state.phase, state.epoch))
        if (state.phase, state.epoch) == ("sabr", 1) and not resuming:
            raise KeyboardInterrupt  # as a SIGINT after the epoch's state was written

    monkeypatch.setattr(RunDir, "save_resume", recording_save)
    hook = register_optimizer_step_post_hook(lambda *args: steps.append(1))
    try:
        resuming = False
        assert main(["run", *flags]) == 130
        assert saved == [("base", 1), ("base", 2), ("sabr", 1)]
        per_epoch = len(steps) / 3  # every epoch takes the same number of steps (the same training split)
        saved.clear(), steps.clear()
        resuming = True
        assert main(["run", "--quiet", "--resume", str(tmp_path / "run")]) == 0
    finally:
        hook.remove()
    sabr_epochs = (tmp_path / "run" / "history_sabr.csv").read_text().count("\n") - 1
    assert sabr_epochs >= 2
    assert [(p, e) for p, e in saved if p != "budget"] == [("sabr", e) for e in range(2, sabr_epochs + 1)]
    assert len(steps) == (sabr_epochs - 1) * per_epoch  # no step of phase 1, none of phase 2's first epoch


def _figures(run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    sabr = json.loads((run_dir / "sabr_state.json").read_text())
    return {"base": s["base"], "sabr": s["sabr"], "pruned": s["pruned"], "curve": s["curve"], "layers": s["layers"],
            "budget": s["budget"],  # its floor comes from the base's plateau, kept in the resume state
            "lambdas": sabr["lambdas"], "history": sabr["history"], "frozen": sabr["frozen"]}


@pytest.mark.slow
def test_sigkill_in_phase_2_then_resume_matches_uninterrupted_run(tmp_path):
    # bit-exact equality needs the same number of CPU threads in the killed process and in this one
    # (other tests may have changed this process's count)
    threads = torch.get_num_threads()
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(threads)}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, "run", "--quiet", "--out", str(killed), *FLAGS],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_file, seen = killed / STATE_FILE, None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if state_file.is_file():
            try:
                state = load_state(state_file)
            except CheckpointError:  # never expected: the file is replaced atomically
                raise
            seen = (state["phase"], state["epoch"])
            if seen[0] == "sabr" and seen[1] >= 1:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert seen and seen[0] == "sabr", f"the run was not caught in phase 2 (last state {seen})"
    assert not (killed / "summary.json").exists() and not (killed / "sabr.safetensors").exists()

    # an uninterrupted run with the same settings, in this process, meanwhile
    whole = tmp_path / "whole"
    assert main(["run", "--quiet", "--out", str(whole), *FLAGS]) == 0

    assert main(["run", "--quiet", "--resume", str(killed)]) == 0
    assert _figures(killed) == _figures(whole)
    assert not state_file.exists()  # the run is complete
    assert main(["run", "--quiet", "--resume", str(killed)]) == 2  # nothing left to resume; nothing rewritten
    assert _figures(killed) == _figures(whole)


def test_resume_refuses_changed_settings_and_missing_runs(tmp_path, capsys):
    assert main(["run", "--quiet", "--resume", str(tmp_path), "--epochs-base", "4"]) == 2
    assert "leave out --epochs-base" in capsys.readouterr().err
    assert main(["run", "--quiet", "--resume", str(tmp_path / "nothing")]) == 2
    assert "holds no run to resume" in capsys.readouterr().err
