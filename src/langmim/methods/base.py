"""What every pre-training method shares: the masked ViT, the batch -> features -> losses split,
and the inference API (``encode_image`` / ``encode_text``)."""
from __future__ import annotations

import abc
import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss
from torch import nn

from .. import dist
from ..config import Config
from ..errors import LangmimError
from ..method_specs import MethodSpec, method_spec, methods_with
from ..models.masking import Masking, mask_from_noise, num_visible
from ..models.open_clip_weights import load_open_clip_text
from ..models.pretrained import load_timm_vision, split_text_source
from ..models.text import LockedTextRunner, build_text_tower, build_tokenizer, lock_text_tower
from ..models.vit import MaskedVisionTransformer
from ..transforms import build_preprocess

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100)
SIGMOID_SCALE_INIT = math.log(10)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """A loss input in at least float32: bf16 or fp16 features (autocast) are raised, float64 stays."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class PretrainMethod(nn.Module, abc.ABC):
    """A model plus its objective. ``features`` maps a batch to per-sample tensors (dim 0 is the
    sample) and ``loss`` maps them to a dict with ``loss`` and logged scalars. The split lets the
    engine cache features across accumulation steps for objectives that couple samples."""

    name = ""  # its registry name (``method=NAME``); what it needs is declared in its spec (``langmim.method_specs``)
    title = ""  # as the paper writes it, for model cards
    tags: tuple[str, ...] = ()  # Hugging Face tags of its kind of pre-training
    text_locked = False
    checkpoint_path: str | None = None  # set when loaded from a saved model (``load_method``)
    step: int | None = None

    @property
    def spec(self) -> MethodSpec:
        return method_spec(self.name)

    @property
    def has_text(self) -> bool:
        """A text tower: zero-shot and retrieval."""
        return self.spec.has_text

    @property
    def needs_scene_labels(self) -> bool:
        return self.spec.needs_scene_labels

    @property
    def batch_coupled(self) -> bool:
        """One sample's loss depends on the others (contrastive)."""
        return self.spec.batch_coupled

    def fsdp_blocks(self) -> list[nn.Module]:
        """What FSDP shards one by one: the transformer blocks of the trained towers."""
        text = getattr(self, "text", None)
        return list(self.visual.blocks) + (list(text.transformer.resblocks) if text is not None else [])

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.config = cfg
        m = cfg.model
        self.settings = cfg.settings  # the method's own section (``NAME.*``)
        self.visual = MaskedVisionTransformer(m.img_size, m.patch_size, m.width, m.depth, m.heads, m.mlp_ratio)

    @property
    def source(self) -> str:
        return self.name

    @property
    def image_size(self) -> int:
        return self.config.model.img_size

    @functools.cached_property
    def tokenizer(self) -> Callable[[list[str]], torch.Tensor]:
        """The tokenizer of the text tower (``init.text``'s own, or open_clip's BPE)."""
        return build_tokenizer(self.config.model.context_length, self.config.init.text)

    @functools.cached_property
    def preprocess(self) -> Callable:
        """PIL image -> normalised tensor at the model's resolution."""
        return build_preprocess(self.image_size)

    def lock_towers(self, cfg: Config) -> None:
        """Freeze the towers ``init.lock_*`` names for training (a loaded model is not locked)."""
        if cfg.init.lock_vision:
            self.visual.requires_grad_(False)

    def load_pretrained(self, cfg: Config) -> list[str]:
        """Load the ``init.*`` weights of a fresh run; returns what was loaded, for the log."""
        if cfg.init.vision is None:
            return []
        load_timm_vision(self.visual, cfg.init.vision)
        return [f"vision tower <- {cfg.init.vision}"]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory in the trained towers (vision and, where there is one, text)."""
        self.visual.set_grad_checkpointing(enable)
        text = getattr(self, "text", None)
        if text is not None and enable and not self.text_locked:  # HFTextEncoder enables it whatever the argument
            text.set_grad_checkpointing(True)

    def compile_towers(self, backend: str | Callable = "inductor") -> None:
        """torch.compile the trained towers in place, so parameter names (and checkpoints) stay.
        Methods call the vision tower's ``forward_features``, not its ``forward`` (which
        ``Module.compile`` wraps), so that is what is compiled; the text tower is called whole."""
        self.visual.forward_features = torch.compile(self.visual.forward_features, backend=backend)
        text = getattr(self, "text", None)
        if text is not None:
            text.compile(backend=backend)

    def after_optimizer_step(self) -> None:
        """Constraints put back on parameters after each optimizer step (none here)."""

    @abc.abstractmethod
    def features(self, batch: dict) -> dict[str, torch.Tensor]:
        """Per-sample tensors of a batch (dim 0 is the sample)."""

    @abc.abstractmethod
    def loss(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Losses (key ``loss``) and logged scalars from the whole batch's features."""

    def forward(self, batch: dict, cached: list[dict] | None = None, index: int = 0) -> dict[str, torch.Tensor]:
        """Losses of a batch; with ``cached`` features of the other micro-batches (gradient
        accumulation), the loss covers the whole batch and only micro-batch ``index`` is live."""
        feats = self.features(batch)
        if cached is not None:
            parts = cached[:index] + [feats] + cached[index + 1:]
            feats = {k: torch.cat([p[k] for p in parts]) for k in feats}
        return self.loss(feats)

    def image_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """Un-normalised image embedding from encoder tokens: the patch-token mean."""
        return self.visual.pool(tokens, "mean")

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        emb = self.image_embedding(self.visual.forward_features(images))
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        raise LangmimError(f"method '{self.name}' has no text tower; encode_text needs a checkpoint of {methods_with('has_text')}")


