"""The built-in Fashion-MNIST scenes: determinism, split hygiene, masks, captions, augmentation."""
from __future__ import annotations

import gzip
import re

import numpy as np
import pytest
import torch
from PIL import Image

from langmim.data import fashion_mnist as fm
from langmim.data.scenes import (
    CENTRE,
    COLOURS,
    ITEM_THRESHOLD,
    NOUNS,
    POSITIONS,
    FashionMNISTCentred,
    FashionScenes,
    PlacedItem,
    collate_scenes,
    render_centred,
    render_scene,
    resize_item,
    resize_items,
)
from langmim.errors import DataError
from langmim.transforms import fill_template, to_float

CANVAS = 64
LARGE = 32


def first_index(ds: FashionScenes, accept, limit: int = 3000) -> int:
    """The first scene index whose sample satisfies `accept`."""
    for i in range(limit):
        if accept(ds[i]):
            return i
    raise AssertionError("no scene satisfies the condition")


def expected_single(sample: dict, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-derive a one-item scene's image and mask from its source item, independently."""
    side = round({"small": 0.34, "large": 0.5}[sample["sizes"][0]] * CANVAS)
    patch = np.asarray(Image.fromarray(images[sample["item_indices"][0]]).resize(
        (side, side), Image.BILINEAR)).astype(np.int64)
    rows, cols = np.nonzero(patch)
    x0, y0 = sample["boxes"][0, :2].tolist()
    oy, ox = y0 - rows.min(), x0 - cols.min()  # where the patch's corner landed
    image = np.zeros((3, CANVAS, CANVAS), dtype=np.int64)
    mask = np.zeros((CANVAS, CANVAS), dtype=np.int64)
    rgb = np.array(COLOURS[sample["colours"][0]])[:, None, None]
    image[:, oy:oy + side, ox:ox + side] = (patch * rgb + 127) // 255
    mask[oy:oy + side, ox:ox + side] = np.where(patch > ITEM_THRESHOLD * 255,
                                                1 + int(sample["labels"][0]), 0)
    return image, mask


def swap_left_right(text: str) -> str:
    return text.replace("left", "\0").replace("right", "left").replace("\0", "right")


def grid_cell(position: str) -> tuple[int, int]:
    return divmod(POSITIONS.index(position), 3)


def shifted(array: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate the last two dims by (dx, dy), zero fill."""
    out = torch.zeros_like(array)
    h, w = array.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        array[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


# ------------------------------------------------------------------ determinism and splits


def test_scenes_are_a_pure_function_of_split_seed_index():
    a, b = FashionScenes("train", seed=0), FashionScenes("train", seed=0)
    for i in (0, 17, 10**7):  # any non-negative index, far beyond len(), is a valid scene
        sa, sb = a[i], b[i]
        assert torch.equal(sa["image"], sb["image"]) and torch.equal(sa["mask"], sb["mask"])
        assert sa["caption"] == sb["caption"] and sa["index"] == i
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert not torch.equal(a[0]["image"], FashionScenes("train", seed=1)[0]["image"])
    assert not torch.equal(a[0]["image"], FashionScenes("test", seed=0)[0]["image"])
    with pytest.raises(IndexError):
        a[-1]


def test_sample_fields_have_documented_types():
    s = FashionScenes("train")[3]
    n = len(s["labels"])
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, CANVAS, CANVAS)
    assert s["mask"].dtype == torch.int64 and s["mask"].shape == (CANVAS, CANVAS)
    assert s["labels"].dtype == torch.int64 and s["boxes"].shape == (n, 4)
    assert len(s["colours"]) == len(s["sizes"]) == len(s["positions"]) == n
    assert len(FashionScenes("train")) == 60000 and len(FashionScenes("test")) == 10000


def test_each_split_draws_only_its_own_items(train_items, test_items):
    train, test = FashionScenes("train"), FashionScenes("test")
    train_sources = torch.cat([train[i]["item_indices"] for i in range(300)])
    test_sources = torch.cat([test[i]["item_indices"] for i in range(300)])
    assert test_sources.max() < len(test_items[1]) <= train_sources.max()
    # the pixels are those of the split's own item, not the other split's at the same index
    i = first_index(test, lambda s: len(s["labels"]) == 1)
    sample = test[i]
    image, mask = expected_single(sample, test_items[0])
    assert torch.equal(sample["image"], torch.from_numpy(image).to(torch.uint8))
    assert torch.equal(sample["mask"], torch.from_numpy(mask))
    assert int(sample["labels"][0]) == test_items[1][sample["item_indices"][0]]
    wrong, _ = expected_single(sample, train_items[0])
    assert not np.array_equal(wrong, image)


def test_mask_is_exactly_the_item_pixels_of_single_items(train_items):
    ds = FashionScenes("train")
    singles = [ds[i] for i in range(60) if len(ds[i]["labels"]) == 1]
    assert len(singles) > 10
    for s in singles:
        image, mask = expected_single(s, train_items[0])
        assert torch.equal(s["image"], torch.from_numpy(image).to(torch.uint8))
        assert torch.equal(s["mask"], torch.from_numpy(mask))
        x0, y0, x1, y1 = s["boxes"][0].tolist()
        outside = torch.ones(CANVAS, CANVAS, dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        assert s["image"][:, outside].sum() == 0 and s["mask"][outside].sum() == 0
        assert s["mask"][y0:y1, x0:x1].any()


def test_mask_labels_and_image_agree_in_multi_item_scenes():
    ds = FashionScenes("train", augment=True)
    for i in range(100):
        s = ds[i]
        assert set(s["mask"].unique().tolist()) <= {0, *(1 + s["labels"]).tolist()}
        assert (s["image"].amax(0)[s["mask"] > 0] > 0).all()


@pytest.mark.parametrize("side", [11, 16, 22, 32, 76, 112])  # both item sizes at 32, 64 and 224 px
def test_block_resize_equals_pil_bilinear_to_the_bit(train_items, test_items, side):
    """Scenes resize items in blocks with Pillow's fixed-point arithmetic redone in numpy; the
    data stream stays what per-item PIL resizing gave only if every pixel matches."""
    items = np.concatenate([train_items[0][:1500], test_items[0][:500]])
    expected = np.stack([np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR))
                         for item in items])
    assert np.array_equal(resize_items(items, side), expected)


def test_resized_item_cache_is_bounded_and_changes_nothing(monkeypatch):
    import langmim.data.scenes.datasets as scenes

    unbounded = FashionScenes("train", augment=True)
    expected = [unbounded[i]["image"] for i in range(40)]
    budget = 3 * 256 * 32 * 32  # three blocks of large items at 64 px
    monkeypatch.setattr(scenes, "PATCH_CACHE_BYTES", budget)
    bounded = FashionScenes("train", augment=True)
    for i in range(40):
        assert torch.equal(bounded[i]["image"], expected[i])
        assert bounded._patch_bytes == sum(b.nbytes for b in bounded._patch_blocks.values()) <= budget
    assert len(unbounded._patch_blocks) > len(bounded._patch_blocks)


def test_later_items_occlude_earlier_ones(train_items):
    images, labels = train_items
    a, b = int(np.flatnonzero(labels == 2)[0]), int(np.flatnonzero(labels == 8)[0])
    items = [PlacedItem(a, 2, "red", "large", CENTRE, (0, 0)),
             PlacedItem(b, 8, "blue", "large", POSITIONS.index("right"), (0, 0))]
    patches = [resize_item(images[a], LARGE), resize_item(images[b], LARGE)]
    image, mask, _ = render_scene(items, patches, CANVAS)
    top = np.zeros((CANVAS, CANVAS), dtype=bool)
    top[16:48, 32:64] = patches[1] > ITEM_THRESHOLD * 255  # the right cell's large item
    assert (mask[top] == 1 + 8).all()
    assert (mask[~top] != 1 + 8).all() and (mask == 1 + 2).any()


def test_unannotated_scenes_are_the_annotated_ones_without_their_annotations():
    """Pre-training reads scenes with annotate=False; it must see the very same images and captions."""
    full = FashionScenes("train", augment=True, plain_prob=0.3)
    lean = FashionScenes("train", augment=True, plain_prob=0.3, annotate=False)
    for i in range(200):
        a, b = full[i], lean[i]
        assert set(b) == {"image", "caption", "index"}
        assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"] and b["index"] == i


# ------------------------------------------------------------------ captions


def test_caption_names_every_item_with_its_colour_and_class():
    ds = FashionScenes("train", augment=True)
    for i in range(300):
        s = ds[i]
        caption = s["caption"]
        for label, colour in zip(s["labels"].tolist(), s["colours"]):
            assert re.search(rf"\b{colour}\b", caption), caption
            assert any(re.search(rf"\b{re.escape(noun)}\b", caption) for noun in NOUNS[label])
        assert not re.search(r"\ba [aeiou]|\ban [^aeiou]", caption), caption


def test_relation_words_are_true():
    ds = FashionScenes("train", augment=True)
    seen = set()
    for i in range(1500):
        s = ds[i]
        if len(s["labels"]) < 2:
            continue
        (ra, ca), (rb, cb) = grid_cell(s["positions"][0]), grid_cell(s["positions"][1])
        checks = {" above ": ra < rb, " below ": ra > rb, " to the left of ": ca < cb,
                  " to the right of ": ca > cb, " next to ": ra == rb and abs(ca - cb) == 1}
        for words, true in checks.items():
            if words in s["caption"]:
                assert true, (s["caption"], s["positions"])
                seen.add(words)
    assert len(seen) == 5


def test_fill_template_fixes_articles():
    assert fill_template("a photo of a {}.", "ankle boot") == "a photo of an ankle boot."
    assert fill_template("an image showing a {}.", "bag") == "an image showing a bag."


# ------------------------------------------------------------------ augmentation


def test_flip_mirrors_image_mask_boxes_and_swaps_left_right():
    plain, aug = FashionScenes("train"), FashionScenes("train", augment=True)
    i = first_index(aug, lambda s: s["flipped"] and s["shift"] == (0, 0)
                    and re.search(r"left|right", s["caption"]) is not None)
    p, a = plain[i], aug[i]
    assert torch.equal(a["image"], p["image"].flip(-1))
    assert torch.equal(a["mask"], p["mask"].flip(-1))
    assert torch.equal(a["boxes"][:, [0, 2]], CANVAS - p["boxes"][:, [2, 0]])
    assert torch.equal(a["boxes"][:, [1, 3]], p["boxes"][:, [1, 3]])
    assert a["caption"] == swap_left_right(p["caption"]) != p["caption"]
    assert a["positions"] == [swap_left_right(q) for q in p["positions"]]


def test_translation_is_small_and_pads_with_background():
    plain, aug = FashionScenes("train"), FashionScenes("train", augment=True)
    shifts = {aug[i]["shift"] for i in range(200)}
    assert max(max(abs(dx), abs(dy)) for dx, dy in shifts) == 3
    i = first_index(aug, lambda s: not s["flipped"] and 0 not in s["shift"])
    p, a = plain[i], aug[i]
    dx, dy = a["shift"]
    assert torch.equal(a["image"], shifted(p["image"], dx, dy))
    assert torch.equal(a["mask"], shifted(p["mask"], dx, dy))
    assert a["caption"] == p["caption"]


# ------------------------------------------------------------------ plain images, evaluation


def test_render_centred_is_a_jitter_free_large_white_centre_scene(test_items):
    images, labels = test_items
    k = 7
    placed = PlacedItem(k, int(labels[k]), "white", "large", CENTRE, (0, 0))
    scene, _, _ = render_scene([placed], [FashionScenes("test")._patch(k, LARGE)], CANVAS)
    assert np.array_equal(render_centred(images[k], CANVAS), scene)
    # and a real scene of that kind equals it up to its jitter
    ds = FashionScenes("test")
    i = first_index(ds, lambda s: s["positions"] == ["centre"] and s["sizes"] == ["large"]
                    and s["colours"] == ["white"])
    s = ds[i]
    ref = torch.from_numpy(render_centred(images[s["item_indices"][0]], CANVAS)).permute(2, 0, 1)
    ys, xs = torch.nonzero(ref.amax(0), as_tuple=True)
    dx, dy = (s["boxes"][0, :2] - torch.stack([xs.min(), ys.min()])).tolist()
    assert max(abs(dx), abs(dy)) <= 2
    assert torch.equal(s["image"], shifted(ref, dx, dy))


def test_fashion_mnist_centred_yields_rendered_test_images(test_items):
    images, labels = test_items
    ds = FashionMNISTCentred("test", indices=[5, 9])
    image, label = ds[1]
    assert len(ds) == 2 and label == labels[9]
    assert torch.equal(image, torch.from_numpy(render_centred(images[9])).permute(2, 0, 1))


def test_collate_and_to_float():
    ds = FashionScenes("train")
    batch = collate_scenes([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, CANVAS, CANVAS) and batch["mask"].shape[0] == 4
    assert batch["index"].tolist() == [0, 1, 2, 3] and len(batch["caption"]) == 4
    assert isinstance(batch["labels"], list) and len(batch["boxes"]) == 4
    x = to_float(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(2, 3, 1, 2))
    assert x.dtype == torch.float32 and x[..., 0].eq(-1).all() and x[..., 1].eq(1).all()


# ------------------------------------------------------------------ idx files and locating them


def write_idx(path, array: np.ndarray, truncate: int = 0) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    data = (header + array.astype(np.uint8).tobytes())[:len(header) + array.size - truncate]
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.mark.parametrize("name", ["t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"])
def test_truncated_idx_file_is_a_data_error_naming_it(tmp_path, name):
    path = tmp_path / name
    write_idx(path, np.zeros((3, 28, 28)), truncate=5)
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*truncated"):
        fm.read_idx(path)


def test_foreign_and_corrupt_files_are_data_errors(tmp_path):
    (tmp_path / "a").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (tmp_path / "b.gz").write_bytes(b"not gzip at all")
    for name in ("a", "b.gz"):
        with pytest.raises(DataError, match=re.escape(str(tmp_path / name))):
            fm.read_idx(tmp_path / name)


def test_tiny_data_set_in_torchvision_layout_loads(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 5), ("t10k", 3)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n))
    assert fm.find_fashion_mnist(tmp_path) == raw
    images, labels = fm.load_fashion_mnist("test", root=tmp_path)
    assert images.shape == (3, 28, 28) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2] and labels.dtype == np.int64


def test_missing_data_is_a_clear_data_error(tmp_path, monkeypatch):
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setattr(fm, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(DataError) as err:
        fm.find_fashion_mnist()
    message = str(err.value)
    for hint in (str(tmp_path / "system"), str(tmp_path / "cache"),
                 "apt-get install dataset-fashion-mnist", "--download", "data.root="):
        assert hint in message
    with pytest.raises(DataError, match=re.escape(str(tmp_path))):
        fm.find_fashion_mnist(tmp_path)  # an explicit root is not silently replaced
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path / "env"))
    with pytest.raises(DataError, match="env"):
        fm.load_fashion_mnist("train")
    with pytest.raises(DataError, match="'val'"):
        fm.load_fashion_mnist("val")


def test_plain_scenes_are_single_centred_white_or_grey_items():
    scenes = FashionScenes("train", seed=3, plain_prob=1.0)
    for i in range(20):
        s = scenes[i]
        assert len(s["labels"]) == 1 and s["positions"] == ["centre"]
        assert s["colours"][0] in ("white", "grey")
    mixed = FashionScenes("train", seed=3, plain_prob=0.3)
    plain = sum(len(mixed[i]["labels"]) == 1 and mixed[i]["positions"] == ["centre"] and mixed[i]["colours"][0] in ("white", "grey") for i in range(400))
    assert 0.25 * 400 < plain < 0.45 * 400  # 0.3 plain plus a few ordinary scenes that look alike
