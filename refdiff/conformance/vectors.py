"""Golden vectors: reference inputs and outputs in a versioned format readable without refdiff.

``refdiff vectors write DIR`` writes them; ``refdiff vectors check DIR`` recomputes the
reference from the *inputs* in DIR and compares it with the *outputs* in DIR — outputs that
another implementation wrote — and prints a per-case table.  The format (schema version 1,
docs/verify.md §Golden vectors):

``DIR/manifest.json``::

    {"format": "refdiff-golden-vectors", "schema_version": 1, "generator": "refdiff 0.1.0",
     "index_convention": "...", "arrays": {name: meaning}, "cases": [
        {"id": "ddpm-0000", "file": "cases/ddpm-0000.npz", "sampler": "ddpm",
         "config": {...}, "file_sha256": "...",
         "arrays": {name: {"shape": [...], "dtype": "<f8", "sha256": "...", "role": ...}}}]}

``DIR/cases/<id>.npz``: one NumPy ``.npz`` (no pickles) per case.  ``sha256`` of an array is
the SHA-256 of its C-order bytes in the stated dtype.  Times are 0-based *indices* (the
diffusers / improved-diffusion convention: index i is refdiff time t = i + 1).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import __version__
from .._io import load_npz, save_npz, write_json
from ..errors import FileFormatError, InputError, UndefinedError
from ..reverse import VARIANCE_TYPES
from .cases import Case, Setting, expected, make_inputs, options_label
from .comparison import Comparison, compare, compare_alpha_bar
from .diagnoses import diagnosis_for
from .tolerance import Tolerance

__all__ = [
    "FORMAT",
    "SCHEMA_VERSION",
    "MANIFEST_SCHEMA",
    "no_effect",
    "output_tolerances",
    "make_sigma_case",
    "reference_outputs_unchanged",
    "ARRAYS",
    "array_sha256",
    "grid",
    "make_case",
    "write",
    "read",
    "check",
    "main",
]

FORMAT = "refdiff-golden-vectors"
SCHEMA_VERSION = 1
STATE = (2, 2, 4, 4)  # (B, C, H, W): 32 values per sample, enough for a quantile

# name -> (role, meaning)
ARRAYS: dict[str, tuple[str, str]] = {
    "alpha_bar": ("output", "(T,) ᾱ of the base schedule at index 0..T−1 (eq. 2.2)"),
    "beta": ("output", "(T,) β of the base schedule at index 0..T−1"),
    "timesteps": ("input", "(N,) int64 kept indices, descending (diffusers' scheduler.timesteps)"),
    "q_index": ("input", "() int64 index at which q_sample is evaluated"),
    "x0": ("input", "(B, C, H, W) data for q_sample"),
    "q_noise": ("input", "(B, C, H, W) standard normal noise for q_sample"),
    "q_sample": ("output", "(B, C, H, W) √ᾱ x0 + √(1−ᾱ) q_noise at q_index (eq. 3.2)"),
    "step_index": ("input", "(S,) int64 kept indices at which one reverse step is taken"),
    "step_x0": ("input", "(S, B, C, H, W) data the states were noised from (posterior input)"),
    "x_t": ("input", "(S, B, C, H, W) states at step_index"),
    "model_output": ("input", "(S, B, C, H, W) denoiser output of prediction_type"),
    "model_variance": ("input", "(S, B, C, H, W) variance output (learned variance types only)"),
    "step_noise": ("input", "(S, B, C, H, W) standard normal noise of the step"),
    "posterior_mean": (
        "output",
        "(S, B, C, H, W) mean of q(x_prev|x_t, step_x0), prev = previous "
        "kept step (eq. 4.1 on the respaced schedule)",
    ),
    "posterior_variance": ("output", "(S,) variance of that posterior (eq. 4.2)"),
    "ddpm_step": ("output", "(S, B, C, H, W) x_prev of one DDPM step (eqs. 7.3–7.8)"),
    "ddim_step": ("output", "(S, B, C, H, W) x_prev of one DDIM step (eqs. 7.9–7.10)"),
    "sigmas": ("input", "(n+1,) σ grid of a σ-view sampler, decreasing, last 0 (docs/samplers.md)"),
    "x_T": ("input", "(B, D) initial state (VE state σ_0 z; flow_euler: z)"),
    "traj_noise": ("input", "(n, B, D) unit normals, slice i used by step i (stochastic samplers)"),
    "model_call_sigma": ("input", "(m,) σ of each model call, in call order"),
    "model_calls": (
        "input",
        "(m, B, D) the model's output at each call (denoised x̂0; flow_euler: the velocity): "
        "a port replays them in order",
    ),
    "trajectory": ("output", "(n+1, B, D) the states x_T, after step 0, …, after step n−1"),
}
INDEX_CONVENTION = (
    "Times are 0-based indices i (diffusers, improved-diffusion); refdiff's time is t = i + 1. "
    "The step at step_index[k] goes to the next kept index in timesteps (or to the data after "
    "the last one)."
)
CONFIG_DOC = {
    "schedule": "linear (β 1e-4..0.02), scaled_linear (√β linear 0.00085..0.012), cosine "
    "(Nichol & Dhariwal, s=0.008, max_beta=0.999), sigmoid",
    "zero_terminal_snr": "Lin et al. 2023 Alg. 1 rescale of the base schedule",
    "num_steps/spacing/steps_offset": "kept steps, diffusers' timestep_spacing rules "
    "(num_steps null: all T)",
    "prediction_type": "epsilon | x0 | v (v = √ᾱ ε − √(1−ᾱ) x0)",
    "variance_type": "fixed_small (β̃) | fixed_large (β) | fixed_large_iddpm | learned "
    "(log-variance) | learned_linear (variance) | learned_range (iDDPM interpolation)",
    "clip / threshold_ratio / threshold_max": "x̂0 clamp, or dynamic thresholding (eq. 7.2)",
    "log_variance_clipping": "t = 1 log β̃ convention: next (iDDPM) | floor (1e-20, diffusers)",
    "eta": "DDIM η (eq. 7.10)",
    "final_alpha_bar": "ᾱ after the last DDIM step: one | first (ᾱ at index 0)",
    "rederive_eps": "DDIM ε̂ re-derived from the clipped x̂0",
    "final_step_noise": "DDIM adds σ z at the last step when η > 0",
}


_ARRAY_META = {
    "type": "object",
    "required": ["shape", "dtype", "role"],
    "properties": {
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "dtype": {"type": "string"},
        "role": {"enum": ["input", "output"]},
        "sha256": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
        "reference_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "filled": {"type": "boolean"},
        "tolerance": {
            "type": "object",
            "additionalProperties": {"type": "number", "minimum": 0},
        },
    },
    "additionalProperties": False,
}
# JSON Schema (draft 2020-12) of manifest.json; written beside it as manifest.schema.json
MANIFEST_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "refdiff golden vectors manifest",
    "type": "object",
    "required": ["format", "schema_version", "generator", "index_convention", "cases"],
    "properties": {
        "format": {"const": "refdiff-golden-vectors"},
        "schema_version": {"const": 1},
        "generator": {"type": "string"},
        "grid": {"type": "string"},
        "seed": {"type": "integer"},
        "index_convention": {"type": "string"},
        "config_keys": {"type": "object", "additionalProperties": {"type": "string"}},
        "arrays": {"type": "object", "additionalProperties": {"type": "string"}},
        "sha256": {"type": "string"},
        "tolerance": {"type": "string"},
        "no_effect": {"type": "string"},
        "inputs_only": {"type": "boolean"},
        "cases": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "file", "sampler", "config", "arrays"],
                "properties": {
                    "id": {"type": "string"},
                    "file": {"type": "string", "pattern": "^cases/[A-Za-z0-9_.-]+[.]npz$"},
                    "sampler": {"enum": ["ddpm", "ddim", "sigma"]},
                    "config": {"type": "object"},
                    "file_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "arrays": {"type": "object", "additionalProperties": _ARRAY_META},
                    "no_effect": {"type": "object", "additionalProperties": {"type": "string"}},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}


def array_sha256(a: np.ndarray) -> str:
    """SHA-256 of the array's C-order bytes in its own dtype."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- the grid ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class VectorCase:
    """One entry of a vectors grid: a sampler, a setting and its options."""

    id: str
    sampler: str
    setting: Setting
    options: Mapping[str, object]

    def config(self) -> dict:
        """The entry's configuration as stored in the manifest."""
        s = self.setting
        cfg: dict[str, object] = {
            "schedule": s.schedule,
            "T": s.T,
            "num_steps": s.num_steps,
            "spacing": s.spacing,
            "steps_offset": s.steps_offset,
            "zero_terminal_snr": s.zero_terminal_snr,
        }
        cfg.update({k: v for k, v in self.options.items()})
        return cfg


