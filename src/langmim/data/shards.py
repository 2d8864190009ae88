"""WebDataset shards in the layout img2dataset writes: ``{key}.jpg|png|webp`` + ``{key}.txt``
(+ ``{key}.json``) per sample, brace-expanded shard lists (``/data/{00000..00099}.tar``).

Without resampling, each rank reads a disjoint slice of the shards and each DataLoader worker a
disjoint slice of its rank's; the shard order is shuffled per pass with the run's seed. With
``data.resampled=true`` every worker draws shards with replacement, forever (open_clip's
``--dataset-resampled``). The run length is ``train.steps`` either way. Each worker then shuffles
its samples, still encoded, in a seeded buffer of ``data.shuffle_buffer`` (open_clip's 5,000), so
that a batch is not many neighbours of one source list.

Bad samples are handled per sample like the other sources (converted where possible, otherwise
skipped) and counted per kind; a damaged tar file stops that shard and is counted as
``bad_tar``; a sample with a member whose tar header declares more than ``data.max_member_mb``
is skipped without reading that member (``oversized_member``). A checkpoint records where every
rank's and worker's stream stands (``ShardStream``), so a resumed run sees exactly the samples
the uninterrupted run would have seen, with or without loader workers and resampling, as long
as it keeps the number of ranks and ``data.num_workers``.
"""
from __future__ import annotations

import io
import json
import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import ConfigError, DataError
from .captioned import DEFAULT_CROP, PROBLEM_KINDS, CropRecipe, crop_uint8
from .images import MAX_IMAGE_PIXELS, MAX_MEMBER_MB, MAX_SHARDS, decode_rgb

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
SHARD_STREAM = 15485863  # the order (or draws) of a worker's shards
BUFFER_STREAM = 32452843  # the shuffle buffer's draws
CROP_STREAM = 49979687  # the crop of each sample taken out of the buffer
META_MEMBER = re.compile(r"__[^/]*__($|/)")  # webdataset's own metadata members, skipped as it skips them
OVERSIZED = object()  # the data of a member over the size cap, which is never read
TAR_BUFFER = 2**16  # bytes a streamed tar reads at a time: passing over a 2 GB member takes 0.5 s, not 5 s at tarfile's 10 KB


class ShuffleBuffer:
    """Samples shuffled within a buffer of ``size`` (0 or 1: as they come): once the buffer is full,
    each new sample takes the place of a random one, which is yielded; at the end of a finite
    stream the rest come out in random order. ``held`` and ``rng`` are its whole state, so a
    buffer rebuilt from them continues exactly."""

    def __init__(self, size: int, rng: np.random.Generator, held: list[dict] | None = None) -> None:
        self.size, self.rng, self.held = size, rng, list(held or [])

    def __call__(self, samples: Iterator[dict]) -> Iterator[dict]:
        if self.size <= 1:
            yield from samples
            return
        for sample in samples:
            if len(self.held) < self.size:
                self.held.append(sample)
                continue
            slot = int(self.rng.integers(self.size))
            taken, self.held[slot] = self.held[slot], sample
            yield taken
        while self.held:
            yield self.held.pop(int(self.rng.integers(len(self.held))))


BRACE = re.compile(r"\{([^{}]*)\}")


def shard_count(spec: str) -> int:
    """How many shard names a brace spec ("a/{000..099}.tar::b/{0,1}.tar") expands to, counted
    without expanding it."""
    total = 0
    for part in spec.split("::"):
        count = 1
        for body in BRACE.findall(part):
            bounds = body.split("..")
            if len(bounds) == 2 and all(b.strip().lstrip("-").isdigit() for b in bounds):
                count *= abs(int(bounds[1]) - int(bounds[0])) + 1
            else:
                count *= len(body.split(","))
        total += count
    return total


def expand_shards(spec: str) -> list[str]:
    count = shard_count(spec)
    if count > MAX_SHARDS:
        raise DataError(f"data.root={spec[:200]!r} names {count:,} shards; expected at most {MAX_SHARDS:,}")
    urls = wds.shardlists.expand_urls(spec)
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if not urls or len(missing) == len(urls):
        raise DataError(f"data.root={spec!r}: no shard files found (expected e.g. /data/shards/{{00000..00099}}.tar)")
    return urls


def tar_files(stream, url: str, max_member_bytes: int) -> Iterator[dict]:
    """{"fname", "data", "__url__"} of each regular file of a tar stream, as webdataset's
    ``tar_file_iterator`` gives them, except that a member whose header declares more than
    ``max_member_bytes`` is passed over unread (its data ``OVERSIZED``): reading it would hold it
    all in memory."""
    tar = tarfile.open(fileobj=stream, mode="r|*", bufsize=TAR_BUFFER)
    for info in tar:
        if info.isreg() and not META_MEMBER.match(info.name):
            data = OVERSIZED if info.size > max_member_bytes else tar.extractfile(info).read()
            yield {"fname": info.name, "data": data, "__url__": url}
        tar.members = []  # a streamed tar need not remember its members


