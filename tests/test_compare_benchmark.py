"""benchmarks/: plain scripts on sabr's public API; compare.py's own logic (the peers are tests/test_baselines.py)."""

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import compare  # the checkout's root is on sys.path under pytest: a module, not a path

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


def _fresh() -> dict:
    return {"protocol": compare.PROTOCOL, "bases": {}, "trials": [], "methods": []}


class FakeMethod:
    """A method whose trial ``value`` gives validation accuracy ``value`` and test accuracy ``1 - value``;
    it crashes on the values in ``crash`` (a run cut off midway)."""

    def __init__(self, crash=()):
        self.calls, self.crash = [], set(crash)

    def __call__(self, value):
        self.calls.append(value)
        if value in self.crash:
            raise KeyboardInterrupt
        return {"val_accuracy": value, "sparsity": 0.9, "test_accuracy": 1 - value, "within_budget": value < 0.5,
                "command": f"fake {value}"}


def test_accumulate_saves_every_trial_and_continues_where_a_run_stopped():
    results, saved = _fresh(), []
    save = lambda: saved.append(json.loads(json.dumps(results)))  # noqa: E731 - what the file would hold
    with pytest.raises(KeyboardInterrupt):
        compare.accumulate(results, save, "gmp_layer", 0.9, 0, (0.1, 0.2, 0.3), FakeMethod(crash={0.3}), 0.8)
    assert [t["value"] for t in saved[-1]["trials"]] == [0.1, 0.2] and saved[-1]["methods"] == []
    resumed = json.loads(json.dumps(saved[-1]))  # read back from disk
    method = FakeMethod()
    entry = compare.accumulate(resumed, save, "gmp_layer", 0.9, 0, (0.1, 0.2, 0.3), method, 0.8)
    assert method.calls == [0.3]  # only the trial that had not finished
    assert entry == {"name": "gmp_layer", "target": 0.9, "seed": 0, "sparsity": 0.9, "test_accuracy": 0.7,
                     "base_test_accuracy": 0.8, "command": "fake 0.3", "value": 0.3, "trials": 3}
    again = FakeMethod()
    assert compare.accumulate(resumed, save, "gmp_layer", 0.9, 0, (0.1, 0.2, 0.3), again, 0.8) == entry
    assert again.calls == [] and len(resumed["methods"]) == 1
    other = FakeMethod()  # another seed or target is another entry
    compare.accumulate(resumed, save, "gmp_layer", 0.9, 1, (0.1, 0.2, 0.3), other, 0.8)
    assert other.calls == [0.1, 0.2, 0.3]


def test_choose_reads_validation_only():
    trials = [{"val_accuracy": 0.80, "sparsity": 0.95, "within_budget": True, "test_accuracy": 0.1},
              {"val_accuracy": 0.85, "sparsity": 0.90, "within_budget": True, "test_accuracy": 0.9},
              {"val_accuracy": 0.70, "sparsity": 0.99, "within_budget": False, "test_accuracy": 0.9}]
    assert compare.choose(trials, family=False) is trials[1]  # a peer: the best validation accuracy
    assert compare.choose(trials, family=True) is trials[0]  # SABR: the sparsest within its budget
    assert compare.choose(trials[2:], family=True) is trials[2]  # none fits: the best validation accuracy


def _entry(name, target, seed, sparsity, test, base=0.90):
    return {"name": name, "target": target, "seed": seed, "sparsity": sparsity, "test_accuracy": test,
            "base_test_accuracy": base, "command": "c"}


