"""Embedded 2-D data sets for the demo and the trainer (docs/demo.md).

Nothing is downloaded or read from disk: every data set is a law with a sampler, and a
training set is a draw from it under a stated seed.

- ``ring``:  eight Gaussians on a ring, a :class:`refdiff.exact.GaussianMixture` whose law
  is known exactly (so the exact denoiser and the exact law tests apply):
  weights 1/8, means r·(cos 2πk/8, sin 2πk/8), covariances s²I, r = 2, s = 0.2.
- ``two``: two anisotropic Gaussians (weights 0.3, 0.7), ``gaussian``: one correlated
  Gaussian — small exact laws for the exporter's examples;
- ``moons``: two interleaving half circles with Gaussian jitter (not a mixture; its law
  has no closed form, so it is compared with a large fresh draw instead):
  c ~ Bernoulli(½), θ ~ U(0, π); c = 0: (cos θ, sin θ), c = 1: (1 − cos θ, ½ − sin θ);
  plus N(0, 0.08² I); then centred by (½, ¼) and scaled by 1/0.7.

This is the one registry of built-in data: ``refdiff demo --data`` and ``refdiff export
--mixture`` both read it (``ring8``, the exporter's older name, is the same ``ring``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._check import check_size, is_real, option
from .errors import InputError, OptionError, RandomnessError
from .exact import GaussianMixture

__all__ = [
    "Dataset",
    "DATASETS",
    "ALIASES",
    "MIXTURES",
    "get_dataset",
    "mixture",
    "ring_mixture",
    "sample_moons",
]

RING_K = 8
RING_RADIUS = 2.0
RING_STD = 0.2
MOONS_NOISE = 0.08
MOONS_CENTER = (0.5, 0.25)
MOONS_SCALE = 1.0 / 0.7


def ring_mixture(
    k: int = RING_K, radius: float = RING_RADIUS, std: float = RING_STD
) -> GaussianMixture:
    """``k`` equally weighted isotropic Gaussians N(r(cos φ_j, sin φ_j), s²I), φ_j = 2πj/k."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError("k", f"must be a positive int; got {k!r}")
    check_size((k, 2, 2), "k")  # before allocating (docs/reliability.md)
    for nm, v in (("radius", radius), ("std", std)):
        if not (is_real(v) and math.isfinite(v) and v > 0):
            raise InputError(nm, f"must be a finite float > 0; got {v!r}")
    phi = 2.0 * np.pi * np.arange(k) / k
    means = radius * np.stack([np.cos(phi), np.sin(phi)], axis=1)
    covs = np.broadcast_to(std**2 * np.eye(2), (k, 2, 2)).copy()
    return GaussianMixture(np.full(k, 1.0 / k), means, covs)


def sample_moons(rng: np.random.Generator, n: int, noise: float = MOONS_NOISE) -> np.ndarray:
    """n points of the two-moons law, float64 (n, 2); draws c, θ, then jitter from ``rng``."""
    if not isinstance(rng, np.random.Generator):
        raise RandomnessError("rng", f"must be a numpy.random.Generator; got {type(rng).__name__}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise InputError("n", f"must be an int >= 0; got {n!r}")
    check_size((int(n), 2), "n")  # before allocating (docs/reliability.md)
    if isinstance(noise, bool) or not (is_real(noise) and math.isfinite(noise)):
        raise InputError("noise", f"must be a finite float; got {noise!r}")
    c = rng.integers(0, 2, size=n)
    theta = rng.uniform(0.0, np.pi, size=n)
    x = np.where(c == 0, np.cos(theta), 1.0 - np.cos(theta))
    y = np.where(c == 0, np.sin(theta), 0.5 - np.sin(theta))
    pts = np.stack([x, y], axis=1) + noise * rng.standard_normal((n, 2))
    return (pts - np.asarray(MOONS_CENTER)) * MOONS_SCALE


@dataclass(frozen=True, eq=False)
class Dataset:
    """A named 2-D data law.

    name: the key in :data:`DATASETS`; description: one line; law: the exact
    :class:`~refdiff.exact.GaussianMixture` or ``None`` when the law has no closed form.
    """

    name: str
    description: str
    law: GaussianMixture | None
    _sampler: Callable[[np.random.Generator, int], np.ndarray]

    dim: int = 2

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n independent points, float64 (n, 2)."""
        if not isinstance(rng, np.random.Generator):
            raise RandomnessError(
                "rng", f"must be a numpy.random.Generator; got {type(rng).__name__}"
            )
        return np.asarray(self._sampler(rng, int(n)), dtype=np.float64).reshape(int(n), self.dim)

    def training_set(self, n: int, seed: int) -> np.ndarray:
        """The data set a trainer sees: n points drawn with ``default_rng(seed)``."""
        return self.sample(np.random.default_rng(seed), n)


def _ring() -> Dataset:
    law = ring_mixture()
    return Dataset(
        "ring",
        f"{RING_K} Gaussians on a ring (radius {RING_RADIUS}, std {RING_STD}); exact law known",
        law,
        law.sample,
    )


def _moons() -> Dataset:
    return Dataset(
        "moons",
        f"two moons (jitter {MOONS_NOISE}); not a mixture, no closed-form law",
        None,
        sample_moons,
    )


def _two() -> Dataset:
    law = GaussianMixture(
        np.array([0.3, 0.7]),
        np.array([[1.5, 0.5], [-1.0, -0.5]]),
        np.array([[[0.10, 0.05], [0.05, 0.10]], [[0.20, -0.08], [-0.08, 0.08]]]),
    )
    return Dataset("two", "two anisotropic Gaussians (weights 0.3, 0.7); exact law known", law,
                   law.sample)  # fmt: skip


def _gaussian() -> Dataset:
    law = GaussianMixture(
        np.ones(1), np.array([[0.5, -0.25]]), np.array([[[0.5, 0.2], [0.2, 0.3]]])
    )
    return Dataset("gaussian", "one correlated Gaussian; exact law known", law, law.sample)


DATASETS: dict[str, Callable[[], Dataset]] = {
    "ring": _ring,
    "moons": _moons,
    "two": _two,
    "gaussian": _gaussian,
}
#: other names of the same data sets
ALIASES: dict[str, str] = {"ring8": "ring"}
#: names of the data sets whose law is a Gaussian mixture (what ``refdiff export --mixture``
#: accepts), aliases included
MIXTURES: tuple[str, ...] = ("ring8", "ring", "two", "gaussian")


def get_dataset(name: str) -> Dataset:
    """The embedded data set called ``name`` (one of :data:`DATASETS` or :data:`ALIASES`)."""
    option(name, "name", [*DATASETS, *ALIASES])
    return DATASETS[ALIASES.get(name, name)]()


def mixture(name: str) -> GaussianMixture:
    """The exact law of the built-in mixture ``name`` (one of :data:`MIXTURES`)."""
    if name not in MIXTURES:
        raise OptionError("mixture", name, list(MIXTURES))
    law = get_dataset(name).law
    assert law is not None
    return law
