"""The pre-training input pipeline: a step-indexed sampler and a collator.

Sample ``g`` of the whole run is global sample number ``step * global_batch + j``; its scene,
augmentation and masking noise are pure functions of (seed, g). So a resumed run, or N ranks
each taking a slice of every global batch, sees exactly what one uninterrupted process sees.
"""
from __future__ import annotations

import itertools
import signal
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import Config
from ..errors import ConfigError
from .captioned import CaptionedImages, CropRecipe
from .scene_labels import scene_label_batch
from .scenes import FashionScenes
from .shards import ShardStream
from .views import ViewMaker

NOISE_STREAM = 7919  # separates the masking-noise RNG stream from the scene stream
EPOCH_STREAM = 104729  # the visiting order of a fixed scene set, per epoch
VISIT_STREAM = 1299709  # the flip and shift of one visit to a scene of a fixed set


class StepSampler(Sampler[list[int]]):
    """Per step from ``start_step``: this rank's contiguous slice of the global batch's ids."""

    def __init__(self, start_step: int, total_steps: int, global_batch: int, rank: int = 0, world_size: int = 1) -> None:
        if global_batch % world_size:
            raise ConfigError(f"train.batch_size={global_batch} must be divisible by the number of ranks ({world_size})")
        self.start_step, self.total_steps = start_step, total_steps
        self.global_batch, self.rank = global_batch, rank
        self.per_rank = global_batch // world_size

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.total_steps):
            first = step * self.global_batch + self.rank * self.per_rank
            yield list(range(first, first + self.per_rank))

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)


def masking_noise(seed: int, index: int, num_patches: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng([seed, NOISE_STREAM, index]).random(num_patches, dtype=np.float32))


class PretrainCollator:
    """Stacks uint8 images, tokenises captions (unless the method has no text tower), draws each
    sample's masking noise and, given ``label_patch`` (the patch size), adds the scene targets of
    annotated fashion-scenes (``scene_labels.scene_label_batch``); given ``views``, two augmented
    views of each image (``views.ViewMaker``)."""

    def __init__(self, tokenizer: Callable[[Sequence[str]], torch.Tensor] | None, num_patches: int, seed: int,
                 label_patch: int | None = None, views: ViewMaker | None = None) -> None:
        self.tokenizer, self.num_patches, self.seed, self.label_patch = tokenizer, num_patches, seed, label_patch
        self.views = views

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        indices = [int(s["index"]) for s in samples]
        batch = {
            "image": torch.stack([s["image"] for s in samples]),
            "index": torch.tensor(indices),
            "noise": torch.stack([masking_noise(self.seed, i, self.num_patches) for i in indices]),
        }
        if self.tokenizer is not None:
            batch["text"] = self.tokenizer([s["caption"] for s in samples])
        if self.label_patch is not None:
            batch.update(scene_label_batch(samples, self.label_patch))
        if self.views is not None:
            batch["views"] = torch.stack([self.views(s["image"], i) for s, i in zip(samples, indices)])
        if "stream_state" in samples[-1]:  # where the shard stream of the worker that made this batch stands
            batch["stream_state"] = samples[-1]["stream_state"]
        if "data_problems" in samples[0]:
            batch["data_problems"] = torch.stack([s["data_problems"] for s in samples]).sum(dim=0)
            batch["data_problem_files"] = [name for s in samples for name in s["data_problem_files"]]
        return batch


def ignore_interrupts(worker_id: int) -> None:
    """Loader workers leave a terminal's Ctrl-C to the main process, which stops after the step
    with a checkpoint; a worker killed by it would break the stream first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class FixedScenes(Dataset):
    """A fixed set of ``num_scenes`` captioned scenes (scenes 0..N-1 of the seeded stream), seen
    again and again: the data-limited regime of few image-text pairs, many epochs. Global sample
    ``g`` is position ``g % N`` of epoch ``g // N``, whose order is a permutation seeded by (seed,
    epoch), so every epoch visits each scene exactly once. A visit draws its own flip and shift
    from (seed, g); the scene's layout and caption are fixed, as in a real image-text data set."""

    def __init__(self, scenes: FashionScenes, num_scenes: int, seed: int) -> None:
        self.scenes, self.num_scenes, self.seed = scenes, num_scenes, seed
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, permutation) of the last visit

    def scene_of(self, index: int) -> int:
        """The scene that global sample ``index`` visits."""
        epoch, position = divmod(index, self.num_scenes)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, EPOCH_STREAM, epoch]).permutation(self.num_scenes))
        return int(self._order[1][position])

    def __len__(self) -> int:
        return self.num_scenes

    def __getitem__(self, index: int) -> dict:
        scene = self.scene_of(index)
        sample = self.scenes.render(scene, np.random.default_rng([self.seed, VISIT_STREAM, index]))
        return {**sample, "index": index, "scene": scene}


