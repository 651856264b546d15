"""benchmarks/: plain scripts on sabr's public API; compare.py's own logic (the peers are tests/test_baselines.py)."""

import ast
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sabr import RunConfig
from sabr.pipeline import prepare, train_sabr

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_uses_only_public_sabr_names_and_no_path_tricks(script):
    tree = ast.parse(script.read_text())
    others = {p.stem for p in SCRIPTS}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path":
            assert not (isinstance(node.value, ast.Name) and node.value.id == "sys"), "sys.path is edited"
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.module.split(".")[0] not in others, f"imports the benchmark {node.module}"
            if node.module.split(".")[0] == "sabr":
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"imports private names {private} from {node.module}"
        if isinstance(node, ast.Import):
            assert not [a.name for a in node.names if a.name.split(".")[0] in others]


def _result() -> dict:
    method = {"name": "gmp", "sparsity": 0.8, "test_accuracy": 0.85, "epochs": 4, "seconds": 1.0,
              "peak_memory_mib": 100.0, "accuracy_at_matched_sparsity": 0.85, "sparsity_within_1pt": None,
              "curve": [[0.8, 0.85], [0.9, 0.7]]}
    return {"config": "tiny", "dataset": "digits", "model": "compact_cnn", "image_size": 8, "train": 10, "val": 5,
            "test": 5, "epochs_base": 1, "epoch_budget": 4, "teta1": 0.1, "device": "cpu", "torch_threads": 1,
            "base_test_accuracy": 0.9, "matched_sparsity": 0.8, "epoch_time_ratio": 1.1, "plain_epoch_seconds": 1.0,
            "sabr_epoch_seconds": 1.1, "sabr_frozen": "0/3", "methods": [method]}


@pytest.mark.slow  # a fresh interpreter importing torch and matplotlib: seconds
def test_compare_runs_as_a_plain_script(tmp_path):
    (tmp_path / "tiny.json").write_text(json.dumps(_result()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--report", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| gmp | 80.00% | 85.00% | -5.00 pt |" in out.stdout
    assert (tmp_path / "tiny.png").stat().st_size > 0


@pytest.mark.slow
def test_sabr_ft_starts_from_sabr_snapshot_and_keeps_the_budget():
    from benchmarks import compare  # the checkout's root is on sys.path under pytest: a module, not a path

    exp = prepare(RunConfig(max_per_class=30, epochs_base=1, teta1=0.1, device="cpu"), progress=False)
    base = exp.new_model()
    before = copy.deepcopy(base.state_dict())
    sabr = compare.run_sabr(exp, base, epochs=3, snapshot_at=1)
    assert len(sabr["snapshot"]["rows"]) == 1
    # the snapshot is what a 1-epoch phase 2 ends with: phase 2 is deterministic for a seed
    torch.manual_seed(0)
    short, _, _ = train_sabr(exp, copy.deepcopy(base), epochs=1, progress=False)
    snapshot = sabr["snapshot"]["model"].state_dict()
    for name, t in short.state_dict().items():
        assert torch.equal(t, snapshot[name]), name
    ft = compare.run_sabr_ft(exp, base, epochs=3, ft_epochs=2, snapshot=sabr["snapshot"])
    assert ft["epochs"] == 3
    assert ft["sparsity"] > 0
    for name, t in base.state_dict().items():
        assert torch.equal(t, before[name]), name
