"""``refdiff verify``: check an implementation, option by option, against the reference.

Targets (docs/verify.md):

- a Python object following the **protocol** (:class:`ProtocolTarget`): methods
  ``alpha_bar``, ``timesteps``, ``q_sample``, ``posterior``, ``ddpm_step``, ``ddim_step``
  (any subset), attributes ``index_base``, ``dtype``, ``conventions``;
- a **diffusers-style scheduler** (class, factory or instance with ``set_timesteps``,
  ``step``, ``alphas_cumprod``) through :class:`refdiff.adapters.DiffusersTarget`; its kind
  is detected first (:func:`scheduler_kind`: DDPM, DDIM, DDIM inversion, σ-view, flow
  matching, or refused with the reason — exit code 3, :data:`EXIT_CODES`);
- an improved-/guided-diffusion ``GaussianDiffusion`` or a k-diffusion sampling function,
  through the built-in adapters of :mod:`refdiff.conformance.peers`.

Every comparison injects the same noise into the implementation and the reference, and uses
the tolerance of :mod:`refdiff.testing` for the implementation's precision.  A failing
comparison is *diagnosed*: the reference is re-run with each known bug of the registry
:data:`refdiff.conformance.diagnoses.REGISTRY` planted (off-by-one time index, β for β̃, a
missing square root, the DDIM previous-step stride, ``set_alpha_to_one`` flipped, …) and a
bug that reproduces the implementation's output within tolerance is named in the message.

The code lives in :mod:`refdiff.conformance`; this module is its public face.
"""

from __future__ import annotations

from .conformance.cli import load_object, load_target, main
from .conformance.diagnoses import (
    EXPLAINED,
    REGISTRY,
    Hypothesis,
    KnownBug,
    diagnose,
    diagnose_all,
    diagnosis_for,
    explained_by,
    group_causes,
    hypotheses,
    nan_cause,
    precision_diagnosis,
)
from .conformance.kinds import SchedulerKind, scheduler_kind
from .conformance.peers import (
    GaussianDiffusionTarget,
    KDiffusionTarget,
    from_diffusers_config,
    from_improved_diffusion,
)
from .conformance.protocol import CONVENTION_KEYS, ProtocolTarget
from .conformance.runner import (
    EXIT_CODES,
    Item,
    Report,
    as_target,
    ddim_option_sets,
    ddpm_option_sets,
    kind_plan,
    plan,
    run,
    short_label,
    step_settings,
    step_times,
)

__all__ = [
    "ProtocolTarget",
    "Item",
    "plan",
    "run",
    "Report",
    "diagnose",
    "diagnosis_for",
    "explained_by",
    "load_target",
    "main",
]


# Names that are public here too, beyond the original list above.
__all__ += [
    "load_object",
    "EXPLAINED",
    "REGISTRY",
    "Hypothesis",
    "KnownBug",
    "hypotheses",
    "CONVENTION_KEYS",
    "as_target",
    "ddim_option_sets",
    "ddpm_option_sets",
    "short_label",
    "step_settings",
    "step_times",
    "EXIT_CODES",
    "SchedulerKind",
    "scheduler_kind",
    "kind_plan",
    "GaussianDiffusionTarget",
    "KDiffusionTarget",
    "from_diffusers_config",
    "from_improved_diffusion",
    "diagnose_all",
    "group_causes",
    "nan_cause",
    "precision_diagnosis",
]

# The name older code used.
_step_times = step_times
