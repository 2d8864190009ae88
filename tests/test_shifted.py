"""Distribution-shifted renders of Fashion-MNIST: shapes, determinism, and what each style changes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from langmim.data import fashion_mnist as fm
from langmim.data.scenes import (
    CENTRE,
    COLOURS,
    ITEM_THRESHOLD,
    MAX_JITTER,
    PLAIN_COLOURS,
    POSITIONS,
    FashionMNISTCentred,
    PlacedItem,
    item_side,
    render_centred,
    render_scene,
    resize_item,
)
from langmim.data.shifted import NOISE_SIGMA, SHIFT_STYLES, FashionMNISTShifted, render_shifted

CANVAS = 64
ITEMS = (0, 1, 2, 8, 12, 21)  # ankle boot, pullover, trouser, sandal, sneaker, sandal


@pytest.fixture(scope="module")
def test_items() -> tuple[np.ndarray, np.ndarray]:
    return fm.load_fashion_mnist("test")


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 (8-neighbour) binary dilation."""
    padded = np.pad(mask, 1)
    return np.logical_or.reduce([padded[1 + dy:1 + dy + mask.shape[0], 1 + dx:1 + dx + mask.shape[1]]
                                 for dy in (-1, 0, 1) for dx in (-1, 0, 1)])


def _erode(mask: np.ndarray) -> np.ndarray:
    return ~_dilate(~mask)


def _total_variation(image: np.ndarray) -> float:
    x = image.astype(np.float64)
    return float(np.abs(np.diff(x, axis=0)).sum() + np.abs(np.diff(x, axis=1)).sum())


@pytest.mark.parametrize("style", SHIFT_STYLES)
@pytest.mark.parametrize("canvas", [32, 64, 96])
def test_every_style_is_uint8_of_the_canvas(test_items, style, canvas):
    image = render_shifted(test_items[0][1], style, canvas, np.random.default_rng(0))
    assert image.dtype == np.uint8 and image.shape == (canvas, canvas, 3)
    assert image.max() > 0


@pytest.mark.parametrize("style", SHIFT_STYLES)
def test_renders_are_deterministic(test_items, style):
    item = test_items[0][1]
    first = render_shifted(item, style, CANVAS, np.random.default_rng(7))
    np.testing.assert_array_equal(first, render_shifted(item, style, CANVAS, np.random.default_rng(7)))
    np.testing.assert_array_equal(render_shifted(item, style, CANVAS), render_shifted(item, style, CANVAS))
    dataset = FashionMNISTShifted("test", style, indices=[3, 5])
    np.testing.assert_array_equal(dataset[1][0].numpy(), FashionMNISTShifted("test", style, indices=[5])[0][0].numpy())


@pytest.mark.parametrize("style", ["noisy", "small-offcentre"])
def test_seed_changes_the_random_styles(style):
    assert not np.array_equal(FashionMNISTShifted("test", style, indices=[0], seed=0)[0][0].numpy(),
                              FashionMNISTShifted("test", style, indices=[0], seed=1)[0][0].numpy())
    many = [FashionMNISTShifted("test", style, indices=[0], seed=s)[0][0].numpy() for s in range(8)]
    assert len({image.tobytes() for image in many}) >= 6


def test_inverted_is_the_centred_render_inverted(test_items):
    for i in ITEMS:
        item = test_items[0][i]
        np.testing.assert_array_equal(render_shifted(item, "inverted", CANVAS), 255 - render_centred(item, CANVAS))
    assert render_shifted(test_items[0][0], "inverted", CANVAS)[0, 0].tolist() == [255, 255, 255]


def test_sketch_is_the_outline_of_the_silhouette(test_items):
    line_pixels = silhouette_pixels = 0
    for i in ITEMS:
        item = test_items[0][i]
        sketch = render_shifted(item, "sketch", CANVAS)
        assert (sketch == sketch[..., :1]).all(), "sketch lines are white/grey"
        lines = sketch[..., 0] > 127
        silhouette = render_centred(item, CANVAS)[..., 0] > ITEM_THRESHOLD * 255
        assert 0 < lines.sum() < silhouette.sum(), i
        line_pixels, silhouette_pixels = line_pixels + lines.sum(), silhouette_pixels + silhouette.sum()
        assert not (lines & _erode(_erode(silhouette))).any(), f"item {i}: lines in the interior"
        assert (lines <= _dilate(silhouette)).all(), f"item {i}: lines outside the item"
        # the silhouette is kept: the lines span the item's bounding box and lie on all of its border
        rows, cols = np.flatnonzero(silhouette.any(1)), np.flatnonzero(silhouette.any(0))
        assert lines[rows[0]].any() and lines[rows[-1]].any() and lines[:, cols[0]].any() and lines[:, cols[-1]].any()
        border = silhouette & ~_erode(silhouette)
        assert (border <= _dilate(lines)).all(), f"item {i}: part of the border has no line"
    assert line_pixels < 0.4 * silhouette_pixels  # 0.27: thin items (a flip-flop's strap) are nearly all outline


def test_sketch_drops_the_fill_texture():
    """A bright item with a textured (but above-threshold) fill is drawn as its rectangle outline only."""
    item = np.zeros((28, 28), dtype=np.uint8)
    item[4:24, 6:22] = np.where(np.indices((20, 16)).sum(0) % 2 == 0, 250, 120)
    lines = render_shifted(item, "sketch", CANVAS)[..., 0] > 0
    silhouette = render_centred(item, CANVAS)[..., 0] > ITEM_THRESHOLD * 255
    rows, cols = np.flatnonzero(silhouette.any(1)), np.flatnonzero(silhouette.any(0))
    interior = np.zeros_like(silhouette)
    interior[rows[0] + 2:rows[-1] - 1, cols[0] + 2:cols[-1] - 1] = True
    assert lines.any() and not (lines & interior).any()