def build_pretrain_dataset(cfg: Config, annotate: bool = False) -> Dataset:
    """The training samples of ``data.*``; ``annotate`` keeps fashion-scenes' masks and items
    (for methods that train on the scenes' ground truth)."""
    if cfg.data.name == "fashion-scenes":
        scenes = FashionScenes(
            split="train", canvas=cfg.model.img_size, seed=cfg.train.seed, augment=cfg.data.augment,
            root=cfg.data.root, plain_prob=cfg.data.plain_share, annotate=annotate,
            world=cfg.data.web if cfg.data.world == "web" else None,
        )
        return scenes if cfg.data.num_scenes is None else FixedScenes(scenes, cfg.data.num_scenes, cfg.train.seed)
    if cfg.data.name in ("csv", "imagefolder"):
        return CaptionedImages(cfg.data.name, cfg.data.root, cfg.model.img_size, cfg.train.seed, CropRecipe.from_config(cfg.data),
                               cfg.data.max_image_pixels)
    raise ConfigError(f"data.name must be fashion-scenes, csv or imagefolder, got {cfg.data.name!r}")


class StepLimitedLoader:
    """A streaming DataLoader cut to the steps left in the run."""

    def __init__(self, loader: DataLoader, steps: int) -> None:
        self.loader, self.steps = loader, steps

    def __iter__(self) -> Iterator[dict]:
        return itertools.islice(iter(self.loader), self.steps)

    def __len__(self) -> int:
        return self.steps


def rank_streams(saved: list[dict] | None, start_step: int, rank: int, world_size: int, workers: int) -> dict[int, dict] | None:
    """This rank's shard-stream states from a checkpoint's ``data_position["streams"]`` (one dict
    per rank, {worker: state}); None where the run cannot continue them exactly (no states
    saved, or another number of ranks or loader workers), which is said on rank 0."""
    if start_step == 0:
        return {}
    changed = saved is None or len(saved) != world_size or any(s["workers"] != workers for rank_states in saved for s in rank_states.values())
    if not changed:
        return saved[rank]
    if rank == 0:
        why = "the checkpoint has no stream positions" if saved is None else "the number of ranks or data.num_workers changed"
        print(f"shard streams restart with an order drawn from step {start_step} ({why}): "
              "this resumed run does not see exactly the samples an uninterrupted one would")
    return None


def build_pretrain_loader(
    cfg: Config, tokenizer: Callable | None, num_patches: int, start_step: int, rank: int = 0, world_size: int = 1,
    scene_labels: bool = False, views: bool = False, streams: dict[int, dict] | None = None,
) -> DataLoader | StepLimitedLoader:
    """Batches from ``start_step`` on, this rank's share; ``scene_labels`` adds fashion-scenes'
    ground truth (for methods that train on it), ``views`` two augmented views of each image.
    Shards continue this rank's saved ``streams`` (``rank_streams``; None: a fresh order drawn
    from ``start_step``)."""
    view_maker = ViewMaker(cfg.data.name, cfg.model.img_size, cfg.train.seed) if views else None
    collator = PretrainCollator(tokenizer, num_patches, cfg.train.seed, cfg.model.patch_size if scene_labels else None, view_maker)
    workers = {"num_workers": cfg.data.num_workers, "prefetch_factor": 4 if cfg.data.num_workers > 0 else None,
               "worker_init_fn": ignore_interrupts if cfg.data.num_workers > 0 else None}
    if cfg.data.name == "webdataset":
        if cfg.train.batch_size % world_size:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} must be divisible by the number of ranks ({world_size})")
        per_rank = cfg.train.batch_size // world_size
        stream = ShardStream(cfg.data.root or "", cfg.model.img_size, cfg.train.seed, rank, world_size, cfg.data.resampled,
                             shuffle_buffer=cfg.data.shuffle_buffer, recipe=CropRecipe.from_config(cfg.data),
                             max_pixels=cfg.data.max_image_pixels, batch_size=per_rank, first_batch=start_step,
                             resume_from=streams, salt=start_step if streams is None else 0, max_member_mb=cfg.data.max_member_mb)
        loader = DataLoader(stream, batch_size=per_rank, collate_fn=collator, **workers)
        return StepLimitedLoader(loader, max(0, cfg.train.steps - start_step))
    sampler = StepSampler(start_step, cfg.train.steps, cfg.train.batch_size, rank, world_size)
    return DataLoader(build_pretrain_dataset(cfg, annotate=scene_labels), batch_sampler=sampler, collate_fn=collator, persistent_workers=False, **workers)
