"""MILAN (Hou et al. 2022): masked image modelling with language-assisted representations.

batch["image"] -> frozen teacher (all tokens: CLS + patches, after its final norm and
projection; and each patch's importance) -> semantic-aware masking (the 25% kept are drawn
without replacement with probability proportional to importance, so foreground patches tend to
stay visible) -> student encoder on the visible patches + CLS -> prompting decoder (CLS and
visible tokens are fixed prompts, only the mask tokens are updated) -> one prediction per token
-> loss = mean over all tokens (CLS, visible, masked) of ||norm(pred) - norm(target)||^2 = 2 - 2cos.

Sampling without replacement by importance is done with the Gumbel-top-k trick on the batch's
masking noise: keeping the K largest ``log(w) + Gumbel`` draws the same distribution as
``torch.multinomial(w, N, replacement=False)[:, :K]``, and stays a pure function of
(seed, sample index), so resumed and distributed runs see the same masks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import Config
from ..errors import LangmimError
from ..models.decoder import MaskTokenDecoder
from ..models.masking import Masking, mask_from_noise
from ..models.prompt_decoder import PromptingDecoder
from ..models.teacher import Teacher
from .base import MaskedImageModelling, PretrainMethod

TEACHER_PREFIX = "teacher."


def feature_distillation_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over every token of ||norm(pred) - norm(target)||^2 (= 2 - 2 cos)."""
    return (2.0 - 2.0 * F.cosine_similarity(pred, target, dim=-1)).mean()


def semantic_masking(importance: torch.Tensor, uniform: torch.Tensor, num_keep: int) -> Masking:
    """Keep ``num_keep`` patches drawn without replacement in proportion to ``importance``."""
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-12, 1.0 - 1e-7)))
    keys = torch.log(importance.clamp_min(1e-12)) + gumbel
    return mask_from_noise(-keys, num_keep)


class MILAN(MaskedImageModelling, PretrainMethod):
    name = "milan"
    title = "MILAN"

    def __init__(self, cfg: Config, teacher: Teacher | None = None) -> None:
        super().__init__(cfg)
        own = cfg.settings
        self.importance_kind = own.teacher.importance
        self.semantic = own.masking == "semantic"
        if teacher is not None:
            teacher.check_grid(self.visual.grid_size)
        self.teacher = teacher
        prompting = own.decoder_type == "prompting"
        decoder = PromptingDecoder if prompting else MaskTokenDecoder
        self.decoder = decoder(
            cfg.model.width, own.decoder_width, own.decoder_depth, own.decoder_heads,
            out_dim=own.teacher.embed_dim, grid_size=self.visual.grid_size, **({} if prompting else {"predict_cls": True}),
        )

    def masking(self, batch: dict, importance: torch.Tensor | None = None) -> Masking:
        if self.semantic and importance is not None:
            return semantic_masking(importance, batch["noise"], self.num_keep)
        return mask_from_noise(batch["noise"], self.num_keep)

    def features(self, batch: dict) -> dict[str, torch.Tensor]:
        if self.teacher is None:
            raise LangmimError("this MILAN model was loaded without its teacher; it can encode images but not train")
        images = batch["image"]
        target = self.teacher(images)
        masking = self.masking(batch, self.teacher.importance(target, self.importance_kind))
        pred = self.predict_masked(images, masking)
        return {"pred": pred, "target": target.tokens, "mask": masking.mask}

    def loss(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pred, target = feats["pred"].float(), feats["target"].float()
        loss = feature_distillation_loss(pred, target)
        with torch.no_grad():
            cos = F.cosine_similarity(pred[:, 1:], target[:, 1:], dim=-1)
            masked_cos = (cos * feats["mask"]).sum() / feats["mask"].sum().clamp_min(1)
        return {"loss": loss, "masked_cos": masked_cos}

    # The frozen teacher is rebuilt from milan.teacher.source; checkpoints hold only what trains.
    def state_dict(self, *args, **kwargs) -> dict:
        state = super().state_dict(*args, **kwargs)
        return type(state)((k, v) for k, v in state.items() if not k.startswith(TEACHER_PREFIX))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith(TEACHER_PREFIX)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"MILAN state dict mismatch: missing {missing}, unexpected {result.unexpected_keys}")
        return result
