"""Built-in adapters for the peers people port from, and presets that turn a peer's
configuration into refdiff's schedule and options (docs/verify.md §Peers).

- :class:`GaussianDiffusionTarget`: an improved-/guided-diffusion ``GaussianDiffusion``
  object (``betas``, ``alphas_cumprod``, ``q_sample``, ``q_posterior_mean_variance``,
  ``p_sample``, ``ddim_sample``, ``model_mean_type``/``model_var_type`` enums), verified
  without a wrapper: the adapter rebuilds the object's class for each schedule and option
  set, hands ``p_sample``/``ddim_sample`` a model that returns the case's output and injects
  the noise by replacing ``torch.randn_like`` during the call.
- :class:`KDiffusionTarget`: a k-diffusion sampling function (``sample_euler``, …), run as a
  whole trajectory with its ``noise_sampler`` (or ``torch.randn_like``) returning the
  injected noise.
- :func:`from_diffusers_config`, :func:`from_improved_diffusion`: presets.

Nothing here imports torch: the peer's own module already did, and tensors cross by
duck typing (:mod:`.adapters`).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ..errors import InputError
from .adapters import Unsupported, to_numpy
from .kinds import SchedulerKind
from .protocol import ProtocolTarget

__all__ = [
    "looks_like_gaussian_diffusion",
    "looks_like_k_sampler",
    "GaussianDiffusionTarget",
    "KDiffusionTarget",
    "as_peer_target",
    "from_diffusers_config",
    "from_improved_diffusion",
    "IDDPM_SCHEDULES",
    "IDDPM_VARIANCES",
]

# improved-diffusion's names -> refdiff's (its "linear" scales β by 1000/T: linear_iddpm)
IDDPM_SCHEDULES = {"linear": "linear_iddpm", "cosine": "cosine"}
IDDPM_VARIANCES = {
    "FIXED_SMALL": "fixed_small",
    "FIXED_LARGE": "fixed_large_iddpm",
    "LEARNED": "learned",
    "LEARNED_RANGE": "learned_range",
}
IDDPM_MEANS = {"EPSILON": "epsilon", "START_X": "x0", "PREVIOUS_X": None}


# -- presets ----------------------------------------------------------------------------------
def from_improved_diffusion(
    *,
    noise_schedule: str = "linear",
    diffusion_steps: int = 1000,
    learn_sigma: bool = False,
    sigma_small: bool = False,
    predict_xstart: bool = False,
    timestep_respacing: str = "",
    use_ddim: bool = False,
    clip_denoised: bool = True,
    **_ignored: object,
) -> dict[str, object]:
    """refdiff's schedule and options for improved-diffusion's ``create_gaussian_diffusion``
    arguments (script_util.py names): ``{"schedule", "T", "num_steps", "spacing",
    "sampler", "options"}``.  Its ``linear`` is refdiff's ``linear_iddpm``; ``FIXED_LARGE``
    (learn_sigma=False, sigma_small=False) is ``fixed_large_iddpm``; learn_sigma is
    ``learned_range``; its log-variance convention at t = 1 is ``next``; DDIM adds no noise
    at the last step and ends at ᾱ = 1."""
    if noise_schedule not in IDDPM_SCHEDULES:
        raise InputError("noise_schedule", f"must be linear or cosine; got {noise_schedule!r}")
    if learn_sigma:
        vt = "learned_range"
    else:
        vt = "fixed_small" if sigma_small else "fixed_large_iddpm"
    pred = "x0" if predict_xstart else "epsilon"
    num_steps: int | None = None
    spacing = "leading"
    if timestep_respacing:
        r = str(timestep_respacing)
        if r.startswith("ddim"):
            num_steps, spacing = int(r[4:]), "leading"
            T = int(diffusion_steps)
            stride = next((s for s in range(1, T) if len(range(0, T, s)) == num_steps), None)
            if stride != T // num_steps:
                raise Unsupported(
                    f"timestep_respacing={r!r} strides by {stride} (the first stride giving "
                    f"exactly {num_steps} steps), refdiff's leading spacing by T//N = "
                    f"{T // num_steps}: no refdiff spacing matches"
                )
        elif r.isdigit():
            num_steps, spacing = int(r), "linspace"
        else:
            raise Unsupported(f"timestep_respacing={r!r} (section lists) has no refdiff spacing")
    clip = 1.0 if clip_denoised else None
    if use_ddim:
        opts = {"prediction_type": pred, "eta": 0.0, "final_alpha_bar": "one", "clip": clip}
        opts["final_step_noise"] = False
        sampler = "ddim"
    else:
        opts = {"prediction_type": pred, "variance_type": vt, "clip": clip}
        opts["log_variance_clipping"] = "next"
        sampler = "ddpm"
    return {
        "schedule": IDDPM_SCHEDULES[noise_schedule],
        "T": int(diffusion_steps),
        "num_steps": num_steps,
        "spacing": spacing,
        "sampler": sampler,
        "options": opts,
    }


_DF_SCHEDULES = {
    ("linear", 1e-4, 0.02): "linear",
    ("scaled_linear", 0.00085, 0.012): "scaled_linear",
    ("squaredcos_cap_v2", None, None): "cosine",
    ("sigmoid", 1e-4, 0.02): "sigmoid",
}
_DF_PREDICTION = {"epsilon": "epsilon", "sample": "x0", "v_prediction": "v"}
_DF_VARIANCE = {
    "fixed_small": "fixed_small",
    "fixed_small_log": "fixed_small",
    "fixed_large": "fixed_large",
    "learned": "learned_linear",
    "learned_range": "learned_range",
}


def from_diffusers_config(config: Any, class_name: str | None = None) -> dict:
    """refdiff's schedule and options for a diffusers scheduler or its ``scheduler.config``
    dict (``class_name``, the dict's ``_class_name`` or the scheduler's class says which
    scheduler; default DDPMScheduler): ``{"schedule", "T", "num_steps", "spacing",
    "steps_offset", "zero_terminal_snr", "sampler", "options", "kind"}``.
    ``learned`` (a linear variance in diffusers) is refdiff's ``learned_linear``."""
    from .kinds import scheduler_kind

    if not isinstance(config, Mapping) and isinstance(getattr(config, "config", None), Mapping):
        class_name = class_name or type(config).__name__
        config = config.config
    name = class_name or str(config.get("_class_name", "DDPMScheduler"))
    bs = str(config.get("beta_schedule", "linear"))
    b0, b1 = config.get("beta_start", 1e-4), config.get("beta_end", 0.02)
    key = (bs, None, None) if bs == "squaredcos_cap_v2" else (bs, float(b0), float(b1))
    sched = _DF_SCHEDULES.get(key)  # type: ignore[arg-type]
    if sched is None:
        raise Unsupported(f"beta_schedule={bs!r} β∈[{b0}, {b1}] has no named refdiff schedule")
    fake = type(name, (), {"config": dict(config), "step": lambda *a, **k: None})()
    kind = scheduler_kind(fake)
    opts: dict[str, object] = {}
    pt = _DF_PREDICTION.get(str(config.get("prediction_type", "epsilon")))
    if pt is None:
        raise Unsupported(f"prediction_type={config.get('prediction_type')!r}")
    opts["prediction_type"] = pt
    sampler: str | None = kind.sampler
    if kind.family == "ddpm":
        vt = _DF_VARIANCE.get(str(config.get("variance_type", "fixed_small")))
        if vt is None:
            raise Unsupported(f"variance_type={config.get('variance_type')!r} (see #14569)")
        opts.update(variance_type=vt, log_variance_clipping="floor")
        sampler = "ddpm"
    elif kind.family == "ddim":
        opts.update(final_alpha_bar="one" if config.get("set_alpha_to_one", True) else "first")
        opts["final_step_noise"] = True
        sampler = "ddim"
    else:
        opts.update(kind.options)
    if config.get("clip_sample") and kind.family in ("ddpm", "ddim"):
        opts["clip"] = float(config.get("clip_sample_range", 1.0))
    if config.get("thresholding"):
        opts["threshold_ratio"] = float(config.get("dynamic_thresholding_ratio", 0.995))
        opts["threshold_max"] = float(config.get("sample_max_value", 1.0))
    return {
        "schedule": sched,
        "T": int(config.get("num_train_timesteps", 1000)),
        "num_steps": None,
        "spacing": str(config.get("timestep_spacing", "leading")),
        "steps_offset": int(config.get("steps_offset", 0)),
        "zero_terminal_snr": bool(config.get("rescale_betas_zero_snr", False)),
        "sampler": sampler,
        "options": opts,
        "kind": kind.label,
    }


