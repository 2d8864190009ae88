"""Pre-training on a CSV of image paths and captions, and on a class folder, with planted bad
samples of every kind: the run completes and reports exactly the planted counts."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import bomb_png, tiny_overrides
from langmim.config import load_config
from langmim.data.captioned import CaptionedImages
from langmim.engine.loop import pretrain
from langmim.errors import DataError


def good_image(rng, mode="RGB", size=(40, 30)):
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    if mode == "I;16":
        return Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)  # 2-D uint16 -> a 16-bit image
    return Image.fromarray(pixels).convert(mode)


def plant(folder):
    """24 rows: 11 good RGB, and one of each bad kind (some twice). Returns rows and the plan."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    rows, planned = [], {}

    def add(name, caption, kind=None, writer=None):
        if writer is not None:
            writer(folder / name)
        rows.append((name, caption))
        if kind:
            planned[kind] = planned.get(kind, 0) + 1

    for i in range(11):
        add(f"good{i}.png", f"a photo number {i}", writer=lambda p: good_image(rng).save(p))
    add("gone.png", "a missing file", "missing_file")
    add("zero.png", "an empty file", "empty_file", lambda p: p.write_bytes(b""))
    add("noise.png", "random bytes", "unreadable_image", lambda p: p.write_bytes(rng.bytes(300)))

    def truncated(p):
        buffer = io.BytesIO()
        good_image(rng, size=(64, 64)).save(buffer, format="PNG")
        p.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])

    add("half.png", "a truncated png", "truncated_image", truncated)
    add("good_no_caption.png", "  ", "empty_caption", lambda p: good_image(rng).save(p))
    add("grey.png", "a grey picture", "converted_grayscale", lambda p: good_image(rng, "L").save(p))
    add("palette.png", "a palette picture", "converted_palette", lambda p: good_image(rng, "P").save(p))
    add("alpha.png", "a transparent picture", "converted_alpha", lambda p: good_image(rng, "RGBA").save(p))
    add("cmyk.jpg", "a cmyk picture", "converted_cmyk", lambda p: good_image(rng, "CMYK").save(p))
    add("deep.png", "a 16-bit picture", "converted_16bit", lambda p: good_image(rng, "I;16").save(p))
    add("grey2.png", "another grey picture", "converted_grayscale", lambda p: good_image(rng, "L").save(p))
    add("gone2.jpg", "another missing file", "missing_file")
    add("bomb.png", "a decompression bomb", "oversized_image", lambda p: p.write_bytes(bomb_png()))
    return rows, planned


def test_csv_run_completes_and_counts_every_planted_problem(tmp_path, capsys):
    rows, planned = plant(tmp_path / "images")
    table = tmp_path / "pairs.tsv"
    table.write_text("filepath\tcaption\n" + "".join(f"images/{p}\t{c}\n" for p, c in rows))
    # one epoch exactly: 3 steps of 8 = 24 rows
    cfg = load_config(None, tiny_overrides(tmp_path / "run", "clip", steps=3, **{
        "data.name": "csv", "data.root": str(table), "train.batch_size": 8}))
    pretrain(cfg, log_tensorboard=False)
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["data_problems"] == planned
    out = capsys.readouterr().out
    assert "data problems in this run" in out
    assert f"{sum(planned.values())} distinct files: " in out  # each planted file named once, with its kind
    assert "bomb.png: oversized_image" in out and "half.png: truncated_image" in out


def test_samples_are_deterministic_and_rgb(tmp_path):
    rows, _ = plant(tmp_path / "images")
    table = tmp_path / "pairs.csv"
    table.write_text("image,title\n" + "".join(f"images/{p},{c}\n" for p, c in rows))
    data = CaptionedImages("csv", str(table), 32, seed=0)
    for index in range(30):
        a, b = data[index], data[index]
        assert a["image"].shape == (3, 32, 32) and a["image"].dtype.is_floating_point is False
        assert (a["image"] == b["image"]).all() and a["caption"] == b["caption"] and a["caption"].strip()


def test_class_folder_captions_come_from_templates(tmp_path):
    rng = np.random.default_rng(1)
    for cls in ("golden_retriever", "tabby_cat"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(3):
            good_image(rng).save(tmp_path / "train" / cls / f"{i}.jpg")
    data = CaptionedImages("imagefolder", str(tmp_path), 32, seed=0)
    captions = {data[i]["caption"] for i in range(12)}
    assert all(("golden retriever" in c) or ("tabby cat" in c) for c in captions)
    pretrain(load_config(None, tiny_overrides(tmp_path / "run", "mae", steps=2, **{
        "data.name": "imagefolder", "data.root": str(tmp_path), "train.batch_size": 4})), log_tensorboard=False)


@pytest.mark.parametrize("content, words", [
    ("path,caption\n", "no rows"),
    ("name,label\nx.png,y\n", "needs an image column"),
])
def test_bad_tables_are_clear_errors(tmp_path, content, words):
    (tmp_path / "t.csv").write_text(content)
    with pytest.raises(DataError, match=words):
        CaptionedImages("csv", str(tmp_path / "t.csv"), 32, seed=0)


def test_a_csv_run_evaluates_on_the_built_in_data(tmp_path, monkeypatch, capsys):
    """eval finds Fashion-MNIST by --data-root, the environment or the standard places, not in the
    CSV path the run trained on."""
    from langmim.cli import main

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i in range(8):
        good_image(rng).save(tmp_path / "images" / f"{i}.png")
    table = tmp_path / "pairs.csv"
    table.write_text("filepath,caption\n" + "".join(f"images/{i}.png,photo {i}\n" for i in range(8)))
    run = tmp_path / "run"
    pretrain(load_config(None, tiny_overrides(run, "clip", steps=1, **{"data.name": "csv", "data.root": str(table), "train.batch_size": 8})),
             log_tensorboard=False)
    tiny_eval = ["--tasks", "knn", "eval.test_size=40", "eval.probe_train_size=60", "eval.knn_k=[5]"]
    monkeypatch.delenv("LANGMIM_FASHION_MNIST", raising=False)
    assert main(["eval", "--checkpoint", str(run), *tiny_eval]) == 0
    assert main(["eval", "--checkpoint", str(run), "--data-root", str(tmp_path / "nowhere"), *tiny_eval]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    monkeypatch.setenv("LANGMIM_FASHION_MNIST", str(tmp_path / "elsewhere"))
    assert main(["eval", "--checkpoint", str(run), *tiny_eval]) == 2
    assert str(tmp_path / "elsewhere") in capsys.readouterr().err


def test_pixel_limit_is_configurable(tmp_path):
    from langmim.data.images import load_rgb

    good_image(np.random.default_rng(0), size=(40, 30)).save(tmp_path / "a.png")
    assert load_rgb(tmp_path / "a.png")[1] is None
    assert load_rgb(tmp_path / "a.png", max_pixels=1000) == (None, "oversized_image")  # 1,200 pixels
    assert load_config(None, ["data.max_image_pixels=1000"]).data.max_image_pixels == 1000
