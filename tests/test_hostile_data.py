"""Hostile data: a tar member that declares 2 GB, an absurd shard count, a caption over csv's
field limit, device files and paths outside a table's folder, format-string templates and
negative labels. Each is a bad sample (skipped, counted, named) or one clear error, never a
traceback or gigabytes of memory."""
import csv
import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import PEAK_RSS_BYTES
from langmim.config import load_config
from langmim.data.benchmark_sets import open_benchmark_set
from langmim.data.captioned import PROBLEM_KINDS, CaptionedImages
from langmim.data.folders import MAX_CAPTION_CHARS, CaptionTable
from langmim.data.images import MAX_MEMBER_MB
from langmim.data.shards import ShardStream
from langmim.errors import ConfigError, DataError

MAX_PEAK_MB = 2048


def peak_run(code: str, *args: str) -> dict:
    """The JSON that ``code`` prints last, run in a fresh interpreter, with ``peak_mb``: that
    process's peak resident memory (``conftest.PEAK_RSS_BYTES``)."""
    report = f"\nprint(json.dumps({{**result, 'peak_mb': {PEAK_RSS_BYTES} / 2**20}}))\n"
    done = subprocess.run([sys.executable, "-c", code + report, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def png_bytes(side: int = 24, value: int = 120) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes | int]]) -> None:
    """A tar of (name, data) members; a member given as a size, not bytes, declares that size and
    is stored as a hole (a sparse file: no disk, no time to write)."""
    with path.open("wb") as f:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = data if isinstance(data, int) else len(data)
            f.write(info.tobuf())
            if isinstance(data, int):
                f.seek(data + -data % tarfile.BLOCKSIZE, os.SEEK_CUR)
            else:
                f.write(data + b"\0" * (-len(data) % tarfile.BLOCKSIZE))
        f.write(b"\0" * 2 * tarfile.BLOCKSIZE)


READ_SHARDS = """
import json, sys
from langmim.data.captioned import PROBLEM_KINDS
from langmim.data.shards import ShardStream
stream = ShardStream(sys.argv[1], 32, seed=0, rank=0, world_size=1, resampled=False, max_passes=1)
result = {"keys": [], "counts": {}, "named": []}
for item in stream:
    result["keys"].append(item["key"])
    result["counts"].update({k: n for k, n in zip(PROBLEM_KINDS, item["data_problems"].tolist()) if n})
    result["named"] += item["data_problem_files"]
"""


def test_a_2gb_tar_member_is_skipped_unread(tmp_path):
    shard = tmp_path / "00000.tar"
    write_tar(shard, [("huge.txt", b"a caption beside a huge member"), ("huge.jpg", 2 * 2**30),
                      ("good.png", png_bytes()), ("good.txt", b"a good sample")])
    assert shard.stat().st_size > 2 * 2**30 and shard.stat().st_blocks * 512 < 2**20  # sparse: nothing on disk
    result = peak_run(READ_SHARDS, str(shard))
    assert result["keys"] == ["good"]
    assert result["counts"] == {"oversized_member": 1} and result["named"] == [f"{shard}/huge: oversized_member"]
    assert result["peak_mb"] < MAX_PEAK_MB, result


def test_the_member_cap_is_a_setting(tmp_path):
    write_tar(tmp_path / "00000.tar", [("big.png", bytes(2**20 + 1)), ("big.txt", b"over a 1 MB cap"),
                                       ("small.png", png_bytes()), ("small.txt", b"under it")])
    stream = ShardStream(str(tmp_path / "00000.tar"), 32, seed=0, rank=0, world_size=1, resampled=False, max_passes=1, max_member_mb=1)
    items = list(stream)
    assert [item["key"] for item in items] == ["small"] and items[0]["data_problem_files"] == [f"{tmp_path}/00000.tar/big: oversized_member"]
    assert load_config(None, []).data.max_member_mb == MAX_MEMBER_MB == 512
    with pytest.raises(ConfigError, match="data.max_member_mb=0"):
        ShardStream(str(tmp_path / "00000.tar"), 32, seed=0, rank=0, world_size=1, resampled=False, max_member_mb=0)


def write_benchmark_set(root: Path, samples: list[tuple[str, bytes | int, bytes]],
                        templates: str = "a photo of a {c}.\n", nshards: str = "1") -> None:
    """A CLIP_benchmark classification set of (key, image, .cls) samples in one shard (an image
    given as a size is a sparse hole of that size)."""
    (root / "test").mkdir(parents=True)
    write_tar(root / "test" / "0.tar", [m for key, image, label in samples for m in ((f"{key}.png", image), (f"{key}.cls", label))])
    (root / "test" / "nshards.txt").write_text(f"{nshards}\n")
    (root / "classnames.txt").write_text("dark thing\nbright thing\n")
    (root / "zeroshot_classification_templates.txt").write_text(templates)


OPEN_SET = """
import json, sys
from langmim.data.benchmark_sets import open_benchmark_set
from langmim.errors import DataError
try:
    open_benchmark_set("wds/x", sys.argv[1], 32)
    result = {"error": None}
except DataError as err:
    result = {"error": str(err)}
"""