# -- improved-/guided-diffusion -----------------------------------------------------------------
def looks_like_gaussian_diffusion(obj: Any) -> bool:
    """True for an improved-/guided-diffusion ``GaussianDiffusion`` (instance)."""
    need = ("q_sample", "p_sample", "ddim_sample", "q_posterior_mean_variance")
    return (
        not inspect.isclass(obj)
        and all(callable(getattr(obj, m, None)) for m in need)
        and hasattr(obj, "betas")
        and hasattr(obj, "model_var_type")
        and hasattr(obj, "model_mean_type")
    )


def _torch() -> Any:
    th = sys.modules.get("torch")
    if th is None:
        raise Unsupported("torch is not imported (the peer needs it)")
    return th


@contextlib.contextmanager
def _randn_like_returns(noise: Any) -> Iterator[None]:
    """``torch.randn_like`` returns ``noise`` during the block (the peers' own noise draw)."""
    th = _torch()
    orig = th.randn_like

    def fake(x, *a, **k):
        if tuple(x.shape) != tuple(noise.shape):
            raise RuntimeError(f"noise of shape {tuple(x.shape)} asked, {tuple(noise.shape)} given")
        return noise.to(dtype=x.dtype)

    th.randn_like = fake
    try:
        yield
    finally:
        th.randn_like = orig


