"""benchmarks/shrink_backends.py: both channel graphs judged on one task, its table and JSON."""

import json

import pytest

from benchmarks import shrink_backends  # the checkout's root is on sys.path under pytest


def test_both_graphs_remove_the_same_zeroed_channels_exactly_and_the_json_records_it(tmp_path, capsys):
    pytest.importorskip("torch_pruning")
    out = tmp_path / "backends.json"
    assert shrink_backends.main(["--models", "lenet5", "resnet18", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["model"] for r in data["rows"]] == ["lenet5", "resnet18"]
    for row in data["rows"]:
        for backend in ("sabr", "torch_pruning"):
            judged = row[backend]
            assert judged["ok"] and judged["params_after"] < judged["params_before"], (row["model"], backend)
            assert judged["max_abs_diff"] <= shrink_backends.TOLERANCE
        assert row["sabr"]["params_after"] == row["torch_pruning"]["params_after"]  # the same channels went
        assert all(isinstance(v, int) for v in row["half_removed"].values())
    assert data["passed"] == {"sabr": 2, "torch_pruning": 2}
    assert "| models passed | 2 | 2 | 2 |" in capsys.readouterr().out


def test_a_backend_that_raises_or_changes_the_output_fails_the_model():
    def raises(model, x, zeroed):
        raise RuntimeError("cannot trace")

    def changes(model, x, zeroed):
        small = shrink_backends.with_sabr(model, x, zeroed)
        next(small.parameters()).data.add_(1.0)
        return small

    assert shrink_backends.judge(shrink_backends.prepared("lenet5"), raises)["error"] == "RuntimeError: cannot trace"
    changed = shrink_backends.judge(shrink_backends.prepared("lenet5"), changes)
    assert not changed["ok"] and changed["error"] == "output changed"
