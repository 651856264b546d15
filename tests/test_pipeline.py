"""End-to-end: the three phases on a small slice of the real digits, through the CLI as a user runs it."""

import json

import pytest
import torch

from sabr import load_run, sparsity_report
from sabr.cli import main
from sabr.report import PLOTS


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    cfg = out.parent / "cfg.yaml"
    cfg.write_text("max_per_class: 40\nepochs-base: 4\nepochs_sabr: 5\nteta1: 0.005\n")
    code = main(["run", "--config", str(cfg), "--epochs-sabr", "4", "--out", str(out), "--quiet",
                 "--sweep", "0.1", "0.2", "0.5"])
    assert code == 0
    return out


@pytest.mark.slow
def test_run_writes_every_artefact(run_dir):
    for name in ["base", "sabr", "pruned"]:
        assert (run_dir / f"{name}.safetensors").is_file() and (run_dir / f"{name}.json").is_file()
    for name in ["history_base.csv", "history_sabr.csv", "summary.json", "summary.md", "config.yaml",
                 "lambdas.csv", "sabr_state.json", *PLOTS]:
        assert (run_dir / name).is_file(), name
    assert (run_dir / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "| pruned |" in (run_dir / "summary.md").read_text()


@pytest.mark.slow
def test_summary_contract(run_dir):
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["dataset"]["classes"] == [str(i) for i in range(10)] and s["dataset"]["num_classes"] == 10
    assert s["dataset"]["train"] + s["dataset"]["val"] + s["dataset"]["test"] == 400
    assert s["base"]["epochs"] == 4 and s["sabr"]["epochs"] <= 4  # flag beats the YAML value
    assert s["config"]["teta1"] == 0.005 and s["config"]["max_per_class"] == 40
    fractions = [s["base"]["val_accuracy"], s["base"]["test_accuracy"], s["sabr"]["val_accuracy"],
                 s["sabr"]["test_accuracy"], s["sabr"]["sparsity"], s["pruned"]["test_accuracy"],
                 s["pruned"]["sparsity"], s["pruned"]["macs_reduction"]]
    assert all(isinstance(f, float) and 0.0 <= f <= 1.0 for f in fractions)
    for key in ["nonzero", "total", "macs_dense", "macs_pruned"]:
        assert isinstance(s["pruned"][key], int)
    assert s["sabr"]["stopped"] in ("all_frozen", "epoch_limit")
    assert sum(l["nonzero"] for l in s["layers"]) == s["pruned"]["nonzero"]
    assert sum(l["macs_dense"] for l in s["layers"]) == s["pruned"]["macs_dense"]
    assert s["pruned"]["macs_pruned"] < s["pruned"]["macs_dense"]
    assert [c["teta1"] for c in s["curve"]] == [0.1, 0.2, 0.5]


@pytest.mark.slow
def test_load_run_gives_the_pruned_model_and_its_preprocessing(run_dir):
    from PIL import Image
    from sklearn.datasets import load_digits

    model, meta = load_run(run_dir, "pruned")
    s = json.loads((run_dir / "summary.json").read_text())
    rep = sparsity_report(model)
    assert rep.nonzero == s["pruned"]["nonzero"] and rep.sparsity == pytest.approx(s["pruned"]["sparsity"])
    assert meta["classes"] == s["dataset"]["classes"]
    digits = load_digits()
    image = Image.fromarray((digits.images[0] / 16 * 255).round().astype("uint8"))
    x = meta["transform"](image).unsqueeze(0)
    assert x.shape == (1, 1, 8, 8)
    with torch.no_grad():
        assert model(x).shape == (1, 10)


@pytest.mark.slow
def test_reprune_draws_the_tradeoff(run_dir, capsys):
    assert main(["prune", "--run", str(run_dir), "--teta1", "0.1", "1.0", "--quiet"]) == 0
    t = json.loads((run_dir / "tradeoff.json").read_text())
    assert [c["teta1"] for c in t["curve"]] == [0.1, 1.0]
    assert t["curve"][1]["sparsity"] >= t["curve"][0]["sparsity"]
    assert (run_dir / "tradeoff.png").is_file()
    assert "teta1" in capsys.readouterr().out


@pytest.mark.slow
def test_refuses_to_overwrite_a_run(run_dir, capsys):
    assert main(["run", "--out", str(run_dir), "--epochs-base", "1", "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_bad_input_is_one_clear_message(tmp_path, capsys):
    assert main(["run", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    assert main(["run", "--model", "vgg11", "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "--image-size 32" in capsys.readouterr().err
    assert main(["run", "--lr", "-1", "--quiet"]) == 2
    assert "lr must be > 0" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 3\n")
    assert main(["run", "--config", str(cfg), "--quiet"]) == 2
    assert "unknown config key" in capsys.readouterr().err


@pytest.mark.slow
def test_base_checkpoint_skips_phase_1_and_starts_from_those_weights(run_dir, tmp_path):
    out = tmp_path / "from-base"
    code = main(["run", "--max-per-class", "40", "--teta1", "0.005", "--epochs-sabr", "1", "--sweep", "0.2",
                 "--base-checkpoint", str(run_dir / "base.safetensors"), "--out", str(out), "--quiet"])
    assert code == 0
    given, ours = (json.loads((d / "summary.json").read_text())["base"] for d in (run_dir, out))
    assert ours["epochs"] == 0  # no base epoch trained
    assert ours["val_accuracy"] == given["val_accuracy"] and ours["test_accuracy"] == given["test_accuracy"]
    base, _ = load_run(out, "base")
    for name, t in load_run(run_dir, "base")[0].state_dict().items():
        assert torch.equal(base.state_dict()[name], t), name


@pytest.mark.slow
def test_the_budget_floor_is_the_base_plateau_less_the_budget_and_travels_with_the_base(tmp_path):
    import csv
    import statistics

    out, again = tmp_path / "plateau", tmp_path / "from-base"
    common = ["--max-per-class", "30", "--epochs-sabr", "1", "--sweep", "0.2", "--max-drop", "0.05", "--quiet"]
    assert main(["run", *common, "--epochs-base", "12", "--out", str(out)]) == 0
    vals = [float(r["val_accuracy"]) for r in csv.DictReader((out / "history_base.csv").open())]
    summary = json.loads((out / "summary.json").read_text())
    plateau = min(summary["base"]["val_accuracy"], statistics.median(vals[-10:]))
    assert summary["base"]["val_plateau"] == pytest.approx(plateau)
    assert summary["budget"]["floor"] == pytest.approx(plateau - 0.05)
    assert json.loads((out / "base.json").read_text())["val_plateau"] == summary["base"]["val_plateau"]
    # a run from that base checkpoint, on the same splits, has the same floor without phase 1's history
    assert main(["run", *common, "--base-checkpoint", str(out / "base.safetensors"), "--out", str(again)]) == 0
    assert json.loads((again / "summary.json").read_text())["budget"]["floor"] == pytest.approx(plateau - 0.05)
