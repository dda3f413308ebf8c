"""Shared pieces of the statistical suite: profiles, error budget, seeds, strategies.

- Hypothesis profile: ``HYPOTHESIS_PROFILE`` if set; else ``mutant`` when ``REFDIFF_MUTANT``
  is set (a negative-control run, no shrinking); else ``ci`` when ``CI`` is set; else ``dev``.
- Seeds: tests draw an integer with Hypothesis and build ``numpy.random.default_rng([seed,
  SALT])``; Hypothesis does not reset numpy Generators, so nothing else is random.
  ``REFDIFF_SEED_SALT`` (an int or any string) re-rolls every seed of the suite.
- Budget: each statistical test makes ``examples(k)`` assertions at ``alpha()`` each, so its
  share of Σα is k·ALPHA whatever the profile (``thorough`` runs 10× the examples at α/10).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from hypothesis import strategies as st

from refdiff import respacing as RS
from refdiff import schedule as S
from refdiff.exact import Gaussian, GaussianMixture

#: Per-assertion false-failure rate of the suite at example scale 1.
ALPHA = 1e-6
#: The whole session's budget: Σα over every statistical assertion (docs/stats.md).
BUDGET = 1e-4
#: Lines the calibration run (tests/ground_truth/test_calibration.py) reports in the terminal
#: summary.
CALIBRATION_REPORT: list[str] = []


def profile_name() -> str:
    if os.environ.get("HYPOTHESIS_PROFILE"):
        return os.environ["HYPOTHESIS_PROFILE"]
    if os.environ.get("REFDIFF_MUTANT"):
        return "mutant"
    if os.environ.get("CI"):
        return "ci"
    return "dev"


EXAMPLE_SCALE = 10 if profile_name() == "thorough" else 1


def examples(base: int) -> int:
    """max_examples for a statistical test whose share of the budget is ``base`` · ALPHA."""
    return base * EXAMPLE_SCALE


def alpha() -> float:
    """The false-failure rate of one assertion (one Hypothesis example)."""
    return ALPHA / EXAMPLE_SCALE


def _salt() -> int:
    raw = os.environ.get("REFDIFF_SEED_SALT", "0").strip() or "0"
    try:
        return int(raw) % 2**63
    except ValueError:
        return int.from_bytes(hashlib.sha256(raw.encode()).digest()[:8], "little") % 2**63


SALT = _salt()

seeds = st.integers(min_value=0, max_value=2**32 - 1)


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """The Generator of one example: from the Hypothesis-drawn ``seed``, the suite salt and
    optional extra integer ``keys``."""
    return np.random.default_rng([int(seed), SALT, *(int(k) for k in keys)])


# -- schedules ------------------------------------------------------------------------------
NAMED = ("cosine", "linear", "scaled_linear", "sigmoid", "linear_iddpm")
RULES = ("trailing", "leading", "leading+1", "linspace", "ddimN", "sections")


def _times(draw, T: int, N: int) -> np.ndarray:
    rule = draw(st.sampled_from(RULES))
    if rule == "ddimN":
        try:
            return RS.space_timesteps(T, f"ddim{N}")
        except ValueError:
            rule = "sections"
    if rule == "sections":
        parts = draw(st.integers(min_value=1, max_value=min(3, N)))
        counts = [N // parts + (1 if i < N % parts else 0) for i in range(parts)]
        return RS.space_timesteps(T, counts)
    if rule == "leading+1":
        return RS.spaced_times(T, N, "leading", steps_offset=1)
    return RS.spaced_times(T, N, rule)


@st.composite
def sampler_schedules(draw, max_steps: int = 8, zero_snr: bool | None = None, min_steps: int = 1):
    """(base, schedule): the base (training) schedule and the ≤ ``max_steps``-step schedule a
    sampler runs over (the base itself, or a respacing of it by one of the peers' rules).

    The base: a short cosine / random-β schedule (big steps, where coefficient errors show),
    or a named schedule with T ∈ {50, …, 1000}; optionally rescaled to zero terminal SNR.
    """
    short = draw(st.booleans())
    if short:
        T = draw(st.integers(min_value=min_steps, max_value=max_steps))
        if draw(st.booleans()):
            base = S.cosine(T)
        else:
            betas = draw(st.lists(st.floats(min_value=1e-3, max_value=0.9), min_size=T, max_size=T))
            base = S.from_betas(betas)
    else:
        T = draw(st.sampled_from([50, 100, 250, 1000]))
        base = S.make_schedule(draw(st.sampled_from(NAMED)), T)
    zero = draw(st.booleans()) if zero_snr is None else zero_snr
    if zero and base.T >= 2:
        base = S.rescale_zero_terminal_snr(base)
    if short:
        return base, base
    N = draw(st.integers(min_value=min_steps, max_value=max_steps))
    return base, S.respace(base, _times(draw, base.T, N))


@st.composite
def forward_schedules(draw, max_T: int = 40, min_T: int = 1):
    """A schedule for forward-process tests: short random-β / cosine / linear, maybe respaced
    (to ≥ ``min_T`` steps)."""
    T = draw(st.integers(min_value=min_T, max_value=max_T))
    kind = draw(st.sampled_from(["random", "cosine", "linear"]))
    if kind == "random":
        b = draw(st.lists(st.floats(min_value=1e-3, max_value=0.5), min_size=T, max_size=T))
        base = S.from_betas(b)
    elif kind == "cosine":
        base = S.cosine(T)
    else:
        base = S.linear(T, 1e-3, draw(st.floats(min_value=0.01, max_value=0.4)))
    if T >= 2 and draw(st.booleans()):
        k = draw(st.integers(min_value=min_T, max_value=T))
        base = S.respace(
            base, RS.spaced_times(T, k, draw(st.sampled_from(["trailing", "linspace"])))
        )
    return base


# -- data laws ------------------------------------------------------------------------------
@st.composite
def gaussians(draw, max_dim: int = 3, min_var: float = 0.01):
    """N(m, A Aᵀ + λ I) with D ∈ [1, max_dim], m ∈ [−2, 2]^D, A entries in [−1, 1]·scale."""
    D = draw(st.integers(min_value=1, max_value=max_dim))
    m = draw(st.lists(st.floats(min_value=-2.0, max_value=2.0), min_size=D, max_size=D))
    scale = draw(st.sampled_from([0.0, 0.3, 1.0]))
    A = np.array(draw(st.lists(st.floats(-1.0, 1.0), min_size=D * D, max_size=D * D))).reshape(D, D)
    lam = draw(st.floats(min_value=min_var, max_value=1.0))
    return Gaussian(np.array(m), scale**2 * A @ A.T + lam * np.eye(D))


@st.composite
def mixtures(draw, max_dim: int = 2, max_k: int = 3, min_std: float = 0.1):
    """Σ w_k N(m_k, S_k): K ∈ [1, max_k], w_k ≥ 0.1 (normalised), m_k ∈ [−3, 3]^D,
    S_k = diag(s²) rotated by a drawn correlation, s ∈ [min_std, 1]."""
    D = draw(st.integers(min_value=1, max_value=max_dim))
    K = draw(st.integers(min_value=1, max_value=max_k))
    w = np.array(draw(st.lists(st.floats(0.1, 1.0), min_size=K, max_size=K)))
    means = np.array(draw(st.lists(st.floats(-3.0, 3.0), min_size=K * D, max_size=K * D)))
    covs = []
    for _ in range(K):
        s = np.array(draw(st.lists(st.floats(min_std, 1.0), min_size=D, max_size=D)))
        c = np.diag(s**2)
        if D == 2:
            rho = draw(st.floats(-0.8, 0.8))
            c[0, 1] = c[1, 0] = rho * s[0] * s[1]
        covs.append(c)
    return GaussianMixture(w / w.sum(), means.reshape(K, D), np.array(covs))


# -- sampler options ------------------------------------------------------------------------
def _prediction(draw, base: S.Schedule) -> str:
    zero = bool(base.alpha_bar[-1] == 0.0)
    return draw(st.sampled_from(("v", "x0") if zero else ("epsilon", "v", "x0", "score")))


@st.composite
def ddpm_options(draw, base: S.Schedule) -> dict:
    return {
        "prediction_type": _prediction(draw, base),
        "variance_type": draw(st.sampled_from(["fixed_small", "fixed_large", "fixed_large_iddpm"])),
        "log_variance_clipping": draw(st.sampled_from(["next", "floor"])),
    }


@st.composite
def ddim_options(draw, base: S.Schedule) -> dict:
    return {
        "prediction_type": _prediction(draw, base),
        "eta": draw(st.one_of(st.sampled_from([1.0, 0.0]), st.floats(0.0, 1.0))),
        "final_alpha_bar": draw(
            st.one_of(st.sampled_from(["first", "one"]), st.floats(min_value=0.5, max_value=1.0))
        ),
        "final_step_noise": draw(st.booleans()),
        "rederive_eps": draw(st.booleans()),
    }
