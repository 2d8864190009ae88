"""Weights that carry code are refused by every reader: nothing is unpickled but tensors and
containers, the refusal names the file and what it holds in one line, and never advises
``weights_only=False``. One payload, one test, parametrised over every reader (a new reader
joins by a line in READERS or CLI_READERS) and over both of torch's file layouts."""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from langmim.cli import main
from langmim.errors import CheckpointError
from langmim.eval.external import load_external
from langmim.eval.feature_cache import FeatureCache
from langmim.io import load_checkpoint, read_saved_model, read_weights
from langmim.models.open_clip_weights import create_open_clip, load_open_clip_text
from langmim.models.pretrained import load_timm_vision

RAN = "this would run code"
REFUSAL = "which loading would run as code"


class Payload:
    """Unpickling this calls print: what a weights file must never be able to make happen."""

    def __reduce__(self):
        return (print, (RAN,))


def write_payload(path: Path, layout: str) -> Path:
    """A weights-looking file holding the payload, as torch.save writes it (a zip archive) or as
    an old-style bare pickle."""
    state = {"format": "langmim", "model": {"payload": Payload()}}
    if layout == "zip":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))
    return path


def feature_cache(path: Path) -> None:
    """The evaluation's feature cache, reading a stored entry that was swapped for the payload."""
    checkpoint = path.parent / "checkpoint-00000001.pt"
    checkpoint.write_bytes(b"")
    cache = FeatureCache(SimpleNamespace(checkpoint_path=str(checkpoint)), path.parent / "results", log=lambda _: None)
    stored = cache.path("fashion-mnist|test")
    stored.parent.mkdir(parents=True)
    stored.write_bytes(path.read_bytes())
    cache.cached("fashion-mnist|test", lambda: pytest.fail("computed instead of reading the stored entry"))


# reader -> a call that reads `path` as that reader does
READERS = {
    "checkpoint (train --resume)": load_checkpoint,
    "saved model (eval, export, load)": read_saved_model,
    "weights file": lambda path: read_weights(path, ()),
    "init.vision (timm weights)": lambda path: load_timm_vision(nn.Identity(), path),
    "init.text (open_clip weights)": lambda path: load_open_clip_text(nn.Identity(), path, quick_gelu=False),
    "open_clip model (teacher.source, --checkpoint openclip:)": lambda path: create_open_clip("ViT-B-32", path, "milan.teacher.source"),
    "external timm model (--checkpoint timm:)": lambda path: load_external(f"timm:vit_tiny_patch16_224:{path}"),
    "feature cache": feature_cache,
}
# command -> its argv reading `path`; the command line must answer in one line with exit status 2
CLI_READERS = {
    "eval": lambda path, tmp: ["eval", "--checkpoint", path],
    "export": lambda path, tmp: ["export", path, "--format", "safetensors", "--out", str(tmp / "x.safetensors")],
    "resume": lambda path, tmp: ["pretrain", "--resume", path, f"output_dir={tmp / 'run'}", "train.steps=1"],
    "init.vision": lambda path, tmp: ["pretrain", "method=mae", f"init.vision={path}", f"output_dir={tmp / 'run'}", "train.steps=1"],
}


@pytest.mark.parametrize("layout", ["zip", "bare-pickle"])
@pytest.mark.parametrize("reader", [*READERS, *(f"cli {name}" for name in CLI_READERS)])
def test_weights_carrying_code_are_refused_by_every_reader(tmp_path, capsys, reader, layout):
    path = write_payload(tmp_path / "weights.pt", layout)
    if reader.startswith("cli "):
        capsys.readouterr()
        assert main(CLI_READERS[reader.removeprefix("cli ")](str(path), tmp_path)) == 2
        captured = capsys.readouterr()
        message = captured.err.strip()
        assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    else:
        with pytest.raises(CheckpointError) as err:
            READERS[reader](path)
        message, captured = str(err.value), capsys.readouterr()
    assert re.search(r"holds a reference to (builtins\.)?print, " + REFUSAL, message), message
    named = re.search(r"'([^']+\.pt)'", message)
    assert named and Path(named.group(1)).read_bytes() == path.read_bytes(), message  # it names the file it read
    assert "weights_only=False" not in message
    assert RAN not in captured.out + captured.err  # the payload never ran
