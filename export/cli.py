"""``refdiff export`` and ``refdiff sample`` (docs/deploy.md, "Command line").

``refdiff export`` builds a denoiser, a step, a fused step or a whole sampler graph from MLP
weights (``--mlp W.npz``), a Gaussian mixture (``--mixture NAME|FILE.npz``) or an existing
denoiser ONNX file (``--denoiser FILE.onnx``) and writes it atomically.

``refdiff sample --model FILE`` runs DDPM/DDIM with a denoiser or sampler ONNX file on
onnxruntime and writes the samples as ``.npy`` (atomically), with a progress bar.

Both return 0 on success, 2 on bad input (the typed error's message on stderr).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from refdiff.data import MIXTURES
from refdiff.errors import InputError, OptionError, RefdiffError

__all__ = ["export_main", "sample_main", "BUILTIN_MIXTURES", "builtin_mixture", "build_schedule"]

KINDS = ("denoiser", "step", "fused", "sampler")


def _schedule_from_args(a: argparse.Namespace, T: int, base_json: str | None):
    """(base, walked) schedules: the model's own base schedule (``base_json``, from its
    metadata) when given, else the one the command line names; respaced per the CLI."""
    from .metadata import schedule_from_json

    walk = {"steps": a.steps, "spacing": a.spacing, "steps_offset": a.steps_offset}
    if base_json is not None:
        return build_schedule("", 0, base=schedule_from_json(base_json), **walk)
    return build_schedule(a.schedule or "linear", T, zero_terminal_snr=a.zero_terminal_snr, **walk)


def builtin_mixture(name: str):
    """A built-in 2-D data law, from the one registry the demo uses too (refdiff.data):
    ``ring8`` (= ``ring``: 8 Gaussians on a circle of radius 2, sd 0.2), ``two``, ``gaussian``."""
    from refdiff.data import mixture

    return mixture(name)


BUILTIN_MIXTURES = MIXTURES  # the one registry: refdiff.data


def _load_mixture(spec: str):
    if spec in BUILTIN_MIXTURES:
        return builtin_mixture(spec)
    if not spec.endswith(".npz"):
        raise OptionError("mixture", spec, [*BUILTIN_MIXTURES, "FILE.npz"])
    from refdiff._io import load_npz
    from refdiff.errors import FileFormatError
    from refdiff.exact import GaussianMixture

    z = load_npz(spec)
    missing = [k for k in ("weights", "means", "covs") if k not in z]
    if missing:
        raise FileFormatError(spec, f"a mixture file needs weights, means, covs; missing {missing}")
    return GaussianMixture(z["weights"], z["means"], z["covs"])


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

    ``spacing``: ``leading`` | ``trailing`` | ``linspace`` (diffusers) or an
    improved-diffusion section string such as ``ddim50`` / ``10,15``.
    """
    from refdiff.respacing import SPACINGS, space_timesteps, spaced_times
    from refdiff.schedule import make_schedule, respace

    if base is None:
        base = make_schedule(name, T, zero_terminal_snr=zero_terminal_snr)
    if steps is None or steps == base.T:
        return base, base
    if spacing in SPACINGS:
        times = spaced_times(base.T, steps, spacing, steps_offset)
    else:
        times = space_timesteps(base.T, spacing)
        if len(times) != steps:
            raise InputError("steps", f"spacing {spacing!r} keeps {len(times)} steps, not {steps}")
    return base, respace(base, times)


def _common_schedule_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    from refdiff.schedule import SCHEDULES

    g = p.add_argument_group("schedule")
    g.add_argument(
        "--schedule",
        choices=sorted(SCHEDULES),
        default=None if not required else "linear",
        help="base (training) schedule (default: the model's metadata, else linear)",
    )
    g.add_argument("--T", type=int, default=None, help="base schedule length (default 1000)")
    g.add_argument("--zero-terminal-snr", action="store_true", help="rescale to zero terminal SNR")
    g.add_argument("--steps", type=int, default=None, help="sampling steps (respaced; default T)")
    g.add_argument(
        "--spacing",
        default="leading",
        help="leading | trailing | linspace | improved-diffusion sections (ddimN, '10,15')",
    )
    g.add_argument("--steps-offset", type=int, default=0, help="diffusers steps_offset (leading)")


