"""An independent reader of refdiff's golden vectors: NumPy and json only, no refdiff import.

It stands for "another implementation": it reads a vectors directory following the format
documented in docs/verify.md (manifest.json + one .npz per case), verifies every SHA-256,
recomputes every output from the inputs and the config with its own code (written from the
papers' formulas, 0-based indices as in diffusers), and can write a vectors directory holding
*its* outputs, for ``refdiff vectors check``.

    python tests/golden_reader.py DIR                 # verify hashes, recompute, compare
    python tests/golden_reader.py DIR --write OUT [--dtype float32]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile

import numpy as np

FORMAT = "refdiff-golden-vectors"
SCHEMA_VERSION = 1
OUTPUTS = (
    "alpha_bar",
    "beta",
    "q_sample",
    "posterior_mean",
    "posterior_variance",
    "ddpm_step",
    "ddim_step",
)


# -- reading ----------------------------------------------------------------------------------
def sha256_array(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read(directory: str):
    """(manifest, {id: {name: array}}), every hash verified; raises ValueError otherwise."""
    with open(os.path.join(directory, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT or manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError("not a schema-1 refdiff golden-vectors directory")
    cases = {}
    for entry in manifest["cases"]:
        path = os.path.join(directory, entry["file"])
        if sha256_file(path) != entry["file_sha256"]:
            raise ValueError(f"{entry['id']}: file sha256 mismatch")
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if set(arrays) != set(entry["arrays"]):
            raise ValueError(f"{entry['id']}: arrays {sorted(arrays)} != manifest")
        for name, meta in entry["arrays"].items():
            a = arrays[name]
            if list(a.shape) != meta["shape"] or a.dtype.str != meta["dtype"]:
                raise ValueError(f"{entry['id']}/{name}: shape or dtype mismatch")
            if sha256_array(a) != meta["sha256"]:
                raise ValueError(f"{entry['id']}/{name}: sha256 mismatch")
        cases[entry["id"]] = arrays
    return manifest, cases


# -- an independent implementation ------------------------------------------------------------
def betas_for(cfg: dict) -> np.ndarray:
    T, name = cfg["T"], cfg["schedule"]
    if name == "linear":
        return np.linspace(1e-4, 0.02, T)
    if name == "scaled_linear":
        return np.linspace(math.sqrt(0.00085), math.sqrt(0.012), T) ** 2
    if name == "cosine":

        def f(u):  # noqa: E306
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    if name == "sigmoid":
        return 1 / (1 + np.exp(-np.linspace(-6, 6, T))) * (0.02 - 1e-4) + 1e-4
    raise ValueError(f"unknown schedule {name}")


def schedule_for(cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """(ᾱ, β) of the base schedule, index 0..T−1, float64."""
    betas = betas_for(cfg)
    ab = np.cumprod(1 - betas)
    if cfg.get("zero_terminal_snr"):
        s = np.sqrt(ab)
        s = (s - s[-1]) * s[0] / (s[0] - s[-1])
        ab = s**2
        betas = 1 - np.concatenate([ab[:1], ab[1:] / ab[:-1]])
    return ab, betas


def kept_indices(cfg: dict) -> np.ndarray:
    """diffusers' timestep_spacing rules, descending 0-based indices."""
    T, N = cfg["T"], cfg["num_steps"] or cfg["T"]
    if cfg["num_steps"] is None:
        return np.arange(T)[::-1]
    if cfg["spacing"] == "leading":
        idx = np.arange(N) * (T // N) + cfg["steps_offset"]
    elif cfg["spacing"] == "trailing":
        idx = np.round(np.arange(T, 0, -T / N)).astype(np.int64) - 1
    else:
        idx = np.linspace(0, T - 1, N).round().astype(np.int64)
    return np.sort(idx)[::-1]


def _x0_eps(abt, x, out, pred):
    a, s = math.sqrt(abt), math.sqrt(1 - abt)
    if pred == "epsilon":
        return (x - s * out) / a, out
    if pred == "x0":
        return out, (x - a * out) / s
    return a * x - s * out, a * out + s * x  # v


def _restrict(x0, cfg):
    if cfg.get("clip") is not None:
        return np.clip(x0, -cfg["clip"], cfg["clip"])
    if cfg.get("threshold_ratio") is not None:
        q = np.quantile(np.abs(x0).reshape(x0.shape[0], -1), cfg["threshold_ratio"], axis=1)
        s = np.clip(q, 1.0, cfg.get("threshold_max", 1.0)).reshape((-1,) + (1,) * (x0.ndim - 1))
        return np.clip(x0, -s, s) / s
    return x0


def step(cfg: dict, sampler: str, AB: np.ndarray, kept: np.ndarray, i: int, x, out, z, mv=None):
    """One DDPM or DDIM step from index i to the next kept index (or to the data)."""
    pos = list(kept).index(i)
    prev = int(kept[pos + 1]) if pos + 1 < len(kept) else -1
    abt = AB[i]
    x0, eps = _x0_eps(abt, x, out, cfg["prediction_type"])
    x0c = _restrict(x0, cfg)
    if sampler == "ddpm":
        abp = AB[prev] if prev >= 0 else 1.0
        r = abt / abp
        mean = math.sqrt(abp) * (1 - r) / (1 - abt) * x0c + math.sqrt(r) * (1 - abp) / (1 - abt) * x
        if prev < 0:
            return mean
        small, large = (1 - abp) * (1 - r) / (1 - abt), 1 - r
        vt = cfg["variance_type"]
        if vt == "fixed_small":
            std = math.sqrt(small)
        elif vt in ("fixed_large", "fixed_large_iddpm"):
            std = math.sqrt(large)
        elif vt == "learned":
            std = np.exp(mv / 2)
        elif vt == "learned_linear":
            std = np.sqrt(mv)
        else:  # learned_range; the t=1 floor convention never matters here (no noise there)
            w = (mv + 1) / 2
            std = np.exp((w * math.log(large) + (1 - w) * math.log(max(small, 1e-20))) / 2)
        return mean + std * z
    if prev >= 0:
        abp = AB[prev]
    else:
        abp = 1.0 if cfg.get("final_alpha_bar", "one") == "one" else AB[0]
    if cfg.get("rederive_eps", True):
        eps = (x - math.sqrt(abt) * x0c) / math.sqrt(1 - abt)
    eta = cfg.get("eta", 0.0)
    var = eta**2 * (1 - abp) / (1 - abt) * (1 - abt / abp)
    res = math.sqrt(abp) * x0c + math.sqrt(max(1 - abp - var, 0.0)) * eps
    if eta > 0 and (prev >= 0 or cfg.get("final_step_noise", False)):
        res = res + math.sqrt(var) * z
    return res


def posterior(AB, kept, i, x0, x):
    pos = list(kept).index(i)
    prev = int(kept[pos + 1]) if pos + 1 < len(kept) else -1
    abt, abp = AB[i], (AB[prev] if prev >= 0 else 1.0)
    r = abt / abp
    mean = math.sqrt(abp) * (1 - r) / (1 - abt) * x0 + math.sqrt(r) * (1 - abp) / (1 - abt) * x
    return mean, (1 - abp) * (1 - r) / (1 - abt)


def compute(entry: dict, arrays: dict, dtype: str = "float64") -> dict:
    """Every output of a case, computed here (in ``dtype``: the schedule and the states)."""
    cfg, sampler = entry["config"], entry["sampler"]
    f = np.dtype(dtype)
    ab, beta = schedule_for(cfg)
    AB = ab.astype(f).astype(np.float64) if dtype != "float64" else ab
    kept = kept_indices(cfg)
    if not np.array_equal(kept, arrays["timesteps"]):
        raise ValueError(f"{entry['id']}: kept indices differ from the config's spacing rule")

    def cast(a):
        return np.asarray(a).astype(f)

    out = {"alpha_bar": ab.astype(f), "beta": beta.astype(f)}
    qi = int(arrays["q_index"])
    out["q_sample"] = cast(math.sqrt(AB[qi])) * cast(arrays["x0"]) + cast(
        math.sqrt(1 - AB[qi])
    ) * cast(arrays["q_noise"])
    pm, pv, st = [], [], []
    for k, i in enumerate(arrays["step_index"]):
        x = cast(arrays["x_t"][k]).astype(np.float64)
        m, v = posterior(AB, kept, int(i), cast(arrays["step_x0"][k]).astype(np.float64), x)
        pm.append(cast(m))
        pv.append(v)
        mv = arrays["model_variance"][k] if "model_variance" in arrays else None
        y = step(
            cfg,
            sampler,
            AB,
            kept,
            int(i),
            x,
            cast(arrays["model_output"][k]).astype(np.float64),
            cast(arrays["step_noise"][k]).astype(np.float64),
            mv,
        )
        st.append(cast(y))
    out["posterior_mean"] = np.stack(pm)
    out["posterior_variance"] = np.array(pv, dtype=f)
    out[f"{sampler}_step"] = np.stack(st)
    return out


# -- writing (as another implementation would) ------------------------------------------------
def write(directory: str, manifest: dict, cases: dict, outputs: dict) -> None:
    """A vectors directory with the inputs of ``cases`` and the given outputs (float64)."""
    os.makedirs(os.path.join(directory, "cases"), exist_ok=True)
    new = dict(manifest, generator="tests/golden_reader.py", cases=[])
    for entry in manifest["cases"]:
        arrays = dict(cases[entry["id"]])
        for k, v in outputs[entry["id"]].items():
            arrays[k] = np.asarray(v, dtype=np.float64)
        path = os.path.join(directory, entry["file"])
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
        e = dict(entry, file_sha256=sha256_file(path))
        e["arrays"] = {
            k: {
                "shape": list(a.shape),
                "dtype": a.dtype.str,
                "sha256": sha256_array(a),
                "role": entry["arrays"].get(k, {}).get("role", "output"),
            }
            for k, a in arrays.items()
        }
        new["cases"].append(e)
    with open(os.path.join(directory, "manifest.json"), "w", encoding="utf-8") as fh:
        json.dump(new, fh, indent=2, sort_keys=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--write", default=None)
    p.add_argument("--dtype", default="float64")
    p.add_argument("--rtol", type=float, default=1e-9)
    a = p.parse_args(argv)
    manifest, cases = read(a.dir)
    outputs, worst = {}, 0.0
    for entry in manifest["cases"]:
        mine = compute(entry, cases[entry["id"]], a.dtype)
        outputs[entry["id"]] = mine
        for k, v in mine.items():
            ref = cases[entry["id"]][k].astype(np.float64)
            scale = np.maximum(np.abs(ref), 1.0) if k != "alpha_bar" else np.abs(ref) + 1e-300
            worst = max(worst, float(np.max(np.abs(v.astype(np.float64) - ref) / scale)))
    print(
        f"read {len(cases)} cases, all sha256 verified; worst relative difference of the "
        f"recomputed outputs: {worst:.3g}; modules: "
        f"{sorted(m for m in sys.modules if m.split('.')[0] == 'refdiff')}"
    )
    if a.write:
        write(a.write, manifest, cases, outputs)
    return 0 if worst <= a.rtol else 1


if __name__ == "__main__":
    raise SystemExit(main())
