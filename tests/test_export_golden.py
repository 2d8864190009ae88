"""Refactors change no behaviour: a seeded model of each method exports the same files as when
``tests/golden/exports.json`` was written (keys, shapes, dtypes, tensor sums, configs, card
front matter), and a checkpoint keeps its top-level keys. LANGMIM_REGEN_GOLDEN=1 rewrites it."""
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from conftest import tiny_overrides
from langmim.config import load_config
from langmim.export import export
from langmim.methods import build_method

GOLDEN = Path(__file__).parent / "golden" / "exports.json"
FORMATS = {"mae": ("timm", "safetensors"), "milan": ("timm", "safetensors"),
           "clip": ("timm", "open_clip", "safetensors"), "rils": ("timm", "open_clip", "safetensors")}


def tensor_summary(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = sorted((f.metadata() or {}).keys())
    return {"metadata_keys": metadata, "tensors": {
        k: [list(t.shape), str(t.dtype), t.double().sum().item(), t.double().abs().sum().item()] for k, t in sorted(tensors.items())}}


def file_summary(path: Path, run_dir: Path) -> object:
    if path.suffix == ".safetensors":
        return tensor_summary(path)
    text = path.read_text().replace(str(run_dir), "RUN")
    if path.name == "README.md":
        return yaml.safe_load(text.split("---")[1])
    return json.loads(text) if path.suffix == ".json" else text


def exported_files(method: str, tmp_path: Path) -> dict:
    extra = {"milan.teacher.embed_dim": 32} if method == "milan" else {}
    cfg = load_config(None, tiny_overrides(tmp_path / method, method, **extra))
    torch.manual_seed(0)
    model = build_method(cfg).eval()
    model.checkpoint_path, model.step = str(tmp_path / method / "checkpoint-00000004.pt"), 4
    summary = {}
    for fmt in FORMATS[method]:
        out = export(model, fmt, tmp_path / method / (f"{fmt}.safetensors" if fmt == "safetensors" else fmt))
        files = [out] if out.is_file() else sorted(p for p in out.iterdir() if p.is_file())
        summary[fmt] = {p.name: file_summary(p, tmp_path / method) for p in files}
    return summary


def assert_same(new: object, old: object, where: str) -> None:
    if isinstance(old, dict):
        assert isinstance(new, dict) and sorted(new) == sorted(old), f"{where}: keys {sorted(new)} != {sorted(old)}"
        for key in old:
            assert_same(new[key], old[key], f"{where}/{key}")
    elif isinstance(old, float):
        assert new == pytest.approx(old, rel=1e-5, abs=1e-6), f"{where}: {new} != {old}"
    elif isinstance(old, list) and old and isinstance(old[-1], float):
        assert len(new) == len(old), where
        for i, (a, b) in enumerate(zip(new, old)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert new == old, f"{where}: {new!r} != {old!r}"


def test_exports_match_the_golden_files(tmp_path, clip_run):
    summary = {method: exported_files(method, tmp_path) for method in FORMATS}
    summary["checkpoint_keys"] = sorted(torch.load(sorted(clip_run.glob("checkpoint-*.pt"))[-1], weights_only=False, map_location="cpu"))
    if os.environ.get("LANGMIM_REGEN_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(summary, indent=1, sort_keys=True))
    assert_same(json.loads(json.dumps(summary)), json.loads(GOLDEN.read_text()), "exports")
