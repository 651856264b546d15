"""benchmarks/structured.py: its rows resume per (name, seed), its report, and its core on a tiny model."""

import argparse
import json

import pytest
from torch import nn

from benchmarks import structured  # the checkout's root is on sys.path under pytest: a module, not a path
from sabr import RunConfig, create_model
from sabr.experiment import prepare


def _row(name, seed, acc, ms, base=0.9):
    lat = {"eager": {"1": ms, "32": 10 * ms}, "onnxruntime": {"1": ms / 2, "32": 5 * ms}}
    return {"name": name, "seed": seed, "test_accuracy": acc, "base_test_accuracy": base, "params": 2_000_000,
            "macs": 30_000_000, "latency_ms": lat,
            "speedup": {k: {b: 2.0 / v for b, v in d.items()} for k, d in lat.items()}}


def test_accumulate_measures_each_name_and_seed_once_and_saves_each_row():
    results, saved, calls = {"methods": []}, [], []
    save = lambda: saved.append(json.loads(json.dumps(results)))  # noqa: E731

    def make(name, seed):
        def call():
            calls.append((name, seed))
            if name == "boom":
                raise KeyboardInterrupt  # cut off midway
            return _row(name, seed, 0.8, 1.0)
        return call

    structured.accumulate(results, save, "dense", 0, make("dense", 0))
    with pytest.raises(KeyboardInterrupt):
        structured.accumulate(results, save, "boom", 0, make("boom", 0))
    resumed = json.loads(json.dumps(saved[-1]))  # what the file holds
    assert [m["name"] for m in resumed["methods"]] == ["dense"]
    assert structured.accumulate(resumed, save, "dense", 0, make("dense", 0)) == resumed["methods"][0]
    structured.accumulate(resumed, save, "dense", 1, make("dense", 1))
    assert calls == [("dense", 0), ("boom", 0), ("dense", 1)] and len(saved) == 2


def test_results_of_another_setting_are_refused(tmp_path):
    args = argparse.Namespace(image_size=32, threads=1, epochs_sabr=0, sabr_finetune_epochs=30)
    path = tmp_path / "structured-m.json"
    fresh = structured.load_results(path, "m", args)
    assert fresh["methods"] == [] and fresh["sabr_run"] == {"epochs_sabr": 0, "sabr_finetune_epochs": 30}
    path.write_text(json.dumps({"model": "m", "image_size": 64, "threads": 1, "methods": []}))
    with pytest.raises(SystemExit, match="64 px"):
        structured.load_results(path, "m", args)
    path.write_text(json.dumps(fresh | {"sabr_run": {"epochs_sabr": 60, "sabr_finetune_epochs": 0}}))
    with pytest.raises(SystemExit, match="another sabr run configuration"):
        structured.load_results(path, "m", args)
    path.write_text(json.dumps(fresh))
    args.unstructured_epochs_sabr = 5  # rows of a shorter default run are not mixed into these
    with pytest.raises(SystemExit, match="another sabr run configuration"):
        structured.load_results(path, "m", args)
    args.unstructured_epochs_sabr = None
    assert structured.load_results(path, "m", args) == fresh
    path.write_text(json.dumps(fresh | {"sabr_run": {"epochs_sabr": 60, "sabr_finetune_epochs": 0}}))
    args.report = True  # a report reads any
    assert structured.load_results(path, "m", args)["sabr_run"]["epochs_sabr"] == 60


