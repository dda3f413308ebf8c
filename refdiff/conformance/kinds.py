"""Knowing the target first: which sampler a diffusers-style scheduler is (docs/verify.md
§Scheduler kinds).

:func:`scheduler_kind` reads a scheduler's class name and configuration and says what it is
("σ-view Euler, Karras σ", "DPM-Solver++ 2M", "flow matching Euler, shift 3.0", "DDIM
inversion", …), which refdiff reference checks its steps (``family`` and, for the σ view,
the :mod:`refdiff.solvers` sampler and options that name the peer's choices), and — for what
refdiff cannot check — why (``refused``).  Nothing here imports diffusers: classes are known
by name, configurations are read from ``.config`` or the constructor's defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SchedulerKind", "scheduler_kind", "scheduler_config", "accepted_config"]


@dataclass(frozen=True)
class SchedulerKind:
    """What a scheduler is and how refdiff checks it.

    ``family``: ``"ddpm"`` | ``"ddim"`` | ``"ddim_inverse"`` (steps checked case by case
    against :mod:`refdiff.reverse`), ``"sigma"`` | ``"flow"`` (whole trajectories against
    :mod:`refdiff.solvers`), or ``"refused"`` (schedule-level checks only).
    ``label``: the human description.  ``sampler`` / ``options``: the refdiff sampler and its
    options for the σ view.  ``state``: the state ``add_noise`` and ``step`` work on
    (``"vp"`` x = √ᾱ x0 + √(1−ᾱ) ε, ``"ve"`` x = x0 + σ ε, ``"flow"``).  ``refused``: why
    the steps cannot be checked (None when they can).
    """

    family: str
    label: str
    sampler: str | None = None
    options: Mapping[str, object] = field(default_factory=dict)
    state: str = "vp"
    refused: str | None = None


_REFUSED = {
    "PNDMScheduler": "PNDM/PLMS (pseudo linear multistep with a Runge-Kutta warm-up) has no "
    "reference in refdiff",
    "IPNDMScheduler": "improved PNDM has no reference in refdiff",
    "LCMScheduler": "LCM's consistency step (boundary conditions c_skip, c_out and re-noising) "
    "has no reference in refdiff",
    "TCDScheduler": "TCD's strategic stochastic sampling (consistency step with gamma) has no "
    "reference in refdiff",
    "DPMSolverSinglestepScheduler": "single-step DPM-Solver (intermediate model calls inside "
    "each step) has no reference in refdiff.solvers (the multistep forms have)",
    "DEISMultistepScheduler": "DEIS has no reference in refdiff.solvers",
    "KDPM2DiscreteScheduler": "KDPM2's interleaved half-steps (interpolated σ and timesteps) "
    "have no adapter (refdiff.solvers.dpm_2 is checked against k-diffusion's sample_dpm_2)",
    "KDPM2AncestralDiscreteScheduler": "ancestral DPM-Solver-2 is not in refdiff.solvers",
    "DPMSolverSDEScheduler": "DPM-Solver SDE (Brownian tree noise) is not in refdiff.solvers",
    "ScoreSdeVeScheduler": "the VE SDE predictor-corrector is not in refdiff.solvers",
    "ScoreSdeVpScheduler": "the continuous VP SDE is not in refdiff.solvers",
    "CMStochasticIterativeScheduler": "consistency-model sampling has no reference in refdiff",
    "RePaintScheduler": "RePaint (inpainting resampling) has no reference in refdiff",
    "UnCLIPScheduler": "unCLIP's DDPM variant has no reference in refdiff",
    "VQDiffusionScheduler": "discrete (VQ) diffusion has no reference in refdiff",
    "KarrasVeScheduler": "the Karras VE stochastic sampler is not in refdiff.solvers",
    "SASolverScheduler": "SA-Solver is not in refdiff.solvers",
    "EDMDPMSolverMultistepScheduler": "the EDM-parameterised DPM-Solver is not in "
    "refdiff.solvers' checked forms",
    "CogVideoXDDIMScheduler": "CogVideoX's DDIM variant has no reference in refdiff",
    "CogVideoXDPMScheduler": "CogVideoX's DPM variant has no reference in refdiff",
    "FlowMatchHeunDiscreteScheduler": "flow matching Heun is not in refdiff.solvers",
    "AmusedScheduler": "masked-token (aMUSEd) sampling has no reference in refdiff",
}

_DDPM = ("DDPMScheduler", "DDPMParallelScheduler", "DDPMWuerstchenScheduler")
_DDIM = ("DDIMScheduler", "DDIMParallelScheduler")
_SIGMA = {
    "EulerDiscreteScheduler": ("euler", "Euler", "ve"),
    "EulerAncestralDiscreteScheduler": ("euler_ancestral", "Euler ancestral", "ve"),
    "HeunDiscreteScheduler": ("heun", "Heun", "ve"),
    "LMSDiscreteScheduler": ("lms", "linear multistep (LMS)", "ve"),
}


def _cls(obj: Any) -> type:
    return obj if inspect.isclass(obj) else type(obj)


def _init_defaults(cls: type) -> dict[str, object]:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return {}
    return {
        k: p.default
        for k, p in params.items()
        if k != "self" and p.default is not inspect.Parameter.empty
    }


def accepted_config(obj: Any) -> set[str] | None:
    """The constructor keywords of ``obj``'s scheduler class (None: cannot tell, e.g. a
    factory function or a constructor taking ``**kwargs``)."""
    cls = _cls(obj)
    if not hasattr(cls, "step"):
        return None
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {k for k in params if k != "self"}


def scheduler_config(obj: Any) -> dict[str, object]:
    """The configuration of a scheduler instance (``.config``) or the constructor defaults
    of a scheduler class."""
    defaults = _init_defaults(_cls(obj))
    if not inspect.isclass(obj):
        cfg = getattr(obj, "config", None)
        if isinstance(cfg, Mapping):
            defaults.update({k: v for k, v in cfg.items() if not str(k).startswith("_")})
    return defaults


def _sigma_grid(cfg: Mapping[str, object]) -> tuple[str, str]:
    """(label suffix, grid name) of the σ grid options of a σ-view scheduler."""
    if cfg.get("use_karras_sigmas"):
        return ", Karras σ", "karras"
    if cfg.get("use_exponential_sigmas"):
        return ", exponential σ", "exponential"
    if cfg.get("use_beta_sigmas"):
        return ", beta σ", "beta"
    return f", {cfg.get('timestep_spacing', 'linspace')} σ", "schedule"


def scheduler_kind(obj: Any) -> SchedulerKind:
    """What the diffusers-style scheduler (class or instance) ``obj`` is; see
    :class:`SchedulerKind`.  Unknown classes fall back to their ``step`` signature (``eta``:
    DDIM, else DDPM), so hand-written schedulers with the diffusers interface keep working."""
    cls = _cls(obj)
    name = cls.__name__
    cfg = scheduler_config(obj)
    if name in _REFUSED:
        return SchedulerKind("refused", name.removesuffix("Scheduler"), refused=_REFUSED[name])
    if name in _DDPM:
        return SchedulerKind("ddpm", f"DDPM ({cfg.get('variance_type', 'fixed_small')} variance)")
    if name in _DDIM:
        return SchedulerKind("ddim", "DDIM")
    if name == "DDIMInverseScheduler":
        return SchedulerKind("ddim_inverse", "DDIM inversion")
    if name in _SIGMA:
        sampler, title, state = _SIGMA[name]
        suffix, _ = _sigma_grid(cfg)
        opts: dict[str, object] = {}
        if sampler == "euler":
            opts["churn_model_input"] = "unchurned"
        if sampler == "lms":
            opts["order"] = 4
        return SchedulerKind("sigma", f"σ-view {title}{suffix}", sampler, opts, state)
    if name == "DPMSolverMultistepScheduler":
        return _dpm_multistep(cfg)
    if name == "UniPCMultistepScheduler":
        order = int(cfg.get("solver_order", 2))  # type: ignore[arg-type]
        st = str(cfg.get("solver_type", "bh2"))
        suffix, _ = _sigma_grid(cfg)
        opts = {
            "order": order,
            "solver_type": st,
            "lower_order_final": bool(cfg.get("lower_order_final", True)),
        }
        dc = cfg.get("disable_corrector") or []
        if dc:
            opts["disable_corrector"] = tuple(int(i) for i in dc)  # type: ignore[union-attr]
        label = f"UniPC {st} order {order}{suffix}"
        return SchedulerKind("sigma", label, "unipc", opts, "vp")
    if name == "FlowMatchEulerDiscreteScheduler":
        if cfg.get("stochastic_sampling") or cfg.get("use_dynamic_shifting"):
            why = (
                "stochastic flow sampling"
                if cfg.get("stochastic_sampling")
                else "dynamic shifting (needs mu from the image size)"
            )
            return SchedulerKind(
                "refused",
                "flow matching Euler",
                state="flow",
                refused=f"{why} is not checked by refdiff's flow_euler conformance yet",
            )
        shift = float(cfg.get("shift", 1.0))  # type: ignore[arg-type]
        return SchedulerKind(
            "flow", f"flow matching Euler, shift {shift:g}", "flow_euler", {}, "flow"
        )
    if name.endswith("Scheduler") and name.startswith(("Flow", "EDM", "Cog", "Consistency")):
        return SchedulerKind(
            "refused", name.removesuffix("Scheduler"), refused=f"{name} has no reference in refdiff"
        )
    step = getattr(obj, "step", None)
    try:
        params = inspect.signature(step).parameters if step is not None else {}
    except (TypeError, ValueError):
        params = {}
    if "eta" in params:
        return SchedulerKind("ddim", "DDIM (by its step signature)")
    return SchedulerKind("ddpm", "DDPM (by its step signature)")


def _dpm_multistep(cfg: Mapping[str, object]) -> SchedulerKind:
    algo = str(cfg.get("algorithm_type", "dpmsolver++"))
    order = int(cfg.get("solver_order", 2))  # type: ignore[arg-type]
    suffix, _ = _sigma_grid(cfg)
    names = {
        "dpmsolver++": "DPM-Solver++",
        "sde-dpmsolver++": "SDE-DPM-Solver++",
        "dpmsolver": "DPM-Solver",
        "sde-dpmsolver": "SDE-DPM-Solver",
    }
    label = f"{names.get(algo, algo)} {order}M{suffix}"
    lof = bool(cfg.get("lower_order_final", True))
    st = str(cfg.get("solver_type", "midpoint"))
    if cfg.get("euler_at_final") or cfg.get("use_lu_lambdas"):
        key = "euler_at_final" if cfg.get("euler_at_final") else "use_lu_lambdas"
        return SchedulerKind(
            "refused", label, refused=f"{key}=True has no refdiff.solvers option (yet)"
        )
    if order == 3 and algo in ("dpmsolver++", "sde-dpmsolver++"):
        if st != "heun":
            why = (
                f"{label} with solver_type={st!r} takes its second-order steps (warm-up, "
                "lower-order final) in diffusers' midpoint form; refdiff.solvers' dpmpp_3m_sde "
                "(k-diffusion's) uses φ₂ there: configure solver_type='heun' to check it"
            )
            return SchedulerKind("refused", label, refused=why)
        sde = algo == "sde-dpmsolver++"
        opts = {"lower_order_final": lof, "diffusers_sde_d2": sde, "eta": 1.0 if sde else 0.0}
        return SchedulerKind("sigma", label, "dpmpp_3m_sde", opts, "vp")
    if st != "midpoint" and algo == "dpmsolver++":
        why = f"solver_type={st!r} with dpmsolver++ 2M is not in refdiff.solvers"
        return SchedulerKind("refused", label, refused=why)
    if algo == "dpmsolver++" and order == 2:
        return SchedulerKind("sigma", label, "dpmpp_2m", {"lower_order_final": lof}, "vp")
    if algo == "sde-dpmsolver++" and order == 2:
        opts = {"lower_order_final": lof, "solver_type": st, "eta": 1.0}
        return SchedulerKind("sigma", label, "dpmpp_2m_sde", opts, "vp")
    if algo in ("dpmsolver", "sde-dpmsolver"):
        why = f"{names[algo]} (the noise-prediction form) is not in refdiff.solvers; only the "
        why += "data-prediction DPM-Solver++ forms are"
        return SchedulerKind("refused", label, refused=why)
    why = f"{label}: order {order} of {algo} is not in refdiff.solvers"
    if algo == "dpmsolver++" and order == 1:
        why = "DPM-Solver++ order 1 is Euler in log-SNR; refdiff.solvers has no entry for it"
    return SchedulerKind("refused", label, refused=why)