def _base_diffusion_class(cls: type) -> type:
    """The class in ``cls``'s MRO built from ``betas`` (a ``SpacedDiffusion`` is built from
    ``use_timesteps`` and wraps the model: its ``GaussianDiffusion`` base is rebuilt instead,
    with the respaced β — what ``SpacedDiffusion`` itself computes)."""
    for c in cls.__mro__:
        try:
            params = inspect.signature(c.__init__).parameters
        except (TypeError, ValueError):
            continue
        if "betas" in params and "use_timesteps" not in params:
            return c
    raise InputError("obj", f"{cls.__name__}: no class in its MRO is built from betas")


class _GDProtocol:
    """The verify protocol (index_base 0) on top of a GaussianDiffusion class."""

    index_base = 0

    def __init__(self, obj: Any, state_dtype: str):
        self.obj = obj
        self.cls = _base_diffusion_class(type(obj))
        self.mean_enum = type(obj.model_mean_type)
        self.var_enum = type(obj.model_var_type)
        self.mod = sys.modules.get(self.cls.__module__)
        self.state_dtype = state_dtype
        self.loss_type = getattr(obj, "loss_type", None)
        self._cache: dict[tuple, Any] = {}

    # building the peer
    def _build(self, betas: np.ndarray, mean: str, var: str) -> Any:
        key = (betas.tobytes(), mean, var)
        if key not in self._cache:
            kw: dict[str, Any] = {
                "betas": betas,
                "model_mean_type": self.mean_enum[mean],
                "model_var_type": self.var_enum[var],
            }
            params = inspect.signature(self.cls.__init__).parameters
            if "loss_type" in params:
                kw["loss_type"] = self.loss_type
            if "rescale_timesteps" in params:
                kw["rescale_timesteps"] = False
            self._cache[key] = self.cls(**kw)
        return self._cache[key]

    @staticmethod
    def _kept_betas(alpha_bar: np.ndarray, timesteps: np.ndarray | None) -> tuple[np.ndarray, Any]:
        ab = np.asarray(alpha_bar, dtype=np.float64)
        if timesteps is None:
            kept = np.arange(ab.shape[0])
        else:
            kept = np.sort(np.asarray(timesteps, dtype=np.int64))
        a = ab[kept]
        prev = np.concatenate([[1.0], a[:-1]])
        return 1.0 - a / prev, kept

    def _t(self, x: Any, i: int) -> Any:
        th = _torch()
        return th.full((x.shape[0],), int(i), dtype=th.int64)

    def _x(self, a: np.ndarray) -> Any:
        th = _torch()
        return th.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=self.state_dtype)))

    # the protocol
    def alpha_bar(self, schedule: str, T: int, zero_terminal_snr: bool = False):
        if zero_terminal_snr:
            raise Unsupported("improved-diffusion has no zero terminal SNR option")
        f = getattr(self.mod, "get_named_beta_schedule", None)
        if f is None:
            raise Unsupported("the peer's module has no get_named_beta_schedule")
        names = {v: k for k, v in IDDPM_SCHEDULES.items()}
        if schedule == "linear" and T == 1000:
            names["linear"] = "linear"  # equal to linear_iddpm at T = 1000 only
        if schedule not in names:
            raise Unsupported(
                f"improved-diffusion has no {schedule!r} schedule (its 'linear' is refdiff's "
                "linear_iddpm, β scaled by 1000/T)"
            )
        betas = np.asarray(f(names[schedule], T), dtype=np.float64)
        return np.cumprod(1.0 - betas)

    def q_sample(self, alpha_bar, x0, t, noise):
        betas, _ = self._kept_betas(alpha_bar, None)
        d = self._build(betas, "EPSILON", "FIXED_SMALL")
        x = self._x(x0)
        return to_numpy(d.q_sample(x, self._t(x, t), noise=self._x(noise)))

    def posterior(self, alpha_bar, x0, x_t, t):
        betas, _ = self._kept_betas(alpha_bar, None)
        d = self._build(betas, "EPSILON", "FIXED_SMALL")
        x = self._x(x_t)
        mean, var, _logv = d.q_posterior_mean_variance(self._x(x0), x, self._t(x, t))
        return to_numpy(mean), to_numpy(var)

    def _mean_var(self, prediction_type: str, variance_type: str) -> tuple[str, str]:
        means = {v: k for k, v in IDDPM_MEANS.items() if v}
        if prediction_type not in means:
            raise Unsupported(f"prediction_type={prediction_type!r} (improved-diffusion: ε, x0)")
        vars_ = {v: k for k, v in IDDPM_VARIANCES.items()}
        vars_["fixed_large"] = "FIXED_LARGE"  # β_t: equal to fixed_large_iddpm where noise is
        if variance_type not in vars_:
            raise Unsupported(f"variance_type={variance_type!r} has no improved-diffusion twin")
        return means[prediction_type], vars_[variance_type]

    def _model(self, out: Any) -> Callable:
        def model(x, t, **kw):
            return out

        return model

    def ddpm_step(
        self,
        alpha_bar,
        timesteps,
        t,
        x_t,
        model_output,
        noise,
        *,
        prediction_type="epsilon",
        variance_type="fixed_small",
        clip=None,
        threshold_ratio=None,
        model_variance=None,
        **other,
    ):
        if threshold_ratio is not None or (clip is not None and clip != 1.0):
            raise Unsupported("improved-diffusion clips to [-1, 1] only (clip_denoised)")
        mean, var = self._mean_var(prediction_type, variance_type)
        betas, kept = self._kept_betas(alpha_bar, timesteps)
        d = self._build(betas, mean, var)
        i = int(np.flatnonzero(kept == int(t))[0])
        out = np.asarray(model_output, dtype=np.float64)
        if model_variance is not None:
            out = np.concatenate([out, np.asarray(model_variance, dtype=np.float64)], axis=1)
        x = self._x(x_t)
        with _randn_like_returns(self._x(noise)):
            res = d.p_sample(self._model(self._x(out)), x, self._t(x, i), clip_denoised=clip == 1.0)
        return to_numpy(res["sample"])

    def ddim_step(
        self,
        alpha_bar,
        timesteps,
        t,
        x_t,
        model_output,
        noise,
        *,
        prediction_type="epsilon",
        eta=0.0,
        final_alpha_bar="one",
        clip=None,
        threshold_ratio=None,
        rederive_eps=True,
        **other,
    ):
        if final_alpha_bar != "one":
            raise Unsupported("improved-diffusion's DDIM ends at ᾱ = 1 (final_alpha_bar='one')")
        if threshold_ratio is not None or (clip is not None and clip != 1.0):
            raise Unsupported("improved-diffusion clips to [-1, 1] only (clip_denoised)")
        if clip is not None and not rederive_eps:
            raise Unsupported("improved-diffusion re-derives ε̂ from the clipped x̂0")
        mean, _ = self._mean_var(prediction_type, "fixed_small")
        betas, kept = self._kept_betas(alpha_bar, timesteps)
        d = self._build(betas, mean, "FIXED_SMALL")
        i = int(np.flatnonzero(kept == int(t))[0])
        x = self._x(x_t)
        with _randn_like_returns(self._x(noise)):
            res = d.ddim_sample(
                self._model(self._x(model_output)),
                x,
                self._t(x, i),
                clip_denoised=clip == 1.0,
                eta=float(eta),
            )
        return to_numpy(res["sample"])


