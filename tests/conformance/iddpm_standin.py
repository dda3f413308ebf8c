"""A minimal stand-in for improved-diffusion's ``gaussian_diffusion`` module (not on PyPI).

Written for these tests from the facts in /work/shared/PEERS.md (attribute and method names,
enums, the float64 NumPy tables looked up as float32 tensors, ``torch.randn_like`` for the
noise, the FIXED_LARGE and LEARNED_RANGE variances, DDIM ending at ᾱ = 1 with no noise at the
last step); it mirrors the interface refdiff's adapter relies on, not the peer's code.
"""

from __future__ import annotations

import enum
import math

import numpy as np
import torch as th


def betas_for_alpha_bar(T: int, alpha_bar, max_beta: float = 0.999) -> np.ndarray:
    """β_i = min(1 − ᾱ((i+1)/T)/ᾱ(i/T), max_beta)."""
    return np.array(
        [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    )


def get_named_beta_schedule(name: str, T: int) -> np.ndarray:
    """``linear``: β from 1e-4·1000/T to 0.02·1000/T (float64); ``cosine``: Nichol & Dhariwal."""
    if name == "linear":
        scale = 1000 / T
        return np.linspace(scale * 0.0001, scale * 0.02, T, dtype=np.float64)
    if name == "cosine":
        return betas_for_alpha_bar(T, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
    raise NotImplementedError(name)


class ModelMeanType(enum.Enum):
    PREVIOUS_X = enum.auto()
    START_X = enum.auto()
    EPSILON = enum.auto()


class ModelVarType(enum.Enum):
    LEARNED = enum.auto()
    FIXED_SMALL = enum.auto()
    FIXED_LARGE = enum.auto()
    LEARNED_RANGE = enum.auto()


class LossType(enum.Enum):
    MSE = enum.auto()
    KL = enum.auto()


def _extract_into_tensor(arr: np.ndarray, timesteps: th.Tensor, shape) -> th.Tensor:
    """arr[t] as a float32 tensor broadcast to ``shape`` (the float32 look-up)."""
    res = th.from_numpy(arr)[timesteps].float()
    while len(res.shape) < len(shape):
        res = res[..., None]
    return res.expand(shape)


class GaussianDiffusion:
    def __init__(
        self, *, betas, model_mean_type, model_var_type, loss_type, rescale_timesteps=False
    ):
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.rescale_timesteps = rescale_timesteps
        self.betas = np.array(betas, dtype=np.float64)
        self.num_timesteps = int(self.betas.shape[0])
        alphas = 1.0 - self.betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = (
            self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
        )
        self.posterior_mean_coef1 = (
            self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )

    def q_sample(self, x_start, t, noise=None):
        if noise is None:
            noise = th.randn_like(x_start)
        return (
            _extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def q_posterior_mean_variance(self, x_start, x_t, t):
        mean = (
            _extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
            + _extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        var = _extract_into_tensor(self.posterior_variance, t, x_t.shape)
        logv = _extract_into_tensor(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, var, logv

    def _scale_timesteps(self, t):
        return t.float() * (1000.0 / self.num_timesteps) if self.rescale_timesteps else t

    def _predict_xstart_from_eps(self, x_t, t, eps):
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps
        )

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart
        ) / _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape)

    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        model_kwargs = model_kwargs or {}
        B, C = x.shape[:2]
        out = model(x, self._scale_timesteps(t), **model_kwargs)
        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            out, var_values = th.split(out, C, dim=1)
            if self.model_var_type == ModelVarType.LEARNED:
                log_var = var_values
            else:
                lo = _extract_into_tensor(self.posterior_log_variance_clipped, t, x.shape)
                hi = _extract_into_tensor(np.log(self.betas), t, x.shape)
                frac = (var_values + 1) / 2
                log_var = frac * hi + (1 - frac) * lo
            var = th.exp(log_var)
        else:
            if self.model_var_type == ModelVarType.FIXED_LARGE:
                v = np.append(self.posterior_variance[1], self.betas[1:])
                lv = np.log(v)
            else:
                v, lv = self.posterior_variance, self.posterior_log_variance_clipped
            var = _extract_into_tensor(v, t, x.shape)
            log_var = _extract_into_tensor(lv, t, x.shape)

        def process(x0):
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.model_mean_type == ModelMeanType.START_X:
            pred_xstart = process(out)
        elif self.model_mean_type == ModelMeanType.EPSILON:
            pred_xstart = process(self._predict_xstart_from_eps(x, t, out))
        else:
            raise NotImplementedError(self.model_mean_type)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": var, "log_variance": log_var, "pred_xstart": pred_xstart}

    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        noise = th.randn_like(x)
        nonzero = (t != 0).float().view(-1, *([1] * (len(x.shape) - 1)))
        sample = out["mean"] + nonzero * th.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample(
        self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None, eta=0.0
    ):
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        ab = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        abp = _extract_into_tensor(self.alphas_cumprod_prev, t, x.shape)
        sigma = eta * th.sqrt((1 - abp) / (1 - ab)) * th.sqrt(1 - ab / abp)
        noise = th.randn_like(x)
        mean = out["pred_xstart"] * th.sqrt(abp) + th.sqrt(1 - abp - sigma**2) * eps
        nonzero = (t != 0).float().view(-1, *([1] * (len(x.shape) - 1)))
        return {"sample": mean + nonzero * sigma * noise, "pred_xstart": out["pred_xstart"]}


class SpacedDiffusion(GaussianDiffusion):
    """The diffusion on the kept steps ``use_timesteps``: β from the kept ᾱ, the model called
    with the original step (``timestep_map``)."""

    def __init__(self, use_timesteps, **kwargs):
        self.use_timesteps = set(use_timesteps)
        self.original_num_steps = len(kwargs["betas"])
        full = np.cumprod(1.0 - np.asarray(kwargs["betas"], dtype=np.float64))
        self.timestep_map = sorted(self.use_timesteps)
        kept = full[self.timestep_map]
        kwargs["betas"] = 1.0 - kept / np.append(1.0, kept[:-1])
        super().__init__(**kwargs)

    def _wrap(self, model):
        table = th.tensor(self.timestep_map)

        def wrapped(x, t, **kw):
            return model(x, table[t], **kw)

        return wrapped

    def p_mean_variance(self, model, *args, **kwargs):
        return super().p_mean_variance(self._wrap(model), *args, **kwargs)


def space_timesteps(num_timesteps: int, section_counts: str):
    """``"ddimN"``: every s-th step from 0 for the first stride s giving exactly N steps;
    ``"N"``: N steps evenly spread (one section)."""
    if section_counts.startswith("ddim"):
        n = int(section_counts[4:])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == n:
                return set(range(0, num_timesteps, stride))
        raise ValueError(f"cannot take exactly {n} steps with a fixed stride")
    n = int(section_counts)
    if n == 1:
        return {0}
    frac = (num_timesteps - 1) / (n - 1)
    return {round(i * frac) for i in range(n)}


def create_gaussian_diffusion(
    *,
    steps=1000,
    learn_sigma=False,
    sigma_small=False,
    noise_schedule="linear",
    predict_xstart=False,
    timestep_respacing="",
):
    """script_util.create_gaussian_diffusion's interface: a SpacedDiffusion (all steps kept
    when ``timestep_respacing`` is empty)."""
    if learn_sigma:
        var = ModelVarType.LEARNED_RANGE
    else:
        var = ModelVarType.FIXED_SMALL if sigma_small else ModelVarType.FIXED_LARGE
    return SpacedDiffusion(
        use_timesteps=space_timesteps(steps, timestep_respacing or str(steps)),
        betas=get_named_beta_schedule(noise_schedule, steps),
        model_mean_type=ModelMeanType.START_X if predict_xstart else ModelMeanType.EPSILON,
        model_var_type=var,
        loss_type=LossType.MSE,
    )


# what a user's script holds: `refdiff verify path/to/this.py:diffusion` takes it as is
diffusion = create_gaussian_diffusion()
diffusion_learned = create_gaussian_diffusion(learn_sigma=True, noise_schedule="cosine")
diffusion_ddim50 = create_gaussian_diffusion(timestep_respacing="ddim50")
