"""MILAN: teacher, semantic-aware masking, prompting decoder, loss, and real training runs."""
import json
import logging
import math

import open_clip
import pytest
import torch

from conftest import tiny_overrides
from langmim.api import load
from langmim.config import load_config
from langmim.data.pretrain import build_pretrain_loader
from langmim.engine.loop import Trainer, move, pretrain
from langmim.errors import ConfigError
from langmim.io import list_checkpoints, load_checkpoint
from langmim.methods import build_method, build_teacher
from langmim.methods.milan import feature_distillation_loss, semantic_masking
from langmim.models import prompt_decoder
from langmim.models.decoder import MaskTokenDecoder
from langmim.models.masking import mask_from_noise
from langmim.models.prompt_decoder import PromptingDecoder


def milan_overrides(run_dir, teacher_run, steps=4, **extra):
    return tiny_overrides(run_dir, "milan", steps, **{"milan.teacher.source": f"langmim:{teacher_run}", **extra})


def test_loss_is_two_minus_two_cos_over_every_token():
    pred = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]])  # CLS, then two patches
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [-1.0, -1.0]]])
    # cos = 1, 0, -1 -> per-token 2 - 2cos = 0, 2, 4 -> mean 2
    assert feature_distillation_loss(pred, target).item() == pytest.approx(2.0)
    moved_cls = target.clone()
    moved_cls[0, 0] = torch.tensor([0.0, 1.0])  # only the CLS target changes: the loss sees it
    assert feature_distillation_loss(pred, moved_cls).item() == pytest.approx(8.0 / 3)


def _decoder_inputs(batch=3, patches=16, keep=4, width=24):
    torch.manual_seed(0)
    decoder = PromptingDecoder(width, 32, depth=2, heads=4, out_dim=8, grid_size=4)
    tokens = torch.randn(batch, 1 + keep, width, requires_grad=True)
    masking = mask_from_noise(torch.rand(batch, patches), keep)
    return decoder, tokens, masking


def test_prompting_decoder_never_changes_the_prompts():
    decoder, tokens, masking = _decoder_inputs()
    out = decoder.forward_tokens(tokens, masking.ids_restore)
    embedded = decoder.decoder_embed(tokens)
    pos = decoder.decoder_pos_embed[0]
    assert torch.allclose(out[:, 0], embedded[:, 0] + pos[0], atol=1e-6)
    for b in range(tokens.shape[0]):
        for j, patch in enumerate(masking.ids_keep[b].tolist()):
            assert torch.allclose(out[b, 1 + patch], embedded[b, 1 + j] + pos[1 + patch], atol=1e-6)
        masked = masking.mask[b].bool()
        # mask tokens were updated: none of them is still the bare mask token + position
        bare = decoder.mask_token[0, 0] + pos[1:][masked]
        assert not torch.allclose(out[b, 1:][masked], bare, atol=1e-3)
    assert decoder(tokens, masking.ids_restore).shape == (3, 17, 8)


def test_mask_tokens_attend_to_every_token(monkeypatch):
    decoder, tokens, masking = _decoder_inputs()
    shapes = []
    real_sdpa = prompt_decoder.F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, *args, **kwargs):
        shapes.append((q.shape[2], k.shape[2]))
        return real_sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(prompt_decoder.F, "scaled_dot_product_attention", recording_sdpa)
    out = decoder(tokens, masking.ids_restore)
    # queries: the 12 mask tokens; keys: all 17 tokens (CLS, 4 visible, 12 masked), in every block
    assert shapes == [(12, 17), (12, 17)]
    masked_patch = int(masking.mask[0].nonzero()[0])
    out[0, 1 + masked_patch].sum().backward()
    # ... and each mask token's output depends on the CLS and on every visible token
    assert (tokens.grad[0].abs().sum(dim=-1) > 0).all()
    assert tokens.grad[1:].abs().sum() == 0  # and on nothing of another image


