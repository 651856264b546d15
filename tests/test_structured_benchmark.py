"""benchmarks/structured.py: issue 34's protocol, its schedule, its choices on validation, its statistics."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import structured  # the checkout's root is on sys.path under pytest: a module, not a path

from .test_compare_benchmark import NoTest

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def _plan(tmp_path, recipe=False) -> structured.Plan:
    return structured.Plan(structured.QUICK, tmp_path / "w", tmp_path / "b", 1, "cpu", (0, 1), recipe)


def _kinds(plan) -> list[str]:
    return sorted(t[0].name for t in plan.tasks())


def test_the_schedule_bases_then_sabr_then_peers_at_its_shape_and_groupnorm_tuned_on_the_first_seed(tmp_path):
    plan = _plan(tmp_path)
    assert _kinds(plan) == ["result-base.json"] * 2
    for s in (0, 1):
        _write(plan.base(s) / "result-base.json", {"test_accuracy": 0.9})
    assert _kinds(plan) == ["result-sabr_structured.json"] * 2
    for s in (0, 1):
        _write(plan.folder(s) / "result-sabr_structured.json", {"epochs": 7})
    tasks = plan.tasks()
    peers = [t for t in tasks if t[3].get("name", "").startswith("torch_pruning_")]
    assert all(t[3]["epochs"] == 7 for t in peers)  # as many epochs as SABR's run trained after the base
    assert sorted(t[3]["name"] for t in peers if t[2][1] == 1) == sorted(
        f"torch_pruning_{i}" for i in structured.IMPORTANCES)  # seed 1 waits for seed 0's choice of reg
    trials = [t for t in tasks if "reg" in t[3]]
    assert sorted(t[3]["reg"] for t in trials) == sorted(structured.GROUPNORM_REGS) and not any(
        t[3]["test"] for t in trials)  # the trials read validation only
    for r, val in zip(structured.GROUPNORM_REGS, (0.80, 0.85, 0.85)):
        _write(plan.folder(0) / f"result-trial-groupnorm-{r:g}.json", NoTest(reg=r, val_accuracy=val, test_accuracy=1))
    assert plan.chosen(0)["reg"] == structured.GROUPNORM_REGS[1]  # the best validation; ties: the weaker reg
    later = [t for t in plan.tasks() if t[2][1] == 1 and "reg" in t[3]]
    assert [t[3]["reg"] for t in later] == [structured.GROUPNORM_REGS[1]]
    finals = [t for t in plan.tasks() if t[0].name == "result-torch_pruning_groupnorm.json"]
    assert len(finals) == 1 and finals[0][3]["trial"]["reg"] == structured.GROUPNORM_REGS[1]


def test_the_recipe_is_decided_on_validation_only(tmp_path):
    plan = _plan(tmp_path, recipe=True)
    _write(plan.base(0) / "result-base.json", {})
    assert sorted(t[3]["name"] for t in plan.tasks()) == sorted(f"recipe-{n}" for n in structured.RECIPES)
    figures = {"ramp": (True, 0.80, 0.60), "sabr_then_ramp": (True, 0.84, 0.595), "sabr": (False, 0.9, 0.9)}
    for name, (ok, val, macs) in figures.items():
        _write(plan.folder(0) / f"result-recipe-{name}.json", NoTest(
            within_budget=ok, val_accuracy=val, macs_reduction=macs, epochs=20, params=1, macs=1, command="c",
            test_accuracy=0.5))
    real_read = plan.read
    plan.read = lambda path: None if real_read(path) is None else NoTest(real_read(path))
    choice = structured.recipe_choice(plan)
    # outside the budget does not count; within one point of the most MACs removed, the better validation
    assert choice["chosen"] == "sabr_then_ramp" and "within the budget" in choice["rule"]
    _write(plan.folder(0) / "result-recipe-sabr.json", NoTest(  # as good on validation, in fewer epochs
        within_budget=True, val_accuracy=0.84, macs_reduction=0.595, epochs=18, params=1, macs=1, command="c"))
    assert structured.recipe_choice(plan)["chosen"] == "sabr"


def _row(name, seed, val, test):
    return {"name": name, "seed": seed, "val_accuracy": val, "test_accuracy": test}


def test_paired_intervals_and_the_best_peer_by_validation():
    methods = [_row("sabr_structured", s, 0.9, 0.90 + d) for s, d in enumerate((0.020, 0.021, 0.022))]
    methods += [_row("torch_pruning_magnitude", s, 0.8, 0.90) for s in range(3)]
    methods += [_row("torch_pruning_taylor", s, 0.85, 0.90 + d) for s, d in enumerate((0.02, 0.0, 0.04))]
    paired = {p["method"]: p["test_accuracy"] for p in structured.paired(methods, 10_000)}
    assert paired["torch_pruning_magnitude"]["verdict"] == "ahead"
    assert paired["torch_pruning_magnitude"]["images"] == pytest.approx(210)
    assert paired["torch_pruning_taylor"]["verdict"] == "tied"
    assert structured.best_peer(methods) == "torch_pruning_taylor"


@pytest.mark.slow  # every task for real on tiny digits splits, ONNX exports: under a minute on a busy 2-core machine
def test_quick_runs_as_a_plain_script_and_writes_issue_34s_schema(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "structured.py"), "--quick", "--jobs", "2", "--out",
           str(tmp_path / "o")]
    subprocess.run(cmd, check=True, timeout=1200, cwd=tmp_path)
    results = json.loads((tmp_path / "o" / "quick-structured-fashion-resnet20.json").read_text())
    assert {"model", "image_size", "threads", "command", "wall_seconds", "protocol_commit", "methods"} <= set(results)
    names = {m["name"] for m in results["methods"]}
    assert names == {"dense", "sabr_structured", "torch_pruning_groupnorm",
                     *(f"torch_pruning_{i}" for i in structured.IMPORTANCES)}
    for m in results["methods"]:
        assert {"name", "seed", "importance", "params", "macs", "val_accuracy", "test_accuracy",
                "base_test_accuracy", "latency_ms", "speedup", "command"} <= set(m)
        assert set(m["latency_ms"]) == set(m["speedup"]) == {"eager", "onnxruntime"}
        assert all(set(v) == {"1", "32"} for v in m["latency_ms"].values())
    by_seed = {}
    for m in results["methods"]:
        by_seed.setdefault(m["seed"], {})[m["name"]] = m
    for rows in by_seed.values():  # every Torch-Pruning row has SABR's shape on its seed
        assert all(rows[n]["params"] == rows["sabr_structured"]["params"] for n in rows if n.startswith("torch_"))
    assert rows["sabr_structured"]["command"].startswith("sabr run") and "--structured" in rows["sabr_structured"]["command"]
    assert (tmp_path / "o" / "quick-structured-fashion-resnet20.png").is_file()
