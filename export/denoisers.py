"""ONNX denoisers: the exact Gaussian-mixture denoiser and the MLP of :mod:`refdiff.mlp`.

Both take ``x`` (B, D) float and ``t`` (B,) int64 — base (training) times, refdiff's 1-based
convention — and return ``out`` (B, D) of the same float type, meaning ε̂, x̂_0, v̂ or the
score as ``prediction_type`` says (recorded in the metadata).

Exact mixture denoiser (docs/math.md §9).  For data x_0 ~ Σ_k w_k N(μ_k, Σ_k) and
x_t = √ᾱ x_0 + √(1−ᾱ) ε:

    x_t | k ~ N(√ᾱ μ_k, Γ_k),  Γ_k = ᾱ Σ_k + (1−ᾱ) I
    r_k(x_t) = w_k N(x_t; √ᾱ μ_k, Γ_k) / Σ_j w_j N(x_t; √ᾱ μ_j, Γ_j)
    E[x_0 | x_t] = Σ_k r_k [μ_k + √ᾱ Σ_k Γ_k⁻¹ (x_t − √ᾱ μ_k)]
    E[ε | x_t]   = Σ_k r_k √(1−ᾱ) Γ_k⁻¹ (x_t − √ᾱ μ_k)

With Σ_k = U_k diag(λ_k) U_kᵀ (eigendecomposition on the host, float64), Γ_k⁻¹ = U_k
diag(1/(ᾱλ_k + 1 − ᾱ)) U_kᵀ, so the graph needs no matrix inverse: two batched MatMuls by
U_k, elementwise arithmetic and a Softmax over k.  ε̂ is computed from its own formula (not as
(x_t − √ᾱ x̂_0)/√(1−ᾱ)), which stays accurate at small t.  The graph computes in float32
(also in the float16 variant, which casts at its inputs and outputs).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from refdiff._check import integer
from refdiff.errors import InputError, OptionError, ShapeError
from refdiff.mlp import MLP, timestep_embedding
from refdiff.parameterization import PREDICTION_TYPES
from refdiff.schedule import Schedule

from ._graph import GraphBuilder, finish_model, tensor_info
from .metadata import base_metadata

__all__ = ["DTYPES", "mixture_parts", "mixture_denoiser_model", "mlp_denoiser_model"]

DTYPES = ("float32", "float16")


def _dtype(dtype: object) -> np.dtype:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise OptionError("dtype", name, list(DTYPES))
    return np.dtype(name)


def _batch_dim(batch: int | None):
    if batch is None:
        return "B"
    return integer(batch, "batch", low=1)


def mixture_parts(mixture: object) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(weights (K,), means (K, D), eigenvalues (K, D), eigenvectors (K, D, D)), float64.

    ``mixture`` is a :class:`refdiff.exact.GaussianMixture` or anything with ``weights``,
    ``means``, ``covs`` (attributes or mapping keys).  Weights are normalised to sum 1;
    covariances must be symmetric positive semi-definite.
    """

    def get(name):
        if isinstance(mixture, Mapping):
            if name not in mixture:
                raise InputError("mixture", f"has no {name!r}")
            return mixture[name]
        if not hasattr(mixture, name):
            raise InputError(
                "mixture",
                f"needs weights, means and covs; {type(mixture).__name__} has no {name!r}",
            )
        return getattr(mixture, name)

    w = np.asarray(get("weights"), dtype=np.float64)
    mu = np.asarray(get("means"), dtype=np.float64)
    cov = np.asarray(get("covs"), dtype=np.float64)
    if (
        w.ndim != 1
        or mu.ndim != 2
        or cov.ndim != 3
        or not (w.shape[0] == mu.shape[0] == cov.shape[0])
    ):
        raise ShapeError(
            "mixture",
            f"weights (K,), means (K, D), covs (K, D, D); got {w.shape}, {mu.shape}, {cov.shape}",
        )
    if cov.shape[1:] != (mu.shape[1], mu.shape[1]):
        raise ShapeError(
            "mixture", f"covs must be (K, D, D) with D = {mu.shape[1]}; got {cov.shape}"
        )
    for nm, a in (("weights", w), ("means", mu), ("covs", cov)):
        if not np.isfinite(a).all():
            raise InputError("mixture", f"{nm} has NaN or Inf")
    if np.any(w <= 0):
        raise InputError("mixture", "weights must be > 0")
    if not np.allclose(cov, np.swapaxes(cov, 1, 2), rtol=1e-10, atol=1e-12):
        raise InputError("mixture", "covariances must be symmetric")
    lam, U = np.linalg.eigh(cov)
    scale = np.maximum(np.abs(lam).max(axis=1, keepdims=True), 1e-300)
    if np.any(lam < -1e-10 * scale):
        raise InputError("mixture", "covariances must be positive semi-definite")
    return w / w.sum(), mu, np.maximum(lam, 0.0), U