def test_table_gives_mean_std_paired_differences_and_reach(tmp_path):
    results = {**_fresh(), "config": "toy", "command": "x", "bases": {"0": {"test_accuracy": 0.9},
                                                                      "1": {"test_accuracy": 0.9}},
               "methods": [_entry("sabr", None, 0, 0.94, 0.897), _entry("sabr", None, 1, 0.96, 0.887),
                           _entry("sabr_ft", None, 0, 0.99, 0.70), _entry("sabr_ft", None, 1, 0.99, 0.72),
                           _entry("gmp_layer", 0.9, 0, 0.90, 0.896), _entry("gmp_layer", 0.9, 1, 0.90, 0.894),
                           _entry("gmp_layer", 0.95, 0, 0.95, 0.87), _entry("gmp_layer", 0.95, 1, 0.95, 0.86)]}
    text, groups = compare.table(results)
    assert "Δ test vs sabr (pt)" in text  # sabr_ft drops 18 points: the best family entry within 1 point is sabr
    assert "| gmp_layer | 90% | 2 | 90.00 ± 0.00 | 89.50 ± 0.14 | 0.50 ± 0.14 | 0.30 ± 0.57 | -5.00 ± 1.41 |" in text
    assert "| sabr | budget | 2 | 95.00 ± 1.41 |" in text
    assert "gmp_layer 90%" in text  # its reach: 95% drops 3.5 points
    compare.plot(results, groups, tmp_path / "toy.png")
    assert (tmp_path / "toy.png").read_bytes()[:4] == b"\x89PNG"


def test_results_of_another_protocol_are_refused(tmp_path):
    old = tmp_path / "fashion-lenet5.json"
    old.write_text(json.dumps({"protocol": "0.1.0", "methods": []}))
    with pytest.raises(SystemExit, match="protocol '0.1.0'"):
        compare.load_results(old, "fashion-lenet5", {}, "cmd")


@pytest.mark.parametrize("protocol, kept", [("0.3.0", ["gmp_layer"]), ("0.4.0", ["gmp_layer", "sabr"]),
                                            ("0.5.0", ["gmp_layer", "sabr"]),
                                            ("0.6.0", ["gmp_layer", "sabr", "sabr_ft"])])
def test_a_file_of_an_earlier_protocol_keeps_the_trials_it_shares(tmp_path, protocol, kept):
    trial = {"target": 0.95, "seed": 0, "val_accuracy": 0.9, "sparsity": 0.95, "test_accuracy": 0.9, "command": "c"}
    old = {"protocol": protocol, "config": "c", "bases": {"0": {"test_accuracy": 0.9}},
           "trials": [{**trial, "name": "gmp_layer", "value": 3e-3},
                      *({**trial, "name": n, "target": None, "value": 30.0, "within_budget": True}
                        for n in ("sabr", "sabr_ft")),
                      {**trial, "name": "sabr_ft", "target": None, "value": 100.0, "within_budget": False}],  # no ramp
           "methods": [_entry("gmp_layer", 0.95, 0, 0.95, 0.9)]}
    (tmp_path / "c.json").write_text(json.dumps(old))
    results = compare.load_results(tmp_path / "c.json", "c", {}, "cmd")
    assert results["protocol"] == compare.PROTOCOL and results["upgraded_from"] == protocol
    assert [t["name"] for t in results["trials"]] == kept and results["methods"] == []  # chosen again
    assert results["bases"] == old["bases"]
    method = FakeMethod()  # the kept trial is not trained again; the value the new grid adds is
    compare.accumulate(results, lambda: None, "gmp_layer", 0.95, 0, (3e-3, 1e-2), method, 0.9)
    assert method.calls == [1e-2]
    assert compare.merge([old, results])["protocol"] == compare.PROTOCOL  # an old part is upgraded to merge


def test_peers_are_tuned_at_the_middle_target_and_trained_once_at_the_others():
    calls, results = [], {"trials": [], "methods": []}

    def train(target, lr):
        calls.append((target, lr))
        return {"val_accuracy": 0.9 - abs(lr - 1e-3), "sparsity": target, "test_accuracy": 0.5, "command": "c"}

    entries = compare.tune_then_train(results, lambda: None, "gmp_layer", (0.9, 0.95, 0.98), 0, (3e-4, 1e-3, 3e-3),
                                      train, 0.9)
    assert calls == [(0.95, 3e-4), (0.95, 1e-3), (0.95, 3e-3), (0.9, 1e-3), (0.98, 1e-3)]
    assert [(e["target"], e["value"], e["trials"]) for e in entries] == [(0.95, 1e-3, 3), (0.9, 1e-3, 1),
                                                                          (0.98, 1e-3, 1)]
    calls.clear()  # a second call (a resumed run) trains nothing
    assert compare.tune_then_train(results, lambda: None, "gmp_layer", (0.9, 0.95, 0.98), 0, (3e-4, 1e-3, 3e-3),
                                   train, 0.9) == entries and not calls


