"""Fine-tuning: layer-wise lr decay groups, and a run that learns without touching the source."""
import pytest
import torch
from torch.utils.data import TensorDataset

from langmim.eval.finetune import FineTuneClassifier, finetune, layer_decay_groups
from langmim.models.vit import MaskedVisionTransformer


def test_layer_decay_scales_each_layer():
    visual = MaskedVisionTransformer(32, 8, 32, depth=3, heads=2)
    model = FineTuneClassifier(visual, num_classes=4, drop_path=0.1)
    scales = {}
    for group in layer_decay_groups(model, weight_decay=0.05, layer_decay=0.5):
        for param in group["params"]:
            name = next(n for n, p in model.named_parameters() if p is param)
            scales[name] = (group["lr_scale"], group["weight_decay"])
    assert scales["head.weight"] == (1.0, 0.05) and scales["head.bias"] == (1.0, 0.0)
    assert scales["visual.norm.weight"] == (1.0, 0.0)
    assert scales["visual.blocks.2.mlp.fc1.weight"] == (0.5, 0.05)
    assert scales["visual.blocks.0.attn.qkv.weight"] == (0.125, 0.05)
    assert scales["visual.patch_embed.proj.weight"] == (0.0625, 0.05)
    assert scales["visual.cls_token"] == (0.0625, 0.0)
    assert len(scales) == sum(1 for _ in model.parameters())


def test_finetuning_learns_a_planted_task_and_leaves_the_encoder_alone():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(2).repeat(64)
    images = torch.randint(0, 40, (128, 3, 32, 32), generator=g, dtype=torch.uint8)
    images[labels == 1, :, :16] += 200  # class 1: bright top half
    data = TensorDataset(images, labels)
    visual = MaskedVisionTransformer(32, 8, 32, depth=2, heads=2)
    before = {k: v.clone() for k, v in visual.state_dict().items()}
    result = finetune(visual, data, data, num_classes=2, epochs=4, batch_size=16, lr=3e-3)
    assert result["top1"] == pytest.approx(100.0)
    assert all(torch.equal(v, before[k]) for k, v in visual.state_dict().items())


def test_a_small_train_set_gets_enough_steps_and_a_batch_it_can_fill():
    """40 images: the default batch of 128 would give no step at all (drop_last), and 2 epochs of
    a small folder far fewer steps than the built-in data gets."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randint(0, 255, (40, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(2).repeat(20))
    visual = MaskedVisionTransformer(32, 8, 32, depth=1, heads=2)
    result = finetune(visual, data, data, num_classes=2, epochs=2, min_steps=12)
    assert (result["steps"], result["epochs"]) == (12, 12)  # one full batch of 40 per epoch
