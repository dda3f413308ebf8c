"""The NumPy trainer (refdiff.train): hand-written backprop, Adam, the objectives, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refdiff import train as TR
from refdiff.errors import InputError, OptionError, ShapeError
from refdiff.mlp import MLP, init_mlp
from refdiff.schedule import linear, respace


def _small_mlp(seed: int = 0, depth: int = 2) -> MLP:
    # biases non-zero so that their gradients are exercised away from the init
    m = init_mlp(np.random.default_rng(seed), data_dim=2, hidden=5, depth=depth, embed_dim=4)
    rng = np.random.default_rng(seed + 100)
    return MLP(tuple((W, rng.normal(0, 0.3, b.shape)) for W, b in m.layers), 4, m.max_period)


def _loss(mlp: MLP, x, t, target) -> float:
    return float(np.mean((mlp(x, t) - target) ** 2))


@pytest.mark.parametrize("depth", [1, 3])
def test_gradients_match_central_differences(depth):
    mlp = _small_mlp(depth=depth)
    rng = np.random.default_rng(1)
    x, t, target = rng.normal(size=(7, 2)), rng.integers(1, 50, 7), rng.normal(size=(7, 2))
    loss, grads = TR.loss_and_grads(mlp, x, t, target)
    assert loss == pytest.approx(_loss(mlp, x, t, target), rel=1e-13)
    h = 1e-6
    for li, (W, b) in enumerate(mlp.layers):
        for arr, g in ((W, grads[li][0]), (b, grads[li][1])):
            assert g.shape == arr.shape
            num = np.empty_like(arr)
            for idx in np.ndindex(arr.shape):
                old = arr[idx]
                arr[idx] = old + h
                up = _loss(mlp, x, t, target)
                arr[idx] = old - h
                down = _loss(mlp, x, t, target)
                arr[idx] = old
                num[idx] = (up - down) / (2 * h)
            np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-9)


def test_forward_with_cache_is_the_mlp_forward_pass():
    mlp = _small_mlp()
    rng = np.random.default_rng(2)
    x, t = rng.normal(size=(5, 2)), rng.integers(1, 1000, 5)
    out, cache = TR.forward_with_cache(mlp, x, t)
    np.testing.assert_array_equal(out, mlp(x, t))
    assert len(cache) == len(mlp.layers) and cache[-1][1] is None


def test_adam_matches_algorithm_1_by_hand():
    p = np.array([1.0, -2.0])
    opt = TR.Adam([p], beta1=0.9, beta2=0.99, eps=1e-8)
    g1, g2 = np.array([0.5, -1.0]), np.array([0.1, 0.2])
    opt.step([g1], lr=0.1)
    # k=1: m̂ = g, v̂ = g², step = lr·g/(|g| + ε) = 0.1·sign(g) (up to ε)
    np.testing.assert_allclose(p, [1.0 - 0.1, -2.0 + 0.1], rtol=1e-7)
    opt.step([g2], lr=0.1)
    m = 0.9 * (0.1 * g1) + 0.1 * g2
    v = 0.99 * (0.01 * g1**2) + 0.01 * g2**2
    step = 0.1 * (m / (1 - 0.9**2)) / (np.sqrt(v / (1 - 0.99**2)) + 1e-8)
    p1 = np.array([1.0, -2.0]) - 0.1 * g1 / (np.abs(g1) + 1e-8)
    np.testing.assert_allclose(p, p1 - step, rtol=1e-12)
    with pytest.raises(ShapeError):
        opt.step([g1, g2], lr=0.1)


def test_learning_rate_schedule():
    c = TR.TrainConfig(steps=1000, warmup=100, lr=1e-2, min_lr_ratio=0.1)
    assert c.learning_rate(0) == pytest.approx(1e-4)  # (0 + 1)/100 of the peak
    assert c.learning_rate(99) == pytest.approx(1e-2)
    assert c.learning_rate(100) == pytest.approx(1e-2)
    mid = 100 + 450  # half way through the decay: (peak + floor)/2
    assert c.learning_rate(mid) == pytest.approx(0.5 * (1e-2 + 1e-3))
    assert c.learning_rate(1000) == pytest.approx(1e-3)
    assert TR.TrainConfig(lr_schedule="constant", lr=3e-3).learning_rate(5) == 3e-3


# -- the objectives: on a one-point data law the optimum is known in closed form ----------------
C = np.array([0.5, -0.3])


def _point(rng, n):
    return np.tile(C, (n, 1))


@pytest.mark.parametrize("ptype", ["epsilon", "x0", "v"])
def test_each_objective_learns_its_closed_form_optimum(ptype):
    """Data x_0 = c (a Dirac): E[x_0|x_t] = c, so the optimal outputs are x0: c,
    ε: (x_t − √ᾱ c)/√(1−ᾱ), v: √ᾱ ε − √(1−ᾱ) c.  A wrong target (e.g. ε for x0, or a
    sign error in v) would converge to something else."""
    sched = linear(100, 1e-3, 0.05)
    cfg = TR.TrainConfig(
        steps=1500, batch_size=128, lr=3e-3, warmup=50, hidden=32, depth=2, embed_dim=8,
        prediction_type=ptype, seed=3,
    )  # fmt: skip
    res = TR.train(_point, sched, cfg)
    rng = np.random.default_rng(9)
    t = rng.integers(10, 90, 256)  # away from the ends, where ε / x0 are ill-conditioned
    ab = sched.alpha_bar[t][:, None]
    eps = rng.standard_normal((256, 2))
    xt = np.sqrt(ab) * C + np.sqrt(1 - ab) * eps
    want = {"x0": np.broadcast_to(C, xt.shape), "epsilon": eps}
    want["v"] = np.sqrt(ab) * eps - np.sqrt(1 - ab) * C
    err = np.sqrt(np.mean((res.mlp(xt, t) - want[ptype]) ** 2))
    # measured: 0.08 (ε), 0.013 (x0), 0.08 (v); a model trained on one of the other two
    # targets is ≥ 0.47 away from this optimum
    assert err < 0.2, err
    assert res.losses.shape == (1500,) and np.isfinite(res.losses).all()


def test_training_lowers_the_loss_and_is_deterministic():
    sched = linear(50)
    X = np.random.default_rng(4).normal(size=(600, 2)) * 0.3 + 1.0
    cfg = TR.TrainConfig(steps=150, batch_size=64, hidden=16, depth=2, embed_dim=8, seed=1)
    a = TR.train(X, sched, cfg)
    b = TR.train(X, sched, cfg)
    for (Wa, ba), (Wb, bb) in zip(a.mlp.layers, b.mlp.layers):
        np.testing.assert_array_equal(Wa, Wb)
        np.testing.assert_array_equal(ba, bb)
    np.testing.assert_array_equal(a.losses, b.losses)
    assert a.losses[-30:].mean() < 0.8 * a.losses[:30].mean()
    c = TR.train(X, sched, TR.TrainConfig(**{**cfg.__dict__, "seed": 2}))
    assert not np.array_equal(c.losses, a.losses)
    s = a.summary()
    assert s["loss_last"] < s["loss_first"] and s["config"]["seed"] == 1 and s["wall_s"] > 0


def test_ema_off_returns_the_last_iterate_and_init_is_not_modified():
    sched = linear(20)
    X = np.random.default_rng(5).normal(size=(64, 2))
    init = init_mlp(np.random.default_rng(0), data_dim=2, hidden=8, depth=1, embed_dim=4)
    before = [W.copy() for W, _ in init.layers]
    cfg = TR.TrainConfig(steps=20, batch_size=32, hidden=8, depth=1, embed_dim=4, ema_decay=0.0)
    res = TR.train(X, sched, cfg, init=init)
    assert res.mlp is res.raw_mlp
    for W, w0 in zip((W for W, _ in init.layers), before):
        np.testing.assert_array_equal(W, w0)
    assert not np.array_equal(res.mlp.layers[0][0], before[0])
    ema = TR.train(X, sched, TR.TrainConfig(**{**cfg.__dict__, "ema_decay": 0.9}), init=init)
    assert not np.array_equal(ema.mlp.layers[0][0], ema.raw_mlp.layers[0][0])


def test_progress_callback_sees_every_step():
    seen = []
    TR.train(
        np.zeros((40, 2)) + 1.0,
        linear(10),
        TR.TrainConfig(steps=7, batch_size=8, hidden=4, depth=1, embed_dim=2),
        progress=lambda k, n, loss: seen.append((k, n, math.isfinite(loss))),
    )
    assert seen == [(k, 7, True) for k in range(1, 8)]


@pytest.mark.parametrize(
    "kw, arg",
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"adam_beta2": 1.0}, "adam_beta2"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"embed_dim": 3}, "embed_dim"),
        ({"seed": -1}, "seed"),
        ({"warmup": -5}, "warmup"),
    ],
)
def test_config_errors_name_the_argument(kw, arg):
    with pytest.raises(InputError) as e:
        TR.TrainConfig(**kw)
    assert e.value.argument == arg


def test_bad_inputs_are_typed_errors():
    with pytest.raises(OptionError) as e:
        TR.TrainConfig(prediction_type="score")
    assert e.value.argument == "prediction_type"
    with pytest.raises(OptionError):
        TR.TrainConfig(lr_schedule="step")
    s = linear(100)
    cfg = TR.TrainConfig(steps=2, batch_size=16, hidden=4, depth=1, embed_dim=2)
    with pytest.raises(InputError) as e:
        TR.train(np.zeros((32, 2)), respace(s, [10, 50, 100]), cfg)
    assert e.value.argument == "schedule"
    with pytest.raises(ShapeError) as e:
        TR.train(np.zeros((8, 2)), s, cfg)  # fewer points than a batch
    assert e.value.argument == "data"
    with pytest.raises(ShapeError):
        TR.train(lambda rng, n: np.zeros((n + 1, 2)), s, cfg)
    with pytest.raises(InputError) as e:
        TR.train(np.zeros((32, 2)), s, cfg, init=init_mlp(np.random.default_rng(0), data_dim=3))
    assert e.value.argument == "init"
    with pytest.raises(InputError) as e:
        TR.train(np.zeros((32, 2)), s, "fast")
    assert e.value.argument == "config"
