"""Samplers on ORT with in-graph noise (RandomNormalLike) follow the right law.

In-graph noise cannot be compared draw by draw with the reference (onnxruntime's stream is
its own), so its output is tested statistically (docs/stats.md), two assertions, α = 1e-6 each:

1. Gaussian data, the exported exact denoiser, DDPM as one Loop graph with x_T and every z
   drawn in-graph: the output is exactly Gaussian with the mean and covariance of
   refdiff.exact.ddpm_law (the affine recursion).  χ² mean test + χ² variance tests
   (refdiff.stats.assert_gaussian); n = 20 000.
2. A two-component mixture, the exported exact denoiser, DDIM η = 1 in the fused per-step
   loop with in-graph step noise, against the reference sampler (refdiff.sampling with
   refdiff.exact.denoiser and NumPy noise): two-sample KS along the 4 default projections,
   Bonferroni-combined into one assertion (refdiff.stats.assert_all); n = 20 000 each.

Float32 rounding moves these laws by ~1e-6, far below what n = 20 000 can see.  Also
deterministic checks of the in-graph generator: same seed and fresh session → same bits;
successive runs and different seeds → different draws.
"""

from __future__ import annotations

import numpy as np
import refdiff.export as ex

from refdiff import exact, stats
from refdiff.sampling import ddim_sample
from refdiff.schedule import linear_iddpm, respace
from tests.export.test_export_helpers import mixture2

ALPHA = 1e-6
N_SAMPLES = 20_000


def test_whole_graph_in_graph_noise_gives_the_exact_ddpm_law():
    g = exact.Gaussian(np.array([0.5, -0.25]), np.array([[0.5, 0.2], [0.2, 0.3]]))
    base = linear_iddpm(60)
    model = ex.mixture_denoiser_model(g.to_mixture(), base, prediction_type="epsilon")
    s = ex.OrtSampler(model, base, mode="graph", noise="graph", seed=2024, provider="cpu")
    x = s.sample(shape=N_SAMPLES).astype(np.float64)
    law = exact.ddpm_law(g, base)
    r = stats.assert_gaussian(
        x, law.mean, law.cov, false_fail_rate=ALPHA, name="export.graph_noise.ddpm_law"
    )
    assert r.passed and r.discrepancy < 0.06  # detects a Mahalanobis mean shift of 0.054
    # power: the same samples are told apart from the law of β_t instead of β̃_t (variance +20%)
    wrong = exact.ddpm_law(g, base, variance_type="fixed_large")
    assert not stats.check_gaussian(x, wrong.mean, wrong.cov, false_fail_rate=ALPHA).passed


def test_fused_loop_in_graph_noise_matches_the_reference_sampler_law():
    mix = mixture2()
    base = linear_iddpm(100)
    sched = respace(base, np.arange(5, 101, 5))  # 20 steps
    model = ex.mixture_denoiser_model(mix, base, prediction_type="epsilon")
    s = ex.OrtSampler(
        model, sched, sampler="ddim", mode="fused", noise="graph", seed=7, provider="cpu", eta=1.0
    )
    x = s.sample(shape=N_SAMPLES, seed=8).astype(np.float64)
    ref = ddim_sample(
        exact.denoiser(mix, base), sched, (N_SAMPLES, 2), rng=np.random.default_rng(9), eta=1.0
    )
    dirs = stats.default_directions(2)
    checks = [
        stats.check_two_sample(x @ u, ref @ u, false_fail_rate=ALPHA / len(dirs), name=f"proj{i}")
        for i, u in enumerate(dirs)
    ]
    r = stats.assert_all(checks, name="export.fused_graph_noise.two_sample")
    assert r.passed


def test_in_graph_generator_is_seeded_per_session_and_advances_per_run():
    g = exact.Gaussian(np.zeros(2), np.eye(2))
    base = linear_iddpm(100)
    model = ex.mixture_denoiser_model(g.to_mixture(), base)

    def new(seed):
        return ex.OrtSampler(model, base, mode="graph", noise="graph", seed=seed, provider="cpu")

    s = new(1)
    a, b = s.sample(shape=64), s.sample(shape=64)
    assert not np.array_equal(a, b)  # the stream continues
    assert np.array_equal(a, new(1).sample(shape=64))  # a fresh session repeats it
    assert not np.array_equal(a, new(2).sample(shape=64))
    # every Loop iteration draws fresh noise: recover z_k = (x_{k+1} − A x_k − B f(x_k)) / S_k
    tb = ex.step_tables(base)
    traj_model = ex.sampler_model(
        ex.open_denoiser(model), tb, noise="graph", seed=1, trajectory=True
    )
    _, traj = ex.make_session(traj_model, "cpu").run(None, {"batch_size": np.array(256)})
    f = exact.denoiser(g, base)
    zs = []
    for k in range(1, tb.N - 1):  # the last step adds no noise
        x = traj[k - 1].astype(np.float64)
        out = f(x, np.full(256, tb.base_t[k]))
        zs.append(((traj[k] - tb.A[k] * x - tb.B[k] * out) / tb.S[k]).ravel())
    zs = np.array(zs)
    assert np.all(np.abs(zs.std(axis=1) - 1.0) < 0.15)
    corr = np.corrcoef(zs)
    assert np.max(np.abs(corr - np.eye(len(zs)))) < 0.25  # no step reuses another's draw
