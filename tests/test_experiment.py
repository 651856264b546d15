"""load_experiment rebuilds a finished run's splits and preprocessing from its folder."""

import json

import pytest

from sabr import CheckpointError, load_experiment, load_run
from sabr.experiment import evaluate_split


def test_load_experiment_gives_the_runs_exact_splits(runs):
    run = runs["done"]
    exp = load_experiment(run)
    summary = json.loads((run / "summary.json").read_text())
    sizes = tuple(summary["dataset"][k] for k in ("train", "val", "test"))
    assert (len(exp.train), len(exp.val), len(exp.test)) == sizes
    model, meta = load_run(run, "pruned")
    assert exp.preprocess.to_dict() == meta["preprocess"] and str(exp.device) == "cpu"
    assert evaluate_split(exp, model, exp.test)[1] == summary["pruned"]["test_accuracy"]  # the same test images


def test_load_experiment_of_a_folder_without_a_run_says_so(tmp_path):
    with pytest.raises(CheckpointError):
        load_experiment(tmp_path)