def test_an_absurd_shard_count_is_one_clear_error(tmp_path):
    write_benchmark_set(tmp_path / "set", [("a", png_bytes(), b"0")], nshards="10000000000")
    result = peak_run(OPEN_SET, str(tmp_path / "set"))
    assert result["error"] == f"'{tmp_path / 'set' / 'test' / 'nshards.txt'}' says 10000000000 shards; expected 1 to 1,000,000"
    assert result["peak_mb"] < MAX_PEAK_MB, result


def test_a_shard_spec_naming_too_many_shards_is_refused_before_it_is_expanded(tmp_path):
    from langmim.data.shards import expand_shards, shard_count

    assert shard_count("a/{000..099}.tar::b/{0,1}/{00..09}.tar") == 100 + 2 * 10
    with pytest.raises(DataError, match=r"names 10,000,000,000 shards; expected at most 1,000,000"):
        expand_shards(f"{tmp_path}/{{0000000000..9999999999}}.tar")


def caption_folder(folder: Path, captions: list[str], paths: list[str] | None = None) -> Path:
    """A table of good images with ``captions`` (and ``paths``, where given, instead of the images)."""
    folder.mkdir(parents=True)
    paths = paths or [f"{i}.png" for i in range(len(captions))]
    for i, name in enumerate(paths):
        if not name.startswith(("/", "..")):
            (folder / name).write_bytes(png_bytes(40, 20 * i))
    with (folder / "pairs.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("filepath", "caption"), *zip(paths, captions)])
    return folder / "pairs.csv"


def one_epoch(table: Path) -> Counter:
    """The problem counts of one epoch of pre-training samples of a CSV table."""
    data = CaptionedImages("csv", str(table), 32, seed=0)
    counts: Counter = Counter()
    for i in range(len(data)):
        counts.update({k: n for k, n in zip(PROBLEM_KINDS, data[i]["data_problems"].tolist()) if n})
    return counts


def test_empty_and_long_captions_are_skipped_counted_and_the_rest_kept_in_order(tmp_path, capsys):
    long = "a very long caption " * 10_000  # 200,000 characters: over csv's field limit of 131,072
    table = caption_folder(tmp_path / "t", ["first", "", long, "  ", "second", "third"])
    captions = CaptionTable(table, 32)
    assert captions.captions == ["first", "second", "third"] and [p.name for p in captions.paths] == ["0.png", "4.png", "5.png"]
    assert captions.skipped == ["row 3: empty_caption", "row 4: long_caption", "row 5: empty_caption"]
    assert f"{table}: skipped 3 row(s) without a usable caption" in capsys.readouterr().out
    assert one_epoch(table) == {"empty_caption": 2, "long_caption": 1}
    assert csv.field_size_limit() == MAX_CAPTION_CHARS  # the process-wide limit is as it was


def test_a_device_is_not_a_missing_file_and_outside_paths_are_counted_once(tmp_path, capsys):
    (tmp_path / "outside.png").write_bytes(png_bytes())
    table = caption_folder(tmp_path / "t", ["a device", "outside, relative", "outside, absolute", "inside"],
                           ["/dev/zero", "../outside.png", str(tmp_path / "outside.png"), "3.png"])
    assert one_epoch(table) == {"not_regular_file": 1}
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"'{table}': 3 of 4 image path(s) lie outside the table's folder (absolute or ../); "
                       "they are read as written, as open_clip reads them"]
    assert CaptionTable(table, 32).skipped == ["/dev/zero: not_regular_file"]


@pytest.mark.parametrize("template", ["a {x}.", "a {c.__class__.__mro__}.", "a {c!r}.", "a {c:>40}.", "a {}.", "a {c", "a }"])
def test_templates_hold_only_the_class_name(tmp_path, template):
    write_benchmark_set(tmp_path / "set", [("a", png_bytes(), b"0")], templates=f"a photo of a {{c}}.\n{template}\n")
    path = tmp_path / "set" / "zeroshot_classification_templates.txt"
    with pytest.raises(DataError) as caught:
        open_benchmark_set("wds/x", str(tmp_path / "set"), 32)
    assert str(caught.value).startswith(f"'{path}': template {template!r}: the only placeholder allowed is {{c}}")
    assert "\n" not in str(caught.value)


def test_templates_fill_as_format_does_without_format(tmp_path):
    template = "{{c}} is a {c}, a {c}."
    write_benchmark_set(tmp_path / "set", [("a", png_bytes(), b"0")], templates=template)
    benchmark = open_benchmark_set("wds/x", str(tmp_path / "set"), 32)
    assert benchmark.templates == (template,)
    assert benchmark.fill(template, "{0.__class__}") == template.format(c="{0.__class__}") == "{c} is a {0.__class__}, a {0.__class__}."


def test_negative_labels_and_huge_members_are_bad_samples(tmp_path, capsys):
    samples = [("neg", png_bytes(), b"-1"), ("dark", png_bytes(value=20), b"0"), ("huge", 2 * 2**30, b"1"),
               ("bright", png_bytes(value=220), b"1")]
    write_benchmark_set(tmp_path / "set", samples)
    benchmark = open_benchmark_set("wds/x", str(tmp_path / "set"), 32)
    assert benchmark.test.labels.tolist() == [0, 1]
    shard = tmp_path / "set" / "test" / "0.tar"
    assert benchmark.test.skipped == [f"{shard}:neg: bad_label", f"{shard}:huge: oversized_member"]
    assert "skipped 2 sample(s) (1 bad_label, 1 oversized_member)" in capsys.readouterr().out
