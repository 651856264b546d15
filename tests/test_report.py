"""The run's report: the status first (pure function and real runs), the factor choice explained, the charts
that fit the run, one MACs figure everywhere, JSON on stdout."""

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sabr.cli import main
from sabr.report import choice_rule, format_table, near_chance, render_markdown, run_status
from sabr.plots import plots_for

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--max-per-class", "10", "--epochs-base", "1", "--epochs-sabr", "1", "--device", "cpu", "--threads", "1"]


def _summary(**changes) -> dict:
    """A finished run's summary, as small as the status and the Markdown read it."""
    s = {"dataset": {"name": "digits", "num_classes": 10, "train": 72, "val": 18, "test": 10, "image_size": 8,
                     "channels": 1},
         "model": {"name": "compact_cnn", "params": 100, "regularised_weights": 90},
         "base": {"val_accuracy": 0.99, "test_accuracy": 0.98, "epochs": 30, "val_plateau": 0.99},
         "sabr": {"val_accuracy": 0.99, "test_accuracy": 0.98, "epochs": 5, "sparsity": 0.9, "frozen": 0,
                  "tensors": 5, "stopped": "epoch_limit", "zero_eps": 1e-5},
         "pruned": {"test_accuracy": 0.97, "sparsity": 0.9, "nonzero": 9, "total": 90, "sparsity_all_params": 0.8,
                    "macs_dense": 2_904_576, "macs_pruned": 320_272, "macs_reduction": 0.89},
         "budget": {"max_drop": 0.01, "floor": 0.98, "prune_teta1": 0.2, "within_budget": True, "val_accuracy": 0.985},
         "layers": [], "curve": [], "config": {}}
    for path, value in changes.items():
        *keys, last = path.split("__")
        d = s
        for k in keys:
            d = d[k]
        d[last] = value
    return s


@pytest.mark.parametrize("changes, status", [
    ({}, "ok"),
    ({"budget__within_budget": False}, "outside_budget"),
    ({"budget__within_budget": False, "config": {"prune_teta1": 1.0}}, "outside_budget"),
    ({"pruned__nonzero": 90}, "nothing_removed"),
    ({"base__val_accuracy": 0.11}, "near_chance"),
    ({"pruned__test_accuracy": 0.1}, "near_chance"),
    # precedence: near_chance, then nothing_removed, then outside_budget
    ({"budget__within_budget": False, "pruned__nonzero": 90}, "nothing_removed"),
    ({"budget__within_budget": False, "pruned__nonzero": 90, "base__val_accuracy": 0.1}, "near_chance"),
    ({"budget__max_drop": None, "budget__within_budget": False}, "ok"),  # no budget: nothing to miss
])
def test_run_status(changes, status):
    got, message = run_status(_summary(**changes))
    assert got == status
    assert status == "ok" or "next:" in message


def test_near_chance_is_a_tenth_of_the_way_from_chance_to_perfect():
    assert near_chance(0.18, 10) and not near_chance(0.20, 10)
    assert near_chance(0.54, 2) and not near_chance(0.56, 2)


def test_the_status_comes_first_in_the_table_and_the_markdown():
    s = _summary(budget__within_budget=False)
    assert format_table(s).splitlines()[0].startswith("OUTSIDE_BUDGET: no pruning factor")
    assert "(status: outside_budget)" in render_markdown(s).splitlines()[0]


DIGITS_CURVE = [{"teta1": f, "sparsity": s, "val_accuracy": v, "base_sparsity": 0.1, "base_val_accuracy": 0.99}
                for f, s, v in [(0.1, 0.98, 0.9877), (0.2, 0.9825, 0.9877), (0.3, 0.9843, 0.9877),
                                (0.4, 0.9859, 0.9846), (0.5, 0.9874, 0.9870)]]


def test_the_choice_sentence_explains_why_a_fitting_factor_was_not_kept():
    sentence = choice_rule(DIGITS_CURVE, 0.9869, kept=0.2)
    assert "up to 0.3" in sentence and "0.4 was the first below it" in sentence
    assert "one factor of margin" in sentence and "0.2 was kept, not 0.3" in sentence
    assert "0.5 here, counts as noise" in sentence
    assert "Every factor reached the floor" in choice_rule(DIGITS_CURVE, 0.5, kept=0.5)
    assert "No factor reached the floor" in choice_rule(DIGITS_CURVE, 0.999, kept=0.1)


def test_the_markdown_tables_every_factor_with_the_floor():
    md = render_markdown(_summary(curve=DIGITS_CURVE, budget__floor=0.9869))
    assert "The floor is 98.69% validation accuracy" in md
    assert "| **0.2 (kept)** | 98.25% | 98.77% | yes |" in md
    assert "| 0.4 | 98.59% | 98.46% | no |" in md


def test_charts_fit_the_run():
    s = _summary(curve=DIGITS_CURVE)
    assert "lambda_history.png" in plots_for(s)
    s["sabr"]["epochs"] = 0
    assert "lambda_history.png" not in plots_for(s)
    assert "lambda_history" not in render_markdown(s)
    assert "accuracy_vs_sparsity.png" not in plots_for(_summary())


def _noise_folder(root: Path, classes: int = 10, per_class: int = 20) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def _first_lines(out: str, run: Path) -> tuple[str, str, str]:
    summary = json.loads((run / "summary.json").read_text())
    return out.splitlines()[0], (run / "summary.md").read_text().splitlines()[0], summary["status"]