def expected_hot_kept(hot: int, cold: int, weight: float, draws: int) -> float:
    """Exact expected number of hot patches (weight ``weight``; cold ones weigh 1) among
    ``draws`` draws without replacement in proportion to weight."""
    if draws == 0 or hot + cold == 0:
        return 0.0
    p_hot = hot * weight / (hot * weight + cold)
    return (p_hot * (1 + expected_hot_kept(hot - 1, cold, weight, draws - 1))
            + (1 - p_hot) * expected_hot_kept(hot, cold - 1, weight, draws - 1))


def test_semantic_masking_keeps_high_attention_patches():
    """Importance 50 on 4 of 16 patches and 1 elsewhere, 4 kept, 4,000 samples. Random masking
    keeps a hot patch with probability 1/4; sampling by importance keeps it with the exact
    probability below (0.87). Both are checked within 6 standard errors (< 0.03)."""
    generator = torch.Generator().manual_seed(0)
    samples, patches, keep = 4000, 16, 4
    hot = torch.tensor([5, 6, 9, 10])
    importance = torch.ones(samples, patches)
    importance[:, hot] = 50.0
    uniform = torch.rand(samples, patches, generator=generator)

    semantic = semantic_masking(importance, uniform, keep)
    random = mask_from_noise(uniform, keep)
    semantic_rate = (1 - semantic.mask[:, hot]).mean().item()
    random_rate = (1 - random.mask[:, hot]).mean().item()
    exact = expected_hot_kept(4, 12, 50.0, keep) / 4
    assert exact > 0.85
    # per-sample hot counts are bounded in [0, 4]: standard error <= 2 / sqrt(4000) / 4 = 0.008
    assert abs(semantic_rate - exact) < 0.03
    assert abs(random_rate - 0.25) < 0.03
    assert (semantic.mask.sum(dim=1) == patches - keep).all()

    # Gumbel-top-k draws what torch.multinomial without replacement draws.
    reference = torch.multinomial(importance, keep, replacement=False, generator=generator)
    reference_rate = torch.isin(reference, hot).float().mean().item()
    assert abs(semantic_rate - reference_rate) < 0.03


def test_open_clip_vit_b16_teacher_matches_open_clip(tmp_path):
    logging.getLogger().setLevel(logging.ERROR)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    weights = tmp_path / "vit_b16.pt"
    torch.save(model.state_dict(), weights)
    teacher = build_teacher(f"openclip:ViT-B-16:{weights}")
    assert (teacher.grid_size, teacher.embed_dim) == (14, 512)
    pixels = torch.randn(2, 3, 224, 224)
    out = teacher.encode(pixels)
    with torch.no_grad():
        pooled = model.encode_image(pixels)
        model.visual.output_tokens = True
        _, tokens = model.visual(pixels)
    assert torch.allclose(out.tokens[:, 0], pooled, atol=1e-5)
    assert torch.allclose(out.tokens[:, 1:], tokens @ model.visual.proj, atol=1e-5)
    assert out.cls_attention.shape == (2, 196)
    assert torch.allclose(out.cls_attention.sum(dim=1), torch.ones(2), atol=0.05)  # minus CLS->CLS
    assert not any(p.requires_grad for p in teacher.parameters())


def test_teacher_errors_are_clear(tmp_path, clip_run):
    with pytest.raises(ConfigError, match="milan.teacher.source"):
        build_teacher(None)
    with pytest.raises(ConfigError, match="openclip:MODEL:WEIGHTS"):
        build_teacher("openclip:ViT-B-16")
    with pytest.raises(Exception, match="not found"):
        build_teacher(f"openclip:ViT-B-16:{tmp_path / 'missing.pt'}")
    cfg = load_config(None, milan_overrides(tmp_path, clip_run, **{"model.img_size": 64}))
    with pytest.raises(ConfigError, match="patch grid"):
        build_method(cfg, with_teacher=True)


