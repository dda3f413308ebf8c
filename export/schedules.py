"""Naming and respacing the schedule a sampler walks, for the CLI and :class:`OrtSampler`.

- :data:`SCHEDULE_ALIASES`: peers' names for refdiff's schedules (diffusers' ``beta_schedule``
  values; docs/math.md §2 gives the equations), and :data:`UNSUPPORTED_SCHEDULES`: peers'
  schedules refdiff does not implement, each with the reason it is refused.
- :func:`schedule_name`: a name or alias → refdiff's name, or an error listing the valid ones.
- :func:`check_spacing`: ``leading`` | ``trailing`` | ``linspace`` | an improved-diffusion
  section string (``ddim50``, ``10,15``), or an error saying what is valid.
- :func:`respaced`: a base schedule respaced to N steps (docs/math.md eq. 2.9).
"""

from __future__ import annotations

import re

from refdiff.errors import InputError, OptionError

__all__ = [
    "SCHEDULE_ALIASES",
    "UNSUPPORTED_SCHEDULES",
    "SPACING_HELP",
    "schedule_name",
    "check_spacing",
    "respaced",
    "build_schedule",
]

# peers' name -> refdiff's name (diffusers' beta_schedule; refdiff's own names are not listed).
# Names peers share with refdiff mean the same schedule (diffusers' linear, scaled_linear,
# sigmoid; improved-diffusion's cosine), except improved-diffusion's "linear", which scales
# its range by 1000/T: that is refdiff's linear_iddpm (the same as linear at T = 1000).
SCHEDULE_ALIASES = {
    "squaredcos_cap_v2": "cosine",  # diffusers: betas_for_alpha_bar(cosine), max_beta 0.999
    "squaredcos": "cosine",
}
# peers' schedules that have no refdiff equivalent: name -> why
UNSUPPORTED_SCHEDULES = {
    "laplace": "diffusers' DDPM-only laplace schedule is not implemented in refdiff",
    "trained_betas": "trained betas are not a named schedule; export the model with its "
    "schedule in the metadata (refdiff.schedule)",
    "quad": "diffusion (v1)'s quad schedule is not implemented in refdiff",
    "warmup10": "diffusion (v1)'s warmup schedules are not implemented in refdiff",
    "warmup50": "diffusion (v1)'s warmup schedules are not implemented in refdiff",
    "const": "diffusion (v1)'s const schedule is not implemented in refdiff",
    "jsd": "diffusion (v1)'s jsd schedule is not implemented in refdiff",
}
SPACING_HELP = (
    "leading | trailing | linspace (diffusers' timestep_spacing), or an improved-diffusion "
    "section string: ddimN (e.g. ddim50) or comma counts (e.g. 10,15)"
)
_SECTIONS = re.compile(r"^(ddim\d+|\d+(,\d+)*)$")


def schedule_name(name: str, argument: str = "schedule") -> str:
    """refdiff's name for ``name`` (its own names and :data:`SCHEDULE_ALIASES`)."""
    from refdiff.schedule import SCHEDULES

    if name in SCHEDULES:
        return name
    key = name.lower().replace("-", "_")
    if key in SCHEDULES:
        return key
    if key in SCHEDULE_ALIASES:
        return SCHEDULE_ALIASES[key]
    valid = [*SCHEDULES, *(f"{a} (= {b})" for a, b in SCHEDULE_ALIASES.items())]
    if key in UNSUPPORTED_SCHEDULES:
        raise InputError(
            argument, f"{name!r}: {UNSUPPORTED_SCHEDULES[key]}; valid: {', '.join(valid)}"
        )
    raise OptionError(argument, name, valid)


def check_spacing(spacing: object, argument: str = "spacing") -> str:
    """``spacing`` if it is a spacing name or a section string, else an InputError saying
    which spellings are valid."""
    from refdiff.respacing import SPACINGS

    if isinstance(spacing, str) and (spacing in SPACINGS or _SECTIONS.match(spacing)):
        return spacing
    raise InputError(argument, f"{spacing!r} is not a spacing; valid: {SPACING_HELP}")


def respaced(base, steps: int, spacing: str = "leading", steps_offset: int = 0, *, names=None):
    """``base`` respaced to ``steps`` steps chosen by ``spacing`` (:func:`check_spacing`).

    ``names`` maps the argument names in errors (``{"steps": "--steps", …}`` for the CLI).
    ``steps == base.T`` with the default spacing and no offset returns ``base`` itself.
    """
    from refdiff.respacing import SPACINGS, space_timesteps, spaced_times
    from refdiff.schedule import respace

    n = dict(steps="steps", spacing="spacing", steps_offset="steps_offset")
    n.update(names or {})
    check_spacing(spacing, n["spacing"])
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= base.T:
        raise InputError(n["steps"], f"must be an int in [1, T={base.T}]; got {steps!r}")
    if steps == base.T and steps_offset == 0 and spacing in SPACINGS:
        return base
    try:
        if spacing in SPACINGS:
            times = spaced_times(base.T, steps, spacing, steps_offset)
        else:
            if steps_offset:
                raise InputError(n["steps_offset"], "applies to 'leading' spacing only")
            times = space_timesteps(base.T, spacing)
    except InputError as e:
        arg = {"num_steps": n["steps"], "sections": n["spacing"]}.get(e.argument, e.argument)
        arg = n.get(arg, arg)
        raise InputError(arg, str(e).split(": ", 1)[1]) from None
    if len(times) != steps:
        raise InputError(n["steps"], f"spacing {spacing!r} keeps {len(times)} steps, not {steps}")
    return respace(base, times)


def build_schedule(
    name: str,
    T: int,
    *,
    steps: int | None = None,
    spacing: str = "leading",
    steps_offset: int = 0,
    zero_terminal_snr: bool = False,
    base=None,
):
    """(base schedule, schedule to walk): ``name``/``T`` (or ``base``), respaced to ``steps``.

    ``name`` may be a peer's alias (:data:`SCHEDULE_ALIASES`); ``spacing`` as in
    :func:`check_spacing`.
    """
    from refdiff.schedule import make_schedule

    if base is None:
        base = make_schedule(schedule_name(name), T, zero_terminal_snr=zero_terminal_snr)
    if steps is None:
        return base, base
    return base, respaced(base, steps, spacing, steps_offset)
