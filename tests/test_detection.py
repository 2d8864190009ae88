"""Detection probe: COCO AP on hand-made detections, the FCOS assignment, and a head that finds planted boxes."""
import pytest
import torch
from torchmetrics.detection import MeanAveragePrecision

from langmim.eval.detection import assign_targets, detect, detection_metrics, detection_probe, token_centres, train_detection_head

# COCO interpolates precision at 101 recall points 0, 0.01, ..., 1; reaching recall 0.5 covers 51 of them
HALF_RECALL = 51 / 101


def _targets(boxes: list[list[list[int]]], labels: list[list[int]]) -> list[dict]:
    return [{"boxes": torch.tensor(b).reshape(-1, 4), "labels": torch.tensor(c, dtype=torch.long)} for b, c in zip(boxes, labels)]


def _predictions(boxes: list[list[list[float]]], scores: list[list[float]], labels: list[list[int]]) -> list[dict]:
    return [{"boxes": torch.tensor(b, dtype=torch.float).reshape(-1, 4), "scores": torch.tensor(s, dtype=torch.float),
             "labels": torch.tensor(c, dtype=torch.long)} for b, s, c in zip(boxes, scores, labels)]


GT_BOXES = [[[0, 0, 20, 20], [30, 30, 60, 62]], [[10, 5, 40, 27]], [[2, 40, 24, 62], [40, 0, 63, 22], [20, 20, 44, 44]]]
GT_LABELS = [[0, 3], [3], [1, 0, 2]]


def test_ground_truth_as_predictions_scores_100():
    targets = _targets(GT_BOXES, GT_LABELS)
    predictions = [{"boxes": t["boxes"].float(), "scores": torch.ones(len(t["labels"])), "labels": t["labels"]} for t in targets]
    scores = detection_metrics(predictions, targets, num_classes=5)
    assert scores["ap"] == pytest.approx(100.0)
    assert scores["ap50"] == pytest.approx(100.0)
    assert scores["ap75"] == pytest.approx(100.0)
    assert scores["ap50_per_class"] == pytest.approx([100.0, 100.0, 100.0, 100.0, None])  # class 4 has no ground truth


def test_boxes_shifted_below_half_iou_score_zero():
    targets = _targets(GT_BOXES, GT_LABELS)
    # every box moved right by 60% of its width: IoU = 0.4 * w / (1.6 * w) = 0.25
    shifted = []
    for t in targets:
        b = t["boxes"].float().clone()
        b[:, [0, 2]] += 0.6 * (b[:, 2:3] - b[:, 0:1])
        shifted.append({"boxes": b, "scores": torch.ones(len(b)), "labels": t["labels"]})
    scores = detection_metrics(shifted, targets, num_classes=4)
    assert scores["ap50"] == 0.0 and scores["ap"] == 0.0
    assert scores["ap50_per_class"] == [0.0] * 4


def test_right_boxes_wrong_labels_score_zero():
    targets = _targets(GT_BOXES, GT_LABELS)
    wrong = [{"boxes": t["boxes"].float(), "scores": torch.ones(len(t["labels"])), "labels": (t["labels"] + 1) % 4} for t in targets]
    scores = detection_metrics(wrong, targets, num_classes=4)
    assert scores["ap"] == 0.0 and scores["ap50"] == 0.0 and scores["ap75"] == 0.0


@pytest.mark.parametrize("boxes, scores, expected", [
    # one of the two objects found, nothing false: precision 1 up to recall 0.5, then 0
    ([[0, 0, 10, 10]], [0.9], HALF_RECALL),
    # a false positive ranked above the hit: precision 1/2 up to recall 0.5
    ([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8], 0.5 * HALF_RECALL),
    # false positive first, then both hits: precision 2/3 at recall 1, interpolated back to recall 0
    ([[50, 50, 60, 60], [0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.8, 0.7], 2 / 3),
])
def test_hand_made_ap_values(boxes, scores, expected):
    targets = _targets([[[0, 0, 10, 10], [20, 20, 40, 40]]], [[1, 1]])
    result = detection_metrics(_predictions([boxes], [scores], [[1] * len(boxes)]), targets, num_classes=3)
    # the hits are exact, so every IoU threshold gives the same AP
    for key in ("ap", "ap50", "ap75"):
        assert result[key] == pytest.approx(100 * expected, abs=1e-4)  # torchmetrics reports float32
    assert result["ap50_per_class"] == pytest.approx([None, 100 * expected, None], abs=1e-6)


def test_per_class_ap50_matches_torchmetrics_class_metrics():
    """Reading AP50 per class off the precision table agrees with a separate class_metrics evaluation at IoU 0.5."""
    g = torch.Generator().manual_seed(3)
    targets = _targets(GT_BOXES * 4, GT_LABELS * 4)
    predictions = []
    for t in targets:
        boxes = t["boxes"].float() + torch.randint(-6, 7, t["boxes"].shape, generator=g)
        extra = torch.tensor([[30.0, 30.0, 50.0, 50.0]])
        labels = torch.cat([torch.where(torch.rand(len(boxes), generator=g) < 0.7, t["labels"], torch.randint(0, 4, (len(boxes),), generator=g)),
                            torch.tensor([5])])  # class 5 is predicted but never true -> None
        predictions.append({"boxes": torch.cat([boxes, extra]), "scores": torch.rand(len(boxes) + 1, generator=g), "labels": labels})
    ours = detection_metrics(predictions, targets, num_classes=7)["ap50_per_class"]
    reference = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=[0.5], class_metrics=True)
    reference.update(predictions, targets)
    result = reference.compute()
    expected = [None] * 7
    for label, value in zip(result["classes"].tolist(), result["map_per_class"].tolist()):
        expected[label] = None if value < 0 else 100 * value
    assert ours == pytest.approx(expected, abs=1e-4)
    assert ours[4] is None and ours[5] is None and ours[6] is None and all(v is not None for v in ours[:4])