class GaussianDiffusionTarget(ProtocolTarget):
    """An improved-/guided-diffusion ``GaussianDiffusion`` as a verify target.

    ``dtype`` is the dtype of the states handed to it (default float64); the tolerance is
    mixed — its coefficient tables are looked up as float32 (``_extract_into_tensor``), so
    the schedule precision is float32 (docs/verify.md §Tolerances).  Conventions:
    ``log_variance_clipping="next"``, no noise at the last DDIM step.
    """

    def __init__(self, obj: Any, name: str | None = None, dtype: str = "float64"):
        if not looks_like_gaussian_diffusion(obj):
            raise InputError("obj", f"{type(obj).__name__} is not a GaussianDiffusion object")
        super().__init__(_GDProtocol(obj, dtype), name=name or type(obj).__name__)
        self.dtype = dtype
        self.schedule_dtype = "float32"
        self.conventions = {"log_variance_clipping": "next", "final_step_noise": False}
        var = str(getattr(obj.model_var_type, "name", obj.model_var_type))
        mean = str(getattr(obj.model_mean_type, "name", obj.model_mean_type))
        self.kind_info = SchedulerKind(
            "ddpm",
            f"improved-diffusion {type(obj).__name__} ({mean}, {var} → refdiff "
            f"{IDDPM_MEANS.get(mean)}, {IDDPM_VARIANCES.get(var)})",
        )

    @property
    def tolerance(self):
        from .tolerance import Tolerance

        return Tolerance(state=self.dtype, schedule=self.schedule_dtype)