def test_small_offcentre_is_small_coloured_and_off_the_centre(test_items):
    colours_seen = set()
    for seed in range(40):
        item = test_items[0][ITEMS[seed % len(ITEMS)]]
        image = render_shifted(item, "small-offcentre", CANVAS, np.random.default_rng(seed))
        centre = slice(CANVAS // 2 - 2, CANVAS // 2 + 2)
        assert not image[centre, centre].any(), f"seed {seed}: item in the centre"
        assert (image.max(-1) > 0).sum() < 0.6 * (render_centred(item, CANVAS).max(-1) > 0).sum()
        lit = image.max(-1) > 100
        spread = image[lit].max(-1).astype(int) - image[lit].min(-1)
        assert np.median(spread) > 60, f"seed {seed}: white or grey item"  # white/grey have r = g = b
        brightest = image.reshape(-1, 3)[image.reshape(-1, 3).astype(int).sum(1).argmax()]
        colours_seen.add(tuple(np.round(brightest / brightest.max(), 1)))
    assert len(colours_seen) >= 4


def test_small_offcentre_is_a_training_scene_with_jitter(test_items):
    """Each render equals the training renderer's scene of one small item for some non-plain colour,
    non-centre cell and jitter of at most MAX_JITTER px; the jitter is not always zero."""
    item = test_items[0][12]
    patch = resize_item(item, item_side("small", CANVAS))
    jitters = [(dx, dy) for dx in range(-MAX_JITTER, MAX_JITTER + 1) for dy in range(-MAX_JITTER, MAX_JITTER + 1)]
    matched = []
    for seed in range(12):
        image = render_shifted(item, "small-offcentre", CANVAS, np.random.default_rng(seed))
        matches = [
            jitter for colour in COLOURS if colour not in PLAIN_COLOURS for cell in range(len(POSITIONS)) if cell != CENTRE for jitter in jitters
            if np.array_equal(image, render_scene([PlacedItem(0, 0, colour, "small", cell, jitter)], [patch], CANVAS, annotate=False)[0])
        ]
        assert matches, f"seed {seed}: not a training scene"
        matched.append(matches)
    assert sum((0, 0) not in matches for matches in matched) >= 6


def test_noisy_adds_noise_of_the_stated_std():
    flat = np.full((28, 28), 128, dtype=np.uint8)  # mid-grey: the noise is clipped at > 3 sigma only
    clean = render_centred(flat, CANVAS).astype(np.float64)
    noisy = render_shifted(flat, "noisy", CANVAS, np.random.default_rng(0)).astype(np.float64)
    diff = (noisy - clean)[clean == 128]
    assert diff.size == 32 * 32 * 3
    assert abs(diff.mean()) < 3
    assert abs(diff.std() - NOISE_SIGMA) < 0.06 * NOISE_SIGMA
    # independent per channel, and the background is noisy too (clipped at 0)
    assert (noisy[..., 0] != noisy[..., 1]).mean() > 0.5
    assert (noisy[clean == 0] > 0).mean() > 0.4


def test_blurred_keeps_the_mean_and_smooths(test_items):
    for i in ITEMS:
        item = test_items[0][i]
        clean, blurred = render_centred(item, CANVAS), render_shifted(item, "blurred", CANVAS)
        assert abs(blurred.astype(np.float64).mean() - clean.astype(np.float64).mean()) < 0.5
        assert _total_variation(blurred) < 0.7 * _total_variation(clean), i
        assert blurred.max() < clean.max() or clean.max() == 0
    # a single bright pixel spreads over a few px (sigma 1.5 px at 64 px), not more
    dot = np.zeros((28, 28), dtype=np.uint8)
    dot[13:15, 13:15] = 255
    spread = render_shifted(dot, "blurred", CANVAS)[..., 0] > 0
    rows = np.flatnonzero(spread.any(1))
    assert 6 <= rows[-1] - rows[0] + 1 <= 16


def test_unknown_style_names_the_valid_ones(test_items):
    with pytest.raises(ValueError, match="'cartoon'.*sketch, inverted, small-offcentre, noisy, blurred"):
        render_shifted(test_items[0][0], "cartoon")
    with pytest.raises(ValueError, match="'cartoon'.*sketch"):
        FashionMNISTShifted("test", "cartoon")


@pytest.mark.parametrize("style", SHIFT_STYLES)
def test_dataset_labels_indices_and_rng(test_items, style):
    images, labels = test_items
    indices = [9, 2, 41, 2]
    dataset = FashionMNISTShifted("test", style, indices=indices, seed=3)
    assert len(dataset) == 4
    style_id = SHIFT_STYLES.index(style)
    for k, source in enumerate(indices):
        image, label = dataset[k]
        assert label == int(labels[source])
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, CANVAS, CANVAS)
        expected = render_shifted(images[source], style, CANVAS, np.random.default_rng([3, style_id, source]))
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected)
    assert len(FashionMNISTShifted("test", style)) == len(labels)


def test_dataset_inverted_matches_the_centred_dataset():
    centred = FashionMNISTCentred("test", indices=[4, 7])
    inverted = FashionMNISTShifted("test", "inverted", indices=[4, 7])
    for k in range(2):
        assert centred[k][1] == inverted[k][1]
        np.testing.assert_array_equal(inverted[k][0].numpy(), 255 - centred[k][0].numpy())
