"""``langmim finetune``: MAE's ``main_finetune.py`` on the shared engine (run directory and its lock,
checkpoints with digests, resume, metrics, precision, DDP under torchrun).

The run fine-tunes the vision tower of a pre-trained langmim run (``finetune.pretrained``; its
method and model become the run's), of timm/MAE weights (``init.vision``), or a fresh one, with a
new ``fc_norm`` and head. Its checkpoints are the pre-trained run's model with the fine-tuned tower
(``model``, so ``langmim eval`` and ``langmim export`` read the run like any other) plus the
classifier beside it (``classifier``: ``fc_norm``, ``head``) and the optimizer; ``model-best.pt``
(the best validation top-1) and ``model-last.pt`` hold the same without the optimizer.
Every random draw is keyed by (seed, step) or (seed, epoch, sample), so a run resumed at any
checkpoint ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .. import dist
from ..config import Config, config_from_dict, save_config, to_dict
from ..engine.checkpoint import (
    TrainingDiverged,
    check_resumable,
    check_weights_finite,
    find_resume_state,
    newest_checkpoint_line,
    restore_training_state,
    run_directory,
    run_record,
    save_checkpoint,
)
from ..engine.interrupt import StoppedBySignal, StopSignals
from ..engine.logger import MetricLogger
from ..engine.precision import autocast, cpu_attention_in_fp32, effective_precision
from ..errors import ConfigError, DataError
from ..io import atomic_save, load_checkpoint, resolve_checkpoint
from ..methods import build_method, load_method
from ..methods.base import PretrainMethod
from ..models.pretrained import load_strictly
from .data import StepBatches, build_datasets, seeded_rngs
from .model import FineTuneClassifier, key_report, layer_decay_groups
from .schedule import lr_at, peak_lr

STEP_STREAM = 49979687  # the seeds of a step's mixup, cutmix and drop path draws
BEST, LAST = "model-best.pt", "model-last.pt"


def check_finetune_config(cfg: Config) -> None:
    """Refuse what fine-tuning does not support, in one line before torch work starts."""
    f = cfg.finetune
    if cfg.train.fsdp or cfg.train.checkpoint_format != "file":
        raise ConfigError("langmim finetune trains with DDP and file checkpoints: set train.fsdp=false train.checkpoint_format=file")
    if (f.mixup > 0 or f.cutmix > 0) and (f.batch_size // f.accum_iter) % 2:
        raise ConfigError(f"mixup and cutmix pair each image with another of its batch: finetune.batch_size / finetune.accum_iter "
                          f"= {f.batch_size // f.accum_iter} must be even")


def adopt_model(cfg: Config, source: Config) -> None:
    """Take the method, model and initialisation of the run whose tower is fine-tuned."""
    cfg.method, cfg.settings, cfg.model, cfg.init = source.method, source.settings, source.model, source.init


def source_model(cfg: Config, state: dict | None) -> tuple[PretrainMethod, str]:
    """The model whose tower is fine-tuned, and where its weights come from. Resuming, the
    checkpoint's own config decides it (its weights are restored later); else the pre-trained
    run, ``init.vision``, or nothing (random initialisation)."""
    if state is not None:
        adopt_model(cfg, config_from_dict(state["config"]))
        return build_method(cfg), "the checkpoint"
    if cfg.finetune.pretrained:
        method = load_method(cfg.finetune.pretrained)
        adopt_model(cfg, method.config)
        return method, f"pre-trained {method.name} run '{cfg.finetune.pretrained}' (step {method.step})"
    method = build_method(cfg)
    loaded = method.load_pretrained(cfg)
    return method, loaded[0] if loaded else "no pre-trained weights: a randomly initialised tower"


def build_classifier(cfg: Config, method: PretrainMethod, num_classes: int) -> FineTuneClassifier:
    f = cfg.finetune
    return FineTuneClassifier(method.visual, num_classes, f.drop_path, f.global_pool, fc_norm=f.global_pool == "avg",
                              head_init_std=f.head_init_std, copy_tower=False)


def build_optimizer(cfg: Config, classifier: FineTuneClassifier, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the layer-decay groups, and the per-step schedule: group lr = lr_scale x lr_at(step)."""
    f = cfg.finetune
    groups = layer_decay_groups(classifier, f.weight_decay, f.layer_decay)
    for group in groups:
        group["lr"] = group["lr_scale"]  # LambdaLR multiplies it by lr_at(step), as MAE's lr_sched does
    optimizer = torch.optim.AdamW(groups, lr=peak_lr(f))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, steps_per_epoch, f))


