"""Start from other libraries' weights: a timm ViT for the vision tower, an open_clip text
tower, or a sentence-transformers model (e.g. all-MiniLM-L6-v2) on disk as the text tower.

Weight files are read by ``io.read_weights``, which never unpickles code; a sentence-transformers
folder's pickled weights are vetted by ``io.safe_torch_load`` before transformers reads them.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..io import read_weights, safe_torch_load

# Files a weights folder may hold, in the order each kind of source looks for them.
TIMM_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
MAE_PRETRAINING_KEYS = ("mask_token", "decoder_")  # MAE's pixel decoder, left in its pre-training checkpoints
TEXT_SOURCES = ("openclip", "sentence-transformers")


def load_strictly(module: nn.Module, state: dict[str, torch.Tensor], source: str, what: str) -> None:
    """``load_state_dict(strict=True)`` whose error names the missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} (here {tuple(own[k].shape)})" for k in sorted(set(own) & set(state))
              if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        problems = [f"{label}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
                    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if keys]
        raise CheckpointError(f"'{source}' does not fit the {what} of this config; " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def load_timm_vision(visual: nn.Module, path: str | Path, what: str = "vision tower") -> None:
    """Load a timm ``VisionTransformer`` state dict into langmim's vision tower (or a timm ViT).

    The classifier (``head``) is dropped; the position embedding and patch kernel are resampled
    where the checkpoint's grid or patch size differs from the module's. A model whose final norm
    is ``fc_norm`` (applied after pooling: timm's avg-pool and MAE's fine-tuned ViTs) is refused
    by the strict load, since langmim normalises the tokens before pooling. The position
    embedding is loaded into langmim's fixed one and stays as loaded.
    """
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    state = {k: v for k, v in read_weights(path, TIMM_FILES).items() if not k.startswith(("head.", *MAE_PRETRAINING_KEYS))}
    own = visual.state_dict()
    kernel = state.get("patch_embed.proj.weight")
    if kernel is not None and kernel.shape[-2:] != own["patch_embed.proj.weight"].shape[-2:]:
        state["patch_embed.proj.weight"] = resample_patch_embed(kernel, list(own["patch_embed.proj.weight"].shape[-2:]))
    pos = state.get("pos_embed")
    prefix = 0 if getattr(visual, "no_embed_class", False) else getattr(visual, "num_prefix_tokens", 1)  # slots before the grid
    if pos is not None and pos.shape[1] != own["pos_embed"].shape[1] and pos.shape[-1] == own["pos_embed"].shape[-1]:
        side = math.isqrt(own["pos_embed"].shape[1] - prefix)
        if math.isqrt(pos.shape[1] - prefix) ** 2 == pos.shape[1] - prefix:  # a square grid
            state["pos_embed"] = resample_abs_pos_embed(pos, [side, side], num_prefix_tokens=prefix)
    load_strictly(visual, state, str(path), what)


def split_text_source(source: str) -> tuple[str, Path]:
    """``KIND:PATH`` of ``init.text`` -> (kind, path), with clear errors."""
    kind, _, path = source.partition(":")
    if kind not in TEXT_SOURCES or not path:
        raise ConfigError(f"init.text must be openclip:PATH or sentence-transformers:PATH; got {source!r}")
    return kind, Path(path)


SUPPORTED_POOLING = {"pooling_mode_mean_tokens": "mean_pooler", "pooling_mode_cls_token": "cls_last_hidden_state_pooler"}


def sentence_transformer_parts(folder: Path) -> tuple[Path, str]:
    """(transformer folder, open_clip pooler name) of a sentence-transformers model folder,
    refusing what open_clip's ``HFTextEncoder`` cannot reproduce."""
    import json

    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        raise ConfigError(f"'{folder}' is not a sentence-transformers model folder (no modules.json)")
    modules = json.loads(modules_file.read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or set(kinds[2:]) - {"Normalize"}:
        raise ConfigError(f"'{modules_file}' lists {kinds}; langmim reproduces Transformer, Pooling and Normalize only")
    pooling_file = folder / modules[1]["path"] / "config.json"
    if not pooling_file.is_file():
        raise ConfigError(f"sentence-transformers pooling config '{pooling_file}' is missing")
    modes = sorted(k for k, v in json.loads(pooling_file.read_text()).items() if k.startswith("pooling_mode") and v)
    if len(modes) != 1 or modes[0] not in SUPPORTED_POOLING:
        raise ConfigError(f"'{pooling_file}' pools by {modes}; langmim supports one of {', '.join(SUPPORTED_POOLING)}")
    transformer = folder / modules[0]["path"]
    return transformer, SUPPORTED_POOLING[modes[0]]


def import_transformers() -> None:
    try:
        import transformers
    except ImportError:
        raise ConfigError("init.text=sentence-transformers:... needs the transformers package: pip install 'langmim[text]'") from None
    transformers.logging.set_verbosity_error()  # its load report lists the unused BERT pooler
    transformers.logging.disable_progress_bar()


def check_pickled_weights(transformer: Path) -> None:
    """Read the ``pytorch_model*.bin`` files transformers would unpickle (it takes them where the
    folder has no safetensors weights) with ``io.safe_torch_load`` first, so that one holding
    code, or damaged, is refused in one line instead of a traceback advising ``weights_only=False``."""
    if any(transformer.glob("model*.safetensors*")):
        return
    for path in sorted(transformer.glob("pytorch_model*.bin")):
        safe_torch_load(path, what="sentence-transformers weights")


def build_sentence_transformer(folder: Path, embed_dim: int) -> nn.Module:
    """open_clip's ``HFTextEncoder`` over the model's transformer, pooled as the model pools,
    plus a linear projection to the joint space (``proj``, newly initialised)."""
    from open_clip.hf_configs import arch_dict
    from open_clip.hf_model import HFTextEncoder

    import_transformers()
    from transformers import AutoConfig

    transformer, pooler = sentence_transformer_parts(folder)
    model_type = AutoConfig.from_pretrained(str(transformer)).model_type
    if model_type not in arch_dict:
        raise ConfigError(f"'{folder}' is a {model_type} model; open_clip's HFTextEncoder takes {', '.join(arch_dict)}")
    check_pickled_weights(transformer)
    return HFTextEncoder(str(transformer), output_dim=embed_dim, pooler_type=pooler, proj_type="linear", pretrained=True)


def sentence_transformer_tokenizer(folder: Path, context_length: int):
    from open_clip.tokenizer import HFTokenizer

    import_transformers()
    return HFTokenizer(str(sentence_transformer_parts(folder)[0]), context_length=context_length)
