"""``langmim finetune`` on an image folder in ImageNet's layout (``train/<class>/``, ``val/<class>/``):
the class order, the images read, a bad image replaced and counted, and a folder without a split
refused in one line."""
import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import TINY_MODEL
from langmim.cli import main
from langmim.errors import DataError
from langmim.finetune.data import FolderImages

COLOURS = {"zebra": (250, 250, 250), "ant": (200, 30, 30), "moth": (30, 30, 200)}  # sorted: ant, moth, zebra


def write_folder(root: Path, per_class: dict[str, int]) -> None:
    """Four train and two val PNGs per class, 40 px, each its class's colour (the first val image of
    a class greyscale); a README and a hidden folder beside them, which are not images or classes."""
    for split, count in (("train", 4), ("val", 2)):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class.get(f"{split}/{name}", count)):
                image = Image.new("RGB", (40, 40), colour)
                (image.convert("L") if split == "val" and i == 0 else image).save(folder / f"{i:02d}.png")
    (root / "train" / "README.txt").write_text("not a class")
    (root / "train" / "ant" / "notes.txt").write_text("not an image")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imagenet"
    write_folder(root, {"train/moth": 3})
    (root / "train" / "moth" / "03.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")  # a bad image among 12
    (root / "val" / "zebra" / "02.png").write_bytes(b"not a png either")  # and one among 7 validation images
    return root


def test_folder_lists_classes_in_order_and_reads_the_images(folder):
    train = FolderImages(folder, "train")
    assert train.classes == ["ant", "moth", "zebra"]
    assert [(p.parent.name, p.name, label) for p, label in train.items[3:8]] == [
        ("ant", "03.png", 0), ("moth", "00.png", 1), ("moth", "01.png", 1), ("moth", "02.png", 1), ("moth", "03.png", 1)]
    assert len(train) == 12  # notes.txt is not an image, README.txt not a class
    image, label = train.image(4)
    assert image.mode == "RGB" and image.size == (40, 40) and image.getpixel((5, 5)) == COLOURS["moth"] and label == 1
    assert train.image(7) == (None, 1)  # the bad PNG: unusable, not an exception
    val = FolderImages(folder, "val", train.classes)
    assert val.classes == train.classes and len(val) == 7
    grey, label = val.image(4)
    assert grey.mode == "RGB" and label == 2 and len(set(grey.getpixel((0, 0)))) == 1  # greyscale, converted


def run(folder: Path, out: Path, *extra: str) -> int:
    return main(["finetune", "--config", "finetune_demo", "--no-tensorboard", f"output_dir={out}", *TINY_MODEL,
                 "method=mae", "mae.decoder_width=32", "mae.decoder_depth=1", "mae.decoder_heads=2", "train.precision=fp32",
                 "train.log_every=1", "finetune.dataset=imagefolder", f"finetune.data_root={folder}", "finetune.batch_size=4",
                 "finetune.epochs=1", "finetune.warmup_epochs=0", *extra])


def test_finetune_trains_on_the_folder_and_counts_the_bad_image(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(folder, out) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "12 train / 7 val images, 3 classes; 3 steps per epoch" in printed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    # every one of the 12 train images is drawn once in the epoch: the bad one is replaced by its
    # neighbour and counted once
    assert sum(r["replaced_images"] for r in steps) == 1
    epoch = [r for r in records if "val_top1" in r]
    assert len(epoch) == 1 and 0.0 <= epoch[0]["val_top1"] <= 100.0
    assert epoch[0]["val_skipped"] == 1  # the bad validation image is skipped, not scored as its neighbour
    from langmim.finetune.train import load_classifier

    assert load_classifier(out / "model-last.pt").classes == ["ant", "moth", "zebra"]


@pytest.mark.parametrize("missing", ["train", "val"])
def test_a_folder_without_a_split_is_one_line(folder, tmp_path, capsys, missing):
    (folder / missing).rename(folder / f"{missing}-elsewhere")
    assert run(folder, tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"has no '{missing}' sub-folder" in err and "finetune.data_root" in err
    with pytest.raises(DataError, match=f"no '{missing}' sub-folder"):
        FolderImages(folder, missing)
