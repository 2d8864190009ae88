"""Recall@k from hand-made similarity matrices, with repeated captions."""
import pytest
import torch

from langmim.eval.retrieval import blind_recall_at_k, recall_at_k, relevance_from_captions


def test_recall_from_a_hand_made_matrix():
    # 3 images x 3 captions, all captions distinct: truth is the diagonal.
    sim = torch.tensor([
        [0.9, 0.1, 0.0],   # image 0: own caption first
        [0.8, 0.5, 0.1],   # image 1: own caption second
        [0.7, 0.6, 0.2],   # image 2: own caption third
    ])
    r = recall_at_k(sim, torch.eye(3, dtype=torch.bool), ks=(1, 2, 3))
    assert r["image_to_text_R@1"] == pytest.approx(100 / 3)
    assert r["image_to_text_R@2"] == pytest.approx(200 / 3)
    assert r["image_to_text_R@3"] == pytest.approx(100.0)
    # columns: caption 0 -> image 0 first (hit); caption 1 -> image 2 (0.6) then image 1 (0.5);
    # caption 2 -> image 2 first (hit)
    assert r["text_to_image_R@1"] == pytest.approx(200 / 3)
    assert r["text_to_image_R@2"] == pytest.approx(100.0)


def test_a_caption_with_the_same_text_counts_as_a_hit():
    captions = ["a red bag.", "a red bag.", "a blue coat."]
    relevant = relevance_from_captions(captions)
    assert relevant.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    sim = torch.tensor([
        [0.1, 0.9, 0.0],   # image 0 retrieves caption 1: same text -> hit
        [0.2, 0.1, 0.9],   # image 1 retrieves the coat -> miss at k=1
        [0.0, 0.0, 1.0],
    ])
    r = recall_at_k(sim, relevant, ks=(1,))
    assert r["image_to_text_R@1"] == pytest.approx(200 / 3)


def test_an_image_with_several_captions_matches_each_of_them():
    relevant = relevance_from_captions([["a red bag.", "a bag."], ["a blue coat."], ["a bag."]])
    # texts in order: "a red bag.", "a bag.", "a blue coat.", "a bag."
    assert relevant.tolist() == [[True, True, False, True], [False, False, True, False], [False, True, False, True]]
    sim = torch.tensor([[0.0, 0.3, 0.9, 0.1], [0.9, 0.0, 0.2, 0.0], [0.0, 0.5, 0.0, 1.0]])
    r = recall_at_k(sim, relevant, ks=(1,))
    assert r["image_to_text_R@1"] == pytest.approx(100 / 3)  # only image 2 finds one of its own first
    assert r["text_to_image_R@1"] == pytest.approx(50.0)  # texts 1 and 3 find an owner first; 0 and 2 do not


def test_on_clip_benchmark_sets_only_an_images_own_captions_count():
    captions = [["a bag."], ["a bag.", "a red bag."], ["a coat."]]
    assert relevance_from_captions(captions, same_text=False).tolist() == [
        [True, False, False, False], [False, True, True, False], [False, False, False, True]]
    assert relevance_from_captions(captions).tolist()[0] == [True, True, False, False]  # the built-in rule: same text


def test_the_blind_control_lists_the_commonest_captions_first():
    # 6 images: "a bag." thrice, "a coat." twice, "a dress." once; a blind ranking cannot beat listing them so
    relevant = relevance_from_captions(["a bag.", "a coat.", "a bag.", "a dress.", "a coat.", "a bag."])
    blind = blind_recall_at_k(relevant, ks=(1, 2, 3))
    assert blind == {"text_only_image_to_text_R@1": 50.0, "text_only_image_to_text_R@2": pytest.approx(500 / 6),
                     "text_only_image_to_text_R@3": 100.0}
    # distinct captions: one fixed order finds each image's caption in the top k for k of the n images
    assert blind_recall_at_k(torch.eye(4, dtype=torch.bool), ks=(1, 2)) == {
        "text_only_image_to_text_R@1": 25.0, "text_only_image_to_text_R@2": 50.0}
