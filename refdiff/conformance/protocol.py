"""The verify protocol: a Python object with any subset of the methods ``alpha_bar``,
``timesteps``, ``q_sample``, ``posterior``, ``ddpm_step``, ``ddim_step`` (docs/verify.md
§Protocol)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..errors import InputError
from .adapters import Unsupported, to_numpy
from .cases import Setting

__all__ = ["CONVENTION_KEYS", "ProtocolTarget", "implementation_options"]

CONVENTION_KEYS = {"ddpm_step": ("log_variance_clipping",), "ddim_step": ("final_step_noise",)}


# -- the protocol -------------------------------------------------------------------------------
class ProtocolTarget:
    """Wraps an object following the verify protocol (docs/verify.md §Protocol).

    Methods (each optional; a missing one is reported as unsupported):

    - ``alpha_bar(schedule: str, T: int[, zero_terminal_snr=True]) -> (T,)``
    - ``timesteps(T, num_steps, spacing, steps_offset) -> kept indices`` (any order)
    - ``q_sample(alpha_bar, x0, t, noise) -> x_t``
    - ``posterior(alpha_bar, x0, x_t, t) -> (mean, variance)``
    - ``ddpm_step(alpha_bar, timesteps, t, x_t, model_output, noise, **options) -> x_prev``
    - ``ddim_step(alpha_bar, timesteps, t, x_t, model_output, noise, **options) -> x_prev``

    ``alpha_bar`` is the reference's float64 (T,) array (index i = step i+1), ``timesteps``
    the kept steps in descending order and ``t`` one of them, both in the object's
    ``index_base`` (0: diffusers / improved-diffusion; 1: refdiff).  Attributes: ``index_base``
    (default 0), ``dtype`` (default "float64": the precision that sets the tolerance),
    ``conventions`` (refdiff option values where peers differ, e.g.
    ``{"log_variance_clipping": "floor", "final_step_noise": True}``).
    """

    def __init__(self, obj: Any, name: str | None = None):
        self.obj = obj
        self.name = name or type(obj).__name__
        self.index_base = int(getattr(obj, "index_base", 0))
        if self.index_base not in (0, 1):
            raise InputError("index_base", f"must be 0 or 1; got {self.index_base!r}")
        self.dtype = getattr(obj, "dtype", "float64")
        self.conventions = dict(getattr(obj, "conventions", None) or {})
        self.samplers = {k for k in ("ddpm", "ddim") if callable(getattr(obj, f"{k}_step", None))}
        self.kinds = self.samplers  # the former name

    def _method(self, name: str) -> Callable:
        f = getattr(self.obj, name, None)
        if not callable(f):
            raise Unsupported(f"no {name} method")
        return f

    def _t(self, base_t: int) -> int:
        return int(base_t) - 1 + self.index_base

    def alpha_bar(self, setting: Setting):
        """The target's ᾱ table for ``setting``'s base schedule."""
        f = self._method("alpha_bar")
        if setting.zero_terminal_snr:
            return f(setting.schedule, setting.T, zero_terminal_snr=True)
        return f(setting.schedule, setting.T)

    def timesteps(self, setting: Setting):
        """The target's kept steps for ``setting``, as ascending refdiff times."""
        f = self._method("timesteps")
        ts = to_numpy(f(setting.T, setting.N, setting.spacing, setting.steps_offset))
        return np.sort(np.asarray(ts).astype(np.int64).ravel()) + 1 - self.index_base

    def _ab(self, setting: Setting) -> np.ndarray:
        return np.array(setting.base().alpha_bar[1:])

    def _desc(self, setting: Setting) -> np.ndarray:
        return (setting.times()[::-1] - 1 + self.index_base).astype(np.int64)

    def q_sample(self, setting, x0, base_t, noise):
        """The target's q_sample at refdiff base time ``base_t``."""
        return self._method("q_sample")(self._ab(setting), x0, self._t(base_t), noise)

    def posterior(self, setting, x0, x_t, base_t):
        """The target's (mean, variance) of q(x_{t−1}|x_t, x_0) at ``base_t``."""
        return self._method("posterior")(self._ab(setting), x0, x_t, self._t(base_t))

    def ddpm_step(self, setting, base_t, x_t, model_output, noise, options, model_variance=None):
        """The target's DDPM step at ``base_t`` with ``options``."""
        kw = implementation_options("ddpm_step", options)
        if model_variance is not None:
            kw["model_variance"] = model_variance
        f = self._method("ddpm_step")
        return f(
            self._ab(setting), self._desc(setting), self._t(base_t), x_t, model_output, noise, **kw
        )

    def ddim_step(self, setting, base_t, x_t, model_output, noise, options):
        """The target's DDIM step at ``base_t`` with ``options``."""
        kw = implementation_options("ddim_step", options)
        f = self._method("ddim_step")
        return f(
            self._ab(setting), self._desc(setting), self._t(base_t), x_t, model_output, noise, **kw
        )


def implementation_options(op: str, options: Mapping[str, object]) -> dict:
    """The options handed to a protocol implementation: conventions and inactive defaults
    stripped, so a minimal implementation only sees what it must honour."""
    o = {k: v for k, v in options.items() if k not in CONVENTION_KEYS.get(op, ())}
    restricted = o.get("clip") is not None or o.get("threshold_ratio") is not None
    for k, default in (("clip", None), ("threshold_ratio", None)):
        if o.get(k, default) is default:
            o.pop(k, None)
    if o.get("threshold_ratio") is None:
        o.pop("threshold_max", None)
    if op == "ddim_step" and not restricted:
        o.pop("rederive_eps", None)
    return o
