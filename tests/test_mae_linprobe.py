"""MAE's linear probe (``eval.linear_probe=mae``): LARS against its closed form, the head's shape, a
planted problem, determinism, and the eval config key."""
import math

import pytest
import torch
from torch import nn

from langmim.config import EvalConfig, load_config
from langmim.errors import ConfigError
from langmim.eval.linear import (
    MAEProbe,
    accuracy,
    classification_probe_details,
    fit_configured_probe,
    fit_mae_probe,
    mae_lars,
    mae_probe_head,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Hundreds of small steps: one thread, so a busy machine does not stretch them tenfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Tiny(nn.Module):
    def __init__(self, weight, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(weight))
        self.bias = nn.Parameter(torch.tensor(bias))


def lars_step(model, opt, grad_w, grad_b):
    model.weight.grad, model.bias.grad = torch.as_tensor(grad_w), torch.as_tensor(grad_b)
    opt.step()


def test_lars_matches_maes_closed_form():
    # ||W|| = 5, ||g|| = 1: the matrix steps by lr * 0.001 * 5 / 1 * g; the bias by plain SGD; momentum 0.9
    model = Tiny([[3.0, 0.0], [0.0, 4.0]], [1.0, -1.0])
    opt = mae_lars(model, lr=2.0)
    w0, g1 = model.weight.detach().clone(), torch.tensor([[0.6, 0.0], [0.0, 0.8]])
    lars_step(model, opt, g1, [0.5, 0.25])
    mu_w = 0.001 * 5.0 / 1.0 * g1
    assert torch.allclose(model.weight, w0 - 2.0 * mu_w, atol=0, rtol=1e-6)
    assert torch.allclose(model.weight, torch.tensor([[2.994, 0.0], [0.0, 3.992]]), rtol=1e-6)
    assert torch.allclose(model.bias, torch.tensor([1.0 - 2.0 * 0.5, -1.0 - 2.0 * 0.25]), rtol=1e-6)

    # second step: mu = 0.9 mu + ratio * g, ratio from the new weight and gradient norms
    w1, g2 = model.weight.detach().clone(), torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    lars_step(model, opt, g2, [1.0, 0.0])
    mu_w = 0.9 * mu_w + 0.001 * w1.norm() / 2.0 * g2
    mu_b = 0.9 * torch.tensor([0.5, 0.25]) + torch.tensor([1.0, 0.0])
    assert torch.allclose(model.weight, w1 - 2.0 * mu_w, rtol=1e-6)
    assert torch.allclose(model.bias, torch.tensor([0.0, -1.5]) - 2.0 * mu_b, rtol=1e-6)
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1] and all(g["weight_decay"] == 0 for g in opt.param_groups)


def test_lars_ratio_is_one_where_a_norm_is_zero():
    model = Tiny([[0.0, 0.0]], [0.0])
    opt = mae_lars(model, lr=0.5)
    lars_step(model, opt, [[1.0, 2.0]], [4.0])  # ||W|| = 0: plain SGD
    assert torch.equal(model.weight.detach(), torch.tensor([[-0.5, -1.0]]))
    assert torch.equal(model.bias.detach(), torch.tensor([-2.0]))
    before = model.weight.detach().clone()
    lars_step(model, opt, [[0.0, 0.0]], [0.0])  # ||g|| = 0: the momentum alone moves it
    assert torch.allclose(model.weight, before - 0.5 * 0.9 * torch.tensor([[1.0, 2.0]]))


def test_head_is_batchnorm_without_affine_then_linear():
    head = mae_probe_head(256, 7, torch.Generator().manual_seed(0))
    bn, linear = head
    assert isinstance(bn, nn.BatchNorm1d) and not bn.affine and bn.weight is None and bn.bias is None
    assert bn.eps == 1e-6
    assert [name for name, _ in head.named_parameters()] == ["1.weight", "1.bias"]
    assert linear.weight.std().item() == pytest.approx(0.01, rel=0.05) and torch.equal(linear.bias, torch.zeros(7))


def clusters(n, seed, classes=4, dim=16):
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(classes, dim, generator=torch.Generator().manual_seed(7))
    labels = torch.randint(0, classes, (n,), generator=g)
    return 10.0 + centres[labels] + torch.randn(n, dim, generator=g), labels  # the offset is the BatchNorm's to remove


