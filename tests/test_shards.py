"""WebDataset shards: the generator's layout, disjoint shards per rank, planted bad samples
counted exactly, and a training run on shards."""
import io
import json
import tarfile
from collections import Counter

import numpy as np
from PIL import Image

from conftest import bomb_png, tiny_overrides
from langmim.cli import main
from langmim.config import load_config
from langmim.data.captioned import PROBLEM_KINDS
from langmim.data.shards import ShardStream
from langmim.engine.loop import pretrain


def take_pass(spec, rank=0, world_size=1, size=32):
    stream = ShardStream(spec, size, seed=0, rank=rank, world_size=world_size, resampled=False, max_passes=1)
    items = list(stream)
    counts = Counter()
    for item in items:
        counts.update({k: int(n) for k, n in zip(PROBLEM_KINDS, item["data_problems"].tolist()) if n})
    counts.update(stream.unreported)
    return items, counts


def test_generator_layout_and_disjoint_ranks(tmp_path):
    assert main(["data", "shards", "--out", str(tmp_path), "--num-samples", "40", "--shard-size", "10"]) == 0
    with tarfile.open(tmp_path / "00000.tar") as tar:
        names = tar.getnames()
    assert sorted(names[:3]) == ["000000000.json", "000000000.png", "000000000.txt"]
    spec = str(tmp_path / "{00000..00003}.tar")
    keys = [{item["key"] for item in take_pass(spec, rank, 2)[0]} for rank in (0, 1)]
    assert len(keys[0]) == len(keys[1]) == 20 and not keys[0] & keys[1]
    assert keys[0] | keys[1] == {f"{i:09d}" for i in range(40)}
    item = take_pass(spec)[0][0]
    assert item["image"].shape == (3, 32, 32) and item["caption"]


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if image.mode != "CMYK" else "JPEG")
    return buffer.getvalue()


def write_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_planted_bad_samples_are_counted_exactly(tmp_path):
    rng = np.random.default_rng(0)
    rgb = lambda: Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))  # noqa: E731
    good = [(f"good{i}", {"png": png_bytes(rgb()), "txt": b"a good sample"}) for i in range(6)]
    bad = [
        ("noimage", {"txt": b"caption without an image"}),
        ("empty", {"png": b"", "txt": b"an empty image file"}),
        ("noise", {"png": rng.bytes(200), "txt": b"random bytes"}),
        ("half", {"png": png_bytes(rgb())[:60], "txt": b"a truncated png"}),
        ("nocaption", {"png": png_bytes(rgb()), "txt": b"   "}),
        ("grey", {"png": png_bytes(rgb().convert("L")), "txt": b"grey"}),
        ("alpha", {"png": png_bytes(rgb().convert("RGBA")), "txt": b"alpha"}),
        ("cmyk", {"jpg": png_bytes(rgb().convert("CMYK")), "txt": b"cmyk"}),
        ("deep", {"png": png_bytes(Image.fromarray(rng.integers(0, 65535, (24, 24)).astype(np.uint16))), "txt": b"16 bit"}),
        ("bomb", {"png": bomb_png(), "txt": b"a decompression bomb"}),
    ]
    planned = {"missing_image": 1, "empty_file": 1, "unreadable_image": 1, "truncated_image": 1, "empty_caption": 1,
               "converted_grayscale": 1, "converted_alpha": 1, "converted_cmyk": 1, "converted_16bit": 1, "bad_tar": 1,
               "oversized_image": 1}
    write_tar(tmp_path / "00000.tar", good[:3] + bad)
    write_tar(tmp_path / "00001.tar", good[3:])
    whole = (tmp_path / "00001.tar").read_bytes()
    (tmp_path / "00001.tar").write_bytes(whole[: len(whole) // 2 + 100])  # a tar cut off mid-file

    items, counts = take_pass(str(tmp_path / "{00000..00001}.tar"))
    assert dict(counts) == planned
    assert 3 + 4 <= len(items) < 3 + 4 + 3  # the good and the converted ones, and what the cut tar still held

    # A run of one pass plus one sample: the first sample of the second pass carries what the
    # first pass saw after its last sample (both shards start with good samples). Unbuffered, so
    # that the pass boundary falls at that sample.
    cfg = load_config(None, tiny_overrides(tmp_path / "run", "mae", steps=len(items) + 1, **{
        "data.name": "webdataset", "data.root": str(tmp_path / "{00000..00001}.tar"), "train.batch_size": 1,
        "data.shuffle_buffer": 0}))
    pretrain(cfg, log_tensorboard=False)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == len(items) + 1 and record["data_problems"] == planned


def class_ordered_shards(folder, classes: int = 10, per_class: int = 40, shard_size: int = 100) -> str:
    """Shards written in class order, as img2dataset leaves a source list sorted by class: 40
    samples of class 0, then 40 of class 1, ..."""
    import webdataset as wds

    folder.mkdir()
    with wds.ShardWriter(str(folder / "%05d.tar"), maxcount=shard_size, verbose=0) as sink:
        for i in range(classes * per_class):
            buffer = io.BytesIO()
            Image.new("RGB", (8, 8), (i // per_class * 20, 0, 0)).save(buffer, format="PNG")
            sink.write({"__key__": f"{i:06d}", "png": buffer.getvalue(), "txt": f"class {i // per_class}"})
    return str(folder / f"{{00000..{classes * per_class // shard_size - 1:05d}}}.tar")


def same_class_share(items: list[dict], batch: int = 16) -> float:
    """Over the batches of ``items``, the share of sample pairs that have the same class."""
    same = pairs = 0
    for start in range(0, len(items) - batch + 1, batch):
        labels = Counter(item["caption"] for item in items[start:start + batch])
        same += sum(n * (n - 1) // 2 for n in labels.values())
        pairs += batch * (batch - 1) // 2
    return same / pairs


def test_the_shuffle_buffer_mixes_a_class_ordered_shard_set(tmp_path):
    """Without a buffer, a batch of class-ordered shards is nearly all one class; with open_clip's
    kind of sample buffer its same-class share is near chance (10 classes: 0.1), and the order is a
    pure function of the seed."""
    spec = class_ordered_shards(tmp_path / "shards")

    def stream(buffer: int, seed: int = 0) -> list[dict]:
        return list(ShardStream(spec, 8, seed=seed, rank=0, world_size=1, resampled=False, max_passes=1, shuffle_buffer=buffer))

    plain, mixed = stream(0), stream(200)
    assert len(plain) == len(mixed) == 400 and {i["key"] for i in plain} == {i["key"] for i in mixed}
    assert same_class_share(plain) > 0.6
    assert same_class_share(mixed) < 0.2
    assert [i["key"] for i in stream(200)] == [i["key"] for i in mixed] != [i["key"] for i in stream(200, seed=1)]