# -- k-diffusion ------------------------------------------------------------------------------
K_SAMPLERS: dict[str, tuple[str | None, dict, dict, str | None]] = {
    # k-diffusion function: (refdiff sampler, its kwargs, refdiff options, refusal)
    "sample_euler": ("euler", {}, {"churn_model_input": "churned"}, None),
    "sample_euler_ancestral": ("euler_ancestral", {"eta": 1.0}, {"eta": 1.0}, None),
    "sample_heun": ("heun", {}, {}, None),
    "sample_lms": ("lms", {"order": 4}, {"order": 4}, None),
    "sample_dpmpp_2m": ("dpmpp_2m", {}, {"lower_order_final": False}, None),
    "sample_dpmpp_2m_sde": (
        "dpmpp_2m_sde",
        {"eta": 1.0, "solver_type": "midpoint"},
        {"lower_order_final": False, "eta": 1.0, "solver_type": "midpoint"},
        None,
    ),
    "sample_dpmpp_3m_sde": (
        "dpmpp_3m_sde",
        {"eta": 1.0},
        {"lower_order_final": False, "eta": 1.0},
        None,
    ),
    "sample_dpm_2": ("dpm_2", {}, {}, None),
    "sample_dpm_2_ancestral": (None, {}, {}, "ancestral DPM-Solver-2 is not in refdiff.solvers"),
    "sample_dpmpp_2s_ancestral": (None, {}, {}, "DPM-Solver++(2S) is not in refdiff.solvers"),
    "sample_dpmpp_sde": (None, {}, {}, "DPM-Solver++ SDE (Brownian tree) is not in refdiff"),
}