def build_criterion(cfg: Config, num_classes: int) -> tuple[nn.Module, Any]:
    """timm's Mixup (mixup/cutmix with label smoothing folded into the soft targets) and
    SoftTargetCrossEntropy, else label-smoothing or plain cross-entropy (main_finetune.py)."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    f = cfg.finetune
    if f.mixup > 0 or f.cutmix > 0:
        mixup = Mixup(mixup_alpha=f.mixup, cutmix_alpha=f.cutmix, prob=f.mixup_prob, switch_prob=f.mixup_switch_prob,
                      mode=f.mixup_mode, label_smoothing=f.smoothing, num_classes=num_classes)
        return SoftTargetCrossEntropy(), mixup
    if f.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=f.smoothing), None
    return nn.CrossEntropyLoss(), None


class FineTuner:
    """What ``engine.checkpoint.save_checkpoint`` needs (``Checkpointable``): the classifier is what
    is checked finite, and a checkpoint holds the source run's whole model (with the fine-tuned
    tower) under ``model``, the classifier's own weights under ``classifier``."""

    def __init__(self, cfg: Config, classifier: FineTuneClassifier, source: PretrainMethod, optimizer: torch.optim.Optimizer,
                 scheduler: Any, classes: list[str]) -> None:
        self.cfg, self.method, self.source = cfg, classifier, source
        self.optimizer, self.scheduler, self.classes = optimizer, scheduler, classes
        self.sharded, self.stream_states = False, {}
        self.best: dict[str, float] = {"val_top1": -1.0, "step": 0}

    def record(self) -> dict[str, Any]:
        return {"classes": self.classes, "best": dict(self.best)}

    def model_file(self, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        """A fine-tuned model as ``model-best.pt`` / ``model-last.pt`` keep it: a langmim checkpoint
        without the optimizer (``langmim eval`` and ``langmim export`` read it)."""
        return {**run_record(self.cfg, self.scheduler, step), "model": self.source.state_dict(),
                "classifier": self.method.classifier_state(), "finetune": {**self.record(), "metrics": metrics}}

    def state_dict(self, step: int, streams: list[dict] | None = None) -> dict[str, Any]:
        return {**self.model_file(step, {}), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> int:
        step = restore_training_state(state, self.source, self.optimizer, self.scheduler, sharded=False)
        load_strictly(_Head(self.method), state["classifier"], "checkpoint", "classifier")
        self.best = dict(state["finetune"]["best"])
        return step


class _Head(nn.Module):
    """The classifier's modules beside the tower, for a strict load of ``classifier``."""

    def __init__(self, classifier: FineTuneClassifier) -> None:
        super().__init__()
        self.head = classifier.head
        if classifier.fc_norm is not None:
            self.fc_norm = classifier.fc_norm


def evaluate(model: nn.Module, val, cfg: Config, device: torch.device, precision: str, batch: int) -> dict[str, float]:
    """Top-1 and cross-entropy on the validation set (centre crops), each rank taking every
    world_size-th image and the counts summed over ranks. An unusable image is skipped and
    counted (``val_skipped``), not scored as the neighbour that stands in for it in training."""
    rows = [(0, i) for i in range(dist.rank(), len(val), dist.world_size())]
    loader = DataLoader(val, batch_size=batch, sampler=rows, num_workers=cfg.data.num_workers)
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    model.eval()
    with torch.no_grad(), autocast(device, precision):
        for images, labels, replaced in loader:
            usable = replaced == 0
            images, labels = images[usable].to(device), labels[usable].to(device)
            skipped = float((~usable).sum())
            if not len(labels):
                totals[3] += skipped
                continue
            logits = model(images).float()
            totals += torch.stack([(logits.argmax(1) == labels).sum().double(), torch.nn.functional.cross_entropy(
                logits, labels, reduction="sum").double(), torch.tensor(float(len(labels)), dtype=torch.float64, device=device),
                torch.tensor(skipped, dtype=torch.float64, device=device)])
    model.train()
    correct, loss, count, skipped = dist.all_reduce_sum(totals).tolist()
    return {"val_top1": 100.0 * correct / max(count, 1.0), "val_loss": loss / max(count, 1.0), "val_skipped": int(skipped)}


def finetune(cfg: Config, resume: str | None = None, log_tensorboard: bool = True) -> Path:
    """Fine-tune as ``cfg.finetune`` says and return the run directory."""
    check_finetune_config(cfg)
    with run_directory(cfg, resume) as (info, run_dir, resume):
        return run_finetune(cfg, info, run_dir, resume, log_tensorboard)


def run_finetune(cfg: Config, info: dist.DistInfo, run_dir: Path, resume: str | None, log_tensorboard: bool) -> Path:
    f = cfg.finetune
    found = find_resume_state(resume, run_dir)
    resume_path, state = found if found is not None else (None, None)
    torch.manual_seed(f.seed)
    source, origin = source_model(cfg, state)
    if state is not None:
        check_resumable(state, cfg, resume_path)
    train, val, classes = build_datasets(cfg)
    if state is not None and state["finetune"]["classes"] != classes:
        raise DataError(f"cannot resume from '{resume_path}': its classes differ from those of the data now")
    world, accum = info.world_size, f.accum_iter
    if f.batch_size % (accum * world):
        raise ConfigError(f"finetune.batch_size={f.batch_size} must be divisible by finetune.accum_iter x ranks = {accum * world}")
    steps_per_epoch = len(train) // f.batch_size
    if steps_per_epoch == 0:
        raise DataError(f"{len(train)} training images make no batch of finetune.batch_size={f.batch_size}")
    total = f.epochs * steps_per_epoch
    classifier = build_classifier(cfg, source, len(classes))
    report = key_report(classifier, source.state_dict())
    classifier.to(info.device).train()
    optimizer, scheduler = build_optimizer(cfg, classifier, steps_per_epoch)
    tuner = FineTuner(cfg, classifier, source, optimizer, scheduler, classes)
    start = tuner.load_state_dict(state) if state is not None else 0
    precision = effective_precision(cfg.train.precision, info.device)
    model: nn.Module = classifier
    if world > 1:
        model = DistributedDataParallel(classifier, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    criterion, mixup = build_criterion(cfg, len(classes))
    if dist.is_main():
        save_config(cfg, run_dir / "config.yaml")
        print(f"fine-tuning the tower of {origin}; new keys: {', '.join(report['new'])}"
              + (f"; kept, not fine-tuned: {summarise(report['ignored'])}" if report["ignored"] else "")
              + (f"; loaded, unused: {', '.join(report['unused'])}" if report["unused"] else ""))
        print(f"{len(train)} train / {len(val)} val images, {len(classes)} classes; {steps_per_epoch} steps per epoch, "
              f"{total} in all; peak lr {peak_lr(f):.3g}")
        if resume_path is not None:
            print(f"resumed from '{resume_path}' at step {start} of {total}")
    local = f.batch_size // accum // world
    if mixup is not None and local % 2:
        raise ConfigError(f"mixup and cutmix pair the images of each rank's micro-batch: finetune.batch_size / (accum_iter x ranks) "
                          f"= {local} must be even")
    loader = DataLoader(train, batch_sampler=StepBatches(len(train), f.seed, f.batch_size, accum, start, total, info.rank, world),
                        num_workers=cfg.data.num_workers, pin_memory=info.device.type == "cuda")
    report_to = [sink for sink in cfg.train.report_to if log_tensorboard or sink != "tensorboard"]
    logger = MetricLogger(run_dir, total, start, dist.is_main(), report_to, to_dict(cfg))
    batches = iter(loader)
    step, metrics = start, {}
    with StopSignals() as stop, contextlib.closing(logger), cpu_attention_in_fp32(info.device, precision):
        while step < total:
            fetch = time.perf_counter()
            scalars, data_time = {"loss": 0.0, "replaced_images": 0.0}, 0.0
            for m in range(accum):
                images, labels, replaced = next(batches)
                data_time += time.perf_counter() - fetch
                images, labels = images.to(info.device, non_blocking=True), labels.to(info.device, non_blocking=True)
                with seeded_rngs(f.seed, STEP_STREAM, step, m, info.rank):  # mixup, cutmix, drop path
                    if mixup is not None:
                        images, labels = mixup(images, labels)
                    sync = model.no_sync() if isinstance(model, DistributedDataParallel) and m < accum - 1 else contextlib.nullcontext()
                    with sync:
                        with autocast(info.device, precision):
                            loss = criterion(model(images).float(), labels)
                        (loss / accum).backward()
                scalars["loss"] += float(loss.detach()) / accum
                scalars["replaced_images"] += float(replaced.sum())
                fetch = time.perf_counter()
            scalars = dist.mean_over_ranks(scalars)
            if f.clip_grad > 0:
                scalars["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(classifier.parameters(), f.clip_grad))
            lr = max(group["lr"] for group in optimizer.param_groups)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if not math.isfinite(scalars["loss"]):
                raise TrainingDiverged(f"loss became {scalars['loss']} at step {step}; {newest_checkpoint_line(run_dir)}")
            logger.update(scalars, local * accum * world, data_time)
            if step % cfg.train.log_every == 0 or step == total:
                logger.flush(step, lr)
            stopping = stop.requested(info.device)
            if step % steps_per_epoch == 0:
                metrics = end_of_epoch(tuner, model, val, cfg, info, precision, local, step, steps_per_epoch, logger, run_dir)
            elif stopping:
                save_checkpoint(tuner, run_dir, step, cfg.train.keep_checkpoints)
            if stopping:
                raise StoppedBySignal(f"stopped by {stop.name()} after step {step} with a checkpoint in '{run_dir}'; "
                                      "continue with --resume latest")
    if dist.is_main():
        atomic_save(tuner.model_file(step, metrics), run_dir / LAST, digest=True)
        print(f"best val top-1 {tuner.best['val_top1']:.2f} at step {tuner.best['step']} ({BEST}); last: {LAST}")
    dist.barrier()
    return run_dir


def end_of_epoch(tuner: FineTuner, model: nn.Module, val, cfg: Config, info: dist.DistInfo, precision: str, batch: int,
                 step: int, steps_per_epoch: int, logger: MetricLogger, run_dir: Path) -> dict[str, float]:
    """Validate, keep the best model (written before the checkpoint that records it, so a run killed
    in between redoes the epoch and writes the same file), and checkpoint."""
    metrics = evaluate(model, val, cfg, info.device, precision, batch)
    improved = metrics["val_top1"] > tuner.best["val_top1"]
    if improved:
        tuner.best = {"val_top1": metrics["val_top1"], "step": step}
    record = {"step": step, "epoch": step // steps_per_epoch, **metrics, "best_val_top1": tuner.best["val_top1"]}
    check_weights_finite(tuner, run_dir, step)
    if dist.is_main():
        if improved:
            atomic_save(tuner.model_file(step, metrics), run_dir / BEST, digest=True)
        logger.log.append({**record, "time": time.time()})
        print(f"epoch {record['epoch']}: val top-1 {metrics['val_top1']:.2f}, loss {metrics['val_loss']:.4f} (best {tuner.best['val_top1']:.2f})")
    save_checkpoint(tuner, run_dir, step, cfg.train.keep_checkpoints)
    return metrics


def summarise(keys: list[str]) -> str:
    """Keys grouped by their first name (``decoder.* (24)``)."""
    counts: dict[str, int] = {}
    for key in keys:
        counts[key.split(".")[0]] = counts.get(key.split(".")[0], 0) + 1
    return ", ".join(f"{name}.* ({n})" if n > 1 else name for name, n in counts.items())


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> FineTuneClassifier:
    """A fine-tuned classifier (tower, ``fc_norm``, head) from a ``langmim finetune`` run directory
    (its newest checkpoint) or one of its files (``model-best.pt``), in eval mode."""
    file = resolve_checkpoint(path)
    state = load_checkpoint(file)
    if "classifier" not in state:
        raise DataError(f"'{file}' is not a fine-tuned model (no classifier in it): written by langmim pretrain, not finetune")
    cfg = config_from_dict(state["config"])
    method = build_method(cfg)
    load_strictly(method, state["model"], str(file), "model")
    classifier = build_classifier(cfg, method, len(state["finetune"]["classes"]))
    load_strictly(_Head(classifier), state["classifier"], str(file), "classifier")
    classifier.classes = state["finetune"]["classes"]
    return classifier.to(device).eval()



def dry_classes(cfg: Config) -> int:
    """The class count a dry run builds the head for, without reading images: the image folder's
    train classes where it is there, 10 for Fashion-MNIST, else ImageNet's 1000 (MAE's --nb_classes)."""
    f = cfg.finetune
    if f.dataset == "fashion-mnist":
        return 10
    train_dir = Path(f.data_root or "") / "train"
    classes = [d for d in train_dir.iterdir() if d.is_dir()] if f.data_root and train_dir.is_dir() else []
    return len(classes) or 1000


def recipe_lines(cfg: Config, classifier: FineTuneClassifier) -> list[str]:
    """The recipe as it will run: what a reader compares with a release's."""
    f, size = cfg.finetune, cfg.model.img_size
    groups = layer_decay_groups(classifier, f.weight_decay, f.layer_decay)
    decayed = [p for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    spared = sum(len(g["params"]) for g in groups) - len(decayed)
    scales = sorted({g["lr_scale"] for g in groups})
    rule = f"lr {f.lr:g} (given)" if f.lr is not None else f"lr {peak_lr(f):.4g} = blr {f.blr:g} x batch {f.batch_size} / 256"
    augment = (f"RandomResizedCrop({size}, scale=(0.08, 1.0), bicubic) + horizontal flip"
               + (f" + RandAugment {f.aa}" if f.aa else f" + color jitter {f.color_jitter}" if f.color_jitter else "")
               + (f" + RandomErasing(p={f.reprob:g}, mode={f.remode}, count={f.recount})" if f.reprob > 0 else ""))
    mixing = (f"mixup {f.mixup:g}, cutmix {f.cutmix:g} (prob {f.mixup_prob:g}, switch {f.mixup_switch_prob:g}, mode {f.mixup_mode}) "
              f"with label smoothing {f.smoothing:g} in the soft targets: SoftTargetCrossEntropy"
              if f.mixup > 0 or f.cutmix > 0 else f"no mixup or cutmix; cross-entropy with label smoothing {f.smoothing:g}")
    pool = ("fc_norm (LayerNorm) on the patch-token mean, the tower's final norm unused" if f.global_pool == "avg"
            else "the CLS token after the final norm")
    return [
        f"model: {pool}; head trunc_normal std {f.head_init_std:g}; drop path {f.drop_path:g} (rising linearly over the blocks)",
        f"optimizer: AdamW, {rule}, weight decay {f.weight_decay:g} on {len(decayed)} tensors, none on {spared} "
        "(1-D, cls_token, pos_embed)" + (f"; gradient clipping at {f.clip_grad:g}" if f.clip_grad > 0 else "; no gradient clipping"),
        f"layer decay: {f.layer_decay:g} over {len(classifier.visual.blocks) + 1} layers, lr scales {scales[0]:.4g} (embeddings) "
        f"to {scales[-1]:g} (head), {len(groups)} parameter groups",
        f"schedule: per step, linear warm-up from 0 over {f.warmup_epochs:g} epochs, then half-cycle cosine to min_lr "
        f"{f.min_lr:g} at epoch {f.epochs}",
        f"batch: {f.batch_size} per optimizer step (per-rank micro-batch x ranks x accum_iter {f.accum_iter})",
        f"train transform: {augment}; langmim's normalisation (mean = std = 0.5)",
        f"regularisation: {mixing}",
        f"eval transform: resize {math.floor(size / f.crop_pct)} ({size} / crop_pct {f.crop_pct:g}, bicubic), centre crop {size}",
        f"precision: {cfg.train.precision}; seed {f.seed}",
    ]


def dry_run(cfg: Config) -> dict[str, Any]:
    """Print the resolved recipe, build the classifier, take one step on a synthetic batch of 2
    (mixup and cutmix included) and exit: nothing read from the data, nothing written."""
    import yaml

    check_finetune_config(cfg)
    f = cfg.finetune
    torch.manual_seed(f.seed)
    source, origin = source_model(cfg, None)
    num_classes = dry_classes(cfg)
    classifier = build_classifier(cfg, source, num_classes).train()
    report = key_report(classifier, source.state_dict())
    optimizer, _ = build_optimizer(cfg, classifier, steps_per_epoch=1)
    criterion, mixup = build_criterion(cfg, num_classes)
    images, labels = torch.rand(2, 3, cfg.model.img_size, cfg.model.img_size) * 2 - 1, torch.tensor([0, num_classes - 1])
    if mixup is not None:
        images, labels = mixup(images, labels)
    loss = criterion(classifier(images), labels)
    loss.backward()
    m = cfg.model
    print(f"fine-tune {cfg.method} {m.arch}: {m.img_size} px, patch {m.patch_size}, width {m.width}, depth {m.depth}; "
          f"{num_classes} classes; weights: {origin}")
    params = sum(p.numel() for p in classifier.parameters() if p.requires_grad)
    print(f"  trainable_params: {params / 1e6:.2f}M; new keys: {', '.join(report['new'])}")
    print("recipe:")
    for line in recipe_lines(cfg, classifier):
        print(f"  {line}")
    print("finetune:")
    print("\n".join("  " + line for line in yaml.safe_dump(to_dict(cfg)["finetune"], sort_keys=False).splitlines()))
    print(f"dry run ok: one step on a synthetic batch of 2 (loss {float(loss.detach()):.3f})")
    return {"lr": peak_lr(f), "trainable_params": params, "new_keys": report["new"], "loss": float(loss.detach()), "groups": len(optimizer.param_groups)}
