"""The σ-view samplers as affine programs: per-step coefficients read off the specification.

With a fixed σ grid every sampler of :mod:`refdiff.solvers` is, step by step, affine in the
current state x_i, the denoiser outputs it has seen and the step's noise z_i (docs/math.md
§19; the same observation as (7.12) for DDPM/DDIM in :mod:`refdiff.affine`).  Step i makes
one or more model calls (Heun: two, except into σ = 0) and then updates the state:

    input_c = α_c x_i + γ_c z_i + Σ_k β_{c,k} D_{i,k}        (k < c: this step's earlier calls)
    D_{i,c} = model(input_c, σ_c)
    x_{i+1} = a_i x_i + s_i z_i + Σ_j b_{i,j} D_j             (D_j: the recent model outputs)

:func:`program` reads every coefficient off the sampler itself: it runs the specification once
on a probe — a one-row state whose coordinates are the basis vectors of (x_T, each model
output, each z_i), with a "model" that records its input and returns the next basis vector —
so the trajectory gives each x_i, and the recorded inputs each model input, as exact linear
combinations of those inputs.  The coefficients are then read off component by component
(α, a from the x_T coordinate; the others from their own coordinates) and the rest of each
combination is checked to vanish (else :class:`InputError`: the sampler is not of this form).
They cannot drift from :mod:`refdiff.solvers`: they are computed from it.

:func:`sample` runs a program: the same noise layout, ``rng`` stream, trajectory and callback
as :func:`refdiff.solvers.sample`, each combination one blocked pass (:mod:`refdiff.affine`'s
IEEE multiply-then-add, no temporary of the state's size).  It agrees with the specification
up to rounding: the probe's read-off rounds each coefficient once (a ratio, a difference), and
the specification groups its products differently; tests/spec/test_sigma_affine.py states the
bound (|fast − spec| ≤ 1e-11 · (1 + max |x|) over the trajectory, for grids of ≤ 50 steps).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from . import solvers
from ._check import as_float_array, option
from .affine import BLOCK, blocked_combine
from .errors import InputError, ShapeError

__all__ = [
    "Call",
    "Step",
    "SigmaProgram",
    "program",
    "combine",
    "model_input",
    "update",
    "sample",
]

# A coefficient whose magnitude is below this fraction of the largest coefficient of its
# combination is the rounding residue of a coefficient that is exactly 0 (the read-off
# subtracts a·c_i from c_{i+1}): it is dropped, so the step reads only what it uses.
_ZERO = 1e-13
# What is left of a combination after the read-off, relative to its largest coefficient,
# above which the sampler is not of the affine form read here.
_RESIDUAL = 1e-9
# The most past model outputs a step may read (LMS of order 4 with Heun-like calls: 8).
_HISTORY = 8
# The most past states a step may read (LMS of order 4 reads x_i … x_{i−3}).
_STATES = 4


class Call(NamedTuple):
    """One model call of a step: input = alpha·x_i + gamma·z_i + Σ betas[k]·D_{i,k}."""

    sigma: float
    alpha: float
    gamma: float
    betas: tuple[float, ...]


class Step(NamedTuple):
    """One step: its calls, then x_{i+1} = a·x_i + Σ p_j·x_{i−j} + s·z_i + Σ b_j·history[j].

    ``b`` pairs (j, coefficient): history[0] is the newest model output (this step's last
    call), history[1] the one before, …; ``p`` pairs (j ≥ 1, coefficient) for past states
    (only LMS, whose derivatives (x_k − D_k)/σ_k keep its past states); only non-zero
    coefficients are kept.
    """

    calls: tuple[Call, ...]
    a: float
    s: float
    b: tuple[tuple[int, float], ...]
    p: tuple[tuple[int, float], ...] = ()


class SigmaProgram(NamedTuple):
    """A sampler on one σ grid with one set of options, as per-step affine coefficients."""

    sampler: str
    sigmas: np.ndarray
    steps: tuple[Step, ...]
    noisy: bool
    history: int  # how many past model outputs the steps read (the length kept)
    states: int = 0  # how many past states the steps read


# -- reading a program off the specification -------------------------------------------------
class _Probe:
    """The probe "model": records each input (a basis expansion) and returns a new basis vector."""

    def __init__(self, first: int, size: int):
        self.next, self.size = first, size
        self.inputs: list[tuple[np.ndarray, float, int]] = []

    def __call__(self, x: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        out = np.zeros((1, self.size))
        out[0, self.next] = 1.0
        self.inputs.append((x[0].copy(), float(sigma[0]), self.next))
        self.next += 1
        return out


def _max_calls(n: int) -> int:
    return 2 * n  # Heun, the most: two per step


def _read(sampler: str, sigmas: np.ndarray, options: dict) -> SigmaProgram:
    n = sigmas.shape[0] - 1
    noisy = solvers.needs_noise(sampler, **options)
    n_calls = _max_calls(n)
    z0, d0 = 1, 1 + n  # coordinates: x_T, z_0..z_{n-1}, then the model outputs
    size = d0 + n_calls
    probe = _Probe(d0, size)
    x_T = np.zeros((1, size))
    x_T[0, 0] = 1.0
    noise = None
    if noisy:
        noise = np.zeros((n, 1, size))
        noise[np.arange(n), 0, z0 + np.arange(n)] = 1.0
    marks: list[int] = []
    x_n, traj = solvers.sample(
        probe,
        sigmas,
        sampler=sampler,
        x_T=x_T,
        step_noise=noise,
        return_trajectory=True,
        callback=lambda i, s, x: marks.append(len(probe.inputs)),
        **options,
    )
    del x_n
    states = traj[:, 0, :]
    steps, history, states_used, first = [], 0, 0, 0
    for i in range(n):
        c_i, c_next = states[i], states[i + 1]
        mine = probe.inputs[first : marks[i]]
        first = marks[i]
        calls = []
        for k, (u, sig, _) in enumerate(mine):
            alpha = _ratio(u[0], c_i[0])
            gamma = float(u[z0 + i])
            betas = tuple(float(u[mine[j][2]]) for j in range(k))
            rest = u - alpha * c_i
            rest[z0 + i] -= gamma
            for j in range(k):
                rest[mine[j][2]] -= betas[j]
            _check_rest(rest, (alpha, gamma, *betas, np.abs(u).max()), sampler, i, "model input")
            calls.append(Call(sig, alpha, gamma, betas))
        # the newest model outputs first; older ones must not be read (the residual check)
        outputs = [idx for _, _, idx in probe.inputs[: marks[i]]][::-1][:_HISTORY]
        try:
            step = _update(c_next, states[: i + 1][::-1][:1], outputs, z0 + i)
        except _NotAffine as e:
            step, why = None, e
            # past states too (LMS: k states, k outputs): a least-squares read-off, unique
            for k in range(2, min(_STATES, i + 1) + 1):
                try:
                    step = _update(c_next, states[: i + 1][::-1][:k], outputs[:k], z0 + i)
                    break
                except _NotAffine as e2:
                    why = e2
            if step is None:
                raise InputError(
                    "sampler",
                    f"{sampler}: step {i}'s state update is not affine in (x_i, past states, z_i, "
                    f"recent model outputs) ({why})",
                ) from None
        history = max(history, 1 + max((j for j, _ in step.b), default=-1))
        states_used = max(states_used, max((j for j, _ in step.p), default=0))
        steps.append(step._replace(calls=tuple(calls)))
    return SigmaProgram(sampler, sigmas, tuple(steps), noisy, history, states_used)


class _NotAffine(Exception):
    pass


def _update(c_next: np.ndarray, past: np.ndarray, outputs: list[int], iz: int) -> Step:
    """Coefficients of c_next over past[0] (= x_i), past[1:], the outputs' and z_i's
    coordinates (past: (J, P) expansions, newest first)."""
    if len(past) == 1:  # triangular: a from the x_T coordinate, the rest from their own
        a = _ratio(c_next[0], past[0][0])
        coef = np.array([a])
        rest = c_next - a * past[0]
        vals = rest[outputs].copy()
        s = float(rest[iz])
    else:
        cols = np.column_stack([*past, np.eye(c_next.shape[0])[:, [*outputs, iz]]])
        if np.linalg.matrix_rank(cols) < cols.shape[1]:
            raise _NotAffine("the past states are not independent")
        sol = np.linalg.lstsq(cols, c_next, rcond=None)[0]
        coef, vals, s = sol[: len(past)], sol[len(past) : -1], float(sol[-1])
        rest = c_next - past.T @ coef
    rest[outputs] -= vals
    rest[iz] -= s
    scale = max(1.0, float(np.abs(c_next).max()), float(np.abs(coef).max()), abs(s))
    if len(vals):
        scale = max(scale, float(np.abs(vals).max()))
    keep = np.abs(vals) > _ZERO * scale
    rest[np.asarray(outputs, dtype=int)[~keep]] += vals[~keep]  # dropped residues: checked
    worst = float(np.max(np.abs(rest)))
    if not worst <= _RESIDUAL * scale:
        raise _NotAffine(f"residual {worst:.3g}")
    b = tuple((j, float(v)) for j, v in enumerate(vals) if keep[j])
    p = tuple((j, float(v)) for j, v in enumerate(coef) if j and abs(v) > _ZERO * scale)
    return Step((), float(coef[0]), s, b, p)


def _ratio(num: float, den: float) -> float:
    if den == 0.0:
        if num == 0.0:
            return 0.0
        raise _NotAffine("the state lost its x_T part mid-run")
    return float(num / den)


def _check_rest(rest: np.ndarray, coefs, sampler: str, i: int, what: str) -> None:
    scale = max(1.0, max(abs(float(c)) for c in coefs))
    worst = float(np.max(np.abs(rest)))
    if not worst <= _RESIDUAL * scale:
        raise InputError(
            "sampler",
            f"{sampler}: step {i}'s {what} is not affine in (x_i, z_i, recent model outputs) "
            f"(residual {worst:.3g})",
        )


_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 32
_LOCK = threading.Lock()
_KEY_TYPES = (type(None), bool, int, float, str, np.bool_, np.integer, np.floating)


def program(sampler: str, sigmas, **options) -> SigmaProgram:
    """The affine program of ``sampler`` (a key of :data:`refdiff.solvers.SAMPLERS`) on the
    σ grid ``sigmas`` (n+1,) with ``options`` (those of the sampler), read off
    :mod:`refdiff.solvers` (module docstring); cached by (sampler, grid bytes, options)."""
    option(sampler, "sampler", list(solvers.SAMPLERS))
    sig = as_float_array(sigmas, "sigmas")
    key = None
    if all(isinstance(v, _KEY_TYPES) for v in options.values()):
        opts = tuple((k, type(v), repr(v)) for k, v in sorted(options.items()))
        key = (sampler, sig.shape, sig.tobytes(), opts)
        with _LOCK:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return _CACHE[key]
    prog = _read(sampler, solvers._sigmas(sig, sampler == "flow_euler"), options)
    if key is not None:
        with _LOCK:
            _CACHE[key] = prog
            if len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return prog


# -- running a program -----------------------------------------------------------------------
def combine(terms: list[tuple[np.ndarray, float]], out: np.ndarray | None = None) -> np.ndarray:
    """Σ c·v over ``terms`` (arrays of one shape, float64) into a fresh array (or ``out``):
    IEEE multiply then add, term by term, block by block for large arrays."""
    terms = [(v, c) for v, c in terms if c != 0.0] or terms[:1]
    v0 = terms[0][0]
    n = v0.size
    if n <= BLOCK:
        (v, c), *rest = terms
        y = np.multiply(v, c, out=out)
        for v, c in rest:
            y += v * c
        return y
    y = np.empty(v0.shape) if out is None else out
    blocked_combine(y, None, terms)
    return y


_F64 = np.dtype(np.float64)


def _output(out: object, x: np.ndarray) -> np.ndarray:
    if not (type(out) is np.ndarray and out.dtype is _F64):
        out = as_float_array(out, "model output")
    elif out.size > 16 or not all(map(math.isfinite, out.flat)):
        out = as_float_array(out, "model output")  # the full finiteness check
    if out.shape != x.shape:
        raise ShapeError("model output", f"shape {out.shape} is not the state's {x.shape}")
    return out


def model_input(call: Call, x: np.ndarray, z: np.ndarray | None, mine: list[np.ndarray]):
    """The input of ``call``: α x_i + γ z_i + Σ β_k D_{i,k} (``mine``: this step's earlier
    outputs, oldest first); x_i itself when that is all it is."""
    terms = [(x, call.alpha)]
    if call.gamma != 0.0:
        terms.append((z, call.gamma))
    terms += [(d, beta) for d, beta in zip(mine, call.betas) if beta != 0.0]
    return x if len(terms) == 1 and call.alpha == 1.0 else combine(terms)


def update(
    step: Step, x: np.ndarray, history: list[np.ndarray], z: np.ndarray | None, past=()
) -> np.ndarray:
    """x_{i+1} = a x_i + Σ p_j x_{i−j} + Σ b_j history[j] + s z_i (``history``: the model
    outputs, newest first; ``past``: x_{i−1}, x_{i−2}, …): a fresh array."""
    if x.size <= BLOCK:  # the same operations as combine, without building the term list
        if step.a == 1.0 and step.b and not step.p:  # Euler-like: x + b·D, one product fewer
            (j0, v0), *rest = step.b
            y = history[j0] * v0
            y += x
            for j, v in rest:
                y += history[j] * v
            if step.s != 0.0:
                y += z * step.s
            return y
        y = x * step.a
        for j, v in step.p:
            y += past[j - 1] * v
        for j, v in step.b:
            y += history[j] * v
        if step.s != 0.0:
            y += z * step.s
        return y
    terms = [(x, step.a)] + [(past[j - 1], v) for j, v in step.p]
    terms += [(history[j], v) for j, v in step.b]
    if step.s != 0.0:
        terms.append((z, step.s))
    return combine(terms)


def sample(
    model,
    sigmas,
    shape: tuple[int, ...] | None = None,
    *,
    sampler: str = "euler",
    x_T=None,
    step_noise=None,
    rng: np.random.Generator | None = None,
    return_trajectory: bool = False,
    callback=None,
    **options,
):
    """:func:`refdiff.solvers.sample` run as its affine :func:`program` (the same arguments,
    noise layout, ``rng`` stream, trajectory and callback; equal up to rounding)."""
    prog = program(sampler, sigmas, **options)
    loop = solvers._Loop(
        model,
        prog.sigmas,
        shape,
        x_T,
        step_noise,
        rng,
        prog.noisy,
        callback,
        return_trajectory,
        sampler == "flow_euler",
    )
    x = loop.x0
    hist: list[np.ndarray] = []
    past: list[np.ndarray] = []  # x_{i−1}, x_{i−2}, … (LMS only)
    keep = max(prog.history, 1)
    B = x.shape[0]
    for i, st in enumerate(prog.steps):
        z = loop.noise(i, x.shape) if prog.noisy else None
        mine: list[np.ndarray] = []
        for c in st.calls:
            inp = model_input(c, x, z, mine)
            mine.append(_output(model(inp, np.full(B, c.sigma)), x))
        hist = (mine[::-1] + hist)[:keep]
        x, past = update(st, x, hist, z, past), [x, *past][: prog.states]
        loop.done(i, x)
    return loop.result(x)