def test_merge_joins_seeds_run_side_by_side_and_refuses_other_protocols():
    def part(seed, values):
        r = {**_fresh(), "config": "c"}
        r["bases"][str(seed)] = {"test_accuracy": 0.9}
        for v in values:
            compare.accumulate(r, lambda: None, "gmp_layer", 0.9, seed, (v,), FakeMethod(), 0.9)
        return r

    merged = compare.merge([part(0, (0.1,)), part(1, (0.2,)), part(0, (0.1,))])
    assert set(merged["bases"]) == {"0", "1"}
    assert [(m["seed"], m["value"]) for m in merged["methods"]] == [(0, 0.1), (1, 0.2)]
    assert len(merged["trials"]) == 2
    with pytest.raises(SystemExit, match="different"):
        compare.merge([part(0, ()), {**part(1, ()), "protocol": "0.2.0"}])


def test_rows_are_not_added_to_a_file_whose_rows_came_from_another_base(tmp_path):
    results = _fresh()
    figures = {"val_accuracy": 0.9, "test_accuracy": 0.875, "seconds": 10.0, "epochs": 15}
    compare.check_base(results, 0, figures, tmp_path / "base.safetensors")  # no rows of seed 0 yet
    results["bases"]["0"] = figures
    compare.check_base(results, 0, figures | {"seconds": 99.0}, tmp_path / "base.safetensors")  # the same base
    with pytest.raises(SystemExit, match="not the base the results file's rows were trained from"):
        compare.check_base(results, 0, figures | {"test_accuracy": 0.88}, tmp_path / "base.safetensors")
    results["bases"]["1"] = {"test_accuracy": 0.9}  # an older file recorded no validation figure: not checked
    compare.check_base(results, 1, figures, tmp_path / "base.safetensors")


def test_planned_epochs_count_every_trial():
    spec = {"run": {"epochs_base": 10, "sweep": [0.1, 0.2]}, "epochs": 20, "ft_epochs": 5}
    train, passes = compare.planned(spec)
    # base + 3 magnitude peers x (4 lrs + 2 other targets) x 20
    # + 2 L1 peers x (4 scales x 15 + (4 scales + 2 other targets) x 5) + 3 SABR family x 4 scales x 20
    assert train == 10 + 360 + 180 + 240
    assert passes == train + 3 * 4 * 2 * 2


@pytest.mark.slow  # a fresh interpreter, Fashion-MNIST read, 7 methods trained: about 20 s on a busy CPU
def test_quick_runs_as_a_plain_script_and_resumes_without_training(tmp_path):
    if not Path(compare.FASHION).is_dir():
        pytest.skip(f"{compare.FASHION} is not installed")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--quick", "--threads", "1",
           "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    part = subprocess.run(cmd + ["--methods", "gmp_layer", "sabr"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert part.returncode == 0, part.stderr
    results = json.loads((tmp_path / "out" / "quick-fashion-lenet5.json").read_text())
    assert {m["name"] for m in results["methods"]} == {"gmp_layer", "sabr"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)  # the rest
    assert first.returncode == 0, first.stderr
    results = json.loads((tmp_path / "out" / "quick-fashion-lenet5.json").read_text())
    names = {m["name"] for m in results["methods"]}
    assert names == {*compare.PEERS, *compare.SABR_FAMILY} and len(results["methods"]) == 8
    for m in results["methods"]:
        assert {"name", "target", "seed", "sparsity", "test_accuracy", "base_test_accuracy", "command"} <= set(m)
        assert (m["target"] is None) == m["name"].startswith("sabr")
        if m["target"] is not None:
            assert m["sparsity"] >= m["target"] - 1e-3
    assert next(m for m in results["methods"] if m["name"] == "sabr_ft")["command"].startswith("sabr run ")
    assert (tmp_path / "out" / "quick-fashion-lenet5.png").stat().st_size > 0
    mtime = (tmp_path / "out" / "quick-fashion-lenet5.json").stat().st_mtime
    time.sleep(0.01)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "out" / "quick-fashion-lenet5.json").stat().st_mtime == mtime  # nothing trained, nothing written
    assert "| sabr_ft | budget | 1 |" in second.stdout


