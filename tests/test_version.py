"""One version (pyproject reads sabr.version), provenance in every file sabr writes, a clean dir(sabr)."""

import json
import re
from pathlib import Path

import torch
from torch import nn

import sabr
from sabr.checkpoint import save_checkpoint
from sabr.export import save_sparse
from sabr.version import versions

REPO = Path(__file__).resolve().parents[1]


def test_the_package_version_has_one_source():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'attr = "sabr.version.__version__"' in pyproject
    assert re.fullmatch(r"\d+\.\d+\.\d+", sabr.__version__)
    assert f"## {sabr.__version__}" in (REPO / "CHANGELOG.md").read_text()  # every release says what it changed


def test_versions_name_the_software():
    v = versions()
    assert v["sabr"] == sabr.__version__ and v["torch"] == torch.__version__
    assert set(v) == {"sabr", "git_commit", "torch", "torchvision", "python"}
    if (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", v["git_commit"])


def test_checkpoints_and_exports_record_the_versions(tmp_path):
    model = nn.Linear(3, 2)
    save_checkpoint(model, tmp_path / "m.safetensors", {"phase": "pruned"})
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["versions"] == versions()
    save_sparse(model, tmp_path / "s", meta)
    exported = json.loads((tmp_path / "s.json").read_text())
    assert exported["versions"] == versions() and exported["source_versions"] == meta["versions"]


def test_dir_lists_the_public_api_only():
    names = dir(sabr)
    assert "SABR" in names and "prune" in names and "__version__" in names
    assert not {"annotations", "TYPE_CHECKING", "attach"} & set(names)
    assert set(sabr.__all__) == set(names)