def _prediction(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise OptionError("prediction_type", prediction_type, list(PREDICTION_TYPES))
    return prediction_type


def _denoiser_io(dtype: np.dtype, D: int, batch) -> tuple[list, list]:
    ins = [tensor_info("x", dtype, [batch, D]), tensor_info("t", np.int64, [batch])]
    outs = [tensor_info("out", dtype, [batch, D])]
    return ins, outs


def _io_meaning(prediction_type: str) -> tuple[dict, dict]:
    return (
        {
            "x": "noisy state x_t, (B, D)",
            "t": "base (training) time, int64 (B,), 1-based: t = 1..T (refdiff convention)",
        },
        {"out": f"the denoiser's prediction ({prediction_type}), (B, D)"},
    )


def emit_mixture(
    b: GraphBuilder, x: str, t: str, mixture: object, schedule: Schedule, prediction_type: str
) -> str:
    """Nodes of the exact mixture denoiser on float32 ``x`` (B, D) and int64 ``t`` (B,)."""
    w, mu, lam, U = mixture_parts(mixture)
    K, D = mu.shape
    ab = schedule.alpha_bar.astype(np.float64)
    f32 = np.float32
    # per-time tables, indexed by the base time t (float64 maths, one rounding to float32)
    ab_t = b.gather(b.const(ab, f32, "alpha_bar"), t)
    om_t = b.gather(b.const(1.0 - ab, f32, "one_minus_alpha_bar"), t)
    sa_t = b.gather(b.const(np.sqrt(ab), f32, "sqrt_alpha_bar"), t)
    s1_t = b.gather(b.const(np.sqrt(1.0 - ab), f32, "sqrt_one_minus_alpha_bar"), t)
    ax02 = b.const(np.array([0, 2], np.int64), hint="axes")
    ab3, om3, sa3, s13 = (b.op("Unsqueeze", v, ax02) for v in (ab_t, om_t, sa_t, s1_t))  # (1, B, 1)
    mu3 = b.const(mu[:, None, :], f32, "means")  # (K, 1, D)
    lam3 = b.const(lam[:, None, :], f32, "eigenvalues")  # (K, 1, D)
    Um = b.const(U, f32, "eigenvectors")  # (K, D, D)
    Ut = b.const(np.swapaxes(U, 1, 2), f32, "eigenvectors_t")
    xk = b.op("Unsqueeze", x, b.const(np.array([0], np.int64), hint="axes"))  # (1, B, D)
    diff = b.op("Sub", xk, b.op("Mul", sa3, mu3))  # (K, B, D): x_t − √ᾱ μ_k
    y = b.op("MatMul", diff, Um)  # eigenbasis coordinates
    denom = b.op("Add", b.op("Mul", ab3, lam3), om3)  # ᾱλ + 1 − ᾱ
    yi = b.op("Div", y, denom)
    ax2 = b.const(np.array([2], np.int64), hint="axes")
    maha = b.op("ReduceSum", b.op("Mul", y, yi), ax2, keepdims=0)  # (K, B)
    logdet = b.op("ReduceSum", b.op("Log", denom), ax2, keepdims=0)
    half = b.const(np.float32(0.5))
    logit = b.op(
        "Sub",
        b.const(np.log(w)[:, None], f32, "log_weights"),
        b.op("Mul", half, b.op("Add", maha, logdet)),
    )
    r = b.op("Unsqueeze", b.op("Softmax", logit, axis=0), ax2)  # (K, B, 1)
    ax0 = b.const(np.array([0], np.int64), hint="axes")
    x0k = b.op("Add", mu3, b.op("Mul", sa3, b.op("MatMul", b.op("Mul", yi, lam3), Ut)))
    epsk = b.op("Mul", s13, b.op("MatMul", yi, Ut))
    x0 = b.op("ReduceSum", b.op("Mul", r, x0k), ax0, keepdims=0)  # (B, D)
    eps = b.op("ReduceSum", b.op("Mul", r, epsk), ax0, keepdims=0)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "x0":
        return x0
    ax1 = b.const(np.array([1], np.int64), hint="axes")
    s1c = b.op("Unsqueeze", s1_t, ax1)  # (B, 1)
    if prediction_type == "score":
        return b.op("Neg", b.op("Div", eps, s1c))
    sac = b.op("Unsqueeze", sa_t, ax1)
    return b.op("Sub", b.op("Mul", sac, eps), b.op("Mul", s1c, x0))  # v


def mixture_denoiser_model(
    mixture: object,
    schedule: Schedule,
    *,
    prediction_type: str = "epsilon",
    dtype: str = "float32",
    batch: int | None = None,
):
    """The exact denoiser of a Gaussian mixture as an ONNX model (see module docstring).

    Args:
        mixture: a :class:`refdiff.exact.GaussianMixture` (or anything with ``weights`` (K,),
            ``means`` (K, D), ``covs`` (K, D, D))
        schedule: the base (training) schedule; the graph holds its ᾱ table, so ``t`` must
            lie in [1, schedule.T]
        prediction_type: ``epsilon`` | ``x0`` | ``v`` | ``score``
        dtype: ``float32`` or ``float16`` (I/O type; computes in float32 either way)
        batch: None for a dynamic batch axis, or a fixed size
    Returns: ``onnx.ModelProto`` (IR 10, opset 21), inputs ``x`` (B, D), ``t`` (B,) int64,
        output ``out`` (B, D).
    """
    if not isinstance(schedule, Schedule):
        raise InputError("schedule", f"must be a Schedule; got {type(schedule).__name__}")
    dt, pt, bd = _dtype(dtype), _prediction(prediction_type), _batch_dim(batch)
    w, mu, _, _ = mixture_parts(mixture)
    D = mu.shape[1]
    b = GraphBuilder()
    x = b.cast("x", np.float32) if dt != np.float32 else "x"
    out = emit_mixture(b, x, "t", mixture, schedule, pt)
    b.op("Cast", out, outputs=["out"], to=_onnx(dt)) if dt != np.float32 else b.op(
        "Identity", out, outputs=["out"]
    )
    ins, outs = _denoiser_io(dt, D, bd)
    im, om = _io_meaning(pt)
    meta = base_metadata(
        "denoiser",
        prediction_type=pt,
        timestep_convention="refdiff",
        schedule=schedule,
        dtype=dt.name,
        inputs=im,
        outputs=om,
        denoiser={
            "type": "gaussian_mixture",
            "K": int(w.shape[0]),
            "D": int(D),
            "weights": [float(v) for v in w],
            "means": np.asarray(mu, dtype=np.float64).tolist(),
            "covs": np.asarray(_covs(mixture), dtype=np.float64).tolist(),
        },
    )
    return finish_model(
        b.graph("refdiff_mixture_denoiser", ins, outs), meta, doc=__doc__.split("\n\n")[1]
    )


def _covs(mixture):
    return mixture["covs"] if isinstance(mixture, Mapping) else mixture.covs


def _onnx(dt):
    from ._graph import onnx_dtype

    return onnx_dtype(dt)


def emit_mlp(
    b: GraphBuilder, x: str, t: str, mlp: MLP, dtype: np.dtype, max_time: int | None
) -> str:
    """Nodes of :class:`refdiff.mlp.MLP` on ``x`` (B, D) of ``dtype`` and int64 ``t`` (B,)."""
    if max_time is not None:
        # exact table: embedding of every integer time, computed in float64, rounded once
        table = timestep_embedding(np.arange(max_time + 1), mlp.embed_dim, mlp.max_period)
        emb = b.gather(b.const(table, dtype, "time_embedding"), t)
    else:
        half = mlp.embed_dim // 2
        freqs = np.exp(-np.log(mlp.max_period) * np.arange(half, dtype=np.float64) / half)
        tf = b.op("Unsqueeze", b.cast(t, np.float32), b.const(np.array([1], np.int64), hint="axes"))
        args = b.op("Mul", tf, b.const(freqs[None, :], np.float32, "freqs"))
        emb = b.op("Concat", b.op("Cos", args), b.op("Sin", args), axis=1)
        if dtype != np.float32:
            emb = b.cast(emb, dtype)
    h = b.op("Concat", x, emb, axis=1)
    n = len(mlp.layers)
    for i, (W, bias) in enumerate(mlp.layers):
        h = b.op(
            "Add", b.op("MatMul", h, b.const(W, dtype, f"W{i}")), b.const(bias, dtype, f"b{i}")
        )
        if i < n - 1:
            h = b.op("Mul", h, b.op("Sigmoid", h))  # SiLU(u) = u · sigmoid(u)
    return h


def mlp_denoiser_model(
    mlp: MLP,
    *,
    prediction_type: str = "epsilon",
    dtype: str = "float32",
    max_time: int | None | str = "auto",
    schedule: Schedule | None = None,
    batch: int | None = None,
):
    """The MLP denoiser of :mod:`refdiff.mlp` as an ONNX model (weights cast to ``dtype``).

    Args:
        mlp: weights (:func:`refdiff.mlp.load_mlp` / :func:`~refdiff.mlp.init_mlp`)
        prediction_type: what the network was trained to output (recorded in the metadata)
        dtype: ``float32`` or ``float16`` (weights, activations and I/O)
        max_time: the largest base time; the sinusoidal embedding of every t in
            [0, max_time] is tabulated in float64 and gathered (exact to one rounding).
            ``"auto"``: the schedule's last base time when a schedule is given, else 1000.
            ``None`` computes the embedding in-graph with Sin/Cos in float32 (phase error
            ~ t·6e-8).
        schedule: the base schedule the network was trained on (metadata only)
        batch: None for a dynamic batch axis, or a fixed size
    Returns: ``onnx.ModelProto``; inputs ``x`` (B, D), ``t`` (B,) int64, output ``out``.
    """
    if not isinstance(mlp, MLP):
        raise InputError("mlp", f"must be a refdiff.mlp.MLP; got {type(mlp).__name__}")
    if mlp.out_dim != mlp.data_dim:
        raise ShapeError(
            "mlp",
            f"out_dim {mlp.out_dim} != data_dim {mlp.data_dim} "
            "(learned variances are not exported)",
        )
    dt, pt, bd = _dtype(dtype), _prediction(prediction_type), _batch_dim(batch)
    if schedule is not None and not isinstance(schedule, Schedule):
        raise InputError("schedule", f"must be a Schedule; got {type(schedule).__name__}")
    if isinstance(max_time, str) and max_time == "auto":
        max_time = int(schedule.timesteps[-1]) if schedule is not None else 1000
    if max_time is not None:
        max_time = integer(max_time, "max_time", low=1)
    b = GraphBuilder()
    out = emit_mlp(b, "x", "t", mlp, dt, max_time)
    b.op("Identity", out, outputs=["out"])
    ins, outs = _denoiser_io(dt, mlp.data_dim, bd)
    im, om = _io_meaning(pt)
    meta = base_metadata(
        "denoiser",
        prediction_type=pt,
        timestep_convention="refdiff",
        schedule=schedule,
        dtype=dt.name,
        inputs=im,
        outputs=om,
        denoiser={
            "type": "mlp",
            "embed_dim": mlp.embed_dim,
            "max_period": mlp.max_period,
            "max_time": max_time,
            "sizes": [int(mlp.layers[0][0].shape[0])] + [int(W.shape[1]) for W, _ in mlp.layers],
        },
    )
    return finish_model(
        b.graph("refdiff_mlp_denoiser", ins, outs),
        meta,
        doc="refdiff MLP denoiser (docs/math.md §10)",
    )
