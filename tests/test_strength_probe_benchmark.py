"""benchmarks/strength_probe.py: the fast start's choice reads validation figures only, and picks by its rule."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import strength_probe as probe

ROOT = Path(__file__).resolve().parents[1]


class NoTest(dict):
    """A summary.json whose every key holding 'test' fails the test when read."""

    def __getitem__(self, key):
        assert "test" not in key, f"the probe read the test figure {key!r}"
        value = super().__getitem__(key)
        return NoTest(value) if isinstance(value, dict) else value

    def get(self, key, default=None):
        return self[key] if key in self else default


def summary(sparsity, val, within=True):
    return NoTest({"pruned": {"sparsity": sparsity, "test_accuracy": 0.5},
                   "budget": {"val_accuracy": val, "floor": 0.8, "within_budget": within, "prune_teta1": 0.3,
                              "test_drop": 0.1},
                   "sabr": {"epochs": 20, "frozen": 1, "tensors": 5, "test_accuracy": 0.5},
                   "base": {"test_accuracy": 0.9}, "seconds": 1.0})


def rows(config, figures):
    return [{"config": config, "seed": 0, "value": value, **probe.val_figures(summary(*fig))}
            for value, fig in figures.items()]


def test_the_probe_reads_no_test_figure():
    assert not any("test" in part for path in probe.READ for part in path)
    row = probe.val_figures(summary(0.9, 0.88))  # NoTest raises on any test key
    assert set(row) == {path[-1] for path in probe.READ} and not any("test" in k for k in row)


def test_choose_the_smallest_factor_near_the_best_everywhere():
    # the lead's probe (docs/spec.md): x2 on both; x3 is 1.03 points short on Fashion, x1.5 far short
    figures = rows("fashion", {1.0: (0.6086, 0.8832), 1.5: (0.6999, 0.8849), 2.0: (0.9241, 0.8781),
                               3.0: (0.9138, 0.8738)})
    figures += rows("digits", {1.0: (0.9824, 0.9877), 1.5: (0.9872, 0.9877), 2.0: (0.9875, 0.9938)})
    assert probe.choose(figures) == 2.0
    # a factor outside the budget never qualifies, however sparse
    figures += rows("other", {2.0: (0.99, 0.5, False), 3.0: (0.98, 0.9)})
    assert probe.choose(figures) is None
    assert probe.choose(figures[:-2] + rows("other", {2.0: (0.97, 0.9), 3.0: (0.975, 0.9)})) == 2.0


def test_choose_the_ramp_that_keeps_the_most_zeros_everywhere_and_break_a_tie_on_validation():
    # docs/spec.md, phase 4: 5 and 10 ramp epochs tie on LeNet-5's sparsity; 10 kept more validation accuracy
    figures = rows("lenet", {0: (0.8649, 0.8750), 5: (0.9315, 0.8700), 10: (0.9315, 0.8800)})
    assert probe.choose_sparsest(figures) == 10
    figures += rows("resnet", {0: (0.6185, 0.8815), 5: (0.70, 0.8700, False), 10: (0.6292, 0.8895)})
    assert probe.choose_sparsest(figures) == 10  # 5 left the budget on one configuration
    assert probe.choose_sparsest(rows("x", {0: (0.9, 0.8, False)})) is None


def test_the_knobs_flags_fix_the_total_or_add_the_ramp_on_top():
    assert probe.knob_flags("ramp", 5, 20) == ["--epochs-sabr", "15", "--finetune-epochs", "5"]
    assert probe.knob_flags("ramp", 10, None) == ["--finetune-epochs", "10"]
    # the fast start was chosen with phase 4 off (its default then)
    assert probe.knob_flags("fast_start", 2.0, 20) == ["--epochs-sabr", "20", "--finetune-epochs", "0",
                                                       "--fast-start", "2"]


@pytest.mark.slow
def test_quick_probe_runs_end_to_end(tmp_path):
    out = tmp_path / "probe.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "strength_probe.py"), "--quick", "--values", "1", "2",
                    "--work", str(tmp_path / "runs"), "--json", str(out)], check=True, timeout=900)
    result = json.loads(out.read_text())
    assert [r["value"] for r in result["rows"]] == [1.0, 2.0]
    assert not any("test" in key for row in result["rows"] for key in row)
