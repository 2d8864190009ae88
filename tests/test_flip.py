"""FLIP: patch dropout with open_clip's semantics, the encoder paying only for the kept patches,
and the unmasked tuning at the end of the schedule."""
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import PatchDropout

from conftest import TINY_MODEL
from langmim.config import load_config
from langmim.errors import ConfigError
from langmim.method_specs import check_method_rules
from langmim.methods import build_method
from langmim.methods.flip import patches_kept
from langmim.models.masking import mask_from_noise


@pytest.mark.parametrize("num_patches, dropout, kept", [(16, 0.5, 8), (16, 0.75, 4), (196, 0.5, 98), (196, 0.75, 49),
                                                        (16, 0.99, 1), (10, 0.33, 6)])
def test_the_kept_share_is_open_clips(num_patches, dropout, kept):
    assert patches_kept(num_patches, dropout) == kept
    tokens = torch.randn(3, 1 + num_patches, 4)
    assert PatchDropout(dropout).train()(tokens).shape[1] == 1 + kept  # open_clip keeps as many, beside CLS


@pytest.mark.parametrize("dropout", [0.5, 0.75])
def test_flip_drops_the_patches_open_clips_patch_dropout_drops(dropout):
    """Given open_clip's own random draws as masking noise (negated: it keeps the largest), FLIP's
    encoder sees exactly the tokens PatchDropout keeps, in its order, CLS first, positions added
    before the drop; the image embedding is that of those tokens alone."""
    torch.manual_seed(0)
    model = build_method(load_config(None, TINY_MODEL + ["method=flip", f"flip.patch_dropout={dropout}"])).train()
    b, n = 3, model.visual.num_patches
    images = torch.rand(b, 3, 32, 32) * 2 - 1
    embedded = model.visual.embed(images)
    torch.manual_seed(1)
    theirs = PatchDropout(dropout).train()(embedded)
    torch.manual_seed(1)
    noise = -torch.randn(b, n)  # the draws PatchDropout made
    ids_keep = mask_from_noise(noise, patches_kept(n, dropout)).ids_keep
    assert torch.equal(model.visual.embed(images, ids_keep), theirs)

    batch = {"image": images, "noise": noise, "step": torch.zeros(b), "text": model.tokenizer(["a red bag."] * b)}
    with torch.no_grad():
        expected = F.normalize(model.image_embedding(model.visual.norm(model.visual.blocks(theirs))), dim=-1)
        assert torch.allclose(model.features(batch)["image_embed"], expected, atol=1e-6)


def test_the_last_unmasked_steps_see_every_patch():
    torch.manual_seed(0)
    cfg = load_config(None, TINY_MODEL + ["method=flip", "train.steps=10", "train.batch_size=4", "flip.unmasked_steps=3"])
    model = build_method(cfg)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    text = model.tokenizer(["a red bag."] * 4)
    noise = torch.rand(4, model.visual.num_patches)
    with torch.no_grad():
        full = model.encode_image(images)
        for step, dropped in ((0, True), (6, True), (7, False), (9, False)):
            batch = {"image": images, "noise": noise, "step": torch.full((4,), step), "text": text}
            assert torch.allclose(model.features(batch)["image_embed"], full, atol=1e-6) != dropped, step


@pytest.mark.parametrize("overrides, words", [(["flip.patch_dropout=0"], "flip.patch_dropout=0.0"),
                                              (["flip.patch_dropout=1"], "must be in (0, 1)"),
                                              (["flip.unmasked_steps=11", "train.steps=10"], "between 0 and train.steps=10")])
def test_flip_refuses_what_it_cannot_do(overrides, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_method_rules(load_config(None, ["method=flip", *overrides]))


def test_the_trainer_hands_flip_its_step_and_a_resume_restores_it(tmp_path):
    """The phase follows the trainer's optimisation step (the scheduler's count, which a
    checkpoint restores), not the data's sample indices, which a shard stream restarts."""
    from langmim.engine.dryrun import synthetic_batch
    from langmim.engine.loop import Trainer

    cfg = load_config(None, TINY_MODEL + ["method=flip", "train.steps=4", "train.batch_size=4", "flip.unmasked_steps=2"])
    model = build_method(cfg)
    seen = []
    features = model.features
    model.features = lambda batch: seen.append(int(batch["step"][0])) or features(batch)
    trainer = Trainer(cfg, model, torch.device("cpu"))
    batch = synthetic_batch(cfg, model, 4)
    trainer.step(batch)
    trainer.step(batch)
    state = trainer.state_dict(2)
    resumed = Trainer(cfg, model, torch.device("cpu"))
    assert resumed.load_state_dict(state) == 2
    resumed.step(batch)
    assert seen == [0, 1, 2] and model.first_unmasked == 2
