"""The shared pre-training loop: any method, one process or torchrun, resumable."""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import dist
from ..config import Config, save_config, to_dict
from ..data.captioned import PROBLEM_KINDS
from ..data.pretrain import build_pretrain_loader, rank_streams
from ..errors import LangmimError
from ..files import WriteFailed
from ..method_specs import check_method_rules
from ..methods import build_method
from ..methods.base import PretrainMethod
from ..models.text import build_tokenizer
from ..transforms import to_float
from .checkpoint import (
    TrainingDiverged,
    check_resumable,
    find_resume_state,
    newest_checkpoint_line,
    restore_training_state,
    run_directory,
    save_checkpoint,
    training_state,
)
from .clock import PhaseClock
from .interrupt import StoppedBySignal, StopSignals
from .logger import MetricLogger
from .optim import build_optimizer, build_scheduler
from .precision import autocast, cpu_attention_in_fp32, effective_precision
from .sharding import shard_model

IMAGE_KEYS = {"image", "views"}


def move(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch on ``device``, its uint8 images (and views) normalised to float there (4x less to copy)."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    for key in IMAGE_KEYS & out.keys():
        out[key] = to_float(out[key])
    return out


def split_batch(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """``parts`` micro-batches of a batch, for gradient accumulation (``train.accum_freq``)."""
    chunks = {k: v.chunk(parts) for k, v in batch.items()}
    return [{k: chunks[k][i] for k in batch} for i in range(parts)]


class Trainer:
    """Runs one optimisation step per global batch, with gradient accumulation.

    Objectives that couple samples (contrastive) accumulate like open_clip's ``accum_freq``:
    features of all micro-batches are first computed without gradient, then each micro-batch
    is recomputed with gradient and the loss is taken over the whole batch with the others'
    cached features, so negatives, prototypes and c_i are those of the full batch.
    """

    def __init__(self, cfg: Config, method: PretrainMethod, device: torch.device) -> None:
        self.cfg, self.method, self.device = cfg, method, device
        self.precision = effective_precision(cfg.train.precision, device)
        method.lock_towers(cfg)
        self.model: nn.Module = method
        self.sharded = cfg.train.fsdp and dist.world_size() > 1
        self.replicated: list[nn.Parameter] = []
        if self.sharded:
            self.replicated = shard_model(method)
        elif dist.world_size() > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.model = DistributedDataParallel(method, device_ids=ids)
        self.optimizer = build_optimizer(method, cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train)
        self.phase_seconds: dict[str, float] = {}  # forward / backward / optimizer of the last step
        self.stream_states: dict[int, dict] = {}  # this rank's shard streams after its last batch from each loader worker
        self.synchronize_phases = False

    def _sync_context(self, last: bool) -> contextlib.AbstractContextManager:
        if isinstance(self.model, DistributedDataParallel) and not last:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        with cpu_attention_in_fp32(self.device, self.precision):
            return self._step(batch)

    def _step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg, parts = self.cfg.train, self.cfg.train.accum_freq
        # the 0-based optimisation step being taken, per sample (the scheduler's count survives a resume)
        batch = {**batch, "step": torch.full((batch["image"].shape[0],), self.scheduler.last_epoch, device=batch["image"].device)}
        micro = split_batch(batch, parts)
        clock = PhaseClock(self.device, self.synchronize_phases)
        cached = None
        if parts > 1 and self.method.batch_coupled:
            with torch.no_grad(), autocast(self.device, self.precision):
                cached = [self.method.features(mb) for mb in micro]
        scalars: dict[str, float] = {}
        for i, mb in enumerate(micro):
            with self._sync_context(i == parts - 1), autocast(self.device, self.precision):
                out = self.model(mb, cached, i) if cached is not None else self.model(mb)
                loss = out["loss"] if cached is not None else out["loss"] / parts
            clock.lap("forward")
            loss.backward()
            clock.lap("backward")
            for key, value in out.items():
                scalars[key] = scalars.get(key, 0.0) + float(value.detach()) / parts
        scalars = dist.mean_over_ranks(scalars)
        for param in self.replicated:  # FSDP leaves these to us: average their gradients over ranks
            if param.grad is not None:
                param.grad = dist.all_reduce_sum(param.grad) / dist.world_size()
        if cfg.grad_clip > 0:
            scalars["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.method.parameters(), cfg.grad_clip))
        self.optimizer.step()
        self.method.after_optimizer_step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        clock.lap("optimizer")
        self.phase_seconds = clock.seconds
        return scalars

    def state_dict(self, step: int, streams: list[dict] | None = None) -> dict[str, Any]:
        """The checkpoint after ``step`` (``checkpoint.training_state``), with every rank's shard
        ``streams``; with FSDP every rank must call it."""
        return training_state(self.cfg, self.method, self.optimizer, self.scheduler, step, self.sharded, streams)

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore a checkpoint's model, optimizer, scheduler and RNG states; return its step."""
        return restore_training_state(state, self.method, self.optimizer, self.scheduler, self.sharded)


def pretrain(cfg: Config, resume: str | None = None, log_tensorboard: bool = True, stop_after: int | None = None) -> Path:
    """Pre-train ``cfg.method`` and return the run directory (checkpoints, metrics, config).

    ``stop_after`` ends this invocation after that global step (with a checkpoint), leaving the
    schedule of ``train.steps`` intact: a time-boxed job continues later with ``resume``. A worker
    group that torchrun restarts (``--max-restarts``) resumes from the newest checkpoint by itself.
    """
    check_method_rules(cfg)
    with run_directory(cfg, resume) as (info, run_dir, resume):
        return run_training(cfg, info, run_dir, resume, log_tensorboard, stop_after)


def run_training(cfg: Config, info: dist.DistInfo, run_dir: Path, resume: str | None, log_tensorboard: bool, stop_after: int | None) -> Path:
    """``pretrain`` once the run directory is prepared (and, on rank 0, locked)."""
    found = find_resume_state(resume, run_dir)
    resume_path, state = found if found is not None else (None, None)
    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg, with_teacher=True).to(info.device)  # fills the teacher's embed_dim
    method.set_grad_checkpointing(cfg.train.grad_checkpointing)
    if cfg.train.compile:
        method.compile_towers()
    if state is not None:
        check_resumable(state, cfg, resume_path)
    else:
        for loaded in method.load_pretrained(cfg):
            if dist.is_main():
                print(f"initialised {loaded}")

    trainer = Trainer(cfg, method, info.device)
    if dist.is_main() and cfg.train.precision == "auto":
        print(f"train.precision=auto: {trainer.precision} on {info.device.type}")
    start_step = trainer.load_state_dict(state) if state is not None else 0
    if dist.is_main():
        save_config(cfg, run_dir / "config.yaml")
        if resume_path is not None:
            print(f"resumed from '{resume_path}' at step {start_step} of {cfg.train.steps}")
        elif resume is not None:
            print(f"--resume {resume}: no checkpoint in '{run_dir}' yet; starting at step 0")

    tokenizer = build_tokenizer(cfg.model.context_length, cfg.init.text) if method.has_text else None
    streams = None
    if cfg.data.name == "webdataset":
        saved = state["data_position"].get("streams") if state is not None else None
        streams = rank_streams(saved, start_step, info.rank, info.world_size, max(1, cfg.data.num_workers))
        trainer.stream_states = dict(streams or {})
    loader = build_pretrain_loader(cfg, tokenizer, method.visual.num_patches, start_step, info.rank, info.world_size,
                                   scene_labels=method.needs_scene_labels, views=method.spec.needs_views, streams=streams)
    report_to = [sink for sink in cfg.train.report_to if log_tensorboard or sink != "tensorboard"]
    logger = MetricLogger(run_dir, cfg.train.steps, start_step, dist.is_main(), report_to, to_dict(cfg))
    method.train()
    step = start_step
    data_problems = None  # per-kind counts of skipped or converted samples in this process's batches
    problem_files: set[str] = set()  # "file: kind" behind those counts, each once
    with StopSignals() as stop, contextlib.closing(logger):
        fetch_start = time.perf_counter()
        for batch in loader:
            data_time = time.perf_counter() - fetch_start
            problem_files.update(batch.pop("data_problem_files", []))
            stream_state = batch.pop("stream_state", None)
            if stream_state is not None:
                trainer.stream_states[stream_state["worker"]] = stream_state
            problems = batch.pop("data_problems", None)
            if problems is not None:
                data_problems = problems if data_problems is None else data_problems + problems
            scalars = trainer.step(move(batch, info.device))
            step += 1
            if not math.isfinite(scalars["loss"]):
                raise TrainingDiverged(f"loss became {scalars['loss']} at step {step}; {newest_checkpoint_line(run_dir)}")
            logger.update(scalars, batch["image"].shape[0] * info.world_size, data_time)
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                try:
                    logger.flush(step, trainer.optimizer.param_groups[0]["lr"], problem_counts(data_problems, info.device))
                except WriteFailed as err:
                    raise WriteFailed(f"{err}{final_checkpoint(trainer, run_dir, step)}") from None
            saved = step % cfg.train.ckpt_every == 0 or step in (cfg.train.steps, stop_after)
            if saved:
                save_checkpoint(trainer, run_dir, step, cfg.train.keep_checkpoints)
            if step == stop_after:
                break
            if stop.requested(info.device):
                if not saved:
                    save_checkpoint(trainer, run_dir, step, cfg.train.keep_checkpoints)
                raise StoppedBySignal(f"stopped by {stop.name()} after step {step} with a checkpoint in '{run_dir}'; "
                                      "continue with --resume latest")
            fetch_start = time.perf_counter()
    counts = problem_counts(data_problems, info.device)
    if counts and dist.is_main():
        print(f"data problems in this run (skipped or converted samples, all ranks, each time drawn): {counts}")
        share = " in rank 0's share" if dist.world_size() > 1 else ""
        shown = sorted(problem_files)
        print(f"  {len(shown)} distinct files{share}: {'; '.join(shown[:10])}{' ...' if len(shown) > 10 else ''}")
    return run_dir


def final_checkpoint(trainer: Trainer, run_dir: Path, step: int) -> str:
    """After a failed log write, a checkpoint of ``step`` where the disk still allows one (one
    process only: the other ranks of a group are already in the next step); what became of it."""
    if dist.world_size() > 1:
        return "; continue from the newest checkpoint with --resume latest"
    try:
        save_checkpoint(trainer, run_dir, step, trainer.cfg.train.keep_checkpoints)
    except LangmimError:
        return f"; no checkpoint of step {step} could be written either: continue from the newest with --resume latest"
    return f"; wrote a checkpoint of step {step}: continue with --resume latest"


def problem_counts(local: torch.Tensor | None, device: torch.device) -> dict[str, int]:
    """Nonzero per-kind counts of bad samples summed over ranks."""
    if local is None:
        return {}
    total = dist.all_reduce_sum(local.to(device)).cpu()
    return {kind: int(n) for kind, n in zip(PROBLEM_KINDS, total.tolist()) if n}