def _sampler_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampler")
    g.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm")
    g.add_argument("--eta", type=float, default=None, help="DDIM η in [0, 1] (default 0)")
    g.add_argument(
        "--variance-type", default=None, help="DDPM: fixed_small | fixed_large | fixed_large_iddpm"
    )
    g.add_argument("--clip", type=float, default=None, help="clip x̂0 to [-c, c]")
    g.add_argument("--final-alpha-bar", default=None, help="DDIM: one | first | a float")
    g.add_argument(
        "--noise",
        choices=("input", "graph"),
        default="input",
        help="noise as input (reproducible, reference parity) or drawn in-graph",
    )


def _options(a: argparse.Namespace) -> dict:
    opts: dict = {}
    if a.sampler == "ddim":
        if a.eta is not None:
            opts["eta"] = a.eta
        if a.final_alpha_bar is not None:
            try:
                opts["final_alpha_bar"] = float(a.final_alpha_bar)
            except ValueError:
                opts["final_alpha_bar"] = a.final_alpha_bar
        if a.variance_type is not None:
            raise InputError("variance-type", "is a DDPM option")
    else:
        if a.variance_type is not None:
            opts["variance_type"] = a.variance_type
        if a.eta is not None or a.final_alpha_bar is not None:
            raise InputError("eta", "--eta and --final-alpha-bar are DDIM options")
    if a.clip is not None:
        opts["clip"] = a.clip
    return opts


def _run(fn, argv, prog: str) -> int:
    try:
        return fn(argv)
    except RefdiffError as e:
        print(f"refdiff {prog}: error: {e}", file=sys.stderr)
        return 2


# -- export -----------------------------------------------------------------------------------
def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refdiff export", description="Export a denoiser or sampler to ONNX."
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--mlp", metavar="WEIGHTS.npz", help="MLP weights (refdiff.mlp.save_mlp)")
    src.add_argument(
        "--mixture",
        metavar="NAME|FILE.npz",
        help=f"exact Gaussian-mixture denoiser: {', '.join(BUILTIN_MIXTURES)} "
        "or an .npz (weights, means, covs)",
    )
    src.add_argument(
        "--denoiser", metavar="FILE.onnx", help="an existing denoiser ONNX file to wrap"
    )
    p.add_argument(
        "--kind", choices=KINDS, default="denoiser", help="what to export (default denoiser)"
    )
    p.add_argument("-o", "--output", required=True, help="output .onnx file (written atomically)")
    p.add_argument(
        "--prediction-type", default=None, help="epsilon | x0 | v | score (default epsilon)"
    )
    p.add_argument(
        "--timestep-convention",
        default=None,
        help="for --denoiser without metadata: refdiff | index",
    )
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--batch", type=int, default=None, help="fix the batch size (default dynamic)")
    p.add_argument("--seed", type=int, default=0, help="seed of the in-graph noise (--noise graph)")
    p.add_argument("--trajectory", action="store_true", help="sampler: also output every state")
    p.add_argument("--quiet", action="store_true")
    _common_schedule_args(p, required=False)
    _sampler_args(p)
    return p


def export_main(argv: list[str]) -> int:
    """``refdiff export``; returns the exit code."""
    return _run(_export, argv, "export")


def _export(argv: list[str]) -> int:
    from refdiff.mlp import load_mlp

    from . import (
        fused_step_model,
        mixture_denoiser_model,
        mlp_denoiser_model,
        open_denoiser,
        sampler_model,
        save_model,
        step_model,
        step_tables,
    )

    a = _export_parser().parse_args(argv)
    T = a.T if a.T is not None else 1000
    pt = a.prediction_type
    if a.denoiser is not None:
        den = open_denoiser(
            a.denoiser, prediction_type=pt, timestep_convention=a.timestep_convention
        )
        if a.kind == "denoiser":
            raise InputError(
                "kind", "--denoiser is already a denoiser; export a step, fused or sampler"
            )
        base_meta = den.signature.metadata.get("refdiff.schedule")
        base, sched = _schedule_from_args(a, T, base_meta if a.schedule is None else None)
    else:
        base, sched = _schedule_from_args(a, T, None)
        pt = pt or "epsilon"
        if a.mlp is not None:
            model = mlp_denoiser_model(
                load_mlp(a.mlp),
                prediction_type=pt,
                dtype=a.dtype,
                schedule=base,
                batch=a.batch if a.kind == "denoiser" else None,
            )
        else:
            model = mixture_denoiser_model(
                _load_mixture(a.mixture),
                base,
                prediction_type=pt,
                dtype=a.dtype,
                batch=a.batch if a.kind == "denoiser" else None,
            )
        if a.kind == "denoiser":
            save_model(model, a.output)
            if not a.quiet:
                print(
                    f"wrote {a.output}: denoiser ({pt}, {a.dtype}), "
                    f"base schedule {base.name} T={base.T}"
                )
            return 0
        den = open_denoiser(model)
    tables = step_tables(sched, a.sampler, prediction_type=den.prediction_type, **_options(a))
    build = dict(noise=a.noise, seed=a.seed, batch=a.batch)
    if a.kind == "step":
        model = step_model(den, tables, **build)
    elif a.kind == "fused":
        model = fused_step_model(den, tables, **build)
    else:
        model = sampler_model(den, tables, trajectory=a.trajectory, **build)
    save_model(model, a.output)
    if not a.quiet:
        print(
            f"wrote {a.output}: {a.kind} ({a.sampler}, {tables.N} steps, "
            f"{den.prediction_type}, noise {a.noise})"
        )
    return 0


