"""Duck-typed bridges to other frameworks: arrays in and out, and diffusers-style schedulers.

refdiff never imports torch, jax or diffusers.  Arrays cross the boundary by duck typing:

- into NumPy (:func:`to_numpy`): DLPack (``__dlpack__``), then ``.numpy()`` (after
  ``.detach()``/``.cpu()`` when the object has them), then ``__array__``;
- out of NumPy (:func:`from_numpy_like`): into the framework of a *template* array the
  implementation already holds (e.g. a scheduler's ``alphas_cumprod``), through that
  framework's own ``from_dlpack`` (found in ``sys.modules``, already imported by the caller) or
  the template's ``new_tensor``.

:class:`DiffusersTarget` drives a scheduler with the diffusers interface
(``set_timesteps``, ``step``, ``alphas_cumprod``, optional ``add_noise``) through the checks of
:mod:`refdiff.verify`.  See docs/verify.md for the option mapping.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ..errors import DTypeError, InputError

__all__ = [
    "to_numpy",
    "from_numpy_like",
    "looks_like_diffusers_scheduler",
    "DiffusersTarget",
    "DIFFUSERS_SCHEDULES",
    "DIFFUSERS_CONVENTIONS",
]


# -- arrays ---------------------------------------------------------------------------------
def to_numpy(x: Any, name: str = "array") -> np.ndarray:
    """Any array-like (NumPy, DLPack producer, object with ``.numpy()`` or ``__array__``) as a
    NumPy array of its own dtype (no copy when avoidable).  Scalars become 0-d arrays."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, int | float | np.generic | list | tuple):
        return np.asarray(x)
    obj = x
    for attr in ("detach", "cpu"):  # torch tensors that need grad or live on a device
        f = getattr(obj, attr, None)
        if callable(f):
            with contextlib.suppress(Exception):
                obj = f()
    if hasattr(obj, "__dlpack__"):
        with contextlib.suppress(Exception):
            return np.from_dlpack(obj)
    f = getattr(obj, "numpy", None)
    if callable(f):
        with contextlib.suppress(Exception):
            return np.asarray(f())
    try:
        a = np.asarray(obj)
    except Exception as e:
        raise DTypeError(name, f"cannot be converted to a NumPy array ({e})") from None
    if a.dtype == object:
        raise DTypeError(name, f"{type(x).__name__} is not an array type refdiff can read")
    return a


def _framework(like: Any):
    root = type(like).__module__.split(".")[0]
    return sys.modules.get(root)


def from_numpy_like(a: np.ndarray, like: Any, dtype: str | None = None) -> Any:
    """``a`` converted into the framework (and device) of the array ``like``.

    ``dtype`` (a NumPy dtype name) is the dtype of the result; by default ``like``'s, when it
    can be read, else ``a``'s.  NumPy templates give NumPy arrays.
    """
    if isinstance(like, np.ndarray) or like is None:
        return np.array(a, dtype=dtype or (like.dtype if like is not None else None))
    if dtype is None:
        with contextlib.suppress(Exception):
            dtype = str(to_numpy(like).dtype)
    arr = np.ascontiguousarray(np.array(a, dtype=dtype or a.dtype, copy=True))
    mod = _framework(like)
    out = None
    if mod is not None and callable(getattr(mod, "from_dlpack", None)):
        with contextlib.suppress(Exception):
            out = mod.from_dlpack(arr)
    if out is None and callable(getattr(like, "new_tensor", None)) and dtype is None:
        out = like.new_tensor(arr)
    if out is None:
        raise DTypeError("like", f"cannot create a {type(like).__name__} from a NumPy array")
    dev = getattr(like, "device", None)
    to = getattr(out, "to", None)
    if dev is not None and callable(to) and str(dev) not in ("cpu", "CPU"):
        out = to(dev)
    return out


# -- diffusers-style schedulers -------------------------------------------------------------
def looks_like_diffusers_scheduler(obj: Any) -> bool:
    """True for a scheduler instance or class with ``set_timesteps`` and ``step`` (and, for an
    instance, ``alphas_cumprod``)."""
    has = all(callable(getattr(obj, m, None)) for m in ("set_timesteps", "step"))
    if not has:
        return False
    return inspect.isclass(obj) or hasattr(obj, "alphas_cumprod")


