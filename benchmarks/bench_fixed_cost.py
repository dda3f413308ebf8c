"""Parts 5 and 6: the fixed costs every statistical test and every sampling loop pays.

``assertions`` — each :mod:`refdiff.stats` check at n = 10⁶ samples, d = 16, raced (one
interleaved run) against the NumPy/SciPy primitive a user would write for the same
statistic, with the peak memory each allocates beyond the samples (tracemalloc):

============  =================================================================
check         primitive
============  =================================================================
cdf           ``scipy.stats.kstest(x, cdf)`` (x: one column, n values)
two_sample    ``scipy.stats.ks_2samp(x, y)``
mean          ``numpy.mean(x, axis=0)``
covariance    ``numpy.cov(x, rowvar=False)``
gaussian      ``numpy.mean`` + ``numpy.cov``
mvn           ``multivariate_normal(m, S).logpdf(x)`` → Mahalanobis², then ``kstest`` vs χ²_d
mixture       per direction u (d + 2 of them): ``kstest(x @ u, Σ w_k norm.cdf(...))``
============  =================================================================

``loops`` — at batch 1 (state 1×2), a 20-step ``ddpm_sample`` / ``ddim_sample`` (η = 0) per
step (x_T and the noise drawn from one Generator made beforehand) against its bare step
(:func:`refdiff.affine.affine_step`, coefficients computed beforehand, the same fixed-ε̂
denoiser output), the cost of reading the coefficient tables off the reference step (what
each loop call used to redo), and the loops' peak memory in states.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special
from scipy import stats as sps

from refdiff import affine, sampling, stats
from refdiff.respacing import spaced_times
from refdiff.schedule import linear, respace

from ._timing import peak_python_bytes, race, ratio

ALPHA = 1e-6
# size → (n, d, rounds)
ASSERTION_PLANS = {"smoke": (500, 3, 1), "quick": (10**6, 16, 3), "full": (10**6, 16, 5)}
# size → (loop steps, rounds, block seconds, memory-probe state)
LOOP_PLANS = {
    "smoke": (3, 1, 0.001, (64, 2)),
    "quick": (20, 5, 0.05, (4096, 64)),
    "full": (20, 9, 0.1, (4096, 64)),
}


def _laws(d: int, rng: np.random.Generator):
    a = rng.standard_normal((d, d)) / math.sqrt(d)
    cov = a @ a.T + 0.5 * np.eye(d)
    mean = rng.standard_normal(d)
    K = 3
    w = np.array([0.2, 0.5, 0.3])
    mus = 2.0 * rng.standard_normal((K, d))
    covs = np.stack([cov * s for s in (0.3, 1.0, 0.6)])
    return mean, cov, (w, mus, covs)


def assertion_variants(n: int, d: int, seed: int = 0) -> dict[str, dict[str, object]]:
    """check → {"ours": thunk, "primitive": thunk} on one data set per check."""
    rng = np.random.default_rng(seed)
    mean, cov, (w, mus, covs) = _laws(d, rng)
    chol = np.linalg.cholesky(cov)
    x = mean + rng.standard_normal((n, d)) @ chol.T
    comp = rng.choice(3, size=n, p=w)
    y = mus[comp] + np.einsum(
        "nd,ned->ne", rng.standard_normal((n, d)), np.linalg.cholesky(covs)[comp]
    )
    x1 = rng.standard_normal(n)
    x2 = rng.standard_normal(n)
    mvn = sps.multivariate_normal(mean, cov)
    log0 = mvn.logpdf(mean)
    dirs = stats.default_directions(d)

    def mixture_primitive():
        out = []
        for u in dirs:
            pm = mus @ u
            ps = np.sqrt(np.einsum("d,kde,e->k", u, covs, u))

            def cdf(v, pm=pm, ps=ps):
                return sum(wk * sps.norm.cdf(v, mk, sk) for wk, mk, sk in zip(w, pm, ps))

            out.append(sps.kstest(x @ u, cdf).statistic)
        return max(out)

    kw = {"false_fail_rate": ALPHA}
    return {
        "cdf": {
            "ours": lambda: stats.check_cdf(x1, special.ndtr, **kw),
            "primitive": lambda: sps.kstest(x1, special.ndtr),
        },
        "two_sample": {
            "ours": lambda: stats.check_two_sample(x1, x2, **kw),
            "primitive": lambda: sps.ks_2samp(x1, x2),
        },
        "mean": {
            "ours": lambda: stats.check_mean(x, mean, cov, **kw),
            "primitive": lambda: np.mean(x, axis=0),
        },
        "covariance": {
            "ours": lambda: stats.check_covariance(x, cov, mean=mean, **kw),
            "primitive": lambda: np.cov(x, rowvar=False),
        },
        "gaussian": {
            "ours": lambda: stats.check_gaussian(x, mean, cov, **kw),
            "primitive": lambda: (np.mean(x, axis=0), np.cov(x, rowvar=False)),
        },
        "mvn": {
            "ours": lambda: stats.check_mvn(x, mean, cov, **kw),
            "primitive": lambda: sps.kstest(-2.0 * (mvn.logpdf(x) - log0), sps.chi2(d).cdf),
        },
        "mixture": {
            "ours": lambda: stats.check_mixture(y, w, mus, covs, **kw),
            "primitive": mixture_primitive,
        },
    }


def run_assertions(*, size: str, log=print) -> dict:
    n, d, rounds = ASSERTION_PLANS[size]
    rows = []
    sample_bytes = 8 * n * d
    for name, v in assertion_variants(n, d).items():
        t = race(v, rounds=rounds, block_s=0.001 if size == "smoke" else 0.01, max_calls=1000)
        one_d = name in ("cdf", "two_sample")
        data_bytes = 8 * n * (2 if name == "two_sample" else 1) if one_d else sample_bytes
        row = {
            "check": name,
            "n": n,
            "d": 1 if one_d else d,
            "rounds": rounds,
            "ours_ms": 1e3 * t["ours"].median,
            "primitive_ms": 1e3 * t["primitive"].median,
            "ours_over_primitive": ratio(t["ours"], t["primitive"]),
            "ours_extra_mib": peak_python_bytes(v["ours"]) / 2**20,
            "primitive_extra_mib": peak_python_bytes(v["primitive"]) / 2**20,
            "samples_mib": data_bytes / 2**20,
        }
        rows.append(row)
        log(
            f"  {name:>10}: ours {row['ours_ms']:8.1f} ms, primitive {row['primitive_ms']:8.1f} ms"
            f" (x{row['ours_over_primitive']:.2f}); extra memory {row['ours_extra_mib']:.1f} MiB "
            f"vs {row['primitive_extra_mib']:.1f} MiB (samples {row['samples_mib']:.0f} MiB)"
        )
    targets = [
        {
            "target": f"stats {r['check']} within 1.5x of its primitive at n={r['n']}, d={d}",
            "value": r["ours_over_primitive"],
            "goal": "<= 1.5",
            "met": r["ours_over_primitive"] <= 1.5,
        }
        for r in rows
    ]
    return {"rows": rows, "notes": [], "targets": targets}


def loop_variants(steps: int, shape=(1, 2), seed: int = 0) -> dict:
    sch = respace(linear(1000), spaced_times(1000, steps, "leading"))
    rng = np.random.default_rng(seed)
    e, x = rng.standard_normal(shape), rng.standard_normal(shape)
    cp, cd = affine.affine_coefficients(sch, "ddpm"), affine.affine_coefficients(sch, "ddim")
    g = np.random.default_rng(seed + 1)
    g_loop = np.random.default_rng(seed + 2)  # one Generator for every call (building one
    k = steps // 2  # costs ~20-80 µs, a cost of the caller, not of the loop)

    def den(x, t):
        return e

    return {
        "ddpm_loop": lambda: sampling.ddpm_sample(den, sch, shape, rng=g_loop),
        "ddim_loop": lambda: sampling.ddim_sample(den, sch, shape, rng=g_loop),
        "ddpm_step": lambda: affine.affine_step(cp, x, k, e, rng=g),
        "ddim_step": lambda: affine.affine_step(cd, x, k, e),
        "coefficients": lambda: affine.affine_coefficients(sch, "ddpm"),
    }


def _loop_peak_states(sampler: str, shape) -> float:
    sch = respace(linear(1000), spaced_times(1000, 5, "leading"))
    fn = sampling.ddpm_sample if sampler == "ddpm" else sampling.ddim_sample

    def run():
        fn(lambda x, t: 0.1 * x, sch, shape, rng=np.random.default_rng(0))

    run()
    return peak_python_bytes(run) / (8 * math.prod(shape))


def run_loops(*, size: str, log=print) -> dict:
    steps, rounds, block_s, mem_shape = LOOP_PLANS[size]
    t = race(loop_variants(steps), rounds=rounds, block_s=block_s)
    row = {
        "shape": "1x2",
        "steps": steps,
        "rounds": rounds,
        "us": {k: 1e6 * v.median for k, v in t.items()},
        "coefficients_us": 1e6 * t["coefficients"].median,
    }
    for s in ("ddpm", "ddim"):
        loop, step = t[f"{s}_loop"], t[f"{s}_step"]
        row[f"{s}_loop_us_per_step"] = 1e6 * loop.median / steps
        row[f"{s}_step_us"] = 1e6 * step.median
        n = min(len(loop.per_call), len(step.per_call))
        row[f"{s}_loop_over_step"] = float(
            np.median(np.asarray(loop.per_call[:n]) / steps / np.asarray(step.per_call[:n]))
        )
        row[f"{s}_peak_states"] = _loop_peak_states(s, mem_shape)
    row["memory_shape"] = "x".join(map(str, mem_shape))
    log(
        f"  loops at 1x2, {steps} steps: DDPM {row['ddpm_loop_us_per_step']:.2f} µs/step vs "
        f"step {row['ddpm_step_us']:.2f} µs (x{row['ddpm_loop_over_step']:.2f}); DDIM "
        f"{row['ddim_loop_us_per_step']:.2f} vs {row['ddim_step_us']:.2f} "
        f"(x{row['ddim_loop_over_step']:.2f}); tables {row['coefficients_us']:.1f} µs/call; "
        f"peak {row['ddpm_peak_states']:.2f} / {row['ddim_peak_states']:.2f} states"
    )
    targets = [
        {
            "target": f"{s.upper()} loop at batch 1 within 2x of its bare step (per step)",
            "value": row[f"{s}_loop_over_step"],
            "goal": "<= 2",
            "met": row[f"{s}_loop_over_step"] <= 2.0,
        }
        for s in ("ddpm", "ddim")
    ]
    return {"rows": [row], "notes": [], "targets": targets}