# -- sample -----------------------------------------------------------------------------------
def _sample_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refdiff sample", description="Sample with an ONNX denoiser or sampler on onnxruntime."
    )
    p.add_argument("--model", required=True, help="denoiser or refdiff sampler .onnx file")
    p.add_argument("-o", "--output", default="samples.npy", help="output .npy (written atomically)")
    p.add_argument("--batch", type=int, default=16, help="number of samples (default 16)")
    p.add_argument(
        "--shape", default=None, help="full state shape B,D,… (default: batch + the model's dims)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="noise seed (host noise: numpy default_rng(seed))"
    )
    p.add_argument("--mode", choices=("steps", "fused", "graph"), default="steps")
    p.add_argument("--provider", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--device-id", type=int, default=0)
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on CUDA")
    p.add_argument(
        "--cuda-graph", action="store_true", help="capture CUDA graphs (steps/fused, fixed batch)"
    )
    p.add_argument(
        "--prediction-type",
        default=None,
        help="epsilon | x0 | v | score (if the metadata does not say)",
    )
    p.add_argument(
        "--timestep-convention",
        default=None,
        help="refdiff (1-based t) | index (0-based), if not in the metadata",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    _common_schedule_args(p, required=False)
    _sampler_args(p)
    return p


def sample_main(argv: list[str]) -> int:
    """``refdiff sample``; returns the exit code."""
    return _run(_sample, argv, "sample")


def _sample(argv: list[str]) -> int:
    from refdiff._io import atomic_write

    from . import OrtSampler, load_model, open_denoiser
    from .metadata import PREFIX, read_metadata

    a = _sample_parser().parse_args(argv)
    proto, path = load_model(a.model)
    meta = read_metadata(proto)
    shape = None if a.shape is None else tuple(int(s) for s in a.shape.split(","))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _show_warning
        if meta.get(PREFIX + "kind") == "sampler":
            s = OrtSampler(
                path, provider=a.provider, device_id=a.device_id, use_tf32=a.tf32, mode="graph"
            )
        else:
            den = open_denoiser(
                path, prediction_type=a.prediction_type, timestep_convention=a.timestep_convention
            )
            base_json = den.signature.metadata.get(PREFIX + "schedule")
            T = a.T if a.T is not None else 1000
            use_meta = a.schedule is None and a.T is None
            _, sched = _schedule_from_args(a, T, base_json if use_meta else None)
            batch = (shape[0] if shape else a.batch) if a.cuda_graph else None
            s = OrtSampler(
                den,
                sched,
                sampler=a.sampler,
                mode=a.mode,
                noise=a.noise,
                seed=a.seed,
                provider=a.provider,
                device_id=a.device_id,
                use_tf32=a.tf32,
                cuda_graph=a.cuda_graph,
                batch=batch,
                state_shape=shape,
                **_options(a),
            )
    t0 = time.perf_counter()
    x = s.sample(shape=shape if shape is not None else a.batch, seed=a.seed, progress=not a.quiet)
    dt = time.perf_counter() - t0
    out = Path(a.output)
    with atomic_write(out) as f:
        np.save(f, x, allow_pickle=False)
    if not a.quiet:
        print(
            f"wrote {out}: {x.shape} {x.dtype}, {s.num_steps} steps ({s.mode}) "
            f"on {s.provider} in {dt:.3f} s"
        )
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"refdiff: warning: {message}", file=sys.stderr)