def test_sabr_family_scales_the_configurations_teta1_as_the_l1_peers_do(tmp_path):
    spec = {"run": {"model": "lenet5"}, "epochs": 20, "ft_epochs": 5}
    cfg = compare.sabr_config(spec, 0, tmp_path / "base.safetensors", 5, 10.0, tmp_path / "run")
    assert cfg.teta1 == pytest.approx(10 * compare.RunConfig.teta1)
    assert (cfg.epochs_sabr, cfg.finetune_epochs, cfg.max_drop) == (15, 5, compare.MAX_DROP)
    spec["run"]["teta1"] = 2e-3  # a configuration with its own teta1: the scale applies to it
    assert compare.sabr_config(spec, 0, tmp_path / "b", 0, 3.0, tmp_path / "r").teta1 == pytest.approx(6e-3)
    assert {n: ft(spec) for n, ft in compare.SABR_FAMILY.items()} == {"sabr": 0, "sabr_ft": 5, "sabr_ft_half": 10}


def test_sabr_family_trains_on_the_device_asked_for_and_records_it_in_its_command(tmp_path):
    spec = {"run": {"model": "lenet5"}, "epochs": 20, "ft_epochs": 5}
    cfg = compare.sabr_config(spec, 0, tmp_path / "base.safetensors", 5, 10.0, tmp_path / "run", device="cuda")
    assert cfg.device == "cuda" and "--device cuda" in cfg.command()


def test_a_device_without_a_gpu_or_another_device_than_the_files_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        compare.main(["--quick", "--device", "cuda", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "no CUDA GPU is visible" in capsys.readouterr().err
    cpu = {**_fresh(), "config": "quick-fashion-lenet5", "trials": [{"name": "sabr"}]}  # before --device: the CPU
    (tmp_path / "quick-fashion-lenet5.json").write_text(json.dumps(cpu))
    monkeypatch.setattr(compare.torch.cuda, "is_available", lambda: True)
    with pytest.raises(SystemExit, match="trained on cpu, not cuda"):
        compare.main(["--quick", "--device", "cuda", "--out", str(tmp_path)])


@pytest.mark.slow  # 8 processes, each a fresh interpreter training one method: about a minute on 2 cores
def test_the_parallel_launcher_runs_every_method_in_its_own_process_and_joins_them(tmp_path):
    if not Path(compare.FASHION).is_dir():
        pytest.skip(f"{compare.FASHION} is not installed")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = ["bash", str(ROOT / "benchmarks" / "compare_parallel.sh"), "quick-fashion-lenet5", "cpu",
           str(tmp_path / "out"), str(tmp_path / "work"), "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "out" / "quick-fashion-lenet5.json").read_text())
    assert sorted(m["name"] for m in results["methods"]) == sorted([*compare.PEERS, *compare.SABR_FAMILY])
    assert results["command"] == "bash benchmarks/compare_parallel.sh quick-fashion-lenet5 cpu"
    assert results["device"] == "cpu" and set(results["bases"]) == {"0"}
    logs = list((tmp_path / "work" / "parts" / "quick-fashion-lenet5").glob("*/log"))
    assert len(logs) == 8