def test_assignment_smaller_box_wins_and_orphans_take_nearest_token():
    # 4x4 grid on 64 px: stride 16, token centres at 8, 24, 40, 56
    boxes = [torch.tensor([[0, 0, 48, 48], [16, 16, 40, 40], [50, 50, 54, 54]])]
    labels = [torch.tensor([1, 2, 3])]
    cls, target = assign_targets(boxes, labels, grid=4, image_size=64, center_radius=1.0)
    expected = torch.full((4, 4), -1)
    expected[:3, :3] = 1  # the large box: centres within 16 px of (24, 24), all inside it
    expected[1, 1] = 2  # the small box claims only (24, 24) (40 is outside, half-open) and wins it
    expected[3, 3] = 3  # the tiny box holds no token centre: the nearest token to (52, 52) is (56, 56)
    assert torch.equal(cls[0].reshape(4, 4), expected)
    assert torch.equal(target[0].reshape(4, 4, 4)[1, 1], torch.tensor([16.0, 16, 40, 40]))
    assert torch.equal(target[0].reshape(4, 4, 4)[0, 2], torch.tensor([0.0, 0, 48, 48]))
    assert torch.equal(target[0].reshape(4, 4, 4)[3, 3], torch.tensor([50.0, 50, 54, 54]))
    assert torch.equal(target[0].reshape(4, 4, 4)[3, 0], torch.zeros(4))


def planted_scenes(n: int, grid: int, signal: bool, seed: int, size: int = 64, classes: int = 10, dim: int = 32, noise: float = 0.02):
    """Scenes of 1-3 squares (side 22 or 32) whose tokens carry, when ``signal``, the one-hot class
    of the smallest square over their centre and their distances to its edges (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    centres = token_centres(grid, size)
    x, y = centres[:, 0], centres[:, 1]
    planted = torch.zeros(n, grid * grid, dim)
    boxes, labels = [], []
    for i in range(n):
        k = int(torch.randint(1, 4, (1,), generator=g))
        side = torch.tensor([22, 32])[torch.randint(0, 2, (k,), generator=g)]
        x0 = (torch.rand(k, generator=g) * (size - side + 1)).long()
        y0 = (torch.rand(k, generator=g) * (size - side + 1)).long()
        b = torch.stack([x0, y0, x0 + side, y0 + side], dim=1)
        c = torch.randint(0, classes, (k,), generator=g)
        boxes.append(b)
        labels.append(c)
        for j in torch.argsort(side, descending=True, stable=True).tolist():  # smaller squares overwrite larger ones
            inside = (x >= b[j, 0]) & (x < b[j, 2]) & (y >= b[j, 1]) & (y < b[j, 3])
            feature = torch.zeros(grid * grid, dim)
            feature[:, c[j]] = 1
            feature[:, classes:classes + 4] = torch.stack([x - b[j, 0], y - b[j, 1], b[j, 2] - x, b[j, 3] - y], dim=1) / size
            planted[i, inside] = feature[inside]
    tokens = noise * torch.randn(n, grid * grid, dim, generator=g) + (planted if signal else 0)
    return tokens.reshape(n, grid, grid, dim), boxes, labels


def test_probe_finds_planted_boxes_and_not_noise():
    grid = 8
    train, test = planted_scenes(300, grid, True, seed=0), planted_scenes(100, grid, True, seed=1)
    scores = detection_probe(*train, *test, image_size=64, num_classes=10, seed=0)
    assert scores["ap50"] > 80 and scores["ap"] > 40
    assert scores["n_train"] == 300 and scores["n_test"] == 100 and scores["epochs"] == 30
    assert len(scores["ap50_per_class"]) == 10
    noise_train, noise_test = planted_scenes(300, grid, False, seed=0), planted_scenes(100, grid, False, seed=1)
    noise = detection_probe(*noise_train, *noise_test, image_size=64, num_classes=10, seed=0)
    assert noise["ap50"] < 10


def test_detections_are_clipped_and_capped():
    train = planted_scenes(64, 8, False, seed=0)
    head, mean, std = train_detection_head(*train, image_size=64, num_classes=10, epochs=1)
    predictions = detect(head, mean, std, train[0][:8], image_size=64, score_threshold=0.0, max_detections=20)
    assert len(predictions) == 8
    for p in predictions:
        assert len(p["boxes"]) == len(p["scores"]) == len(p["labels"]) == 20
        assert p["boxes"].min() >= 0 and p["boxes"].max() <= 64
        assert (p["boxes"][:, 2:] >= p["boxes"][:, :2]).all()
        assert (p["scores"][:-1] >= p["scores"][1:]).all()


def test_same_seed_same_metrics():
    train, test = planted_scenes(80, 8, True, seed=0, noise=0.05), planted_scenes(40, 8, True, seed=1, noise=0.05)
    first = detection_probe(*train, *test, image_size=64, num_classes=10, epochs=20, seed=7)
    assert first["ap50"] > 10  # a run that learns something, so the seed has something to change
    flat = (train[0].flatten(1, 2), *train[1:], test[0].flatten(1, 2), *test[1:])  # (n, G*G, D) reads as the same grid
    assert detection_probe(*flat, image_size=64, num_classes=10, epochs=20, seed=7) == first
    assert detection_probe(*train, *test, image_size=64, num_classes=10, epochs=20, seed=8) != first