def test_report_gives_mean_std_over_seeds_and_a_pareto_plot(tmp_path, capsys):
    rows = [_row("dense", 0, 0.90, 2.0), _row("dense", 1, 0.92, 2.0), _row("sabr_structured", 0, 0.89, 1.0),
            _row("sabr_structured", 1, 0.89, 1.0), _row("torch_pruning_0.5", 0, 0.85, 1.0)]
    results = {"model": "m", "image_size": 32, "threads": 1, "methods": rows}
    text = structured.table(results)
    assert "| dense | 2 | 91.00 ± 1.41 | -1.00 ± 1.41 | 2.00 ± 0.00 | 30.0 ± 0.0 | 2.000 ± 0.000 (1.00x) |" in text
    assert "| sabr_structured | 2 | 89.00 ± 0.00 |" in text and "0.500 ± 0.000 (4.00x)" in text
    assert "| torch_pruning_0.5 | 1 | 85.00 ± 0.00 | 5.00 ± 0.00 |" in text
    assert text.index("| dense") < text.index("| torch_pruning_0.5") < text.index("| sabr_structured")  # peers first
    paired = structured.pairs(results | {"methods": [*rows, rows[4] | {"name": "torch_pruning_0.9", "params": 1}]})
    assert paired.count("\n| 0 |") == 1 and "| 1 |" not in paired  # seed 1 has no Torch-Pruning row
    assert "| torch_pruning_0.5 | +4.00 |" in paired  # the peer of the same size, not the smaller one
    assert paired.endswith("| mean of 1 | | | | | 4.00 ± 0.00 |")
    assert structured.pairs({"methods": rows[:2]}) == ""
    fast = rows[2] | {"speedup": {"eager": {"1": 4.0}}}
    assert structured.paired_ms(results, fast) == 0.5  # dense 2 ms of seed 0 / the paired speedup 4x
    assert structured.paired_ms({"methods": rows[2:]}, fast) == 1.0  # no dense row: its own latency
    assert structured.main(["--report", "--models", "resnet18", "--out", str(tmp_path)]) == 0  # no file: empty table
    (tmp_path / "structured-resnet18.json").write_text(json.dumps(results | {"model": "resnet18"}))
    assert structured.main(["--report", "--models", "resnet18", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "structured-resnet18.png").read_bytes()[:4] == b"\x89PNG"
    assert "| torch_pruning_0.5 | 1 |" in capsys.readouterr().out
    assert structured.main(["--report", "--models", "resnet18", "--seeds", "1", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "seeds 1)" in text and "| dense | 1 | 92.00 ± 0.00 |" in text and "torch_pruning" not in text
    assert (tmp_path / "structured-resnet18-seeds1.png").is_file()  # the plot of all seeds is left as it was



def test_merge_adds_the_rows_of_seeds_run_side_by_side_and_keeps_the_rows_there(tmp_path, capsys):
    head = {"model": "resnet18", "image_size": 32, "threads": 1, "sabr_run": dict(structured.SABR_RUN)}
    out, a, b = tmp_path / "out", tmp_path / "a", tmp_path / "b"
    for folder, rows in ((out, [_row("dense", 0, 0.90, 2.0)]),
                         (a, [_row("dense", 0, 0.10, 9.0), _row("dense", 3, 0.91, 2.0)]),
                         (b, [_row("dense", 4, 0.92, 2.0), _row("sabr_structured", 4, 0.93, 1.0)])):
        folder.mkdir()
        (folder / "structured-resnet18.json").write_text(json.dumps(head | {"methods": rows}))
    parts = [str(a / "structured-resnet18.json"), str(b / "structured-resnet18.json")]
    assert structured.main(["--merge", *parts, "--out", str(out)]) == 0
    merged = json.loads((out / "structured-resnet18.json").read_text())
    assert [(m["name"], m["seed"], m["test_accuracy"]) for m in merged["methods"]] == [
        ("dense", 0, 0.90), ("dense", 3, 0.91), ("dense", 4, 0.92), ("sabr_structured", 4, 0.93)]
    assert "| dense | 3 |" in capsys.readouterr().out and (out / "structured-resnet18.png").is_file()
    assert structured.main(["--merge", *parts, "--out", str(out)]) == 0  # again: nothing added twice
    assert json.loads((out / "structured-resnet18.json").read_text()) == merged
    (b / "structured-resnet18.json").write_text(json.dumps(head | {"methods": [_row("sabr_structured", 3, 0.9, 1.0,
                                                                                     base=0.95)]}))
    with pytest.raises(SystemExit, match="another base"):  # seed 3's base trained again elsewhere
        structured.main(["--merge", parts[1], "--out", str(out)])
    (b / "structured-resnet18.json").write_text(json.dumps(head | {"threads": 2, "methods": []}))
    with pytest.raises(SystemExit, match="2 thread"):  # results of another setting are not mixed in
        structured.main(["--merge", parts[1], "--out", str(out)])
    with pytest.raises(SystemExit, match="does not exist"):
        structured.main(["--merge", str(tmp_path / "nowhere.json"), "--out", str(out)])

def tiny_seed() -> structured.Seed:
    """A seed whose run is a tiny digits experiment and an untrained compact CNN (no sabr run started)."""
    s = structured.Seed("compact_cnn", 0, argparse.Namespace(threads=1, finetune_epochs=1))
    exp = prepare(RunConfig(data="digits", max_per_class=10, image_size=8, epochs_sabr=1, device="cpu"),
                  progress=False)
    s._cache.update(run=None, exp=exp, base=create_model("compact_cnn", 10, 1, 8).eval())
    return s


def test_dense_and_peer_rows_need_only_the_base_of_a_run_whose_fine_tune_still_runs(tmp_path, monkeypatch):
    started, loaded = [], []
    monkeypatch.setattr(structured, "sabr_run", lambda *a, **k: started.append(a) or tmp_path / "started")
    monkeypatch.setattr(structured.sabr, "load_run", lambda run, phase: loaded.append((run, phase)) or (nn.Identity(),))
    monkeypatch.setattr(structured.sabr, "load_experiment", lambda run: loaded.append((run, "exp")))
    args = argparse.Namespace(runs_dir=str(tmp_path), threads=1)
    assert isinstance(structured.Seed("vgg11", 3, args).base, nn.Identity)  # no base yet: the run is started
    assert len(started) == 1 and loaded == [(tmp_path / "started", "base")]
    folder = tmp_path / "vgg11-s3"
    folder.mkdir()
    (folder / "base.safetensors").write_bytes(b"")  # phase 1 done, the fine-tune running in another process
    s = structured.Seed("vgg11", 3, args)
    assert isinstance(s.base, nn.Identity) and s.exp is None  # (the stand-in experiment)
    assert len(started) == 1 and loaded[1:] == [(folder, "base"), (folder, "exp")]


def test_sabr_epochs_count_phase_2_and_the_fine_tune(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"sabr": {"epochs": 7}, "pruned": {"finetune_epochs": 3}}))
    assert structured.sabr_epochs(tmp_path) == 10
    (tmp_path / "summary.json").write_text(json.dumps({"sabr": {"epochs": 7}, "pruned": {}}))
    assert structured.sabr_epochs(tmp_path) == 7


def test_the_unstructured_run_starts_from_the_structured_runs_base_without_structured_flags(tmp_path, monkeypatch):
    args = argparse.Namespace(runs_dir=str(tmp_path), data="D", image_size=32, threads=1, epochs_sabr=0,
                              sabr_finetune_epochs=30, epochs_base=None, base_from="OLD", unstructured_epochs_sabr=None)
    (tmp_path / "vgg11-s1").mkdir()
    (tmp_path / "vgg11-s1" / "summary.json").write_text("{}")  # the structured run is done
    ran = []
    monkeypatch.setattr(structured.subprocess, "run", lambda cmd, check: ran.append(cmd))
    assert structured.sabr_run("vgg11", 1, args, structured=False) == tmp_path / "vgg11-s1-unstructured"
    cmd = ran[0]
    assert cmd[cmd.index("--base-checkpoint") + 1] == str(tmp_path / "vgg11-s1" / "base.safetensors")
    assert "--structured" not in cmd and "--epochs-sabr" not in cmd and "--finetune-epochs" not in cmd
    structured.sabr_run("vgg11", 2, args)  # the structured run: from --base-from, its own epochs
    assert "--structured" in ran[1] and ran[1][ran[1].index("--base-checkpoint") + 1].startswith("OLD")
    (tmp_path / "vgg11-s3").mkdir()
    (tmp_path / "vgg11-s3" / "base.safetensors").write_bytes(b"")  # phase 1 done, its fine-tune still running
    structured.sabr_run("vgg11", 3, args, structured=False)
    assert len(ran) == 3 and "--structured" not in ran[2]  # the structured run is not started (again) first
    assert ran[2][ran[2].index("--base-checkpoint") + 1] == str(tmp_path / "vgg11-s3" / "base.safetensors")


def test_methods_choose_the_rows_measured_besides_dense(tmp_path, monkeypatch):
    made = []

    class FakeSeed:
        def __init__(self, model, seed, args):
            self.seed, self.base = seed, "base"

        def structured(self):
            return "structured"

        def unstructured(self):
            return "unstructured"

        def peer(self, ratio):
            return f"peer {ratio}"

    monkeypatch.setattr(structured, "Seed", FakeSeed)
    monkeypatch.setattr(structured, "measure", lambda s, name, model, runs: made.append(model) or
                        _row(name, s.seed, 0.9, 1.0))
    args = argparse.Namespace(image_size=32, threads=1, epochs_sabr=0, sabr_finetune_epochs=30, seeds=[0],
                              ratios=[0.5], runs=2, methods=["sabr_unstructured"])
    path = tmp_path / "structured-m.json"
    rows = structured.bench_model("m", args, path)["methods"]
    assert [m["name"] for m in rows] == ["dense", "sabr_unstructured"] and made == ["base", "unstructured"]
    args.methods = list(structured.METHODS)  # the rows already there are kept, the others added
    rows = structured.bench_model("m", args, path)["methods"]
    assert [m["name"] for m in rows] == ["dense", "sabr_unstructured", "sabr_structured", "torch_pruning_0.5"]
    assert made == ["base", "unstructured", "structured", "peer 0.5"]


@pytest.mark.slow  # a digits experiment, a fine-tune epoch, two ONNX exports: about 10 s on a busy CPU
def test_torch_pruning_removes_channels_and_a_row_is_measured_against_the_base():
    s = tiny_seed()
    small = structured.torch_pruning_channels(s.base, s.example(), 0.5)
    convs = lambda m: [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)]  # noqa: E731
    assert all(a < b for a, b in zip(convs(small), convs(s.base)))
    assert [m for m in small.modules() if isinstance(m, nn.Linear)][-1].out_features == 10  # the head is whole
    tuned = s.peer(0.5)  # pruned the same way, then fine-tuned one epoch on the run's splits
    assert convs(tuned) == convs(small)
    row = structured.measure(s, "torch_pruning_0.5", tuned, runs=2)
    assert row["params"] == sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in s.base.parameters())
    assert set(row["latency_ms"]) == {"eager", "onnxruntime"} and set(row["latency_ms"]["eager"]) == {"1", "32"}
    assert row["speedup"]["eager"]["1"] > 0 and row["max_abs_diff_onnxruntime"] <= 1e-4
    assert 0 <= row["test_accuracy"] <= 1 and row["base_test_accuracy"] == structured.evaluate_split(
        s.exp, s.base, s.exp.test)[1]
    dense = structured.measure(s, "dense", s.base, runs=2)
    assert dense["params"] == sum(p.numel() for p in s.base.parameters())