class MaskedImageModelling:
    """What the masked-image-modelling methods (MAE, RILS, MILAN) share: their tag, the mask drawn
    from the batch's noise at their section's ``mask_ratio``, and the masked pass, in which the
    encoder sees the visible patches only and ``self.decoder`` (mask tokens put back in place)
    predicts every patch. Put it before the ``PretrainMethod`` base."""

    tags: tuple[str, ...] = ("masked-image-modeling",)

    @property
    def num_keep(self) -> int:
        return num_visible(self.visual.num_patches, self.settings.mask_ratio)

    def masking(self, batch: dict) -> Masking:
        return mask_from_noise(batch["noise"], self.num_keep)

    def predict_masked(self, images: torch.Tensor, masking: Masking) -> torch.Tensor:
        """The decoder's prediction for every patch from the encoder tokens of the visible ones."""
        return self.decoder(self.visual.forward_features(images, masking.ids_keep), masking.ids_restore)


class ImageTextMethod(PretrainMethod):
    """Adds the CLIP text tower, the image projection W (D x E, no bias), the logit scale and,
    with the sigmoid loss (``contrastive_loss=sigmoid`` in the method's section), its logit bias."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        m = cfg.model
        self.text = build_text_tower(
            m.text_width, m.text_depth, m.text_heads, m.context_length, m.embed_dim, cfg.init.text, m.text_quick_gelu)
        self.text_locked = cfg.init.lock_text  # frozen in training: no activations to recompute
        self.locked_text = LockedTextRunner()  # runs it under autocast (not a module: kept out of the state dict)
        self.image_projection = nn.Parameter(torch.randn(m.width, m.embed_dim) * m.width**-0.5)
        sigmoid = cfg.settings.contrastive_loss == "sigmoid"  # SigLIP's initial scale and bias (Zhai et al. 2023)
        self.logit_scale = nn.Parameter(torch.tensor(SIGMOID_SCALE_INIT if sigmoid else LOGIT_SCALE_INIT))
        self.logit_bias = nn.Parameter(torch.tensor(cfg.settings.sigmoid_bias_init)) if sigmoid else None

    def lock_towers(self, cfg: Config) -> None:
        super().lock_towers(cfg)
        if cfg.init.lock_text:
            lock_text_tower(self.text)

    def load_pretrained(self, cfg: Config) -> list[str]:
        loaded = super().load_pretrained(cfg)
        if cfg.init.text is not None:
            kind, path = split_text_source(cfg.init.text)
            if kind == "openclip":
                load_open_clip_text(self.text, path, cfg.model.text_quick_gelu)
            loaded.append(f"text tower <- {cfg.init.text}")  # a sentence-transformers tower is built from its weights
        return loaded

    def image_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.visual.pool(tokens, "mean") @ self.image_projection

    def patch_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each patch token projected into the joint space and normalised: (B, N, E)."""
        return F.normalize(tokens[:, 1:] @ self.image_projection, dim=-1)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        locked_under_autocast = self.text_locked and torch.is_autocast_enabled(tokens.device.type)
        emb = self.locked_text(self.text, tokens) if locked_under_autocast else self.text(tokens)
        return F.normalize(emb, dim=-1) if normalize else emb

    def after_optimizer_step(self) -> None:
        """Clamp the logit scale to [0, ln 100] in place, as SLIP and open_clip do. A clamp in the
        forward pass would zero its gradient above the bound and pin it there for good."""
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)

    def logits_per_sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        """exp(logit scale), and the sigmoid loss's logit bias, repeated per sample: with cached
        accumulation features only the live micro-batch's copy carries a gradient, so the mean
        over the batch gives each exactly one full-batch gradient."""
        out = {"logit_scale": self.logit_scale.exp().expand(batch_size)}
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias.expand(batch_size)
        return out

    def contrastive_loss(self, image_embed: torch.Tensor, text_embed: torch.Tensor, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """Over all ranks' features, gathered with gradient, so N ranks compute what one process
        would: CLIP's symmetric InfoNCE (open_clip's ``ClipLoss``, local loss) or SigLIP's pairwise
        sigmoid with its learnt bias (open_clip's ``SigLipLoss``, the captions gathered)."""
        scale = feats["logit_scale"].mean()
        if self.logit_bias is None:
            loss_fn = ClipLoss(local_loss=True, gather_with_grad=True, rank=dist.rank(), world_size=dist.world_size())
            return loss_fn(image_embed, text_embed, scale)
        loss_fn = SigLipLoss(rank=dist.rank(), world_size=dist.world_size(), dist_impl="gather")
        return loss_fn(image_embed, text_embed, scale, feats["logit_bias"].mean())
