"""Concept zero-shot: garment x colour concepts scored apart for the web world's head and tail."""
import numpy as np
import pytest

from langmim.data.scenes import COLOURS, FashionMNISTCentred
from langmim.data.scenes.rendering import _COLOUR_TABLES
from langmim.data.scenes.web import concept_frequencies, head_tail_concepts
from langmim.eval.concepts import concept_names, concept_scores
from langmim.worlds import NUM_CONCEPTS, WebWorld

WORLD = WebWorld()


def test_concept_names_follow_the_concept_ids():
    names = concept_names()
    assert len(names) == NUM_CONCEPTS == len(set(names))
    assert names[3 * len(COLOURS) + 2] == f"{list(COLOURS)[2]} dress"  # label 3 is Fashion-MNIST's dress


def test_scores_split_head_from_tail_and_garment_from_colour():
    head, tail = head_tail_concepts(WORLD)
    truth = np.repeat(np.arange(NUM_CONCEPTS), 4)
    predicted = truth.copy()
    in_tail = np.isin(truth, tail)
    ncolours = len(COLOURS)
    # every tail row gets the right garment in the wrong colour
    predicted[in_tail] = truth[in_tail] // ncolours * ncolours + (truth[in_tail] + 1) % ncolours
    scores = concept_scores(predicted, truth, WORLD)
    assert scores["head_top1"] == 100 and scores["tail_top1"] == 0
    assert scores["top1"] == pytest.approx(100 * (1 - len(tail) / NUM_CONCEPTS))
    assert scores["garment_top1"] == 100 and scores["colour_top1"] == pytest.approx(scores["top1"])
    # accuracy rises with pre-training frequency: a positive slope per decade of it
    assert scores["points_per_decade"] > 0
    level = concept_scores(truth, truth, WORLD)
    assert level["points_per_decade"] == pytest.approx(0, abs=1e-6)


def test_head_concepts_are_the_frequent_ones():
    head, tail = head_tail_concepts(WORLD)
    frequencies = concept_frequencies(WORLD)
    assert frequencies[head].min() > frequencies[tail].max()


def test_coloured_items_take_their_row_colour(test_items):
    images, labels = test_items
    colours = ["red", "blue"]
    items = FashionMNISTCentred("test", 64, indices=[0, 1], colours=colours)
    for row, colour in enumerate(colours):
        image, label = items[row]
        assert label == labels[row]
        brightest = image.reshape(3, -1)[:, image.sum(dim=0).flatten().argmax()]
        assert tuple(brightest.tolist()) in {tuple(shade) for shade in _COLOUR_TABLES[colour].tolist()}
    with pytest.raises(ValueError, match="1 colours for 2 rows"):
        FashionMNISTCentred("test", 64, indices=[0, 1], colours=["red"])