def read_tar(stream, url: str, max_member_bytes: int) -> Iterator[dict]:
    """Samples of one tar file: {"__key__", ext: bytes, ...}, grouped by key as webdataset does."""
    return wds.tariterators.group_by_keys(tar_files(stream, url, max_member_bytes))


def read_shard(url: str, on_damage: Callable[[], None], max_member_bytes: int) -> Iterator[dict]:
    """The samples of one shard in order; a damaged tar calls ``on_damage`` and ends the shard
    (what it held so far was used)."""
    with open(url, "rb") as stream:
        samples = read_tar(stream, url, max_member_bytes)
        while True:
            try:
                yield next(samples)
            except StopIteration:
                return
            except (tarfile.TarError, OSError, EOFError, ValueError):
                on_damage()
                return


class ShardStream(IterableDataset):
    """Samples of this rank's (and worker's) shards: dicts with ``image`` (uint8), ``caption``,
    ``index`` (unique over ranks and workers), per-kind ``data_problems`` counts and the
    ``data_problem_files`` they came from.

    A worker's stream is a pure function of (seed, rank, worker). Given ``batch_size``, the last
    sample of each of its batches carries ``stream_state``: where the worker's shards stand (the
    next raw sample, as shard number and offset), what its buffer holds (by position) and its
    draw counts. ``resume_from`` ({worker: that state}) restarts each worker exactly there, reading
    only the current shard and those the buffer's samples came from. ``first_batch`` is the
    global batch the loader starts at: DataLoader takes batches from its workers in turn, so its
    worker k continues the stream of worker (k + first_batch) mod num_workers."""

    def __init__(self, spec: str, size: int, seed: int, rank: int, world_size: int, resampled: bool,
                 max_passes: int | None = None, recipe: CropRecipe = DEFAULT_CROP, max_pixels: int = MAX_IMAGE_PIXELS,
                 shuffle_buffer: int = 0, batch_size: int | None = None, first_batch: int = 0,
                 resume_from: dict[int, dict] | None = None, salt: int = 0, max_member_mb: int = MAX_MEMBER_MB) -> None:
        if max_member_mb < 1:
            raise ConfigError(f"data.max_member_mb={max_member_mb}: the largest tar member to read must be at least 1 (MB)")
        self.urls = expand_shards(spec)
        if not resampled and len(self.urls) < world_size:
            raise DataError(f"data.root has {len(self.urls)} shard(s) for {world_size} ranks; give at least one per rank or set data.resampled=true")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.resampled, self.max_passes, self.recipe = resampled, max_passes, recipe
        self.max_pixels, self.shuffle_buffer, self.max_member_bytes = max_pixels, shuffle_buffer, max_member_mb * 2**20
        self.batch_size, self.first_batch, self.resume_from, self.salt = batch_size, first_batch, resume_from or {}, salt
        saved_counts = {state["num_shards"] for state in self.resume_from.values()}
        if saved_counts - {len(self.urls)}:  # positions name shards by their place in the list: another list, other shards
            if rank == 0:
                print(f"data.root now lists {len(self.urls)} shards, the checkpoint's streams {saved_counts.pop()}: they restart "
                      f"with an order drawn from step {first_batch}, not the samples an uninterrupted run would see")
            self.resume_from, self.salt = {}, first_batch
        self.unreported: Counter = Counter()  # counts seen after the last sample of a finite stream

    def _rng(self, worker: int, stream: int, *more: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.salt, self.rank, worker, stream, *more])

    def _shards(self, worker: int, workers: int) -> Iterator[str]:
        rng = self._rng(worker, SHARD_STREAM)
        if self.resampled:
            while True:
                yield self.urls[int(rng.integers(len(self.urls)))]
        mine = self.urls[self.rank::self.world_size]
        mine = mine[worker::workers] or mine  # fewer shards than workers: workers share
        passes = 0
        while self.max_passes is None or passes < self.max_passes:  # reshuffled every pass
            yield from (mine[i] for i in rng.permutation(len(mine)))
            passes += 1

    def _raw_samples(self, shards: Iterator[str], position: list[int], on_damage: Callable[[str], None]) -> Iterator[dict]:
        """Encoded samples from raw ``position`` (shard number, offset) on, each with its ``__pos__``;
        ``position`` is kept at the next one to read."""
        start = tuple(position)
        for number, url in enumerate(shards):
            if number < start[0]:
                continue
            skip = start[1] if number == start[0] else 0
            for offset, sample in enumerate(read_shard(url, lambda u=url: on_damage(u), self.max_member_bytes)):
                if offset >= skip:
                    position[:] = [number, offset + 1]
                    yield {**sample, "__pos__": (number, offset)}

    def _held_samples(self, held: list[tuple[int, int]], worker: int, workers: int) -> list[dict]:
        """The samples at the raw positions ``held``, read back from their shards, in that order."""
        wanted = {pos[0] for pos in held}
        last = max(wanted, default=-1)
        found: dict[tuple[int, int], dict] = {}
        for number, url in enumerate(self._shards(worker, workers)):
            if number > last:
                break
            if number in wanted:
                for offset, sample in enumerate(read_shard(url, lambda: None, self.max_member_bytes)):
                    found[(number, offset)] = {**sample, "__pos__": (number, offset)}
        return [found[tuple(pos)] for pos in held]

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        local, workers = (info.id, info.num_workers) if info else (0, 1)
        worker = (local + self.first_batch) % workers
        saved = self.resume_from.get(worker, {})
        held = [tuple(p) for p in saved["held"].tolist()] if saved else []
        buffer_rng = self._rng(worker, BUFFER_STREAM)
        if saved:
            buffer_rng.bit_generator.state = saved["buffer_rng"]
        buffer = ShuffleBuffer(self.shuffle_buffer, buffer_rng, self._held_samples(held, worker, workers))
        pending: Counter = Counter()
        named: list[str] = []  # "shard/key: kind" of the samples counted in pending

        def damaged(url: str) -> None:
            pending["bad_tar"] += 1
            named.append(f"{url}: bad_tar")

        taken, count = saved.get("taken", 0), saved.get("emitted", 0)
        position = list(saved.get("next_raw", (0, 0)))
        raw = self._raw_samples(self._shards(worker, workers), position, damaged)
        for sample in buffer(raw):
            item, kind = self._decode(sample, self._rng(worker, CROP_STREAM, taken))
            taken += 1
            if kind is not None:
                pending[kind] += 1
                named.append(f"{sample['__url__']}/{sample['__key__']}: {kind}")
            if item is None:
                continue
            item["key"] = sample["__key__"]
            item["index"] = (count * workers + worker) * self.world_size + self.rank
            item["data_problems"] = torch.tensor([pending[k] for k in PROBLEM_KINDS], dtype=torch.long)
            item["data_problem_files"], named[:] = list(named), []
            pending.clear()
            count += 1
            if self.batch_size and count % self.batch_size == 0:
                item["stream_state"] = {
                    "worker": worker, "workers": workers, "num_shards": len(self.urls), "next_raw": list(position),
                    "held": torch.tensor([s["__pos__"] for s in buffer.held], dtype=torch.long).reshape(-1, 2),
                    "buffer_rng": buffer_rng.bit_generator.state, "taken": taken, "emitted": count,
                }
            yield item
        self.unreported = pending

    def _decode(self, sample: dict, rng: np.random.Generator) -> tuple[dict | None, str | None]:
        """(training item or None, the kind of problem or conversion it had, if any)."""
        if any(value is OVERSIZED for value in sample.values()):
            return None, "oversized_member"
        caption = (sample.get("txt") or b"").decode("utf-8", "replace").strip()
        data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
        if data is None:
            return None, "missing_image"
        if not data:
            return None, "empty_file"
        if not caption:
            return None, "empty_caption"
        image, kind = decode_rgb(data, self.max_pixels)
        if image is None:
            return None, kind
        return {"image": crop_uint8(image, self.size, rng, self.recipe), "caption": caption}, kind


def write_scene_shards(out: Path, num_samples: int, shard_size: int, seed: int = 0, canvas: int = 64,
                       plain_share: float = 0.3, root: str | None = None) -> list[Path]:
    """Render fashion-scenes (train-split items) into img2dataset-layout shards under ``out``."""
    from .scenes import FashionScenes

    scenes = FashionScenes("train", canvas, seed=seed, root=root, plain_prob=plain_share)
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=shard_size, verbose=0) as sink:
        for i in range(num_samples):
            scene = scenes[i]
            buffer = io.BytesIO()
            Image.fromarray(scene["image"].permute(1, 2, 0).numpy()).save(buffer, format="PNG")
            meta = {"labels": scene["labels"].tolist(), "colours": scene["colours"], "positions": scene["positions"],
                    "crc": zlib.crc32(buffer.getvalue())}
            sink.write({"__key__": f"{i:09d}", "png": buffer.getvalue(), "txt": scene["caption"], "json": json.dumps(meta)})
    return sorted(out.glob("*.tar"))