@pytest.mark.slow  # a digits experiment, two ONNX exports: a few seconds
def test_retime_times_a_seeds_rows_together_and_keeps_their_accuracy(monkeypatch):
    s = tiny_seed()
    s.unstructured = lambda: s.base  # the default run's model: the base's shapes (zeros in dense tensors)
    monkeypatch.setattr(structured, "Seed", lambda model, seed, args: s)
    results = {"methods": [_row("dense", 0, 0.9, 9.0), _row("torch_pruning_0.5", 0, 0.8, 9.0),
                           _row("torch_pruning_0.5", 1, 0.7, 9.0), _row("sabr_unstructured", 0, 0.85, 9.0)]}
    saved = []
    structured.retime(results, lambda: saved.append(True), "compact_cnn",
                      argparse.Namespace(seeds=[0], runs=2, threads=1))
    dense, peer, other, unstructured = results["methods"]
    assert dense["speedup"] == {k: {"1": 1.0, "32": 1.0} for k in ("eager", "onnxruntime")}
    assert unstructured["latency_ms"]["eager"]["1"] != 9.0 and unstructured["test_accuracy"] == 0.85
    assert peer["latency_ms"]["eager"]["1"] != 9.0 and peer["speedup"]["onnxruntime"]["32"] > 0
    assert peer["test_accuracy"] == 0.8 and other == _row("torch_pruning_0.5", 1, 0.7, 9.0)  # seed 1 not asked
    assert saved and results["timing"].startswith("--retime")
