"""The embedded data sets (refdiff.data): exact parameters, seeded draws, typed errors."""

from __future__ import annotations

import numpy as np
import pytest

from refdiff import data as DA
from refdiff.errors import InputError, OptionError, RandomnessError
from refdiff.exact import GaussianMixture


def test_ring_is_eight_gaussians_on_a_circle():
    law = DA.get_dataset("ring").law
    assert isinstance(law, GaussianMixture) and law.K == 8 and law.dim == 2
    np.testing.assert_allclose(law.weights, np.full(8, 0.125))
    np.testing.assert_allclose(np.linalg.norm(law.means, axis=1), 2.0, rtol=1e-15)
    angles = np.mod(np.arctan2(law.means[:, 1], law.means[:, 0]), 2 * np.pi)
    np.testing.assert_allclose(np.sort(angles), np.arange(8) * np.pi / 4, atol=1e-14)
    np.testing.assert_allclose(law.covs, np.broadcast_to(0.04 * np.eye(2), (8, 2, 2)))
    small = DA.ring_mixture(k=3, radius=1.0, std=0.5)
    np.testing.assert_allclose(small.means[1], [np.cos(2 * np.pi / 3), np.sin(2 * np.pi / 3)])
    np.testing.assert_allclose(small.covs[2], 0.25 * np.eye(2))


def test_ring_samples_come_from_the_mixture_sampler():
    ds = DA.get_dataset("ring")
    a = ds.sample(np.random.default_rng(7), 500)
    b = ds.law.sample(np.random.default_rng(7), 500)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float64 and a.shape == (500, 2)


def test_moons_without_jitter_lie_on_the_two_arcs():
    """Undo the fixed affine map: the outer moon is the upper unit half circle about (0, 0),
    the inner one the lower unit half circle about (1, ½)."""
    p = DA.sample_moons(np.random.default_rng(3), 2000, noise=0.0)
    q = p / DA.MOONS_SCALE + np.asarray(DA.MOONS_CENTER)
    r_outer = np.hypot(q[:, 0], q[:, 1])
    r_inner = np.hypot(q[:, 0] - 1.0, q[:, 1] - 0.5)
    outer = np.isclose(r_outer, 1.0, atol=1e-12) & (q[:, 1] >= -1e-12)
    inner = np.isclose(r_inner, 1.0, atol=1e-12) & (q[:, 1] <= 0.5 + 1e-12)
    assert np.all(outer | inner)
    assert 0.4 < outer.mean() < 0.6  # Bernoulli(½) labels; fixed seed (n = 2000: ±9 σ)


def test_moons_are_seeded_and_jittered():
    ds = DA.get_dataset("moons")
    assert ds.law is None and ds.dim == 2
    a, b = ds.training_set(300, seed=11), ds.training_set(300, seed=11)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, ds.training_set(300, seed=12))
    clean = DA.sample_moons(np.random.default_rng(0), 300, noise=0.0)
    noisy = DA.sample_moons(np.random.default_rng(0), 300)
    # same labels and angles (drawn first), then jitter of std 0.08 scaled by 1/0.7
    jitter = (noisy - clean) / DA.MOONS_SCALE
    assert 0.06 < jitter.std() < 0.10
    assert DA.sample_moons(np.random.default_rng(0), 0).shape == (0, 2)


def test_errors_are_typed():
    with pytest.raises(OptionError) as e:
        DA.get_dataset("spiral")
    assert e.value.argument == "name" and "ring" in str(e.value)
    with pytest.raises(RandomnessError):
        DA.get_dataset("moons").sample(42, 10)
    with pytest.raises(RandomnessError):
        DA.sample_moons(None, 10)
    with pytest.raises(InputError) as e:
        DA.sample_moons(np.random.default_rng(0), -1)
    assert e.value.argument == "n"
    for kw, arg in (({"k": 0}, "k"), ({"radius": -1.0}, "radius"), ({"std": float("inf")}, "std")):
        with pytest.raises(InputError) as e:
            DA.ring_mixture(**kw)
        assert e.value.argument == arg
