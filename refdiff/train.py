"""A small NumPy trainer for the MLP denoiser of :mod:`refdiff.mlp` (docs/math.md §9–§10).

The objective is the "simple" loss of Ho et al. 2020 (eq. 9.2) for ε, x0 or v prediction:

    t ~ U{1..T},  ε ~ N(0, I),  x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε                 (eq. 3.2)
    L = mean over batch and data axes of (f(x_t, t) − target)²,  target from
        :func:`refdiff.losses.training_target`                               (eq. 9.1)

minimised with Adam (Kingma & Ba 2015) on minibatches, with a cosine learning-rate decay
and an optional exponential moving average (EMA) of the weights.  Gradients are written
out by hand (reverse mode through the layers of :class:`refdiff.mlp.MLP`, exactly its
forward pass); :func:`loss_and_grads` is checked against finite differences in the tests.

Everything is float64 and deterministic: the same data, config and seed give the same
bits.  NumPy only (no torch); progress is reported through a callback so that callers can
draw a progress bar without this module importing one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from ._check import as_float_array, is_real, option
from .errors import InputError, ShapeError
from .forward import q_sample
from .losses import training_target
from .mlp import MLP, init_mlp, timestep_embedding
from .schedule import Schedule

__all__ = [
    "TrainConfig",
    "TrainResult",
    "Adam",
    "forward_with_cache",
    "loss_and_grads",
    "train",
    "TRAIN_PREDICTION_TYPES",
    "bayes_floor",
]

# What the trainer fits; "score" is excluded: its target −ε/√(1−ᾱ) explodes as t → 0.
TRAIN_PREDICTION_TYPES = ("epsilon", "x0", "v")
LR_SCHEDULES = ("cosine", "constant")

# Progress callback: (step done (1-based), total steps, current minibatch loss).
Progress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train`.

    steps: number of Adam updates; batch_size: minibatch size; lr: peak learning rate;
    lr_schedule: ``"cosine"`` (linear warm-up over ``warmup`` steps, then cosine decay to
    ``lr·min_lr_ratio``) or ``"constant"``; adam_beta1/adam_beta2/adam_eps: Adam constants;
    ema_decay: 0 disables the weight average, else the decay per step (the averaged weights
    are what :func:`train` returns); hidden/depth/embed_dim: the MLP shape
    (:func:`refdiff.mlp.init_mlp`); prediction_type: ``epsilon`` | ``x0`` | ``v``; seed: the
    one seed everything (init, minibatches, t, ε) is drawn from.
    """

    steps: int = 12_000
    batch_size: int = 256
    lr: float = 2e-3
    lr_schedule: str = "cosine"
    warmup: int = 200
    min_lr_ratio: float = 0.02
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    ema_decay: float = 0.995
    hidden: int = 128
    depth: int = 3
    embed_dim: int = 32
    prediction_type: str = "epsilon"
    seed: int = 0

    def __post_init__(self) -> None:
        for nm in ("steps", "batch_size", "hidden", "depth", "embed_dim"):
            v = getattr(self, nm)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(nm, f"must be a positive int; got {v!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise InputError("warmup", f"must be an int >= 0; got {self.warmup!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError("seed", f"must be an int >= 0; got {self.seed!r}")
        for nm, lo, hi in (
            ("lr", 0.0, math.inf),
            ("adam_beta1", -1e-300, 1.0),
            ("adam_beta2", -1e-300, 1.0),
            ("adam_eps", 0.0, math.inf),
        ):
            v = getattr(self, nm)
            if not (is_real(v) and math.isfinite(v) and lo < v < hi):
                raise InputError(nm, f"must be a finite float in ({max(lo, 0)}, {hi}); got {v!r}")
        if not (is_real(self.ema_decay) and 0.0 <= self.ema_decay < 1.0):
            raise InputError("ema_decay", f"must be in [0, 1); got {self.ema_decay!r}")
        if not (is_real(self.min_lr_ratio) and 0.0 <= self.min_lr_ratio <= 1.0):
            raise InputError("min_lr_ratio", f"must be in [0, 1]; got {self.min_lr_ratio!r}")
        option(self.lr_schedule, "lr_schedule", LR_SCHEDULES)
        option(self.prediction_type, "prediction_type", TRAIN_PREDICTION_TYPES)
        if self.embed_dim % 2:
            raise InputError("embed_dim", f"must be even; got {self.embed_dim}")

    def learning_rate(self, step: int) -> float:
        """The learning rate used by update number ``step`` (0-based)."""
        if self.lr_schedule == "constant":
            return float(self.lr)
        if step < self.warmup:
            return float(self.lr) * (step + 1) / self.warmup
        span = max(self.steps - self.warmup, 1)
        u = min((step - self.warmup) / span, 1.0)
        lo = self.lr * self.min_lr_ratio
        return float(lo + (self.lr - lo) * 0.5 * (1.0 + math.cos(math.pi * u)))


@dataclass(frozen=True, eq=False)
class TrainResult:
    """What :func:`train` returns.

    mlp: the trained weights (the EMA average when ``ema_decay > 0``); raw_mlp: the last
    Adam iterate; losses: (steps,) float64 minibatch losses; config: the
    :class:`TrainConfig`; wall_s: seconds spent; schedule_name: the training schedule.
    """

    mlp: MLP
    raw_mlp: MLP
    losses: np.ndarray
    config: TrainConfig
    wall_s: float
    schedule_name: str = field(default="")

    def summary(self) -> dict:
        """JSON-ready summary: config, first/last losses (mean of 1 % windows), wall time."""
        n = max(1, len(self.losses) // 100)
        return {
            "config": asdict(self.config),
            "loss_first": float(np.mean(self.losses[:n])),
            "loss_last": float(np.mean(self.losses[-n:])),
            "wall_s": float(self.wall_s),
            "schedule": self.schedule_name,
        }


def _silu_and_grad(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """silu(z) = z·σ(z) (computed as :mod:`refdiff.mlp` does, bit for bit) and its derivative
    σ(z)·(1 + z·(1 − σ(z)))."""
    d = 1.0 + np.exp(-z)
    s = 1.0 / d
    return z / d, s * (1.0 + z * (1.0 - s))


def forward_with_cache(mlp: MLP, x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, list]:
    """:meth:`MLP.__call__` keeping what the backward pass needs.

    x: float64 (B, D); t: (B,) base times.  Returns (out (B, out_dim), cache) where cache is
    a list of (layer input h_{i−1}, silu'(z_i) or None for the last layer).
    """
    h = np.concatenate([x, timestep_embedding(t, mlp.embed_dim, mlp.max_period)], axis=1)
    cache = []
    last = len(mlp.layers) - 1
    for i, (W, b) in enumerate(mlp.layers):
        z = h @ W + b
        if i < last:
            a, da = _silu_and_grad(z)
            cache.append((h, da))
            h = a
        else:
            cache.append((h, None))
            h = z
    return h, cache


def loss_and_grads(
    mlp: MLP, x: np.ndarray, t: np.ndarray, target: np.ndarray
) -> tuple[float, list[tuple[np.ndarray, np.ndarray]]]:
    """The mean squared error mean((f(x, t) − target)²) and its gradient per layer.

    x, target: float64 (B, D); t: (B,).  Returns (loss, [(dL/dW_i, dL/db_i), …]) in layer
    order, each shaped like the weight.  Reverse mode: δ_L = 2(out − target)/(B·D);
    dW_i = h_{i−1}ᵀ δ_i, db_i = Σ_B δ_i, δ_{i−1} = (δ_i W_iᵀ) ⊙ silu'(z_{i−1}).
    """
    out, cache = forward_with_cache(mlp, x, t)
    diff = out - target
    loss = float(np.mean(diff * diff))
    delta = (2.0 / diff.size) * diff
    grads: list[tuple[np.ndarray, np.ndarray]] = [None] * len(mlp.layers)  # type: ignore[list-item]
    for i in range(len(mlp.layers) - 1, -1, -1):
        h_in, _ = cache[i]
        grads[i] = (h_in.T @ delta, delta.sum(axis=0))
        if i > 0:
            delta = (delta @ mlp.layers[i][0].T) * cache[i - 1][1]
    return loss, grads


class Adam:
    """Adam (Kingma & Ba 2015, Algorithm 1) over a list of arrays, updated in place.

    m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  p ← p − lr · m̂ / (√v̂ + ε),
    m̂ = m/(1−β₁ᵏ), v̂ = v/(1−β₂ᵏ), k = the update count (1-based).
    """

    def __init__(
        self, params: list[np.ndarray], beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8
    ):
        self.params = params
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.k = 0

    def step(self, grads: list[np.ndarray], lr: float) -> None:
        if len(grads) != len(self.params):
            raise ShapeError("grads", f"{len(grads)} gradients for {len(self.params)} parameters")
        self.k += 1
        b1, b2 = self.beta1, self.beta2
        c1, c2 = 1.0 - b1**self.k, 1.0 - b2**self.k
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * (g * g)
            p -= lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


def _as_mlp(params: list[np.ndarray], like: MLP) -> MLP:
    layers = tuple(
        (params[2 * i].copy(), params[2 * i + 1].copy()) for i in range(len(like.layers))
    )
    return MLP(layers, like.embed_dim, like.max_period)


def train(
    data,
    schedule: Schedule,
    config: TrainConfig | None = None,
    *,
    progress: Progress | None = None,
    init: MLP | None = None,
) -> TrainResult:
    """Fit an MLP denoiser to ``data`` under ``schedule`` with Adam on minibatches.

    data: float (N, D) training set (minibatches are drawn without replacement, a fresh
    permutation per epoch; N ≥ batch_size) or a callable ``sample(rng, n) -> (n, D)`` that
    draws fresh data each step.  schedule: the *training* schedule (not respaced); the
    model is called with base times t ∈ [1, T].  init: start weights (default
    :func:`refdiff.mlp.init_mlp` from the seed).  Returns a :class:`TrainResult`.

    The random stream is one ``numpy.random.default_rng(config.seed)``, used in a fixed
    order (init, then per step: minibatch, t, ε), so results are reproducible bit for bit.
    """
    cfg = TrainConfig() if config is None else config
    if not isinstance(cfg, TrainConfig):
        raise InputError("config", f"must be a TrainConfig; got {type(cfg).__name__}")
    if not isinstance(schedule, Schedule):
        raise InputError("schedule", f"must be a Schedule; got {type(schedule).__name__}")
    if schedule.is_respaced:
        raise InputError("schedule", "train on the base schedule; respace it for sampling")
    rng = np.random.default_rng(cfg.seed)
    if callable(data):
        sampler = data
        D = np.asarray(sampler(np.random.default_rng(cfg.seed), 1)).shape[-1]
        X = None
    else:
        X = as_float_array(data, "data")
        if X.ndim != 2 or X.shape[0] < cfg.batch_size:
            raise ShapeError(
                "data", f"needs shape (N >= batch_size={cfg.batch_size}, D); got {X.shape}"
            )
        D = X.shape[1]
    if init is None:
        mlp = init_mlp(rng, data_dim=D, hidden=cfg.hidden, depth=cfg.depth, embed_dim=cfg.embed_dim)
    else:
        if not isinstance(init, MLP) or init.data_dim != D or init.out_dim != D:
            raise InputError("init", f"must be an MLP mapping {D} → {D} dimensions")
        mlp = init
    # ``params`` is what Adam updates in place; ``mlp``'s layers alias it (no copy of init).
    params = [a.copy() for W, b in mlp.layers for a in (W, b)]
    pairs = tuple((params[2 * i], params[2 * i + 1]) for i in range(len(mlp.layers)))
    mlp = MLP(pairs, mlp.embed_dim, mlp.max_period)
    ema = [p.copy() for p in params] if cfg.ema_decay > 0 else None
    opt = Adam(params, cfg.adam_beta1, cfg.adam_beta2, cfg.adam_eps)
    losses = np.empty(cfg.steps)
    B, T = cfg.batch_size, schedule.T
    perm, pos = None, 0
    start = time.perf_counter()
    for step in range(cfg.steps):
        if X is None:
            x0 = as_float_array(sampler(rng, B), "data(rng, n)")
            if x0.shape != (B, D):
                raise ShapeError(
                    "data", f"sample(rng, {B}) returned shape {x0.shape}, not {(B, D)}"
                )
        else:
            if perm is None or pos + B > X.shape[0]:
                perm, pos = rng.permutation(X.shape[0]), 0
            x0 = X[perm[pos : pos + B]]
            pos += B
        t = rng.integers(1, T + 1, size=B)
        eps = rng.standard_normal(x0.shape)
        xt = q_sample(schedule, x0, t, noise=eps)
        target = training_target(schedule, x0, t, eps, cfg.prediction_type)
        loss, grads = loss_and_grads(mlp, xt, schedule.timesteps[t], target)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training diverged at step {step} (loss {loss}); lower lr")
        opt.step([g for pair in grads for g in pair], cfg.learning_rate(step))
        if ema is not None:
            d = cfg.ema_decay
            for e, p in zip(ema, params):
                e *= d
                e += (1.0 - d) * p
        losses[step] = loss
        if progress is not None:
            progress(step + 1, cfg.steps, loss)
    wall = time.perf_counter() - start
    raw = _as_mlp(params, mlp)
    final = _as_mlp(ema, mlp) if ema is not None else raw
    return TrainResult(final, raw, losses, cfg, wall, schedule.name)


def bayes_floor(
    law, schedule: Schedule, prediction_type: str = "epsilon", *, n: int = 20_000, seed: int = 0
) -> tuple[float, float]:
    """The smallest expected training loss any denoiser can reach, and its Monte Carlo
    standard error: E_t E ‖target − E[target | x_t]‖² / D, with t ~ U{1..T}, x_0 ~ ``law``,
    ε ~ N(0, I) as :func:`train` draws them, and E[target | x_t] the exact denoiser of
    ``law`` (:func:`refdiff.exact.denoiser`; docs/math.md (9.1), (5.1)–(5.5)).  ``law`` is a
    :class:`refdiff.exact.GaussianMixture` or Gaussian; ``n`` draws from ``default_rng(seed)``.
    Returns (floor, standard error), floats."""
    from .exact import denoiser

    option(prediction_type, "prediction_type", TRAIN_PREDICTION_TYPES)
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
        raise InputError("n", f"must be an int >= 2; got {n!r}")
    rng = np.random.default_rng(seed)
    x0 = np.asarray(law.sample(rng, int(n)), dtype=np.float64).reshape(int(n), -1)
    t = rng.integers(1, schedule.T + 1, size=int(n))
    eps = rng.standard_normal(x0.shape)
    xt = q_sample(schedule, x0, t, noise=eps)
    target = training_target(schedule, x0, t, eps, prediction_type)
    f = denoiser(law, schedule, prediction_type)
    per = np.mean((target - f(xt, schedule.timesteps[t])) ** 2, axis=1)
    return float(per.mean()), float(per.std(ddof=1) / math.sqrt(per.size))
