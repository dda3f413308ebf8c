"""Hypothesis strategies for settings, schedules, times, states and option sets.  Hypothesis
is imported only when a strategy is built (it is in the ``test`` extra)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import posterior, respacing, reverse
from ..errors import InputError
from ..schedule import Schedule
from .cases import Setting

__all__ = ["settings", "schedules", "timesteps", "states", "ddpm_options", "ddim_options"]


# -- Hypothesis strategies ------------------------------------------------------------------
def _st():
    try:
        from hypothesis import strategies as st
    except ImportError as e:  # pragma: no cover - hypothesis is in the test extra
        raise ImportError(
            "refdiff.testing strategies need hypothesis (pip install hypothesis)"
        ) from e
    return st


def _valid_setting(s: Setting) -> bool:
    try:
        s.times()
    except InputError:
        return False
    return True


def settings(
    *,
    names: Sequence[str] = ("linear", "scaled_linear", "cosine", "sigmoid"),
    min_T: int = 2,
    max_T: int = 1000,
    respaced: bool = True,
    zero_terminal_snr: bool | None = False,
):
    """Strategy for :class:`Setting`: a named schedule, T, and (if ``respaced``) a number of
    kept steps with a spacing rule.  ``zero_terminal_snr=None`` draws both."""
    st = _st()

    @st.composite
    def build(draw):
        T = draw(st.integers(min_T, max_T))
        name = draw(st.sampled_from(list(names)))
        if name == "linear_iddpm":
            T = min(T, 50_000)
        zs = draw(st.booleans()) if zero_terminal_snr is None else bool(zero_terminal_snr)
        if zs and T < 2:
            zs = False
        n = None
        spacing, off = "leading", 0
        if respaced and draw(st.booleans()):
            n = draw(st.integers(1, T))
            spacing = draw(st.sampled_from(respacing.SPACINGS))
            off = 1 if spacing == "leading" and n * (T // n) < T and draw(st.booleans()) else 0
        return Setting(name, T, n, spacing, off, zs)

    return build().filter(_valid_setting)


def schedules(**kw):
    """Strategy for (possibly respaced) :class:`~refdiff.schedule.Schedule` objects; keywords
    as :func:`settings`."""
    return settings(**kw).map(Setting.respaced)


def timesteps(schedule: Schedule | Setting | int, *, min_t: int = 1):
    """Strategy for a time t ∈ [min_t, T] of a schedule (or of a Setting's kept steps)."""
    st = _st()
    if isinstance(schedule, Setting):
        n = schedule.N
    elif isinstance(schedule, Schedule):
        n = schedule.T
    else:
        n = int(schedule)
    return st.integers(min_t, n)


def states(
    shape: tuple[int, ...] | None = None,
    *,
    scale: float = 3.0,
    max_batch: int = 4,
    max_dim: int = 8,
):
    """Strategy for finite float64 states (B, D) (or of ``shape``) with |x| ≤ ``scale``."""
    st = _st()
    from hypothesis.extra import numpy as hnp

    if shape is None:
        shp = st.tuples(st.integers(1, max_batch), st.integers(1, max_dim))
    else:
        shp = st.just(tuple(shape))
    elems = st.floats(-scale, scale, allow_nan=False, allow_infinity=False, width=64)
    return shp.flatmap(lambda s: hnp.arrays(np.float64, s, elements=elems))


def ddpm_options(
    *,
    prediction_types: Sequence[str] = ("epsilon", "x0", "v"),
    variance_types: Sequence[str] = reverse.VARIANCE_TYPES,
    clipping: bool = True,
):
    """Strategy for option dicts of :func:`refdiff.reverse.ddpm_step`."""
    st = _st()
    return st.fixed_dictionaries(
        {
            "prediction_type": st.sampled_from(list(prediction_types)),
            "variance_type": st.sampled_from(list(variance_types)),
            "log_variance_clipping": st.sampled_from(list(posterior.LOG_VARIANCE_CLIPPINGS)),
        }
    ).flatmap(lambda d: _with_clipping(d, clipping))


def ddim_options(
    *,
    prediction_types: Sequence[str] = ("epsilon", "x0", "v"),
    etas: Sequence[float] | None = None,
    clipping: bool = True,
):
    """Strategy for option dicts of :func:`refdiff.reverse.ddim_step`."""
    st = _st()
    eta = st.sampled_from(list(etas)) if etas is not None else st.sampled_from([0.0, 0.5, 1.0])
    return st.fixed_dictionaries(
        {
            "prediction_type": st.sampled_from(list(prediction_types)),
            "eta": eta,
            "final_alpha_bar": st.sampled_from(["one", "first"]),
            "rederive_eps": st.booleans(),
            "final_step_noise": st.booleans(),
        }
    ).flatmap(lambda d: _with_clipping(d, clipping))


def _with_clipping(d: dict, clipping: bool):
    st = _st()
    if not clipping:
        return st.just(d)
    return st.sampled_from([{}, {"clip": 1.0}, {"threshold_ratio": 0.9, "threshold_max": 1.5}]).map(
        lambda extra: {**d, **extra}
    )
