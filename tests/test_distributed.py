"""Distributed data-parallel training: two gloo processes on the CPU must agree on everything."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from sabr.config import RunConfig
from sabr.distributed import DistContext, init_from_env, shutdown

SRC = Path(__file__).resolve().parents[1] / "src"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(**kw) -> RunConfig:
    # teta1 high and threshold 0 so that SABR shrinks and freezes tensors within a few epochs
    values = dict(model="lenet5", image_size=16, max_per_class=24, epochs_base=2, epochs_sabr=4, batch_size=16,
                  device="cpu", teta1=0.05, accuracy_threshold=0.0, k_epoch=1, sweep=[0.2])
    return RunConfig(**{**values, **kw})


def _worker(rank: int, world: int, port: int, out: str) -> None:
    from safetensors.torch import save_file

    from sabr.pipeline import prepare, train_base, train_sabr

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cfg = _config()
    exp = prepare(cfg, progress=False)
    assert exp.dist.enabled and exp.dist.backend == "gloo" and exp.dist.rank == rank
    torch.manual_seed(cfg.seed)
    model, _ = train_base(exp, exp.new_model(), progress=False)
    model, reg, rows = train_sabr(exp, model, progress=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
    Path(f"{out}/rank{rank}.json").write_text(json.dumps({"sabr": reg.state_dict(), "rows": rows}))
    shutdown(exp.dist)


def test_single_process_context_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_from_env("cpu")
    assert ctx == DistContext() and not ctx.enabled and ctx.is_main
    assert ctx.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]
    model = torch.nn.Linear(2, 2)
    assert ctx.wrap(model) is model


@pytest.mark.slow
def test_two_gloo_ranks_agree_on_lambdas_frozen_sets_and_weights(tmp_path):
    from safetensors.torch import load_file

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    states = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    weights = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    a, b = states[0]["sabr"], states[1]["sabr"]
    assert a["lambdas"] == b["lambdas"] and a["history"] == b["history"]
    assert a["frozen"] == b["frozen"] and a["counters"] == b["counters"]
    assert a["frozen"], "the settings are meant to freeze at least one tensor (DDP is rebuilt after a freeze)"
    assert [r["val_accuracy"] for r in states[0]["rows"]] == [r["val_accuracy"] for r in states[1]["rows"]]
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


@pytest.mark.slow
def test_torchrun_cli_writes_one_run_for_the_whole_dataset(tmp_path):
    out = tmp_path / "run"
    cfg = _config()
    flags = ["--model", cfg.model, "--image-size", "16", "--max-per-class", "24", "--epochs-base", "1",
             "--epochs-sabr", "2", "--batch-size", "16", "--device", "cpu", "--sweep", "0.2"]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "sabr", "run", "--quiet", "--out", str(out), *flags],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    # the whole dataset, counted once: 24 images x 10 classes, split 72/18/10 -> 172 + 44 + 24
    d = summary["dataset"]
    assert d["train"] + d["val"] + d["test"] == 240 and d["test"] == 24
    assert summary["config"]["out"] == str(out)
    assert not (out / "resume.safetensors").exists()
    assert proc.stdout.count("run folder:") == 1  # only rank 0 reports
