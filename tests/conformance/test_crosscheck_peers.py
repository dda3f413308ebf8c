"""Cross-check tier: the peers people port from, verified without wrapper code
(docs/verify.md §Peers): improved-diffusion's ``GaussianDiffusion`` (through a faithful
stand-in, tests/conformance/iddpm_standin.py — the package is not on PyPI), k-diffusion's
sampling functions, and the presets from a peer configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from refdiff import posterior, verify  # noqa: E402
from refdiff.conformance.adapters import Unsupported  # noqa: E402
from refdiff.conformance.peers import (  # noqa: E402
    GaussianDiffusionTarget,
    KDiffusionTarget,
    from_diffusers_config,
    from_improved_diffusion,
)
from refdiff.schedule import make_schedule  # noqa: E402
from refdiff.testing import Setting  # noqa: E402
from tests.conformance import iddpm_standin as iddpm  # noqa: E402

pytestmark = pytest.mark.crosscheck
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("obj", ["diffusion", "diffusion_learned", "diffusion_ddim50"])
def test_improved_diffusion_verified_with_no_wrapper(obj):
    """The user's GaussianDiffusion object, as it is: every check it supports passes at the
    mixed tolerance (float64 states, float32 coefficient look-ups)."""
    rep = verify.run(getattr(iddpm, obj), quick=True)
    assert rep.verdict == "PASS", "\n".join(rep.failure_summary())
    assert "improved-diffusion SpacedDiffusion" in rep.kind
    ops = {c.op for c in rep.checks if c.status == "ok"}
    assert {"q_sample", "posterior_mean", "posterior_variance", "ddpm_step", "ddim_step"} <= ops
    assert rep.tolerance.state == "float64" and rep.tolerance.schedule_precision == "float32"


def test_improved_diffusion_from_the_cli():
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "refdiff.cli",
            "verify",
            "tests/conformance/iddpm_standin.py:diffusion",
            "--quick",
            "--ops",
            "ddpm_step,ddim_step",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "scheduler: improved-diffusion SpacedDiffusion (EPSILON, FIXED_LARGE" in p.stdout
    assert "float64 states, float32 schedule" in p.stdout


def test_a_bug_in_the_peer_is_caught_through_the_adapter(monkeypatch):
    """The adapter really drives the peer: a planted √-less noise scale in p_sample fails."""
    orig = iddpm.GaussianDiffusion.p_sample

    def bad(self, model, x, t, **kw):
        out = self.p_mean_variance(model, x, t, kw.get("clip_denoised", True))
        noise = torch.randn_like(x)
        nz = (t != 0).float().view(-1, *([1] * (len(x.shape) - 1)))
        return {"sample": out["mean"] + nz * out["variance"] * noise}

    monkeypatch.setattr(iddpm.GaussianDiffusion, "p_sample", bad)
    items = [
        verify.Item(
            "ddpm_step",
            Setting("linear", 1000),
            {"prediction_type": "epsilon", "variance_type": "fixed_small"},
            (2, 500),
        )
    ]
    rep = verify.run(GaussianDiffusionTarget(iddpm.diffusion), items)
    assert rep.verdict == "FAIL"
    assert "missing sqrt" in "\n".join(rep.failure_summary())
    monkeypatch.setattr(iddpm.GaussianDiffusion, "p_sample", orig)


def test_improved_diffusion_preset_names():
    p = from_improved_diffusion(noise_schedule="linear", diffusion_steps=4000)
    assert p["schedule"] == "linear_iddpm" and p["options"]["variance_type"] == "fixed_large_iddpm"
    ab_peer = np.cumprod(1 - iddpm.get_named_beta_schedule("linear", 4000))
    ab_ref = make_schedule(p["schedule"], p["T"]).alpha_bar[1:]
    assert np.max(np.abs(ab_peer - ab_ref)) < 1e-12
    q = from_improved_diffusion(learn_sigma=True, timestep_respacing="ddim50", use_ddim=True)
    assert q["sampler"] == "ddim" and q["num_steps"] == 50
    assert q["options"]["final_step_noise"] is False
    assert from_improved_diffusion(sigma_small=True)["options"]["variance_type"] == "fixed_small"
    with pytest.raises(Unsupported, match="strides by 34"):
        from_improved_diffusion(timestep_respacing="ddim30")  # 0, 34, …: not leading (33)


def test_diffusers_config_preset():
    diffusers = pytest.importorskip("diffusers")
    p = from_diffusers_config(diffusers.DDPMScheduler(variance_type="learned").config)
    assert p["sampler"] == "ddpm" and p["options"]["variance_type"] == "learned_linear"
    e = from_diffusers_config(
        diffusers.EulerDiscreteScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            use_karras_sigmas=True,
        )
    )
    assert e["schedule"] == "scaled_linear" and e["kind"] == "σ-view Euler, Karras σ"
    flow = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    f = from_diffusers_config(dict(flow.config), class_name="FlowMatchEulerDiscreteScheduler")
    assert f["sampler"] == "flow_euler" and f["kind"] == "flow matching Euler, shift 3"


def test_posterior_mean_variance_logvariance_in_one_call():
    s = make_schedule("linear", 100)
    rng = np.random.default_rng(0)
    x0, xt = rng.standard_normal((3, 2, 4, 4)), rng.standard_normal((3, 2, 4, 4))
    t = np.array([1, 2, 77])
    mean, var, logv = posterior.posterior_mean_var_logvar(s, x0, xt, t)
    m2, v2 = posterior.posterior_mean_var(s, x0, xt, t)
    assert var.shape == logv.shape == v2.shape == (3, 1, 1, 1)
    assert np.array_equal(mean, m2) and np.array_equal(var, v2)
    assert np.allclose(np.exp(logv[1:]), var[1:], rtol=1e-14)  # t = 1: log β̃_2 (eq. 4.3)
    assert logv[0, 0, 0, 0] == np.log(posterior.posterior_variance(s, 2))


def _k_sampling():
    from tests._kdiffusion import load_sampling

    try:
        return load_sampling()
    except ModuleNotFoundError as e:  # torchsde's own dependency (trampoline) may be absent
        pytest.skip(f"k-diffusion's sampling module cannot be imported: {e}")


K_FUNCS = [
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_lms",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m_sde",
    "sample_dpm_2",
]


@pytest.mark.parametrize("fn", K_FUNCS)
def test_k_diffusion_functions_verified_with_no_wrapper(fn):
    K = _k_sampling()
    rep = verify.run(getattr(K, fn))
    assert isinstance(verify.as_target(getattr(K, fn)), KDiffusionTarget)
    assert rep.verdict == "PASS", "\n".join(rep.failure_summary())
    traj = [c for c in rep.checks if c.op == "trajectory"]
    assert traj and all(c.max_abs < 1e-10 * (1 + 80) for c in traj)  # float64 on both sides
