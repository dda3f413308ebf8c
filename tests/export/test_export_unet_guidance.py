"""A tiny text-conditioned diffusers UNet (random weights), exported with torch.onnx.export,
sampled with classifier-free guidance by the ONNX samplers in every mode against the float64
reference loop around the same network under the same noise (docs/math.md §20; float32
2e-5 relative).  Cross-check tier: needs torch and diffusers."""

from __future__ import annotations

import numpy as np
import pytest

from refdiff.guidance import guided_denoiser
from refdiff.respacing import space_timesteps
from refdiff.sampling import ddim_sample, ddpm_sample
from refdiff.schedule import linear, respace

pytestmark = pytest.mark.crosscheck
torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
ex = pytest.importorskip("refdiff.export")

F32_TOL = 2e-5


def rel_err(y, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(y, np.float64) - ref)) / max(1.0, np.max(np.abs(ref))))


@pytest.fixture(scope="module")
def unet_path(tmp_path_factory):
    torch.manual_seed(0)
    u = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=4,
    ).eval()

    class Wrap(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    path = tmp_path_factory.mktemp("unet") / "unet.onnx"
    args = (torch.randn(2, 4, 8, 8), torch.tensor([5, 5]), torch.randn(2, 3, 8))
    batch = {0: "B"}
    with _quiet():
        torch.onnx.export(
            Wrap(u),
            args,
            str(path),
            input_names=["sample", "timestep", "encoder_hidden_states"],
            output_names=["out_sample"],
            dynamic_axes={
                n: batch for n in ("sample", "timestep", "encoder_hidden_states", "out_sample")
            },
            opset_version=17,
            dynamo=False,
        )
    return path


def _quiet():
    import contextlib
    import warnings

    @contextlib.contextmanager
    def cm():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield

    return cm()


KW = dict(prediction_type="epsilon", timestep_convention="index", provider="cpu")


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_guided_unet_matches_the_reference_in_every_mode(unet_path, sampler):
    from refdiff.export.noise import host_noise

    sched = respace(linear(100), space_timesteps(100, "6"))
    B, seed = 3, 4
    rng = np.random.default_rng(2)
    c = {"encoder_hidden_states": rng.standard_normal((B, 3, 8))}
    u = {"encoder_hidden_states": np.zeros((1, 3, 8))}
    opts = {"eta": 0.5} if sampler == "ddim" else {}
    den = ex.OnnxDenoiser(unet_path, **KW)
    f = guided_denoiser(den.with_cond(c), den.with_cond(u), 4.0, 0.7)
    x_T, z = host_noise(seed, sched.T, (B, 4, 8, 8))
    ref = {"ddpm": ddpm_sample, "ddim": ddim_sample}[sampler](
        f, sched, x_T=x_T, step_noise=z, **opts
    )
    plain = {"ddpm": ddpm_sample, "ddim": ddim_sample}[sampler](
        den.with_cond(c), sched, x_T=x_T, step_noise=z, **opts
    )
    assert rel_err(plain, ref) > 1e-2  # guidance matters here
    for mode in ex.MODES:
        for gm in ("batched", "two_pass"):
            s = ex.OrtSampler(
                unet_path,
                sched,
                sampler=sampler,
                mode=mode,
                guidance_scale=4.0,
                guidance_rescale=0.7,
                guidance_mode=gm,
                **KW,
                **opts,
            )
            y = s.sample(shape=(B, 4, 8, 8), seed=seed, cond=c, uncond=u)
            assert rel_err(y, ref) < F32_TOL, (mode, gm)