# refdiff schedule name -> (beta_schedule, beta_start, beta_end)
DIFFUSERS_SCHEDULES: dict[str, tuple[str, float, float]] = {
    "linear": ("linear", 1e-4, 0.02),
    "scaled_linear": ("scaled_linear", 0.00085, 0.012),
    "cosine": ("squaredcos_cap_v2", 1e-4, 0.02),
    "sigmoid": ("sigmoid", 1e-4, 0.02),
}
_PREDICTION = {"epsilon": "epsilon", "x0": "sample", "v": "v_prediction"}
_VARIANCE = {
    "fixed_small": "fixed_small",
    "fixed_large": "fixed_large",
    "learned_linear": "learned",
    "learned_range": "learned_range",
}
# What diffusers does where the peers disagree, as refdiff's named options (docs/math.md §13).
DIFFUSERS_CONVENTIONS: dict[str, object] = {
    "log_variance_clipping": "floor",  # clamp(β̃, 1e-20) before the log (learned_range)
    "final_step_noise": True,  # DDIM adds σ z at the last step whenever η > 0
}


class Unsupported(Exception):
    """The implementation has no equivalent of a requested option (reported, not a failure)."""


class DiffusersTarget:
    """Drives a diffusers-style scheduler through refdiff's checks (see :mod:`refdiff.verify`).

    ``factory`` is a scheduler class, a callable ``factory(**config) -> scheduler``, or a
    scheduler instance (re-created with ``type(obj)(**{**obj.config, **overrides})``).  The
    sampler (``"ddpm"`` or ``"ddim"``) is detected from ``step``'s signature (``eta`` → DDIM).

    ``variance_aliases`` maps a refdiff variance type to the scheduler's own name, overriding
    the default mapping (e.g. ``{"fixed_large": "fixed_large_log"}`` to test that variant).
    ``dtype`` is the dtype of the states handed to ``step`` (default: that of
    ``alphas_cumprod``, float32 for diffusers).

    Noise injection: DDIM's ``step(variance_noise=...)``; for a ``step`` without such an
    argument, the ``randn_tensor`` of the scheduler's module is replaced during the call by a
    function returning the injected noise (the only way to inject noise into diffusers' DDPM).
    """

    def __init__(
        self,
        factory: Any,
        *,
        variance_aliases: Mapping[str, str] | None = None,
        dtype: str | None = None,
        name: str | None = None,
    ):
        self._cache: dict[tuple, Any] = {}
        if not inspect.isclass(factory) and hasattr(factory, "config") and hasattr(factory, "step"):
            inst, cls = factory, type(factory)
            base = dict(getattr(inst, "config", {}))
            base = {k: v for k, v in base.items() if not str(k).startswith("_")}
            self._factory: Callable[..., Any] = lambda **kw: cls(**{**base, **kw})
            probe = inst
        elif callable(factory):
            self._factory = factory
            probe = factory
        else:
            raise InputError(
                "factory", f"{factory!r} is not a scheduler class, factory or instance"
            )
        from .kinds import accepted_config, scheduler_kind

        step = getattr(probe, "step", None)
        if step is None:
            step = self._factory().step
        params = inspect.signature(step).parameters
        # a factory function says nothing itself: its scheduler does
        kind_probe = probe
        if not inspect.isclass(probe) and not hasattr(probe, "step"):
            kind_probe = self._factory()
        self.kind_info = scheduler_kind(kind_probe)
        self.family = self.kind_info.family
        self.accepted = accepted_config(kind_probe)
        if dtype is None:
            inst = probe if hasattr(probe, "alphas_cumprod") else None
            if inst is None:
                with contextlib.suppress(Exception):
                    inst = self._factory()
            table = getattr(inst, "alphas_cumprod", None)
            if table is None:
                table = getattr(inst, "sigmas", None)
            dtype = str(to_numpy(table).dtype) if table is not None else "float32"
        if self.family in ("ddpm", "ddim"):
            self.sampler = self.family
        else:
            self.sampler = "ddim" if "eta" in params else "ddpm"
        self.samplers = {self.sampler} if self.family in ("ddpm", "ddim") else set()
        self.kind, self.kinds = self.sampler, self.samplers  # the former names
        self._variance_noise = "variance_noise" in params
        self.variance_aliases = dict(variance_aliases or {})
        self.dtype = dtype
        self.name = name or getattr(factory, "__name__", type(factory).__name__)
        self.conventions = dict(DIFFUSERS_CONVENTIONS)
        if self.family not in ("ddpm", "ddim"):  # the σ-view options naming its choices
            self.conventions = dict(self.kind_info.options)
        self.index_base = 0
        # diffusers' other names for the fixed variances, checked too (docs/verify.md)
        self.native_variances: dict[str, str] = {}
        if self.family == "ddpm" and (self.accepted is None or "variance_type" in self.accepted):
            if type(probe).__name__ in ("DDPMScheduler", "DDPMParallelScheduler") or (
                inspect.isclass(probe) and probe.__name__ == "DDPMScheduler"
            ):
                self.native_variances = {
                    "fixed_small_log": "fixed_small",
                    "fixed_large_log": "fixed_large",
                }

    # -- building schedulers ----------------------------------------------------------------
    def _config(self, setting, options: Mapping[str, object] | None = None) -> dict:
        if setting.schedule not in DIFFUSERS_SCHEDULES:
            raise Unsupported(f"schedule {setting.schedule!r} has no diffusers beta_schedule")
        bs, b0, b1 = DIFFUSERS_SCHEDULES[setting.schedule]
        if bs == "sigmoid" and self.sampler == "ddim":
            raise Unsupported("DDIMScheduler has no sigmoid beta_schedule")
        cfg: dict[str, object] = {
            "num_train_timesteps": setting.T,
            "beta_schedule": bs,
            "beta_start": b0,
            "beta_end": b1,
            "clip_sample": False,
            "timestep_spacing": setting.spacing,
            "steps_offset": setting.steps_offset,
        }
        if setting.zero_terminal_snr:
            cfg["rescale_betas_zero_snr"] = True
        o = dict(options or {})
        if "prediction_type" in o:
            cfg["prediction_type"] = _PREDICTION[str(o["prediction_type"])]
        clip = o.get("clip")
        if clip is not None:
            cfg["clip_sample"] = True
            cfg["clip_sample_range"] = float(clip)
        if o.get("threshold_ratio") is not None:
            cfg["thresholding"] = True
            cfg["dynamic_thresholding_ratio"] = float(o["threshold_ratio"])
            cfg["sample_max_value"] = float(o.get("threshold_max", 1.0))
        if self.sampler == "ddpm":
            vt = str(o.get("variance_type", "fixed_small"))
            native = o.get("native_variance") or self.variance_aliases.get(vt, _VARIANCE.get(vt))
            if native is None:
                raise Unsupported(f"variance_type={vt!r} has no diffusers equivalent")
            cfg["variance_type"] = native
        else:
            fab = o.get("final_alpha_bar", "one")
            if fab not in ("one", "first"):
                raise Unsupported(f"final_alpha_bar={fab!r} (diffusers: set_alpha_to_one only)")
            cfg["set_alpha_to_one"] = fab == "one"
        return self._accepted_only(cfg)

    def _accepted_only(self, cfg: dict) -> dict:
        """``cfg`` without the keywords the scheduler's constructor does not take (another
        scheduler's options are never injected: a σ-view scheduler has no ``clip_sample``)."""
        if self.accepted is None:
            return cfg
        return {k: v for k, v in cfg.items() if k in self.accepted}

    def _schedule_config(self, setting) -> dict:
        """Only the schedule keywords (ᾱ, spacing, zero terminal SNR) for ``setting``."""
        if setting.schedule not in DIFFUSERS_SCHEDULES:
            raise Unsupported(f"schedule {setting.schedule!r} has no diffusers beta_schedule")
        bs, b0, b1 = DIFFUSERS_SCHEDULES[setting.schedule]
        cfg: dict[str, object] = {
            "num_train_timesteps": setting.T,
            "beta_schedule": bs,
            "beta_start": b0,
            "beta_end": b1,
            "timestep_spacing": setting.spacing,
            "steps_offset": setting.steps_offset,
        }
        if setting.zero_terminal_snr:
            if self.accepted is not None and "rescale_betas_zero_snr" not in self.accepted:
                raise Unsupported("the scheduler has no rescale_betas_zero_snr option")
            cfg["rescale_betas_zero_snr"] = True
        return self._accepted_only(cfg)

    def _build(self, cfg: dict, n: int | None):
        """A scheduler for ``cfg`` with ``set_timesteps(n)`` done (``n=None``: not called).
        The scheduler's own refusals (a ValueError from its constructor or ``set_timesteps``,
        e.g. DDIMInverse's "linspace not supported") are reported as unsupported."""
        key = (n, *sorted((k, repr(v)) for k, v in cfg.items()))
        if key not in self._cache:
            try:
                s = self._factory(**cfg)
            except (ValueError, NotImplementedError) as e:
                raise Unsupported(f"the scheduler refuses {options_text(cfg)}: {e}") from None
            if n is not None:
                try:
                    s.set_timesteps(n)
                except (ValueError, NotImplementedError) as e:
                    raise Unsupported(f"set_timesteps({n}) refused: {e}") from None
            self._cache[key] = s
        return self._cache[key]

    def scheduler(self, setting, options: Mapping[str, object] | None = None):
        """A scheduler configured for ``setting`` and ``options`` with ``set_timesteps`` done."""
        return self._build(self._config(setting, options), setting.num_steps or setting.T)

    def _like(self, sched) -> Any:
        ab = getattr(sched, "alphas_cumprod", None)
        return ab if ab is not None else sched.sigmas

    def ddim_inverse_step(self, setting, k: int, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """The inversion scheduler's ``step`` into kept step ``k`` (1-based, ascending) of
        ``setting`` with ε-prediction, ``clip_sample`` off."""
        if self.family != "ddim_inverse":
            raise Unsupported(f"{self.kind_info.label} is not a DDIM inversion scheduler")
        cfg = self._accepted_only(
            {**self._schedule_config(setting), "clip_sample": False, "set_alpha_to_one": True}
        )
        sched = self._build(cfg, setting.N)
        ts = np.sort(to_numpy(sched.timesteps).astype(np.int64))
        t = from_numpy_like(np.array(ts[k - 1]), sched.timesteps)
        res = sched.step(self._tensor(sched, eps), t, self._tensor(sched, x), return_dict=False)
        return to_numpy(res[0]).astype(np.float64)

    # -- σ-view and flow schedulers: whole trajectories ------------------------------------
    def trajectory(
        self,
        setting,
        denoiser: Callable[[np.ndarray, np.ndarray], np.ndarray],
        velocity: Callable[[np.ndarray, np.ndarray], np.ndarray],
        x_T: np.ndarray,
        step_noise: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run the scheduler's whole loop on ``setting`` (N kept steps) with the model
        answering from ``denoiser`` D(x_ve, σ) (``velocity`` u(x, σ) for flow matching), from
        ``x_T`` (the VE state at σ_0, or the flow state) with ``step_noise[i]`` injected into
        step i.  Returns (the σ grid (n+1,) read from the scheduler, the states after each
        step (n, B, ...) in the VE state — the flow state for flow matching), float64."""
        kind = self.kind_info
        if kind.family not in ("sigma", "flow"):
            raise Unsupported(f"{kind.label} is not a σ-view scheduler")
        cfg = self._schedule_config(setting) if kind.family == "sigma" else {}
        sched = self._factory(**cfg)
        sched.set_timesteps(setting.N)
        grid = to_numpy(sched.sigmas).astype(np.float64)
        heun = type(sched).__name__.startswith("Heun")
        if heun:  # [σ_0, σ_1, σ_1, σ_2, σ_2, …]: one σ per model call
            grid = np.concatenate([grid[:1], grid[1::2]])
        pt = str(getattr(sched, "config", {}).get("prediction_type", "epsilon"))
        pt = {"v_prediction": "v", "sample": "x0"}.get(pt, pt)
        from .. import sigma as sg

        like = sched.sigmas
        vp = kind.state == "vp"
        x = from_numpy_like(x_T / np.sqrt(1.0 + grid[0] ** 2) if vp else x_T, like, "float64")
        cur = {"z": None}
        states: list[np.ndarray] = []
        mod = sys.modules.get(type(sched).__module__)
        orig = getattr(mod, "randn_tensor", None)

        def fake(shape, *a, **k):
            return from_numpy_like(cur["z"], like, "float64")

        if orig is not None:
            mod.randn_tensor = fake  # type: ignore[union-attr]
        try:
            ts = list(sched.timesteps)
            for k, t in enumerate(ts):
                i = k // 2 if heun else k
                cur["z"] = step_noise[min(i, len(step_noise) - 1)]
                idx = sched.step_index if getattr(sched, "step_index", None) is not None else 0
                s = float(to_numpy(sched.sigmas)[idx])
                xs = to_numpy(x).astype(np.float64)
                sv = np.full(xs.shape[0], s)
                if kind.family == "flow":
                    out = velocity(xs, sv)
                else:
                    x_ve = xs * np.sqrt(1.0 + s**2) if vp else xs
                    out = sg.from_denoised(denoiser(x_ve, sv), x_ve, sv, pt)
                if callable(getattr(sched, "scale_model_input", None)):
                    sched.scale_model_input(x, t)  # what a pipeline calls (the model sees it)
                x = sched.step(from_numpy_like(out, like, "float64"), t, x, return_dict=False)[0]
                if not heun or k % 2 == 1 or k == len(ts) - 1:
                    states.append(to_numpy(x).astype(np.float64).copy())
        finally:
            if orig is not None:
                mod.randn_tensor = orig  # type: ignore[union-attr]
        traj = np.stack(states)
        if vp:
            scale = np.sqrt(1.0 + grid[1 : 1 + len(traj)] ** 2)
            traj = traj * scale.reshape((-1,) + (1,) * (traj.ndim - 1))
        return grid, traj

    def _tensor(self, sched, a: np.ndarray) -> Any:
        return from_numpy_like(a, self._like(sched), self.dtype)

    # -- the checked operations (refdiff conventions in, NumPy float64 out) -------------------
    def alpha_bar(self, setting) -> np.ndarray:
        """The scheduler's ``alphas_cumprod`` for ``setting``."""
        sched = self._build(self._schedule_config(setting), None)
        if getattr(sched, "alphas_cumprod", None) is None:
            raise Unsupported(f"{self.kind_info.label} has no ᾱ table (alphas_cumprod)")
        return to_numpy(sched.alphas_cumprod).astype(np.float64)

    def timesteps(self, setting) -> np.ndarray:
        """Ascending 1-based base times of the scheduler's ``timesteps``."""
        if self.family in ("refused", "flow"):
            raise Unsupported(
                f"{self.kind_info.label}: its timesteps follow its own sampler "
                "(checked through σ where it has one)"
            )
        if self.family == "sigma" and self.kind_info.state == "vp":
            raise Unsupported(
                f"{self.kind_info.label}: DPM-Solver/UniPC space their timesteps their own way "
                "(N+1 points for linspace and leading); checked through σ at its own timesteps"
            )
        sched = self._build(self._schedule_config(setting), setting.num_steps or setting.T)
        ts = to_numpy(sched.timesteps).astype(np.float64)
        ts = ts[np.concatenate([[True], ts[1:] != ts[:-1]])]  # Heun repeats each t
        if np.any(ts != np.round(ts)):
            raise Unsupported("fractional timesteps (σ-view scheduler: checked through sigmas)")
        return np.sort(ts.astype(np.int64)) + 1

    def sigmas(self, setting) -> np.ndarray:
        """The scheduler's σ grid (n+1,) after ``set_timesteps(N)``, as float64."""
        if self.family not in ("sigma", "flow"):
            raise Unsupported(f"{self.kind_info.label} is not a σ-view scheduler")
        cfg = self._schedule_config(setting) if self.family == "sigma" else {}
        sched = self._build(cfg, setting.N)
        grid = to_numpy(sched.sigmas).astype(np.float64)
        if type(sched).__name__.startswith("Heun"):  # [σ_0, σ_1, σ_1, σ_2, σ_2, …]
            grid = np.concatenate([grid[:1], grid[1::2]])
        return grid

    def q_sample(self, setting, x0: np.ndarray, t: int, noise: np.ndarray) -> np.ndarray:
        """``add_noise`` at refdiff base time ``base_t``, as the VP state x_t of eq. 3.2 (a
        σ-view scheduler's x0 + σ ε is divided by √(1+σ²), docs/math.md §15)."""
        ve = self.kind_info.state == "ve"
        cfg = self._schedule_config(setting)
        sched = self._build(cfg, None)
        if getattr(sched, "sigmas", None) is not None and self.family not in ("ddpm", "ddim"):
            # add_noise reads σ at the index of t in ``timesteps``: both are set_timesteps',
            # which hold every training step with T trailing steps
            if self.accepted is None or "timestep_spacing" in self.accepted:
                cfg = {**cfg, "timestep_spacing": "trailing"}
            sched = self._build(cfg, setting.T)
            own = getattr(sched, "config", {}) or {}
            if any(
                own.get(k)
                for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
            ):
                raise Unsupported(
                    "with a Karras/exponential/beta σ grid, add_noise reads the grid's σ whose "
                    "rounded timestep is t, not σ(t) (checked through the σ grid)"
                )
            if not np.any(to_numpy(sched.timesteps).astype(np.float64) == t - 1):
                raise Unsupported(
                    f"add_noise reads σ at the index of t in its timesteps; t={t - 1} is not "
                    "one of them (its own spacing)"
                )
        if not callable(getattr(sched, "add_noise", None)):
            raise Unsupported("no add_noise method")
        like = self._like(sched)
        ts = np.full(x0.shape[0], t - 1, dtype=np.int64)
        tt = from_numpy_like(ts, like, "int64")
        if ve:
            tt = from_numpy_like(ts.astype(np.float64), sched.timesteps)
        out = sched.add_noise(self._tensor(sched, x0), self._tensor(sched, noise), tt)
        res = to_numpy(out).astype(np.float64)
        if ve:
            ab = to_numpy(sched.alphas_cumprod).astype(np.float64)[t - 1]
            res = res * np.sqrt(ab)  # x0 + σ ε = x_t / √ᾱ
        return res

    def posterior(self, setting, x0, x_t, t):
        """Unsupported: diffusers schedulers have no posterior method."""
        raise Unsupported("diffusers schedulers have no posterior method (checked through step)")

    def _neutral(self) -> dict:
        return {"variance_type": "fixed_small"} if self.sampler == "ddpm" else {}

    def ddpm_step(
        self, setting, base_t: int, x_t, model_output, noise, options, model_variance=None
    ) -> np.ndarray:
        """One DDPM ``step`` of the scheduler with the noise injected."""
        if self.sampler != "ddpm":
            raise Unsupported("not a DDPM scheduler")
        for k in ("log_variance_clipping",):
            if k in options and options[k] != self.conventions[k]:
                raise Unsupported(f"{k}={options[k]!r} (diffusers: {self.conventions[k]!r})")
        sched = self.scheduler(setting, options)
        out = model_output
        if model_variance is not None:
            out = np.concatenate([model_output, model_variance], axis=1)
        mo = self._tensor(sched, out)
        with _injected_noise(sched, self._tensor(sched, noise)):
            res = sched.step(mo, int(base_t - 1), self._tensor(sched, x_t), return_dict=False)
        return to_numpy(res[0]).astype(np.float64)

    def ddim_step(self, setting, base_t: int, x_t, model_output, noise, options) -> np.ndarray:
        """One DDIM ``step`` of the scheduler with the noise injected."""
        if self.sampler != "ddim":
            raise Unsupported("not a DDIM scheduler")
        fsn = options.get("final_step_noise", self.conventions["final_step_noise"])
        if fsn != self.conventions["final_step_noise"]:
            raise Unsupported(f"final_step_noise={fsn!r} (diffusers adds it whenever eta > 0)")
        sched = self.scheduler(setting, options)
        eta = float(options.get("eta", 0.0))
        kw: dict[str, object] = {
            "eta": eta,
            "use_clipped_model_output": bool(options.get("rederive_eps", True)),
            "return_dict": False,
        }
        ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
        z = self._tensor(sched, noise)
        if eta > 0:
            if self._variance_noise:
                kw["variance_noise"] = z
            else:
                ctx = _injected_noise(sched, z)
        with ctx:
            res = sched.step(
                self._tensor(sched, model_output), int(base_t - 1), self._tensor(sched, x_t), **kw
            )
        return to_numpy(res[0]).astype(np.float64)


def options_text(cfg: Mapping[str, object]) -> str:
    """``k=v`` pairs of a scheduler configuration, for messages."""
    return ", ".join(f"{k}={v!r}" for k, v in cfg.items())


@contextlib.contextmanager
def _injected_noise(sched: Any, z: Any) -> Iterator[None]:
    """Replace ``randn_tensor`` in the scheduler's module by one that returns ``z``."""
    mod = sys.modules.get(type(sched).__module__)
    if mod is None or not hasattr(mod, "randn_tensor"):
        raise Unsupported("cannot inject noise: the scheduler's module has no randn_tensor")
    orig = mod.randn_tensor

    def fake(shape, *args, **kwargs):
        if tuple(shape) != tuple(z.shape):
            raise RuntimeError(
                f"noise of shape {tuple(shape)} requested, {tuple(z.shape)} injected"
            )
        return z

    mod.randn_tensor = fake
    try:
        yield
    finally:
        mod.randn_tensor = orig
