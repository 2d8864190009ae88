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
``bad_tar``. A resumed run restarts the shard stream with an order drawn from the resume step,
so unlike the built-in data, CSV and image folders it is not bit-identical to an uninterrupted
run.
"""
from __future__ import annotations

import io
import json
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import DataError
from .captioned import DEFAULT_CROP, PROBLEM_KINDS, CropRecipe, crop_uint8
from .images import MAX_IMAGE_PIXELS, decode_rgb

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
BUFFER_STREAM = 32452843  # separates the shuffle buffer's RNG stream from the crops'


def shuffle_buffer(samples: Iterator[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """``samples`` shuffled within a buffer of ``size`` (0 or 1: as they come): once the buffer is
    full, each new sample takes the place of a random one, which is yielded; the rest at the end."""
    if size <= 1:
        yield from samples
        return
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        slot = int(rng.integers(size))
        yield buffer[slot]
        buffer[slot] = sample
    yield from (buffer[i] for i in rng.permutation(len(buffer)))


def expand_shards(spec: str) -> list[str]:
    urls = wds.shardlists.expand_urls(spec)
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if not urls or len(missing) == len(urls):
        raise DataError(f"data.root={spec!r}: no shard files found (expected e.g. /data/shards/{{00000..00099}}.tar)")
    return urls


def read_tar(stream, url: str) -> Iterator[dict]:
    """Samples of one tar file: {"__key__", ext: bytes, ...}, grouped by key as webdataset does."""
    files = ({**f, "__url__": url} for f in wds.tariterators.tar_file_iterator(stream))
    return wds.tariterators.group_by_keys(files)


class ShardStream(IterableDataset):
    """Samples of this rank's (and worker's) shards: dicts with ``image`` (uint8), ``caption``,
    ``index`` (unique over ranks and workers), per-kind ``data_problems`` counts and the
    ``data_problem_files`` they came from."""

    def __init__(self, spec: str, size: int, seed: int, rank: int, world_size: int, resampled: bool, start_step: int = 0,
                 max_passes: int | None = None, recipe: CropRecipe = DEFAULT_CROP, max_pixels: int = MAX_IMAGE_PIXELS,
                 shuffle_buffer: int = 0) -> None:
        self.urls = expand_shards(spec)
        if not resampled and len(self.urls) < world_size:
            raise DataError(f"data.root has {len(self.urls)} shard(s) for {world_size} ranks; give at least one per rank or set data.resampled=true")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.resampled, self.start_step, self.max_passes, self.recipe = resampled, start_step, max_passes, recipe
        self.max_pixels, self.shuffle_buffer = max_pixels, shuffle_buffer
        self.unreported: Counter = Counter()  # counts seen after the last sample of a finite stream

    def _shards(self, rng: np.random.Generator, worker: int, workers: int) -> Iterator[str]:
        if self.resampled:
            while True:
                yield self.urls[int(rng.integers(len(self.urls)))]
        mine = self.urls[self.rank::self.world_size]
        mine = mine[worker::workers] or mine  # fewer shards than workers: workers share
        passes = 0
        while self.max_passes is None or passes < self.max_passes:  # reshuffled every pass
            yield from (mine[i] for i in rng.permutation(len(mine)))
            passes += 1

    def _raw_samples(self, rng: np.random.Generator, worker: int, workers: int, pending: Counter, named: list[str]) -> Iterator[dict]:
        """Encoded samples of this worker's shards in order; a damaged tar is counted in ``pending``
        and ``named`` and ends that shard (what it held so far was used)."""
        for url in self._shards(rng, worker, workers):
            with open(url, "rb") as stream:
                samples = read_tar(stream, url)
                while True:
                    try:
                        yield next(samples)
                    except StopIteration:
                        break
                    except (tarfile.TarError, OSError, EOFError, ValueError):
                        pending["bad_tar"] += 1
                        named.append(f"{url}: bad_tar")
                        break

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = np.random.default_rng([self.seed, self.start_step, self.rank, worker])
        buffer_rng = np.random.default_rng([self.seed, self.start_step, self.rank, worker, BUFFER_STREAM])
        pending: Counter = Counter()
        named: list[str] = []  # "shard/key: kind" of the samples counted in pending
        count = 0
        raw = self._raw_samples(rng, worker, workers, pending, named)
        for sample in shuffle_buffer(raw, self.shuffle_buffer, buffer_rng):
            item, kind = self._decode(sample, rng)
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
            yield item
        self.unreported = pending

    def _decode(self, sample: dict, rng: np.random.Generator) -> tuple[dict | None, str | None]:
        """(training item or None, the kind of problem or conversion it had, if any)."""
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