def test_probe_learns_a_planted_problem_and_is_seeded():
    train_x, train_y = clusters(1024, 1)
    test_x, test_y = clusters(400, 2)
    # LARS moves the weights by lr * 0.001 of their norm per step, so the total movement grows with
    # blr x epochs x rows / 256: a small set needs more epochs than ImageNet's 90
    probe = fit_mae_probe(train_x, train_y, 4, epochs=600, warmup_epochs=60, batch_size=1024, seed=3)
    assert isinstance(probe, MAEProbe) and not probe.head.training
    assert probe.recipe["steps"] == 600 and probe.recipe["lr"] == pytest.approx(0.1 * 1024 / 256)
    assert accuracy(probe(test_x), test_y) >= 95.0
    again = fit_mae_probe(train_x, train_y, 4, epochs=600, warmup_epochs=60, batch_size=1024, seed=3)
    assert torch.equal(again.head[1].weight, probe.head[1].weight) and torch.equal(again(test_x), probe(test_x))
    other = fit_mae_probe(train_x, train_y, 4, epochs=600, warmup_epochs=60, batch_size=1024, seed=4)
    assert not torch.equal(other.head[1].weight, probe.head[1].weight)
    assert torch.equal(train_x, clusters(1024, 1)[0])  # the features are left as they were


def test_batches_and_schedule_follow_the_recipe():
    x, y = clusters(100, 5)
    probe = fit_mae_probe(x, y, 4, epochs=3, warmup_epochs=1, batch_size=32, blr=0.2)
    assert probe.recipe["steps"] == 3 * (100 // 32)  # the partial batch dropped, as MAE's loader does
    assert probe.recipe["lr"] == pytest.approx(0.2 * 32 / 256)
    assert fit_mae_probe(x, y, 4, epochs=1, batch_size=16384).recipe["batch_size"] == 100  # capped at the rows
    assert math.isfinite(probe.recipe["final_train_loss"])


def test_the_config_key_picks_the_probe():
    x, y = clusters(200, 6)
    cfg = load_config(None, ["eval.linear_probe=mae", "eval.mae_probe_epochs=2", "eval.mae_probe_batch_size=64"]).eval
    probe = fit_configured_probe(x, y, cfg, 4)
    details = classification_probe_details(probe)
    assert isinstance(probe, MAEProbe) and details["probe"] == "mae"
    assert (details["epochs"], details["batch_size"], details["steps"], details["blr"]) == (2, 64, 6, 0.1)
    assert classification_probe_details(fit_configured_probe(x, y, EvalConfig(), 4))["probe"] == "lbfgs"
    with pytest.raises(ConfigError, match="linear_probe"):
        load_config(None, ["eval.linear_probe=sgd"])
    with pytest.raises(ConfigError, match="mae_probe_blr"):
        load_config(None, ["eval.mae_probe_blr=0"])


def test_linear_and_shift_tasks_read_maes_probe(clip_run, tmp_path):
    import dataclasses
    import json

    from langmim.api import load
    from langmim.eval.suite import evaluate

    model = load(clip_run)
    cfg = dataclasses.replace(model.config.eval, linear_probe="mae", mae_probe_epochs=3, mae_probe_warmup_epochs=1)
    results = evaluate(model, ["linear", "shift"], cfg, tmp_path / "out", "m", log=lambda _: None)
    linear = results["linear"]
    for pool in ("mean", "cls"):
        details = linear["details"][pool]
        assert details["probe"] == "mae" and details["steps"] == 3 and details["batch_size"] == details["n_train"] == 300
        assert 0.0 <= linear["metrics"][f"{pool}_top1"] <= 100.0
    assert 0.0 <= results["shift"]["metrics"]["linear_shifted_mean"] <= 100.0
    assert results["shift"]["details"]["probe"]["steps"] == 3 and results["shift"]["split_sizes"]["probe_train"] == 300
    written = json.loads(next((tmp_path / "out").glob("*_linear_*.json")).read_text())
    assert written["details"]["mean"]["probe"] == "mae"
    lbfgs = evaluate(model, ["linear", "shift"], model.config.eval, tmp_path / "out", "m", log=lambda _: None)  # features cached
    assert lbfgs["linear"]["details"]["cls"]["probe"] == "lbfgs" and "best_weight_decay" in lbfgs["linear"]["details"]["cls"]
    assert "probe_weight_decay" in lbfgs["shift"]["details"] and lbfgs["shift"]["split_sizes"]["probe_train"] == 300