@pytest.mark.slow
def test_a_run_on_noise_says_near_chance_first(tmp_path, capsys):
    data = _noise_folder(tmp_path / "noise")
    assert main(["run", "--quiet", *QUICK, "--max-per-class", "20", "--image-size", "8", "--data", str(data),
                 "--out", str(tmp_path / "run")]) == 0
    table, md, status = _first_lines(capsys.readouterr().out, tmp_path / "run")
    assert status == "near_chance" and table.startswith("NEAR_CHANCE: ") and "(status: near_chance)" in md
    assert "next:" in table


@pytest.mark.slow
def test_a_run_outside_its_budget_says_so_first(tmp_path, capsys):
    # no fine-tune: its ramp can train the pruned model back within even a zero budget
    args = ["--max-per-class", "20", "--epochs-base", "4", "--epochs-sabr", "1", "--sweep", "0.05", "--max-drop", "0",
            "--finetune-epochs", "0"]
    assert main(["run", "--quiet", *QUICK, *args, "--out", str(tmp_path / "run")]) == 0
    table, md, status = _first_lines(capsys.readouterr().out, tmp_path / "run")
    assert status == "outside_budget" and table.startswith("OUTSIDE_BUDGET: ") and "(status: outside_budget)" in md


@pytest.mark.slow
def test_a_structured_run_that_misses_its_budget_says_what_it_kept(tmp_path, capsys):
    """``--max-drop 0`` cannot be met; the least-pruned structured model removes no channel, which comes first."""
    assert main(["run", "--quiet", *QUICK, "--structured", "--max-drop", "0", "--out", str(tmp_path / "run")]) == 0
    table, md, status = _first_lines(capsys.readouterr().out, tmp_path / "run")
    assert status == "nothing_removed" and table.startswith("NOTHING_REMOVED: ") and "(status: nothing_removed)" in md


@pytest.mark.slow
def test_one_macs_figure_across_headline_json_and_bench(tmp_path, capsys):
    from sabr.bench import bench_run
    from sabr.plots import count_text

    run = tmp_path / "run"
    assert main(["run", "--quiet", *QUICK, "--structured", "--finetune-epochs", "1", "--max-drop", "1",
                 "--out", str(run)]) == 0
    out = capsys.readouterr().out
    s = json.loads((run / "summary.json").read_text())
    p, st = s["pruned"], s["structured"]
    assert st["channels_after"] < st["channels_before"]  # channels went: the figures can differ if counted apart
    assert (st["macs_before"], st["macs_after"]) == (p["macs_dense"], p["macs_pruned"])
    assert f"MACs {count_text(p['macs_dense'])} -> {count_text(p['macs_pruned'])} per image" in out.splitlines()[1]
    b = bench_run(run, batch_sizes=(1,), runs=1, warmup=0, onnx=False)
    assert (b["macs_dense"], b["macs_pruned"]) == (p["macs_dense"], p["macs_pruned"])
    assert b["ideal_speedup"] == pytest.approx(p["macs_dense"] / p["macs_pruned"])


def _sabr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "sabr", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


@pytest.mark.slow
def test_run_prints_its_result_on_stdout_and_its_progress_on_stderr(tmp_path):
    """``sabr run ... > out.txt`` keeps the result (and the run folder) and no progress or log line."""
    run = _sabr("run", *QUICK, "--sweep", "0.2", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert out[0].split(":")[0] in {"OK", "OUTSIDE_BUDGET", "NEAR_CHANCE", "NOTHING_REMOVED"}
    assert out[-1].startswith("run folder: ") and "phase" in run.stdout
    assert "base    1/1" in run.stderr and "base    1/1" not in run.stdout  # progress: stderr only
    assert not {line for line in out if line} & set(run.stderr.splitlines())


@pytest.mark.slow
def test_run_json_prints_only_the_summary(tmp_path, capsys):
    assert main(["run", *QUICK, "--sweep", "0.2", "--json", "--out", str(tmp_path / "run")]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == json.loads((tmp_path / "run" / "summary.json").read_text())
    assert got["status"] in {"ok", "outside_budget", "near_chance", "nothing_removed"}
    from sabr.version import versions

    assert got["versions"] == versions()
    assert json.loads((tmp_path / "run" / "pruned.json").read_text())["versions"] == versions()


def test_other_commands_print_their_result_and_log_the_rest(runs, tmp_path, capsys, caplog):
    done = str(shutil.copytree(runs["done"], tmp_path / "done"))  # sabr prune writes into the run
    for args, expect in [(["models", "vgg*"], "vgg11"), (["prune", "--run", done, "--teta1", "0.2"], "tradeoff.json"),
                         (["export", "--run", done, "--format", "sparse", "--out", str(tmp_path / "e")], "wrote"),
                         (["bench", "--run", done, "--runs", "1", "--warmup", "0", "--no-onnx", "--batch-sizes", "1"],
                          "files:")]:
        caplog.clear()
        assert main(args) == 0
        out = capsys.readouterr().out
        assert expect in out, args
        assert not any(r.getMessage() in out for r in caplog.records), args
    assert main(["bench", "--run", done, "--runs", "1", "--warmup", "0", "--no-onnx", "--batch-sizes", "1",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs_dense"] > 0


def test_summary_md_first_line_names_the_status_with_every_key(tmp_path):
    s = _summary()
    for status in ("ok", "outside_budget", "near_chance", "nothing_removed"):
        t = copy.deepcopy(s)
        t["status"], t["status_message"] = status, "x"
        assert f"(status: {status})" in render_markdown(t).splitlines()[0]