def looks_like_k_sampler(obj: Any) -> bool:
    """True for a k-diffusion sampling function (``sample_*`` taking model, x, sigmas)."""
    if not callable(obj) or inspect.isclass(obj):
        return False
    name = getattr(obj, "__name__", "")
    if not name.startswith("sample_"):
        return False
    try:
        params = list(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return False
    return params[:3] == ["model", "x", "sigmas"]


class KDiffusionTarget:
    """A k-diffusion sampling function as a verify target: whole trajectories on Karras
    grids (float64 tensors), noise injected through ``noise_sampler`` (or
    ``torch.randn_like`` for the churn), compared with :mod:`refdiff.solvers`."""

    index_base = 0
    family = "ksampler"
    dtype = "float64"
    conventions: dict = {}
    samplers: set = set()

    def __init__(self, fn: Callable, name: str | None = None):
        fname = getattr(fn, "__name__", "")
        sampler, kw, opts, refused = K_SAMPLERS.get(
            fname, (None, {}, {}, f"{fname} has no reference in refdiff.solvers")
        )
        self.fn, self.kw = fn, kw
        self.name = name or fname
        self.kind_info = SchedulerKind(
            "sigma" if sampler else "refused",
            f"k-diffusion {fname} (σ view, k-diffusion conventions)",
            sampler,
            opts,
            "ve",
            refused,
        )

    def sigmas(self, setting) -> np.ndarray:
        """The grid the function is run on: Karras (ρ = 7) over the schedule's σ range."""
        from .. import sigma as sg

        base = setting.base()
        return sg.karras(setting.N, float(base.sigma[1]), float(base.sigma[base.T]))

    def trajectory(self, setting, denoiser, velocity, x_T, step_noise):
        """(grid, states after each step (n, B, ...)) of the function on :meth:`sigmas`."""
        if self.kind_info.refused:
            raise Unsupported(self.kind_info.refused)
        th = _torch()
        grid = self.sigmas(setting)
        calls = iter(range(len(step_noise)))
        states: list[np.ndarray] = []

        def noise_sampler(s, s_next):
            return th.from_numpy(step_noise[next(calls)])

        def model(x, s, **kw):
            return th.from_numpy(denoiser(x.detach().numpy(), s.detach().numpy()))

        def callback(info):
            if info["i"] > 0:
                states.append(info["x"].detach().numpy().copy())

        extra: dict[str, Any] = {}
        params = inspect.signature(self.fn).parameters
        if "noise_sampler" in params:
            extra["noise_sampler"] = noise_sampler
        if "disable" in params:
            extra["disable"] = True
        z = iter(step_noise)
        orig = th.randn_like
        th.randn_like = lambda x, *a, **k: th.from_numpy(next(z))
        try:
            out = self.fn(
                model,
                th.from_numpy(x_T),
                th.from_numpy(grid),
                callback=callback,
                **self.kw,
                **extra,
            )
        finally:
            th.randn_like = orig
        states.append(out.detach().numpy())
        return grid, np.stack(states).astype(np.float64)


def as_peer_target(obj: Any, name: str | None = None) -> Any | None:
    """The built-in adapter for ``obj`` when it is a peer object refdiff knows, else None."""
    if looks_like_gaussian_diffusion(obj):
        return GaussianDiffusionTarget(obj, name=name)
    if looks_like_k_sampler(obj):
        return KDiffusionTarget(obj, name=name)
    return None
