"""benchmarks/: plain scripts on sabr's public API; compare.py's protocol (the peers: tests/test_baselines.py)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import compare  # the checkout's root is on sys.path under pytest: a module, not a path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_uses_only_public_sabr_names_and_no_path_tricks(script):
    tree = ast.parse(script.read_text())
    others = {p.stem for p in SCRIPTS} - {"compare"}  # compare.py's bases, scheduler and statistics are shared
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


class NoTest(dict):
    """A record whose keys holding 'test' fail the test when read."""

    def __getitem__(self, key):
        assert "test" not in key, f"a choice read the test figure {key!r}"
        return super().__getitem__(key)

    def get(self, key, default=None):
        return self[key] if key in self else default


def trial(value, val, sparsity=0.9, target=0.9):
    return NoTest(peer="p", value=value, val_accuracy=val, sparsity=sparsity, target=target, test_accuracy=0.1)


def test_choices_read_validation_only():
    assert compare.choose_trial([trial(1, 0.8), trial(2, 0.85), trial(3, 0.85)])["value"] == 2  # ties: smaller
    # a trial that missed SABR's sparsity by more than the tolerance is not chosen while another hit it
    assert compare.choose_trial([trial(1, 0.99, sparsity=0.8), trial(2, 0.7)])["value"] == 2
    chosen = {"a": [trial(1, 0.80), trial(1, 0.82)], "b": [trial(1, 0.9), trial(1, 0.8)], "c": [trial(1, 0.95)] * 2}
    assert compare.strongest_peers(chosen) == ["c", "b"]


def test_paired_differences_t_interval_and_verdict():
    mean, low, high = compare.t_interval([0.01, 0.02, 0.03])
    assert mean == pytest.approx(0.02) and (low, high) == pytest.approx((0.02 - 0.02484, 0.02 + 0.02484), abs=1e-4)
    assert compare.verdict(0.001, 0.01) == "ahead" and compare.verdict(-0.01, -0.001) == "behind"
    assert compare.verdict(-0.01, 0.01) == "tied"
    sabr = [{"name": "sabr", "seed": s, "test_accuracy": 0.90, "sparsity": 0.95} for s in range(3)]
    peer = [{"name": "p", "seed": s, "test_accuracy": 0.88 + 0.001 * s, "sparsity": 0.95} for s in range(3)]
    (row,) = compare.paired(sabr + peer, 10_000)
    assert row["test_accuracy"]["verdict"] == "ahead" and row["test_accuracy"]["images"] == pytest.approx(190)
    assert row["sparsity"]["verdict"] == "tied" and row["seeds"] == [0, 1, 2]


def test_the_ablations_are_sabr_run_with_the_adaptation_off(tmp_path):
    spec = compare.CONFIGS["fashion-lenet5"]
    sabr = compare.sabr_config(spec, 0, tmp_path, "sabr", 1, "cpu").command()
    assert sabr.startswith("sabr run --data /usr/share/datasets/fashion-mnist --model lenet5 --image-size 28 "
                           "--train-per-class 1200 --val-per-class 200 --base-checkpoint")
    assert "--epochs-sabr 10" in sabr and "--teta1" not in sabr and "--fast-start" not in sabr
    assert "--finetune-epochs" not in sabr  # phase 4's default ramp takes the other 10 of the method's 20 epochs
    assert compare.sabr_config(spec, 0, tmp_path, "sabr", 1, "cpu").finetunes == compare.EPOCHS - 10
    fixed = compare.sabr_config(spec, 0, tmp_path, "ablation_l1_fixed", 1, "cpu")
    ramp = compare.sabr_config(spec, 0, tmp_path, "ablation_l1_ramp", 1, "cpu")
    assert (fixed.growth_rate, fixed.decrease_rate, fixed.fast_start, fixed.teta1) == (1.0, 1.0, 1.0, 5e-4)
    assert (ramp.growth_rate, ramp.decrease_rate, ramp.accuracy_threshold, ramp.fast_start) == (1.15, 1.0, 1.0, 1.0)
    assert fixed.k_epoch == ramp.k_epoch > 10**6


FAKE_VAL = {"gmp_layer": 0.80, "gmp_global": 0.83, "oneshot_layer": 0.70, "l1_fixed": 0.84, "l1_ramp": 0.60}


def fakes(calls):
    """Task functions that train nothing: figures from their arguments."""
    def base(spec, seed, folder, threads, device):
        calls.append(("base", seed))
        return {"val_accuracy": 0.9, "test_accuracy": 0.9, "val_plateau": 0.9, "epochs": 1, "train": 10, "val": 10,
                "test": 10_000}

    def sabr(spec, seed, folder, threads, device, name):
        calls.append((name, seed))
        return {"sparsity": 0.95 + 0.001 * seed, "val_accuracy": 0.89, "within_budget": True,
                "test_accuracy": 0.89, "command": f"sabr run {name}"}

    def trial_(spec, seed, folder, threads, device, peer, value, target):
        calls.append((peer, seed, value))
        val = FAKE_VAL[peer] + (0.01 if value == compare.GRIDS[compare.PEERS[peer]][1] else 0)
        return {"peer": peer, "value": value, "target": target, "val_accuracy": val, "sparsity": target,
                "command": "c"}

    def final(spec, seed, folder, threads, device, trial):
        calls.append(("final", trial["peer"], seed))
        return {"test_accuracy": 0.85}
    return {"base": base, "sabr": sabr, "trial": trial_, "final": final}


def test_quick_protocol_schedule_schema_and_resume(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(compare, "TASKS", fakes(calls))
    argv = ["--quick", "--jobs", "1", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")]
    compare.main(argv)
    a = json.loads((tmp_path / "o" / "quick-a.json").read_text())
    assert {"config", "command", "wall_seconds", "machine", "protocol_commit", "methods", "paired"} <= set(a)
    for m in a["methods"]:
        assert {"name", "seed", "target", "sparsity", "val_accuracy", "test_accuracy", "base_test_accuracy",
                "command"} <= set(m)
    assert [m["target"] for m in a["methods"] if m["name"].startswith("sabr")] == [None, None]
    peers = [m for m in a["methods"] if m["target"] == "sabr"]
    assert len(peers) == 10 and all(m["value"] == compare.GRIDS[m["hyper_parameter"]][1] for m in peers)
    # the grid on seed 0 only, the chosen value once on seed 1; trials hit SABR's own sparsity of their seed
    assert sum(1 for c in calls if len(c) == 3 and c[1] == 0 and c[0] != "final") == 5 * 3 + 2 * 3  # quick-a, quick-b
    assert sorted(c[0] for c in calls if len(c) == 3 and c[0] != "final" and c[1] == 1) == sorted(
        [*compare.PEERS, "l1_fixed", "gmp_global"])
    b = json.loads((tmp_path / "o" / "quick-b.json").read_text())
    assert {m["name"] for m in b["methods"] if m["target"] == "sabr"} == {"l1_fixed", "gmp_global"}  # by validation
    assert {p["method"] for p in b["paired"]} == {"ablation_l1_fixed", "ablation_l1_ramp", "l1_fixed", "gmp_global"}
    # a second call trains nothing and keeps the results
    calls.clear()
    compare.main(argv)
    assert calls == [] and json.loads((tmp_path / "o" / "quick-a.json").read_text())["methods"] == a["methods"]


@pytest.mark.slow  # every task trained for real on tiny digits splits: a few minutes on a busy 2-core machine
def test_quick_runs_as_a_plain_script(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--quick", "--jobs", "2", "--work",
           str(tmp_path / "w"), "--out", str(tmp_path / "o")]
    subprocess.run(cmd, check=True, timeout=1200, cwd=tmp_path)
    results = json.loads((tmp_path / "o" / "quick-b.json").read_text())
    assert len([m for m in results["methods"] if m["target"] == "sabr"]) == 4
    assert all(abs(m["sparsity"] - s["sparsity"]) <= compare.TOLERANCE for m in results["methods"]
               for s in results["methods"] if m["target"] == "sabr" and s["name"] == "sabr" and s["seed"] == m["seed"])
    assert (tmp_path / "o" / "quick-a.png").is_file()


def test_a_results_file_of_an_earlier_protocol_is_not_a_session_of_this_run(tmp_path):
    command = "python benchmarks/compare.py"
    (tmp_path / "fashion-lenet5.json").write_text(json.dumps(
        {"command": command, "protocol": "1.0.0", "wall_seconds": 7937.6, "protocol_commit": "e394c5d"}))
    assert compare.earlier_wall(tmp_path, {"fashion-lenet5": {}}, command) == {"fashion-lenet5": 0.0}
    (tmp_path / "fashion-lenet5.json").write_text(json.dumps(
        {"command": command, "protocol": compare.PROTOCOL, "wall_seconds": 100.0}))
    assert compare.earlier_wall(tmp_path, {"fashion-lenet5": {}}, command) == {"fashion-lenet5": 100.0}  # resumed
    assert compare.earlier_wall(tmp_path, {"fashion-lenet5": {}}, command + " --seeds 3") == {"fashion-lenet5": 0.0}