@pytest.mark.parametrize("importance", ["attention", "similarity"])
def test_milan_trains_and_keeps_its_teacher_frozen(tmp_path, clip_run, importance):
    cfg = load_config(None, milan_overrides(
        tmp_path, clip_run, steps=40, **{"train.lr": 3e-3, "train.batch_size": 32, "train.warmup_steps": 5,
                                         "milan.teacher.importance": importance}))
    pretrain(cfg, log_tensorboard=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5

    state = load_checkpoint(list_checkpoints(tmp_path)[-1])
    assert not any(k.startswith("teacher.") for k in state["model"])  # rebuilt from its source
    assert state["config"]["milan"]["teacher"]["embed_dim"] == 32
    assert build_method(cfg).teacher is None  # a loaded MILAN model encodes without it
    build_method(cfg).load_state_dict(state["model"])


def test_teacher_is_bit_identical_after_training_steps(tmp_path, clip_run):
    cfg = load_config(None, milan_overrides(tmp_path, clip_run, steps=3))
    method = build_method(cfg, with_teacher=True).train()
    assert not method.teacher.training
    teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    student_before = method.visual.blocks[0].mlp.fc1.weight.clone()
    trainer = Trainer(cfg, method, torch.device("cpu"))
    for batch in build_pretrain_loader(cfg, None, method.visual.num_patches, 0):
        trainer.step(move(batch, torch.device("cpu")))
    for name, value in method.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name]), name
    assert not torch.equal(method.visual.blocks[0].mlp.fc1.weight, student_before)


@pytest.mark.parametrize("overrides", [{"milan.masking": "random"}, {"milan.decoder_type": "mae"}])
def test_paper_ablations_train(tmp_path, clip_run, overrides):
    cfg = load_config(None, milan_overrides(tmp_path, clip_run, steps=2, **overrides))
    run = pretrain(cfg, log_tensorboard=False)
    model = load(run)
    expected = MaskTokenDecoder if overrides.get("milan.decoder_type") == "mae" else PromptingDecoder
    assert type(model.decoder) is expected and model.config.settings.masking == cfg.settings.masking
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


def test_accumulation_and_bf16(tmp_path, clip_run):
    """K micro-batches give the gradients of one batch; bf16 autocast trains."""
    from distributed_step import one_step

    for accum in (1, 4):
        one_step(str(tmp_path / f"accum{accum}.pt"), milan_overrides(tmp_path / f"run{accum}", clip_run, **{"train.accum_freq": accum}))
    one, four = (torch.load(tmp_path / f"accum{k}.pt") for k in (1, 4))
    assert four["scalars"]["loss"] == pytest.approx(one["scalars"]["loss"], rel=1e-5)
    for name, grad in one["grads"].items():
        assert torch.allclose(four["grads"][name], grad, rtol=1e-3, atol=1e-6), name

    cfg = load_config(None, milan_overrides(tmp_path / "bf16", clip_run, steps=2, **{"train.precision": "bf16"}))
    pretrain(cfg, log_tensorboard=False)
    assert list_checkpoints(tmp_path / "bf16")


def test_teacher_under_autocast_runs_in_its_dtype_once_cast(clip_run):
    """Autocast re-casts weights that need no gradient on every call; the frozen teacher is cast
    to the autocast dtype once instead and runs with autocast off, returning float32."""
    teacher = build_teacher(f"langmim:{clip_run}")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    reference = teacher(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = teacher(images)
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}
    assert out.tokens.dtype == out.cls_attention.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(out.tokens, reference.tokens, dim=-1).min() > 0.99
    assert (out.cls_attention - reference.cls_attention).abs().max() < 0.02
    after = teacher(images)  # a call without autocast afterwards (as the throughput benchmark makes) casts back to float32
    assert {p.dtype for p in teacher.parameters()} == {torch.float32} and after.tokens.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(after.tokens, reference.tokens, dim=-1).min() > 0.99


def test_cls_attention_beside_the_block_equals_torchs_own_weights():
    from langmim.models.teacher import mha_cls_attention

    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(64, 4, batch_first=True).eval()
    x = torch.randn(3, 17, 64)
    with torch.no_grad():
        _, weights = attn(x, x, x, need_weights=True, average_attn_weights=True)
        assert torch.allclose(mha_cls_attention(attn, x), weights[:, 0, 1:], atol=1e-6)
