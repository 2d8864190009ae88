"""A method that lives outside langmim, as a user's would: one file, registered by one line
(``METHODS["toy"] = MethodSpec("toy_method:TokenShrinkage", MaskedSettings)``: its class and its
settings section, ``toy.mask_ratio``) and trained, loaded, evaluated and exported
by the unchanged engine, evaluation and export."""
import torch

from langmim.methods.base import MaskedImageModelling, PretrainMethod


class TokenShrinkage(MaskedImageModelling, PretrainMethod):
    """Masked encoding whose loss pulls the visible tokens towards zero: meaningless, but it has
    gradients, masking and logged scalars like a real objective."""

    name = "toy"
    title = "Toy"

    def features(self, batch: dict) -> dict[str, torch.Tensor]:
        tokens = self.visual.forward_features(batch["image"], self.masking(batch).ids_keep)
        return {"tokens": tokens}

    def loss(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        loss = feats["tokens"].float().pow(2).mean()
        return {"loss": loss, "token_norm": feats["tokens"].detach().norm(dim=-1).mean()}
