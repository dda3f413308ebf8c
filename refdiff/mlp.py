"""A small MLP denoiser with a sinusoidal timestep embedding (docs/math.md §10).

The architecture the trainer (:mod:`refdiff.train`) fits and the ONNX exporter
(:mod:`refdiff.export`) rebuilds as a graph, so both must follow this file exactly:

    e    = [cos(t·f), sin(t·f)],  f_j = exp(−log(max_period)·j/half), j < half = embed_dim/2
    h_0  = concat(x, e)                               (B, D + embed_dim)
    h_i  = silu(h_{i−1} W_i + b_i), i = 1..L−1,       silu(u) = u·sigmoid(u)
    out  = h_{L−1} W_L + b_L                          (B, out_dim)

x is float (B, D), t the base time as float or int (B,).  Weights are float64 NumPy arrays
saved as ``.npz`` (no pickle) under the keys ``W0, b0, W1, b1, …`` plus ``embed_dim`` and
``max_period``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._check import check_size
from ._io import load_npz, save_npz
from .errors import FileFormatError, InputError, RandomnessError, ShapeError

__all__ = ["MLP", "timestep_embedding", "init_mlp", "save_mlp", "load_mlp"]


def timestep_embedding(t, embed_dim: int, max_period: float = 10_000.0) -> np.ndarray:
    """(B, embed_dim) float64 sinusoidal embedding of t (B,): cos half then sin half."""
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    half = embed_dim // 2
    freqs = np.exp(-np.log(max_period) * np.arange(half, dtype=np.float64) / half)
    args = t[:, None] * freqs[None, :]
    return np.concatenate([np.cos(args), np.sin(args)], axis=1)


def _silu(u: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # u ≪ 0: exp(−u) = inf gives the exact limit −0.0
        return u / (1.0 + np.exp(-u))


@dataclass(frozen=True, eq=False)
class MLP:
    """Weights of the MLP denoiser.  ``layers`` is a tuple of (W (n_in, n_out), b (n_out,))."""

    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    embed_dim: int
    max_period: float = 10_000.0

    @property
    def data_dim(self) -> int:
        return self.layers[0][0].shape[0] - self.embed_dim

    @property
    def out_dim(self) -> int:
        return self.layers[-1][0].shape[1]

    def __call__(self, x, t) -> np.ndarray:
        """The forward pass: x (B, D), t (B,) or scalar → (B, out_dim) float64."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.data_dim:
            raise ShapeError("x", f"expected (B, {self.data_dim}); got {x.shape}")
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), (x.shape[0],))
        h = np.concatenate([x, timestep_embedding(t, self.embed_dim, self.max_period)], axis=1)
        for i, (W, b) in enumerate(self.layers):
            h = h @ W + b
            if i < len(self.layers) - 1:
                h = _silu(h)
        return h

    def to_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {
            "embed_dim": np.array(self.embed_dim),
            "max_period": np.array(self.max_period),
        }
        for i, (W, b) in enumerate(self.layers):
            out[f"W{i}"], out[f"b{i}"] = W, b
        return out


def init_mlp(
    rng: np.random.Generator,
    data_dim: int = 2,
    hidden: int = 128,
    depth: int = 3,
    embed_dim: int = 32,
    out_dim: int | None = None,
    max_period: float = 10_000.0,
) -> MLP:
    """He-style initialisation; ``depth`` hidden layers of width ``hidden``."""
    if not isinstance(rng, np.random.Generator):
        raise RandomnessError("rng", f"must be a numpy.random.Generator; got {type(rng).__name__}")
    for nm, v in (
        ("data_dim", data_dim),
        ("hidden", hidden),
        ("depth", depth),
        ("embed_dim", embed_dim),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(nm, f"must be a positive int; got {v!r}")
    if embed_dim % 2:
        raise InputError("embed_dim", f"must be even; got {embed_dim}")
    out_dim = data_dim if out_dim is None else out_dim
    n_weights = (data_dim + embed_dim + (depth - 1) * hidden + out_dim) * hidden
    check_size((n_weights,), "hidden")  # before allocating (docs/reliability.md)
    sizes = [data_dim + embed_dim] + [hidden] * depth + [out_dim]
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        W = rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)
        layers.append((W, np.zeros(n_out)))
    return MLP(tuple(layers), embed_dim, float(max_period))


def save_mlp(path, mlp: MLP) -> None:
    """Write the weights as ``.npz`` atomically."""
    save_npz(path, **mlp.to_arrays())


def load_mlp(path) -> MLP:
    """Read weights written by :func:`save_mlp` (``allow_pickle=False``)."""
    z = load_npz(path)
    try:
        n = sum(1 for k in z if k.startswith("W"))
        raw = [(z[f"W{i}"], z[f"b{i}"]) for i in range(n)]
        if any(a.dtype.kind not in "fiu" for pair in raw for a in pair):
            raise FileFormatError(path, "weights must be real numbers")
        layers = tuple((W.astype(np.float64), b.astype(np.float64)) for W, b in raw)
        mlp = MLP(layers, int(z["embed_dim"]), float(z["max_period"]))
    except KeyError as e:
        raise FileFormatError(path, f"not an MLP weight file (missing {e})") from None
    except (TypeError, ValueError) as e:  # non-scalar embed_dim / max_period, non-numeric data
        raise FileFormatError(path, f"not an MLP weight file ({e})") from None
    if n == 0 or any(W.ndim != 2 or b.shape != (W.shape[1],) for W, b in layers):
        raise FileFormatError(path, "layer shapes do not chain")
    if not (0 < mlp.embed_dim < layers[0][0].shape[0] and mlp.embed_dim % 2 == 0):
        shape = layers[0][0].shape
        raise FileFormatError(path, f"embed_dim {mlp.embed_dim} does not fit W0 of shape {shape}")
    for (W1, _), (W2, _) in zip(layers[:-1], layers[1:]):
        if W1.shape[1] != W2.shape[0]:
            raise FileFormatError(path, "layer shapes do not chain")
    if not (np.isfinite(mlp.max_period) and mlp.max_period > 0.0):
        raise FileFormatError(path, f"max_period {mlp.max_period} is not a finite float > 0")
    if not all(np.isfinite(a).all() for pair in layers for a in pair):
        raise FileFormatError(path, "weights contain NaN or Inf")
    return mlp