GRIDS = ("small", "default", "full", "sigma")

# σ-view sampler trajectories (grid "sigma"): refdiff sampler -> options
SIGMA_CASES: dict[str, dict] = {
    "euler": {},
    "euler_ancestral": {"eta": 1.0},
    "heun": {},
    "dpm_2": {},
    "lms": {"order": 4},
    "dpmpp_2m": {"lower_order_final": True},
    "dpmpp_2m_sde": {"eta": 1.0, "lower_order_final": True},
    "dpmpp_3m_sde": {"eta": 1.0, "lower_order_final": True},
    "unipc": {"order": 2, "solver_type": "bh2", "lower_order_final": True},
    "flow_euler": {},
}
SIGMA_STEPS = 12


def grid(name: str = "default", *, T: int = 1000, steps: int = 30) -> list[VectorCase]:
    """The case list.  ``default``: every schedule × spacing × prediction type × variance type
    (DDPM) or η (DDIM), with clipping / thresholding, final ᾱ, ε re-derivation and the t = 1
    conventions rotated so that every pair of option values occurs; plus zero-terminal-SNR
    cases.  ``full``: the whole product.  ``small``: a handful (tests)."""
    if name not in GRIDS:
        raise InputError("grid", f"unknown grid {name!r}; valid: {', '.join(GRIDS)}")
    if name == "sigma":
        return [
            VectorCase(
                f"sigma-{k:04d}",
                "sigma",
                Setting("linear", T, SIGMA_STEPS, "linspace"),
                {"sampler": smp, **o},
            )
            for k, (smp, o) in enumerate(SIGMA_CASES.items())
        ]
    scheds = ("linear", "scaled_linear", "cosine")
    spacings = (("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0))
    preds = ("epsilon", "x0", "v")
    variances = VARIANCE_TYPES
    etas = (0.0, 0.5, 1.0)
    clips: tuple[dict, ...] = ({}, {"clip": 1.0}, {"threshold_ratio": 0.9, "threshold_max": 1.5})
    out: list[VectorCase] = []
    if name == "small":  # 12 cases: every sampler, spacing and prediction type once or more
        combos = [
            (sc, sp, off)
            for sc in ("linear", "cosine")
            for sp, off in (("leading", 1), ("trailing", 0))
        ]
        for k, (sc, sp, off) in enumerate(combos):
            st = Setting(sc, T, steps, sp, off)
            for vt in ("fixed_small", "learned_range"):
                out.append(
                    VectorCase(
                        f"ddpm-{len(out):04d}",
                        "ddpm",
                        st,
                        {
                            "prediction_type": preds[k % 3],
                            "variance_type": vt,
                            **clips[k % 3],
                            "log_variance_clipping": "floor",
                        },
                    )
                )
        for k, (sc, sp, off) in enumerate(combos):
            st = Setting(sc, T, steps, sp, off)
            out.append(
                VectorCase(
                    f"ddim-{k:04d}",
                    "ddim",
                    st,
                    {
                        "prediction_type": preds[(k + 1) % 3],
                        "eta": etas[k % 3],
                        **clips[(k + 1) % 3],
                        "final_alpha_bar": ("one", "first")[k % 2],
                    },
                )
            )
        return out

    def add(sampler: str, setting: Setting, options: dict) -> None:
        out.append(
            VectorCase(
                f"{sampler}-{len([c for c in out if c.sampler == sampler]):04d}",
                sampler,
                setting,
                options,
            )
        )

    full = name == "full"
    for (si, sc), (pi, (sp, off)), (ri, pt), (vi, vt) in itertools.product(
        enumerate(scheds), enumerate(spacings), enumerate(preds), enumerate(variances)
    ):
        st = Setting(sc, T, steps, sp, off)
        for ci in range(3) if full else ((si + pi + ri + vi) % 3,):
            o = {
                "prediction_type": pt,
                "variance_type": vt,
                **clips[ci],
                "log_variance_clipping": ("next", "floor")[(si + ri + vi) % 2],
            }
            add("ddpm", st, o)
    for (si, sc), (pi, (sp, off)), (ri, pt), (ei, eta) in itertools.product(
        enumerate(scheds), enumerate(spacings), enumerate(preds), enumerate(etas)
    ):
        st = Setting(sc, T, steps, sp, off)
        for ci in range(3) if full else ((si + pi + ri + ei) % 3,):
            o = {
                "prediction_type": pt,
                "eta": eta,
                **clips[ci],
                "final_alpha_bar": ("one", "first")[(si + pi + ei) % 2],
                "rederive_eps": (pi + ri) % 2 == 0,
                "final_step_noise": (si + ri + ei) % 2 == 1,
            }
            add("ddim", st, o)
    if name != "small":
        zs = Setting("scaled_linear", T, steps, "trailing", 0, True)
        for pt in ("x0", "v"):
            add("ddpm", zs, {"prediction_type": pt, "variance_type": "fixed_small"})
            add("ddim", zs, {"prediction_type": pt, "eta": 0.0, "final_alpha_bar": "one"})
    return out


def _positions(n: int) -> list[int]:
    """Respaced times of the steps stored per case: first, middle, second and last."""
    return sorted({n, max(n // 2, 1), min(2, n), 1}, reverse=True)


def _sigma_grid(setting: Setting, sampler: str) -> np.ndarray:
    from .. import flow, sigma

    if sampler == "flow_euler":
        return flow.flow_sigmas(setting.N, shift_factor=3.0)
    base = setting.base()
    return sigma.karras(setting.N, float(base.sigma[1]), float(base.sigma[base.T]))


def _sigma_options(cfg: Mapping[str, object]) -> tuple[str, dict]:
    o = {k: v for k, v in cfg.items() if k not in _SETTING_KEYS}
    return str(o.pop("sampler")), o


class _Replay:
    """A model that returns the stored outputs in call order (and checks the σ asked)."""

    def __init__(self, outputs: np.ndarray, sigmas: np.ndarray):
        self.outputs, self.sigmas, self.i = outputs, sigmas, 0

    def __call__(self, x: np.ndarray, s: np.ndarray) -> np.ndarray:
        i = self.i
        if i >= len(self.outputs):
            raise InputError("model", f"the sampler called the model more than {i} times")
        want = float(self.sigmas[i])
        got = float(np.asarray(s).reshape(-1)[0])
        if abs(got - want) > 1e-9 * max(1.0, abs(want)):
            raise InputError("model", f"model call {i} at σ={got:.6g}, the vectors have {want:.6g}")
        self.i += 1
        return self.outputs[i]


def make_sigma_case(vc: VectorCase, seed: int = 0) -> dict[str, np.ndarray]:
    """A σ-view sampler trajectory: grid, x_T, step noise, every model call's σ and output
    (the exact denoiser of a Gaussian mixture; the velocity for flow_euler) in call order,
    and the reference trajectory (n+1, B, 2) (docs/samplers.md)."""
    from .. import exact_sigma, solvers
    from .sigmaview import MIXTURE

    sampler, opts = _sigma_options(vc.config())
    rng = np.random.default_rng(
        [seed, int.from_bytes(hashlib.sha256(vc.id.encode()).digest()[:4], "little")]
    )
    grid = _sigma_grid(vc.setting, sampler)
    n = grid.shape[0] - 1
    z0 = rng.standard_normal((4, 2))
    x_T = z0 if sampler == "flow_euler" else grid[0] * z0
    noise = rng.standard_normal((n, 4, 2))
    f = exact_sigma.velocity(MIXTURE) if sampler == "flow_euler" else exact_sigma.denoiser(MIXTURE)
    calls_s: list[float] = []
    calls_y: list[np.ndarray] = []

    def model(x, s):
        y = f(x, s)
        calls_s.append(float(np.asarray(s).reshape(-1)[0]))
        calls_y.append(np.array(y))
        return y

    step_noise = noise if solvers.needs_noise(sampler, **opts) else None
    _, traj = solvers.sample(
        model,
        grid,
        sampler=sampler,
        x_T=x_T,
        step_noise=step_noise,
        return_trajectory=True,
        **opts,
    )
    return {
        "sigmas": grid,
        "x_T": x_T,
        "traj_noise": noise,
        "model_call_sigma": np.array(calls_s),
        "model_calls": np.stack(calls_y),
        "trajectory": traj,
    }


def _check_sigma_case(entry: Mapping, arrays: Mapping[str, np.ndarray], tol: Tolerance):
    from .. import solvers
    from .sigmaview import diagnose_trajectory

    setting, _ = _setting_options(entry["config"])
    sampler, opts = _sigma_options(entry["config"])
    res = CaseResult(entry["id"], "sigma", f"{sampler} {options_label(opts)}", [])
    if "trajectory" not in arrays:
        res.problem = "outputs not filled: trajectory"
        return res
    grid = np.asarray(arrays["sigmas"], dtype=np.float64)
    noise = arrays["traj_noise"] if solvers.needs_noise(sampler, **opts) else None
    try:
        model = _Replay(arrays["model_calls"], arrays["model_call_sigma"])
        with np.errstate(all="ignore"):
            _, ref = solvers.sample(
                model,
                grid,
                sampler=sampler,
                x_T=arrays["x_T"],
                step_noise=noise,
                return_trajectory=True,
                **opts,
            )
    except InputError as e:
        res.problem = str(e)
        return res
    got = np.asarray(arrays["trajectory"], dtype=np.float64)
    scale = 1.0 + float(np.max(np.abs(ref)))
    n = grid.shape[0] - 1
    tol_abs = tol.factor * tol.u_schedule * 4 * n * scale
    err = np.abs(got - ref) if got.shape == ref.shape else np.full(ref.shape, np.inf)
    per = err.reshape(err.shape[0], -1).max(axis=1)
    ratio = float(per.max() / tol_abs)
    ok = ratio <= 1.0
    diag = None
    if not ok and got.shape == ref.shape:

        def replay():
            return _Replay(arrays["model_calls"], arrays["model_call_sigma"])

        class _Fresh:
            m = replay()

            def fresh(self):
                self.m = replay()

            def __call__(self, x, s):
                return self.m(x, s)

        diag = diagnose_trajectory(
            sampler, opts, _Fresh(), grid, arrays["x_T"], arrays["traj_noise"], got[1:], tol_abs
        )
    res.checks.append(
        Comparison(
            op="trajectory",
            setting=setting,
            t=int(np.argmax(per)),
            base_time=int(np.argmax(per)) + 1,
            options={"sampler": sampler, **opts},
            max_abs=float(per.max()),
            max_rel=float(per.max() / scale),
            ratio=ratio,
            passed=ok,
            status="ok" if ok else "FAIL",
            problem=None
            if ok
            else (
                f"state {int(np.argmax(per))} of the trajectory (0-based; 0 is x_T): max abs err "
                f"{per.max():.3g}, err/tol {ratio:.3g} (tolerance K·u·4n·(1+max|x|), "
                f"{tol.describe()})"
            ),
            index_base=0,
            tolerance=tol,
            diagnosis=diag,
        )
    )
    return res


def make_case(vc: VectorCase, seed: int = 0) -> dict[str, np.ndarray]:
    """Every array of one case: inputs drawn from ``seed`` and the case id, reference outputs."""
    if vc.sampler == "sigma":
        return make_sigma_case(vc, seed)
    s = vc.setting
    rng = np.random.default_rng(
        [seed, int.from_bytes(hashlib.sha256(vc.id.encode()).digest()[:4], "little")]
    )
    base, resp = s.base(), s.respaced()
    arrays: dict[str, np.ndarray] = {
        "alpha_bar": np.array(base.alpha_bar[1:]),
        "beta": np.array(base.beta[1:]),
        "timesteps": (s.times()[::-1] - 1).astype(np.int64),
    }
    qt = int(rng.integers(1, s.T + 1))
    qi = make_inputs("q_sample", base, qt, {}, rng, STATE)
    arrays["q_index"] = np.array(qt - 1, dtype=np.int64)
    arrays["x0"], arrays["q_noise"] = qi["x0"], qi["noise"]
    arrays["q_sample"] = expected(Case("q_sample", s, qt, {}, qi))
    pos = _positions(resp.T)
    op = vc.sampler + "_step"
    names = ("step_x0", "x_t", "model_output", "model_variance", "step_noise")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in names}
    outs: dict[str, list[np.ndarray]] = {"posterior_mean": [], "posterior_variance": [], op: []}
    for t in pos:
        inp = make_inputs(op, resp, t, vc.options, rng, STATE)
        cols["step_x0"].append(inp.pop("x0"))
        cols["x_t"].append(inp["x_t"])
        cols["model_output"].append(inp["model_output"])
        cols["step_noise"].append(inp["noise"])
        if "model_variance" in inp:
            cols["model_variance"].append(inp["model_variance"])
        pc = Case("posterior_mean", s, t, {}, {"x0": cols["step_x0"][-1], "x_t": inp["x_t"]})
        outs["posterior_mean"].append(expected(pc, resp))
        outs["posterior_variance"].append(
            expected(Case("posterior_variance", s, t, {}, pc.inputs), resp).reshape(-1)[0]
        )
        outs[op].append(expected(Case(op, s, t, dict(vc.options), inp)))
    arrays["step_index"] = (resp.timesteps[pos] - 1).astype(np.int64)
    for k, v in cols.items():
        if v:
            arrays[k] = np.stack(v)
    for k, v in outs.items():
        arrays[k] = np.stack(v) if k != "posterior_variance" else np.array(v)
    return arrays


# -- writing and reading ----------------------------------------------------------------------
_ALTERNATIVES = {
    "rederive_eps": lambda v: not v,
    "final_step_noise": lambda v: not v,
    "log_variance_clipping": lambda v: "floor" if v == "next" else "next",
    "final_alpha_bar": lambda v: "first" if v == "one" else "one",
    "threshold_max": lambda v: float(v) + 0.5,
    "lower_order_final": lambda v: not v,
}


def no_effect(vc: VectorCase, arrays: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, str]:
    """The options of ``vc`` whose other value leaves every stored output unchanged (e.g.
    ``rederive_eps`` without clipping, ``log_variance_clipping`` where no noise is added at
    t = 1): {option: why}."""
    out = {}
    for k, alt in _ALTERNATIVES.items():
        if k not in vc.options:
            continue
        other = alt(vc.options[k])
        arrays2 = make_case(
            VectorCase(vc.id, vc.sampler, vc.setting, {**vc.options, k: other}), seed
        )
        same = all(
            np.array_equal(arrays[n], arrays2[n], equal_nan=True)
            for n in arrays
            if ARRAYS[n][0] == "output"
        )
        if same:
            out[k] = f"no effect here: {k}={other!r} gives the same outputs"
    return out


def _manifest_entry(
    vc: VectorCase,
    arrays: Mapping[str, np.ndarray],
    file_sha: str,
    *,
    inputs_only: bool = False,
    seed: int = 0,
) -> dict:
    entry = {
        "id": vc.id,
        "file": f"cases/{vc.id}.npz",
        "sampler": vc.sampler,
        "config": vc.config(),
        "file_sha256": file_sha,
        "arrays": {},
    }
    tols = output_tolerances(entry, arrays) if vc.sampler != "sigma" else {}
    for k, a in arrays.items():
        role = ARRAYS[k][0]
        meta: dict[str, object] = {"shape": list(a.shape), "dtype": a.dtype.str, "role": role}
        if role == "output" and inputs_only:
            meta.update(sha256=None, filled=False)
        else:
            meta["sha256"] = array_sha256(a)
        if role == "output":
            meta["reference_sha256"] = array_sha256(a)
            if k in tols:
                meta["tolerance"] = tols[k]
        entry["arrays"][k] = meta
    if vc.sampler != "sigma":
        ne = no_effect(vc, arrays, seed)
        if ne:
            entry["no_effect"] = ne
    return entry


def _is_vectors_dir(path: Path) -> bool:
    m = path / "manifest.json"
    if not m.is_file():
        return False
    with contextlib.suppress(Exception):
        return json.loads(m.read_text()).get("format") == FORMAT
    return False


def write(
    directory: str | os.PathLike,
    *,
    grid_name: str = "default",
    seed: int = 0,
    T: int = 1000,
    steps: int = 30,
    inputs_only: bool = False,
) -> dict:
    """Write the golden vectors of ``grid_name`` to ``directory`` and return the manifest.

    ``inputs_only``: the case files hold the inputs only; the manifest lists every output
    (shape, dtype, per-precision tolerance, ``filled: false``) for the port to compute and
    add to the case's ``.npz`` under its name; ``vectors check`` then compares them.

    The whole directory is built next to the target and swapped in at the end: an interrupted
    write leaves the old vectors (or none).  An existing non-empty directory that is not a
    vectors directory is refused.
    """
    target = Path(directory)
    if target.exists() and (
        not target.is_dir() or (any(target.iterdir()) and not _is_vectors_dir(target))
    ):
        raise InputError("DIR", f"{target} exists and is not a refdiff vectors directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        entries = []
        for vc in grid(grid_name, T=T, steps=steps):
            arrays = make_case(vc, seed)
            path = tmp / "cases" / f"{vc.id}.npz"
            stored = {k: a for k, a in arrays.items() if not inputs_only or ARRAYS[k][0] == "input"}
            save_npz(path, **stored)
            entries.append(
                _manifest_entry(vc, arrays, _file_sha256(path), inputs_only=inputs_only, seed=seed)
            )
        manifest = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "generator": f"refdiff {__version__}",
            "grid": grid_name,
            "seed": seed,
            "index_convention": INDEX_CONVENTION,
            "config_keys": CONFIG_DOC,
            "arrays": {k: f"{role}: {doc}" for k, (role, doc) in ARRAYS.items()},
            "sha256": "SHA-256 of each array's C-order bytes in the stated dtype (null: an "
            "output left for the port to fill); reference_sha256: the reference's own output",
            "tolerance": "per output and precision: the largest elementwise bound of "
            "`refdiff vectors check` (K·(u_state·M + u_schedule·(M+S)), docs/verify.md "
            "§Tolerances); the check itself is elementwise, tighter where terms are small",
            "no_effect": "options whose other value gives the same outputs in that case",
            "inputs_only": inputs_only,
            "cases": entries,
        }
        write_json(tmp / "manifest.json", manifest)
        write_json(tmp / "manifest.schema.json", MANIFEST_SCHEMA)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read(directory: str | os.PathLike, *, verify_hashes: bool = True):
    """(manifest, {case id: {name: array}}); checks the format, schema version and hashes.

    Raises :class:`~refdiff.errors.FileFormatError` for a missing or malformed manifest, an
    unsupported schema version, a missing file or a hash mismatch.
    """
    d = Path(directory)
    mpath = d / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileFormatError(mpath, "no manifest.json (not a golden-vectors directory)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:  # deep nesting
        raise FileFormatError(mpath, f"not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FileFormatError(mpath, f"format is not {FORMAT!r}")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise FileFormatError(
            mpath,
            f"schema_version {manifest.get('schema_version')!r} is not supported "
            f"(this refdiff reads {SCHEMA_VERSION})",
        )
    cases = {}
    entries = manifest.get("cases")
    if not isinstance(entries, list) or not all(_entry_ok(e) for e in entries):
        raise FileFormatError(mpath, "malformed 'cases': each needs id, file, arrays and config")
    for entry in entries:
        rel = str(entry.get("file", ""))
        path = (d / rel).resolve()
        if d.resolve() not in path.parents:
            raise FileFormatError(mpath, f"case file {rel!r} is outside the directory")
        arrays = load_npz(path)
        if verify_hashes:
            for name, meta in entry.get("arrays", {}).items():
                if meta.get("sha256") is None and meta.get("role") == "output":
                    continue  # left for the port to fill: checked against the reference
                if name not in arrays:
                    raise FileFormatError(path, f"array {name!r} listed in the manifest is missing")
                a = arrays[name]
                if list(a.shape) != meta.get("shape") or a.dtype.str != meta.get("dtype"):
                    raise FileFormatError(
                        path,
                        f"{name}: shape/dtype {a.shape} {a.dtype.str} differ from the manifest",
                    )
                if array_sha256(a) != meta.get("sha256"):
                    raise FileFormatError(path, f"{name}: sha256 differs from the manifest")
        cases[entry["id"]] = arrays
    return manifest, cases


def _entry_ok(e: object) -> bool:
    """The structure :func:`read` and :func:`check` rely on (values are checked later)."""
    return (
        isinstance(e, dict)
        and isinstance(e.get("id"), str)
        and isinstance(e.get("file"), str)
        and isinstance(e.get("config"), dict)
        and isinstance(e.get("arrays"), dict)
        and all(isinstance(m, dict) for m in e["arrays"].values())
    )


# -- checking ---------------------------------------------------------------------------------
_SETTING_KEYS = ("schedule", "T", "num_steps", "spacing", "steps_offset", "zero_terminal_snr")


def _setting_options(cfg: Mapping[str, object]) -> tuple[Setting, dict]:
    keys = _SETTING_KEYS
    s = Setting(**{k: cfg[k] for k in keys if k in cfg})  # type: ignore[arg-type]
    return s, {k: v for k, v in cfg.items() if k not in keys}


@dataclass
class CaseResult:
    """The outcome of checking one stored case."""

    id: str
    sampler: str
    label: str
    checks: list[Comparison]
    problem: str | None = None

    @property
    def passed(self) -> bool:
        """True when every array of the case is within tolerance."""
        return self.problem is None and all(c.passed for c in self.checks)

    def worst(self) -> Comparison | None:
        """The largest error/tolerance ratio over the arrays."""
        done = [c for c in self.checks if c.status in ("ok", "FAIL")]
        return max(done, key=lambda c: c.ratio) if done else None


def _cases(entry: Mapping, arrays: Mapping[str, np.ndarray]):
    """(output name, step k or None, the reference :class:`Case`) of every stored output
    a case's inputs determine; raises on malformed entries."""
    cfg = entry["config"]
    setting, opts = _setting_options(cfg)
    sampler = entry.get("sampler", "ddpm")
    out = []
    resp = setting.respaced()
    if "q_index" in arrays:
        qt = int(arrays["q_index"]) + 1
        out.append(
            (
                "q_sample",
                None,
                Case("q_sample", setting, qt, {}, {"x0": arrays["x0"], "noise": arrays["q_noise"]}),
            )
        )
    op = f"{sampler}_step"
    for k, idx in enumerate(np.asarray(arrays.get("step_index", [])).ravel()):
        j = np.flatnonzero(resp.timesteps == int(idx) + 1)
        if not j.size:
            raise InputError("step_index", f"{int(idx)} (0-based) is not a kept step")
        t = int(j[0])
        inp = {
            "x_t": arrays["x_t"][k],
            "model_output": arrays["model_output"][k],
            "noise": arrays["step_noise"][k],
        }
        if "model_variance" in arrays:
            inp["model_variance"] = arrays["model_variance"][k]
        post = {"x0": arrays["step_x0"][k], "x_t": arrays["x_t"][k]}
        out.append(("posterior_mean", k, _OnSchedule("posterior_mean", setting, t, {}, post)))
        out.append(
            ("posterior_variance", k, _OnSchedule("posterior_variance", setting, t, {}, post))
        )
        out.append((op, k, Case(op, setting, t, dict(opts), inp)))
    return setting, opts, sampler, out


def check_case(entry: Mapping, arrays: Mapping[str, np.ndarray], tol: Tolerance) -> CaseResult:
    """Compare the outputs stored in one case with the reference recomputed from its inputs;
    failing comparisons carry verify's diagnosis (times: 0-based indices, refdiff's t in
    parentheses)."""
    if entry.get("sampler") == "sigma":
        return _check_sigma_case(entry, arrays, tol)
    cfg = entry["config"]
    setting, opts = _setting_options(cfg)
    sampler = entry.get("sampler", "ddpm")
    label = f"{setting.label()} {options_label(opts)}"
    res = CaseResult(entry["id"], sampler, label, [])
    missing = [
        n
        for n, m in entry.get("arrays", {}).items()
        if m.get("role") == "output" and n not in arrays
    ]
    if missing:
        res.problem = f"outputs not filled: {', '.join(sorted(missing))}"
    try:
        if "alpha_bar" in arrays:
            res.checks.append(
                replace(compare_alpha_bar(setting, arrays["alpha_bar"], tol), index_base=0)
            )
        if "timesteps" in arrays:
            want = (setting.times()[::-1] - 1).astype(np.int64)
            got = np.asarray(arrays["timesteps"]).astype(np.int64)
            if got.shape != want.shape or not np.array_equal(got, want):
                res.problem = "timesteps (0-based) differ from the spacing rule in the config"
        _, _, _, cases = _cases(entry, arrays)
        for name, k, case in cases:
            if name not in arrays:
                continue
            got = arrays[name] if k is None else arrays[name][k]
            try:
                c = compare(case, got, tol, index_base=0)
            except UndefinedError as e:
                res.problem = f"reference undefined at t={case.base_time - 1} (0-based): {e}"
                continue
            res.checks.append(diagnosis_for(c) if c.status == "FAIL" else c)
    except (InputError, KeyError, IndexError, ValueError) as e:
        res.problem = f"{type(e).__name__}: {e}"
    return res


def output_tolerances(entry: Mapping, arrays: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """Per output array, the largest elementwise tolerance of :func:`check` for each
    precision ({name: {dtype: max abs error a correct implementation may make anywhere in the
    array}}); ``vectors check`` applies the elementwise bounds, tighter where terms are small."""
    from .tolerance import tolerance_array

    out: dict[str, dict] = {}
    _, _, _, cases = _cases(entry, arrays)
    for dt in ("float64", "float32", "float16"):
        tol = Tolerance.for_dtype(dt)
        for name, _k, case in cases:
            try:
                v = float(np.max(tolerance_array(case, tol)))
            except (UndefinedError, InputError, ValueError):
                continue
            d = out.setdefault(name, {})
            d[dt] = max(d.get(dt, 0.0), v)
    return out


class _OnSchedule(Case):
    """A posterior case evaluated on the respaced schedule (the vectors' posterior is
    q(x_prev | x_t, x0) between kept steps)."""

    @property
    def schedule(self):
        """The schedule the stored case ran on."""
        return self.setting.respaced()


def reference_outputs_unchanged(directory: str | os.PathLike) -> bool:
    """True when every output in the directory is byte-identical to the reference's own
    (``reference_sha256``): checking it compares refdiff with itself."""
    manifest, cases = read(directory)
    n = 0
    for e in manifest["cases"]:
        for name, meta in e.get("arrays", {}).items():
            if meta.get("role") != "output" or "reference_sha256" not in meta:
                continue
            a = cases[e["id"]].get(name)
            if a is None or array_sha256(a) != meta["reference_sha256"]:
                return False
            n += 1
    return n > 0


def check(directory: str | os.PathLike, tol: Tolerance | None = None) -> list[CaseResult]:
    """Compare every case of a vectors directory; see :func:`check_case`."""
    tol = tol or Tolerance()
    manifest, cases = read(directory)
    out = []
    for e in manifest["cases"]:
        try:
            out.append(check_case(e, cases[e["id"]], tol))
        except (AttributeError, KeyError, TypeError) as err:  # a config of the wrong types
            msg = f"case {e['id']!r}: malformed config ({type(err).__name__}: {err})"
            raise FileFormatError(Path(directory) / "manifest.json", msg) from None
    return out


def _fmt(x: float) -> str:
    return f"{x:9.2e}" if math.isfinite(x) else f"{'inf':>9}"


def table(results: Sequence[CaseResult], *, verbose: bool = False) -> str:
    """The check results as a text table (``verbose``: every array, not only failures)."""
    lines = [
        f"{'case':<10} {'config':<80} {'worst output':<18} {'max abs':>9} {'max rel':>9} "
        f"{'err/tol':>9}  result"
    ]
    for r in results:
        w = r.worst()
        lab = r.label if len(r.label) <= 80 else r.label[:77] + "..."
        if w is None:
            lines.append(
                f"{r.id:<10} {lab:<80} {'-':<18} {'':>9} {'':>9} {'':>9}  FAIL {r.problem}"
            )
            continue
        res = "pass" if r.passed else "FAIL" + (f" ({r.problem})" if r.problem else "")
        if verbose or not r.passed:
            bad = [c for c in r.checks if not c.passed]
            if bad:
                res += f" [{bad[0].message()}]"
        lines.append(
            f"{r.id:<10} {lab:<80} {w.op:<18} {_fmt(w.max_abs)} {_fmt(w.max_rel)} "
            f"{_fmt(w.ratio)}  {res}"
        )
    n_ok = sum(r.passed for r in results)
    lines.append(f"\n{n_ok} of {len(results)} cases pass")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``refdiff vectors``; returns the exit status."""
    p = argparse.ArgumentParser(
        prog="refdiff vectors", description="Write or check golden vectors."
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write the reference vectors to DIR")
    w.add_argument("dir")
    w.add_argument("--grid", default="default", choices=GRIDS)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--T", type=int, default=1000)
    w.add_argument("--steps", type=int, default=30)
    w.add_argument(
        "--inputs-only",
        action="store_true",
        help="store the inputs only; the port fills the outputs listed in the manifest",
    )
    c = sub.add_parser("check", help="check the outputs stored in DIR against the reference")
    c.add_argument("dir")
    c.add_argument(
        "--dtype",
        default="float64",
        help="precision of the implementation that "
        "wrote DIR: float64 (default), float32, float16, bfloat16",
    )
    c.add_argument("--factor", type=float, default=None, help="tolerance safety factor K (8)")
    c.add_argument("--verbose", action="store_true", help="show the worst check of every case")
    try:
        a = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        if a.cmd == "write":
            m = write(
                a.dir,
                grid_name=a.grid,
                seed=a.seed,
                T=a.T,
                steps=a.steps,
                inputs_only=a.inputs_only,
            )
            n = len(m["cases"])
            print(f"wrote {n} cases ({a.grid} grid, seed {a.seed}) to {a.dir}")
            return 0
        kw = {"factor": a.factor} if a.factor is not None else {}
        tol = Tolerance.for_dtype(a.dtype, **kw)
        results = check(a.dir, tol)
    except (InputError, FileFormatError) as e:
        print(f"refdiff vectors: {e}", file=sys.stderr)
        return 2
    print(f"refdiff vectors check {a.dir}  (tolerance: {tol.describe()})")
    print(
        "times: 0-based indices i as stored (diffusers / improved-diffusion); refdiff's "
        "1-based t = i + 1 in parentheses"
    )
    print(table(results, verbose=a.verbose))
    if reference_outputs_unchanged(a.dir):
        print(
            "NOTE: every output is byte-identical to the reference's own (reference_sha256): "
            "this compares refdiff with itself. Write the vectors with --inputs-only and fill "
            "the outputs with your port."
        )
    return 0 if results and all(r.passed for r in results) else 1
