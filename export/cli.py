"""``refdiff export`` and ``refdiff sample`` (docs/deploy.md, "Command line").

``refdiff export`` builds a denoiser, a step, a fused step or a whole sampler graph from MLP
weights (``--mlp W.npz``), a Gaussian mixture (``--mixture NAME|FILE.npz``) or an existing
denoiser ONNX file (``--denoiser FILE.onnx``) and writes it atomically.

``refdiff sample --model FILE`` runs DDPM/DDIM with a denoiser or sampler ONNX file on
onnxruntime and writes the samples as ``.npy`` (atomically), with a progress bar.

Both return 0 on success, 2 on bad input (the typed error's message on stderr).  The
command line is honest (docs/deploy.md, "Command line"): every flag takes effect or is
refused with the reason, before any work; a flag that contradicts what the model's metadata
records is an error unless ``--override-metadata`` is given; every missing option is listed
at once with its valid values; errors name the flags, not Python keywords.

Nothing heavy is imported before the arguments are checked: ``--help`` and a refused command
line never import onnx or onnxruntime, and sampling an exported sampler file never imports
onnx (only building or checking a graph needs it).
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from refdiff.data import MIXTURES
from refdiff.errors import InputError, OptionError, RefdiffError

from .schedules import SPACING_HELP, build_schedule, check_spacing, respaced, schedule_name

__all__ = [
    "export_main",
    "sample_main",
    "BUILTIN_MIXTURES",
    "builtin_mixture",
    "build_schedule",
    "UsageError",
    "check_output_path",
    "check_model_path",
    "parse_shape",
]

KINDS = ("denoiser", "step", "fused", "sampler")
SAMPLER_CHOICES = ("ddpm", "ddim", "euler", "euler_ancestral", "dpmpp_2m", "flow_euler")
SIGMA_SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "flow_euler")  # σ grid, no respacing
SIGMA_GRIDS = ("schedule", "karras", "exponential")
# flag -> the samplers it applies to
_APPLIES = {
    "--eta": ("ddim", "euler_ancestral"),
    "--final-alpha-bar": ("ddim",),
    "--variance-type": ("ddpm",),
    "--clip": ("ddpm", "ddim"),
    "--sigmas": ("euler", "euler_ancestral", "dpmpp_2m"),
    "--flow-shift": ("flow_euler",),
    "--steps-offset": ("ddpm", "ddim"),
}
PREDICTION_CHOICES = ("epsilon", "x0", "v", "score")
CONVENTION_CHOICES = ("refdiff", "index")
VARIANCE_CHOICES = ("fixed_small", "fixed_large", "fixed_large_iddpm")
OVERRIDE = "--override-metadata"

# Python keyword (as API errors name it) -> the flag that sets it
_FLAG_OF = {
    "prediction_type": "--prediction-type",
    "timestep_convention": "--timestep-convention",
    "num_steps": "--steps",
    "num_inference_steps": "--steps",
    "steps": "--steps",
    "sections": "--spacing",
    "spacing": "--spacing",
    "steps_offset": "--steps-offset",
    "T": "--T",
    "name": "--schedule",
    "schedule": "--schedule",
    "sampler": "--sampler",
    "method": "--sampler",
    "eta": "--eta",
    "clip": "--clip",
    "variance_type": "--variance-type",
    "final_alpha_bar": "--final-alpha-bar",
    "noise": "--noise",
    "seed": "--seed",
    "mode": "--mode",
    "provider": "--provider",
    "device_id": "--device-id",
    "cuda_graph": "--cuda-graph",
    "use_tf32": "--tf32",
    "batch": "--batch",
    "shape": "--shape",
    "state_shape": "--shape",
    "x_T": "--shape",
    "dtype": "--dtype",
    "mixture": "--mixture",
    "kind": "--kind",
    "trajectory": "--trajectory",
    "model": "--model",
    "cond": "--cond",
    "uncond": "--uncond",
    "guidance_scale": "--guidance-scale",
    "guidance_rescale": "--guidance-rescale",
    "guidance": "--guidance-mode",
    "guidance_mode": "--guidance-mode",
    "memory_limit": "--memory-limit",
}


class UsageError(InputError):
    """A command line that cannot run: ``problems`` is every (flag, reason) found at once;
    ``argument`` is the first flag."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = list(problems)
        if len(problems) == 1:
            super().__init__(*problems[0])
        else:
            lines = "".join(f"\n  {flag}: {why}" for flag, why in problems)
            super().__init__(problems[0][0], f"{len(problems)} problems:{lines}")


class _Problems:
    """Collects every problem of a command line, then raises them together."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, flag: str, why: str) -> None:
        self.items.append((flag, why))

    def raise_any(self) -> None:
        if self.items:
            raise UsageError(self.items)

    def attempt(self, flag: str, fn, *args):
        """``fn(*args)``, or None with its InputError recorded against ``flag``."""
        try:
            return fn(*args)
        except InputError as e:
            self.add(flag, str(e).split(": ", 1)[1])
            return None


# -- values ---------------------------------------------------------------------------------
def parse_shape(text: str, flag: str = "--shape") -> tuple[int, ...]:
    """``"4,3,32,32"`` → (4, 3, 32, 32); an InputError naming ``flag`` otherwise."""
    parts = [p.strip() for p in text.split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(
            flag, f"{text!r} is not a comma list of positive ints (e.g. 16,2 or 4,3,32,32)"
        ) from None
    if len(shape) < 2 or min(shape) < 1:
        raise InputError(
            flag, f"{text!r}: needs a batch and at least one data dim, all >= 1 (e.g. 16,2)"
        )
    return shape


def _check_numbers(a: argparse.Namespace, pb: _Problems) -> None:
    for flag, value, low in (
        ("--batch", getattr(a, "batch", None), 1),
        ("--steps", a.steps, 1),
        ("--T", a.T, 1),
        ("--steps-offset", a.steps_offset, 0),
        ("--device-id", getattr(a, "device_id", None), 0),
        ("--seed", a.seed, 0),
    ):
        if value is not None and value < low:
            pb.add(flag, f"must be >= {low}; got {value}")
    if getattr(a, "memory_limit", None) is not None and not a.memory_limit > 0:
        pb.add("--memory-limit", f"must be > 0 GiB; got {a.memory_limit}")
    if a.eta is not None and not (0.0 <= a.eta <= 1.0):
        pb.add("--eta", f"must be in [0, 1]; got {a.eta}")
    if a.clip is not None and not (a.clip > 0 and np.isfinite(a.clip)):
        pb.add("--clip", f"must be a finite number > 0; got {a.clip}")
    if a.variance_type is not None and a.variance_type not in VARIANCE_CHOICES:
        pb.add("--variance-type", f"{a.variance_type!r}; valid: {', '.join(VARIANCE_CHOICES)}")
    if a.final_alpha_bar is not None:
        fab = _final_alpha_bar(a.final_alpha_bar)
        if isinstance(fab, str) and fab not in ("one", "first"):
            pb.add("--final-alpha-bar", f"{fab!r}; valid: one, first, or a number in (0, 1]")
        elif isinstance(fab, float) and not 0.0 < fab <= 1.0:
            pb.add("--final-alpha-bar", f"must be in (0, 1]; got {fab}")
    for flag, value, valid in (
        ("--prediction-type", a.prediction_type, PREDICTION_CHOICES),
        ("--timestep-convention", a.timestep_convention, CONVENTION_CHOICES),
    ):
        if value is not None and value not in valid:
            pb.add(flag, f"{value!r}; valid: {', '.join(valid)}")
    if a.schedule is not None:
        a.schedule = pb.attempt("--schedule", schedule_name, a.schedule, "--schedule")
    if a.spacing is not None:
        pb.attempt("--spacing", check_spacing, a.spacing, "--spacing")
        if a.steps is None:
            pb.add("--spacing", "has no effect without --steps (which steps to keep)")
    if a.steps_offset is not None and a.steps is None:
        pb.add("--steps-offset", "has no effect without --steps")


def _final_alpha_bar(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _check_sampler_options(a: argparse.Namespace, sampler: str, pb: _Problems) -> None:
    given = {
        "--eta": a.eta,
        "--final-alpha-bar": a.final_alpha_bar,
        "--variance-type": a.variance_type,
        "--clip": a.clip,
        "--sigmas": a.sigmas,
        "--flow-shift": a.flow_shift,
        "--steps-offset": a.steps_offset,
    }
    for flag, value in given.items():
        if value is not None and sampler not in _APPLIES[flag]:
            pb.add(
                flag,
                f"applies to --sampler {' | '.join(_APPLIES[flag])}; this is --sampler {sampler}",
            )
    if sampler in SIGMA_SAMPLERS:
        if a.steps is None:
            pb.add("--steps", f"missing: --sampler {sampler} needs the number of σ steps")
        if a.spacing is not None and (
            sampler == "flow_euler" or a.sigmas not in (None, "schedule")
        ):
            pb.add("--spacing", "spaces the σ grid of --sigmas schedule only")
        elif a.spacing not in (None, "linspace", "trailing"):
            pb.add("--spacing", f"{a.spacing!r}: the σ grid is spaced linspace | trailing")


def _options(a: argparse.Namespace, sampler: str) -> dict:
    opts: dict = {}
    if a.eta is not None:
        opts["eta"] = a.eta
    if a.final_alpha_bar is not None:
        opts["final_alpha_bar"] = _final_alpha_bar(a.final_alpha_bar)
    if a.variance_type is not None:
        opts["variance_type"] = a.variance_type
    if a.clip is not None:
        opts["clip"] = a.clip
    return opts  # each applies to this sampler (_check_sampler_options)


# -- paths ----------------------------------------------------------------------------------
def check_output_path(text: str, flag: str = "--output") -> Path:
    """Refuse an output path that cannot be written, before any work is done.

    ``text`` ending in a path separator or naming an existing folder is an error (refdiff
    never guesses a file name inside it); so is an existing path that is not a regular file
    (a FIFO, a device), a parent that is a file, or a folder that cannot be written.  Missing
    parent folders are created when the file is written.
    """
    if text.endswith(("/", os.sep)):
        raise InputError(
            flag, f"{text!r} names a folder; give a file path (e.g. {text}samples.npy)"
        )
    path = Path(text)
    if path.is_dir():
        raise InputError(
            flag, f"{text!r} is an existing folder; give a file path (e.g. {path / 'out'})"
        )
    if path.exists() or path.is_symlink():
        mode = os.stat(path).st_mode if path.exists() else 0
        if not stat.S_ISREG(mode):
            raise InputError(flag, f"{text!r} exists and is not a regular file ({_kind(mode)})")
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling link: creating the folder would fail
            raise InputError(flag, f"{str(parent)!r} is a broken symbolic link")
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(flag, f"{str(parent)!r} is a file, not a folder: cannot write {text!r}")
    if not _writable(parent):
        raise InputError(flag, f"cannot write in the folder {str(parent)!r} (read-only)")
    return path


def _writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (tried, so it is also right for root and
    read-only mounts)."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".refdiff-probe-"):
            return True
    except OSError:
        return False


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def check_model_path(text: str, flag: str = "--model") -> Path:
    """An existing regular file; a folder, FIFO or device is named as such."""
    path = Path(text)
    if not path.exists():
        raise InputError(flag, f"{text!r}: no such file")
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise InputError(flag, f"{text!r} is {_kind(mode)}, not an ONNX file")
    return path


def _write_output(path: Path, write, flag: str = "--output") -> None:
    """Write atomically; a failure (full disk, quota, I/O error) leaves no file behind and
    becomes an InputError naming ``flag``."""
    from refdiff._io import atomic_write

    try:
        with atomic_write(path) as f:
            write(f)
    except OSError as e:
        why = e.strerror or str(e)
        raise InputError(flag, f"cannot write {str(path)!r}: {why}; nothing was written") from None


# -- schedules ------------------------------------------------------------------------------
def _schedule_flags(a: argparse.Namespace) -> list[str]:
    out = []
    if a.schedule is not None:
        out.append("--schedule")
    if a.T is not None:
        out.append("--T")
    if a.zero_terminal_snr:
        out.append("--zero-terminal-snr")
    return out


def _base_schedule(a: argparse.Namespace, meta_json: str | None, label: str, sampler: str):
    """The base (training) schedule: the model's metadata, unless the command line names
    another one and says ``--override-metadata``; the command line's when there is none."""
    from refdiff.schedule import make_schedule, rescale_zero_terminal_snr

    from .metadata import schedule_from_json

    flags = _schedule_flags(a)
    if meta_json is None:
        if a.schedule is None and sampler == "flow_euler":
            return None  # a flow model needs no diffusion schedule
        if a.schedule is None:  # the caller has listed it as missing
            raise UsageError([("--schedule", "the model's metadata records no schedule")])
        T = a.T if a.T is not None else 1000
        return make_schedule(a.schedule, T, zero_terminal_snr=a.zero_terminal_snr)
    meta = schedule_from_json(meta_json)
    if not flags:
        return meta
    if a.schedule is None and a.T is not None and a.T != meta.T:
        raise UsageError(
            [
                (
                    "--T",
                    f"{a.T} contradicts the model's metadata (T={meta.T}) and without "
                    f"--schedule the schedule {meta.name!r} cannot be rebuilt at another T",
                )
            ]
        )
    if a.schedule is None:
        wanted = rescale_zero_terminal_snr(meta) if a.zero_terminal_snr else meta
        what = "zero terminal SNR"
    else:
        T = a.T if a.T is not None else meta.T
        wanted = make_schedule(a.schedule, T, zero_terminal_snr=a.zero_terminal_snr)
        what = f"{a.schedule} T={T}" + (" with zero terminal SNR" if a.zero_terminal_snr else "")
    same = wanted.T == meta.T and np.allclose(wanted.alpha_bar, meta.alpha_bar, rtol=1e-12)
    if same or a.override_metadata:
        return meta if same else wanted
    raise UsageError(
        [
            (
                ", ".join(flags),
                f"{what} contradicts the schedule in {label}'s metadata ({meta.name}, "
                f"T={meta.T}), the one the model was trained with; drop "
                f"{'it' if len(flags) == 1 else 'them'}, or add {OVERRIDE} to use "
                "yours anyway",
            )
        ]
    )


def _walk(a: argparse.Namespace, base, sampler: str):
    """(schedule, extra sampler options): DDPM/DDIM walk ``base`` respaced to ``--steps``; the
    σ-view samplers walk a σ grid of ``--steps`` points (docs/math.md §17-18) on ``base``."""
    if sampler in SIGMA_SAMPLERS:
        if sampler == "flow_euler":
            from refdiff.flow import flow_sigmas

            shift = a.flow_shift if a.flow_shift is not None else 1.0
            return base, {"sigmas": flow_sigmas(a.steps, shift_factor=shift)}
        from refdiff import sigma

        grid = a.sigmas or "schedule"
        if grid == "schedule":
            sig = sigma.from_schedule(base, a.steps, spacing=a.spacing or "linspace")
        else:
            lo, hi = float(base.sigma[1]), float(base.sigma[-1])
            sig = getattr(sigma, grid)(a.steps, lo, hi)
        return base, {"sigmas": sig}
    if a.steps is None:
        return base, {}
    names = {"steps": "--steps", "spacing": "--spacing", "steps_offset": "--steps-offset"}
    return respaced(base, a.steps, a.spacing or "leading", a.steps_offset or 0, names=names), {}


# -- built-in data ----------------------------------------------------------------------------
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
        raise OptionError("--mixture", spec, [*BUILTIN_MIXTURES, "FILE.npz"])
    from refdiff._io import load_npz
    from refdiff.errors import FileFormatError
    from refdiff.exact import GaussianMixture

    z = load_npz(spec)
    missing = [k for k in ("weights", "means", "covs") if k not in z]
    if missing:
        raise FileFormatError(spec, f"a mixture file needs weights, means, covs; missing {missing}")
    return GaussianMixture(z["weights"], z["means"], z["covs"])


# -- parsers --------------------------------------------------------------------------------
def _common_schedule_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("schedule")
    g.add_argument(
        "--schedule",
        default=None,
        metavar="NAME",
        help="base (training) schedule: linear | linear_iddpm | scaled_linear | cosine | "
        "sigmoid; diffusers' squaredcos_cap_v2 = cosine, improved-diffusion's linear = "
        "linear_iddpm (default: the model's metadata; export: linear)",
    )
    g.add_argument("--T", type=int, default=None, help="base schedule length (default 1000)")
    g.add_argument("--zero-terminal-snr", action="store_true", help="rescale to zero terminal SNR")
    g.add_argument("--steps", type=int, default=None, help="sampling steps (respaced; default T)")
    g.add_argument(
        "--spacing", default=None, help=f"with --steps: {SPACING_HELP} (default leading)"
    )
    g.add_argument(
        "--steps-offset", type=int, default=None, help="with --steps: diffusers steps_offset"
    )
    p.add_argument(
        OVERRIDE,
        action="store_true",
        help="let --schedule/--T/--zero-terminal-snr/--prediction-type/--timestep-convention "
        "replace what the model's metadata records (otherwise a contradiction is an error)",
    )


def _sampler_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampler")
    g.add_argument("--sampler", choices=SAMPLER_CHOICES, default=None, help="default ddpm")
    g.add_argument(
        "--eta", type=float, default=None, help="DDIM η in [0, 1] (default 0); euler_ancestral η"
    )
    g.add_argument("--variance-type", default=None, help=f"DDPM: {' | '.join(VARIANCE_CHOICES)}")
    g.add_argument("--clip", type=float, default=None, help="clip x̂0 to [-c, c]")
    g.add_argument("--final-alpha-bar", default=None, help="DDIM: one | first | a float")
    g.add_argument(
        "--sigmas",
        choices=SIGMA_GRIDS,
        default=None,
        help="σ-view samplers: the σ grid of --steps points, from the schedule (diffusers' "
        "default; --spacing linspace | trailing), karras or exponential between the "
        "schedule's σ_1 and σ_T (default schedule)",
    )
    g.add_argument(
        "--flow-shift", type=float, default=None, help="flow_euler: the σ shift (default 1)"
    )
    g.add_argument(
        "--noise",
        choices=("input", "graph"),
        default=None,
        help="noise as input (reproducible, reference parity; default) or drawn in-graph",
    )


_SAMPLER_FLAGS = (
    ("--sampler", "sampler"),
    ("--eta", "eta"),
    ("--variance-type", "variance_type"),
    ("--clip", "clip"),
    ("--final-alpha-bar", "final_alpha_bar"),
    ("--sigmas", "sigmas"),
    ("--flow-shift", "flow_shift"),
    ("--noise", "noise"),
)
_WALK_FLAGS = (("--steps", "steps"), ("--spacing", "spacing"), ("--steps-offset", "steps_offset"))
_GUIDE_FLAGS = (
    ("--guidance-scale", "guidance_scale"),
    ("--guidance-rescale", "guidance_rescale"),
    ("--guidance-mode", "guidance_mode"),
)


def _given(a: argparse.Namespace, flags) -> list[str]:
    out = []
    for flag, attr in flags:  # identity: --eta 0 is given, though 0 == False
        value = getattr(a, attr, None)
        if value is not None and value is not False:
            out.append(flag)
    return out


def _run(fn, argv, prog: str) -> int:
    try:
        return fn(argv)
    except RefdiffError as e:
        print(f"refdiff {prog}: error: {_cli_message(e)}", file=sys.stderr)
        details = getattr(e, "details", "")
        if details and "--verbose" in argv:
            print(f"refdiff {prog}:   details: {details}", file=sys.stderr)
        return 2


def _cli_message(e: Exception) -> str:
    """The error's message with Python keywords replaced by the flags that set them."""
    text = str(e)
    arg = getattr(e, "argument", None)
    if isinstance(e, InputError) and arg in _FLAG_OF and text.startswith(f"{arg}: "):
        text = f"{_FLAG_OF[arg]}: {text[len(arg) + 2 :]}"
    elif isinstance(arg, str) and re.match(r"^(un)?cond\[", arg) and text.startswith(arg):
        name = arg[arg.index("[") + 1 : -1].strip("'\"")
        text = f"--{arg[: arg.index('[')]} {name}: {text[len(arg) + 2 :]}"

    def flag(m: re.Match) -> str:
        return _FLAG_OF[m.group(1)]

    # "pass num_steps=" -> "pass --steps"; a value such as "T=50" is left alone
    keys = "|".join(sorted(map(re.escape, _FLAG_OF), key=len, reverse=True))
    return re.sub(rf"\b({keys})=(?=[\s).,;]|$)", flag, text)


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
    p.add_argument("--dtype", choices=("float32", "float16"), default=None, help="default float32")
    p.add_argument("--batch", type=int, default=None, help="fix the batch size (default dynamic)")
    p.add_argument(
        "--seed", type=int, default=None, help="seed of the in-graph noise (--noise graph)"
    )
    p.add_argument("--trajectory", action="store_true", help="sampler: also output every state")
    p.add_argument(
        "--triton", metavar="DIR", help="sampler: also write a Triton model repository in DIR"
    )
    p.add_argument("--quiet", action="store_true")
    _guidance_args(p)
    _common_schedule_args(p)
    _sampler_args(p)
    return p


def _guidance_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("classifier-free guidance (conditioned denoisers)")
    g.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance s")
    g.add_argument(
        "--guidance-rescale", type=float, default=None, help="guidance rescale φ in [0, 1]"
    )
    g.add_argument(
        "--guidance-mode",
        choices=("batched", "two_pass"),
        default=None,
        help="one 2B call per step (default) or two calls",
    )


def _guidance(a: argparse.Namespace):
    from .conditioning import make_guidance

    rescale = a.guidance_rescale if a.guidance_rescale is not None else 0.0
    return make_guidance(a.guidance_scale, rescale, a.guidance_mode or "batched")


def export_main(argv: list[str]) -> int:
    """``refdiff export``; returns the exit code."""
    return _run(_export, argv, "export")


def _check_export(a: argparse.Namespace) -> None:
    """Every problem of an export command line, at once, before any work."""
    pb = _Problems()
    _check_numbers(a, pb)
    kind = a.kind
    sampler = a.sampler or "ddpm"
    if kind == "denoiser":
        if a.denoiser is not None:
            pb.add("--kind", "--denoiser is already a denoiser; export a step, fused or sampler")
        stray = _given(a, _SAMPLER_FLAGS) + _given(a, _WALK_FLAGS) + _given(a, _GUIDE_FLAGS)
        stray += ["--seed"] * (a.seed is not None) + ["--trajectory"] * a.trajectory
        if stray:
            pb.add(
                ", ".join(stray),
                "a denoiser has no sampler; add --kind step|fused|sampler to use them",
            )
    else:
        _check_sampler_options(a, sampler, pb)
        if a.guidance_scale is None:
            for flag in _given(a, _GUIDE_FLAGS[1:]):
                pb.add(flag, "applies to classifier-free guidance: add --guidance-scale")
        if a.seed is not None and a.noise != "graph":
            pb.add("--seed", "seeds the in-graph noise: add --noise graph, or drop --seed")
        if a.trajectory and kind != "sampler":
            pb.add("--trajectory", f"only a --kind sampler outputs every state, not {kind}")
    if a.triton is not None and kind != "sampler":
        pb.add("--triton", f"a Triton repository holds a whole sampler: --kind sampler, not {kind}")
    if a.denoiser is not None:
        if a.dtype is not None:
            pb.add("--dtype", "is the wrapped denoiser's own (its input type); drop --dtype")
    else:
        if a.timestep_convention is not None:
            pb.add(
                "--timestep-convention",
                "only for --denoiser files; refdiff's own denoisers use 'refdiff'",
            )
        if a.override_metadata:
            pb.add(OVERRIDE, "only for --denoiser files (no metadata to override)")
    pb.attempt("--output", check_output_path, a.output, "--output")
    if a.denoiser is not None:
        pb.attempt("--denoiser", check_model_path, a.denoiser, "--denoiser")
    pb.raise_any()


def _export(argv: list[str]) -> int:
    a = _export_parser().parse_args(argv)
    _check_export(a)
    from refdiff.mlp import load_mlp

    from . import (
        fused_step_model,
        mixture_denoiser_model,
        mlp_denoiser_model,
        step_model,
        step_tables,
    )

    dtype = a.dtype or "float32"
    sampler = a.sampler or "ddpm"
    noise = a.noise or "input"
    if a.denoiser is not None:
        den = _open_for_cli(a, Path(a.denoiser), sampler)
        meta_schedule = den.signature.metadata.get("refdiff.schedule")
        base = _base_schedule(a, meta_schedule, den.label, sampler)
    else:
        from refdiff.schedule import make_schedule

        T = a.T if a.T is not None else 1000
        base = make_schedule(a.schedule or "linear", T, zero_terminal_snr=a.zero_terminal_snr)
        pt = a.prediction_type or "epsilon"
        batch = a.batch if a.kind == "denoiser" else None
        if a.mlp is not None:
            model = mlp_denoiser_model(
                load_mlp(a.mlp), prediction_type=pt, dtype=dtype, schedule=base, batch=batch
            )
        else:
            model = mixture_denoiser_model(
                _load_mixture(a.mixture), base, prediction_type=pt, dtype=dtype, batch=batch
            )
        if a.kind == "denoiser":
            _write_output(Path(a.output), lambda f: f.write(model.SerializeToString()))
            if not a.quiet:
                print(
                    f"wrote {a.output}: denoiser ({pt}, {dtype}), "
                    f"base schedule {base.name} T={base.T}"
                )
            return 0
        from .model_io import open_denoiser

        den = open_denoiser(model)
    sched, grid = _walk(a, base, sampler)
    tables = step_tables(
        sched, sampler, prediction_type=den.prediction_type, **_options(a, sampler), **grid
    )
    build = dict(
        noise=noise, seed=a.seed if a.seed is not None else 0, batch=a.batch, guidance=_guidance(a)
    )
    if a.kind == "step":
        model = step_model(den, tables, **build)
    elif a.kind == "fused":
        model = fused_step_model(den, tables, **build)
    else:
        from . import sampler_model

        model = sampler_model(den, tables, trajectory=a.trajectory, **build)
    _write_output(Path(a.output), lambda f: f.write(model.SerializeToString()))
    if a.triton is not None:
        from .triton import write_triton_repository

        folder = write_triton_repository(model, a.triton, name=Path(a.output).stem)
        if not a.quiet:
            print(f"wrote {folder}/config.pbtxt and {folder}/1/model.onnx")
    if not a.quiet:
        print(
            f"wrote {a.output}: {a.kind} ({sampler}, {tables.N} steps, "
            f"{den.prediction_type}, noise {noise})"
        )
    return 0


def _open_for_cli(a: argparse.Namespace, path: Path, sampler: str = "ddpm", proto=None):
    """Load and check a denoiser file once; resolve ``--prediction-type`` and
    ``--timestep-convention`` against its metadata; list every missing option at once."""
    from .model_io import DenoiserModel, SignatureError, inspect_denoiser, load_model

    if proto is None:
        proto, path = load_model(path)
    label = str(path)
    sig = inspect_denoiser(proto, path=label)
    kind = sig.metadata.get("refdiff.kind")
    if kind is not None and kind != "denoiser":
        raise SignatureError(label, f"is a refdiff {kind!r} model, not a denoiser")
    pb = _Problems()
    resolved = []
    for flag_, given, meta, valid in (
        ("--prediction-type", a.prediction_type, sig.prediction_type, PREDICTION_CHOICES),
        (
            "--timestep-convention",
            a.timestep_convention,
            sig.timestep_convention,
            CONVENTION_CHOICES,
        ),
    ):
        if sampler == "flow_euler":  # a velocity model called at σ · flow_time_scale
            if given is not None:
                pb.add(flag_, "has no effect with --sampler flow_euler (a velocity model)")
            resolved.append(meta if meta is not None else valid[0])  # unused by flow_euler
            continue
        if given is None and meta is None:
            pb.add(flag_, f"missing: the model's metadata does not say; one of {', '.join(valid)}")
        elif given is not None and meta is not None and given != meta and not a.override_metadata:
            pb.add(
                flag_,
                f"{given!r} contradicts the model's metadata ({meta!r}); drop it, or add "
                f"{OVERRIDE} to use {given!r} anyway",
            )
        resolved.append(given if given is not None else meta)
    if "refdiff.schedule" not in sig.metadata and a.schedule is None and sampler != "flow_euler":
        from refdiff.schedule import SCHEDULES

        pb.add(
            "--schedule",
            f"missing: the model's metadata records no schedule; one of {', '.join(SCHEDULES)} "
            "(with --T, default 1000)",
        )
    pb.raise_any()
    return DenoiserModel(proto, sig, resolved[0], resolved[1], Path(path))


# -- sample -----------------------------------------------------------------------------------
def _sample_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refdiff sample", description="Sample with an ONNX denoiser or sampler on onnxruntime."
    )
    p.add_argument("--model", required=True, help="denoiser or refdiff sampler .onnx file")
    p.add_argument("-o", "--output", default="samples.npy", help="output .npy (written atomically)")
    p.add_argument("--batch", type=int, default=None, help="number of samples (default 16)")
    p.add_argument(
        "--shape", default=None, help="full state shape B,D,… (default: batch + the model's dims)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="noise seed (default 0; host noise in the layout of docs/deploy.md, Noise layout)",
    )
    p.add_argument(
        "--mode", choices=("steps", "fused", "graph"), default=None, help="default steps"
    )
    p.add_argument("--provider", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--device-id", type=int, default=None, help="CUDA device (default 0)")
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
    p.add_argument(
        "--cluster",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="shard the sample over a Ray cluster (ADDRESS: auto, ray://host:port; none: a "
        "local one); -o then names a folder of shards + manifest.json (reruns fill it in)",
    )
    p.add_argument("--shard-rows", type=int, default=65536, help="rows per shard (--cluster)")
    p.add_argument(
        "--verbose", action="store_true", help="say why the provider was chosen, in full"
    )
    p.add_argument(
        "--png",
        action="store_true",
        help="also write a PNG grid of image-shaped samples beside the .npy (same name, .png)",
    )
    p.add_argument(
        "--memory-limit",
        type=float,
        default=None,
        metavar="GIB",
        help="GiB a run may take (default: the memory available; larger runs are refused)",
    )
    g = p.add_argument_group("conditioning")
    g.add_argument(
        "--cond",
        action="append",
        default=None,
        metavar="NAME=FILE.npy",
        help="a conditioning input of the model (repeat for each), batch 1 or B",
    )
    g.add_argument(
        "--uncond",
        action="append",
        default=None,
        metavar="NAME=FILE.npy",
        help="with --guidance-scale: the unconditional value of an input (default: its --cond)",
    )
    _guidance_args(p)
    _common_schedule_args(p)
    _sampler_args(p)
    return p


def sample_main(argv: list[str]) -> int:
    """``refdiff sample``; returns the exit code."""
    return _run(_sample, argv, "sample")


def _check_sample(a: argparse.Namespace) -> tuple[tuple[int, ...] | None, Path, Path]:
    """Every problem of a sample command line that needs no model, at once."""
    pb = _Problems()
    _check_numbers(a, pb)
    shape = None
    if a.shape is not None:
        shape = pb.attempt("--shape", parse_shape, a.shape)
    if shape is not None and a.batch is not None and a.batch != shape[0]:
        pb.add("--batch", f"{a.batch} contradicts --shape {a.shape} (batch {shape[0]}); give one")
    if a.provider == "cpu":
        for flag, given in (
            ("--tf32", a.tf32),
            ("--cuda-graph", a.cuda_graph),
            ("--device-id", a.device_id is not None),
        ):
            if given:
                pb.add(flag, "applies to CUDA only; this is --provider cpu")
    if a.cuda_graph and a.mode == "graph":
        pb.add(
            "--cuda-graph",
            "CUDA graphs cannot hold the sampler's Loop/Scan; use --mode steps|fused",
        )
    if a.guidance_scale is not None and not a.uncond:
        pb.add(
            "--guidance-scale",
            "needs --uncond NAME=FILE.npy, the unconditional value of at least one input "
            "(e.g. the empty-prompt embedding): with equal inputs guidance changes nothing",
        )
    if a.guidance_scale is None:
        for flag, given in (
            ("--guidance-rescale", a.guidance_rescale is not None),
            ("--guidance-mode", a.guidance_mode),
        ):
            if given:
                pb.add(flag, "applies to classifier-free guidance: add --guidance-scale")
    a.cond_files = _named_files(a.cond, "--cond", pb)
    a.uncond_files = _named_files(a.uncond, "--uncond", pb)
    if a.png:
        pb.attempt("--png", check_output_path, str(Path(a.output).with_suffix(".png")), "--png")
    if a.cluster is None:
        out = pb.attempt("--output", check_output_path, a.output, "--output")
    else:  # a folder of shards, reused by a rerun
        out = Path(a.output)
        if a.png:
            pb.add("--png", "applies to one .npy file, not to --cluster shards")
    model = pb.attempt("--model", check_model_path, a.model, "--model")
    pb.raise_any()
    return shape, out, model


def _named_files(items: list[str] | None, flag: str, pb: _Problems) -> dict[str, Path]:
    """``NAME=FILE.npy`` items → {name: path}, each file checked (not loaded yet)."""
    out: dict[str, Path] = {}
    for item in items or ():
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            pb.add(flag, f"{item!r} is not NAME=FILE.npy")
        elif name in out:
            pb.add(flag, f"{name!r} is given twice")
        else:
            try:
                out[name] = check_model_path(file, flag)
            except InputError as e:
                pb.add(flag, f"{name}: {str(e).split(': ', 1)[1].replace('ONNX', '.npy')}")
    return out


def _check_cond_names(s, a: argparse.Namespace) -> None:
    """Every conditioning input of the model given once with ``--cond``, and no other."""
    if getattr(s, "denoiser", None) is None:  # a sampler file: its graph inputs say
        known = ("x_T", "step_noise", "step_start", "batch_size")
        names = [n for n in s._graph_inputs if n not in known and "/" not in n]
    else:
        names = [e.name for e in s.extras]
    pb = _Problems()
    for flag, files in (("--cond", a.cond_files), ("--uncond", a.uncond_files)):
        unknown = [n for n in files if n not in names]
        if unknown:
            pb.add(
                flag,
                f"{', '.join(unknown)}: not an input of the model; its conditioning inputs: "
                f"{', '.join(names) if names else 'none'}",
            )
    missing = [n for n in names if n not in a.cond_files]
    if missing:
        pb.add(
            "--cond",
            f"the model needs its conditioning inputs {', '.join(missing)}: "
            "give --cond NAME=FILE.npy for each",
        )
    pb.raise_any()


def _load_arrays(files: dict[str, Path], flag: str) -> dict[str, np.ndarray]:
    from refdiff.errors import FileFormatError

    out = {}
    for name, path in files.items():
        try:
            out[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise FileFormatError(path, f"{flag} {name}: not a .npy array ({e})") from None
    return out


def _sample(argv: list[str]) -> int:
    a = _sample_parser().parse_args(argv)
    shape, out, model_path = _check_sample(a)  # nothing heavy imported yet
    from .metadata import PREFIX, peek_metadata

    data = model_path.read_bytes()
    meta = peek_metadata(data) or {}
    provider_kw = dict(
        provider=a.provider,
        device_id=a.device_id if a.device_id is not None else 0,
        use_tf32=a.tf32,
        memory_limit=None if a.memory_limit is None else int(a.memory_limit * 2**30),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        shown: set[str] = set()
        warnings.showwarning = lambda m, c, *args, **kw: _show_warning(m, shown, a.verbose)
        if meta.get(PREFIX + "kind") == "sampler":
            s = _sampler_file(a, model_path, data, meta, provider_kw)
        else:
            s = _denoiser_sampler(a, model_path, meta, shape, provider_kw)
    if a.tf32 and s.provider != "cuda":
        raise InputError("--tf32", "applies to CUDA only; this run uses the CPU")
    if a.device_id is not None and s.provider != "cuda":
        raise InputError("--device-id", "applies to CUDA only; this run uses the CPU")
    batch = a.batch if a.batch is not None else 16
    seed = a.seed if a.seed is not None else 0
    target = s._shape(shape if shape is not None else batch, None)
    if a.png:
        from .png import is_image_batch

        if not is_image_batch(target):
            raise InputError(
                "--png", f"samples of shape {target} are not images (B, 1|3, H, W) or (B, H, W)"
            )
    _check_cond_names(s, a)
    cond = _load_arrays(a.cond_files, "--cond") or None
    uncond = _load_arrays(a.uncond_files, "--uncond") or None  # checked per model kind above
    if a.cluster is not None:
        from .cluster import run_cli

        options = None
        if meta.get(PREFIX + "kind") != "sampler":  # what _denoiser_sampler gave the sampler
            sampler = a.sampler or "ddpm"
            den = s.denoiser
            base_json = den.signature.metadata.get(PREFIX + "schedule")
            _, grid = _walk(a, _base_schedule(a, base_json, den.label, sampler), sampler)
            options = {**_options(a, sampler), **grid}
        return run_cli(
            s,
            str(model_path),
            str(out),
            target[0],
            seed=seed,
            address=a.cluster,
            shard_rows=a.shard_rows,
            options=options,
            cond=cond,
            uncond=uncond,
            quiet=a.quiet,
        )
    t0 = time.perf_counter()
    try:
        x = s.sample(shape=target, seed=seed, cond=cond, uncond=uncond, progress=not a.quiet)
    except InputError as e:  # the memory check names the shape; the user gave --batch
        if e.argument == "shape" and a.shape is None:
            raise InputError("--batch", _cli_message(e).split(": ", 1)[1]) from None
        raise
    dt = time.perf_counter() - t0
    _write_output(out, lambda f: np.save(f, x, allow_pickle=False))
    png = None
    if a.png:
        from .png import image_grid, png_bytes

        png = out.with_suffix(".png")
        _write_output(png, lambda f: f.write(png_bytes(image_grid(x))), "--png")
    if not a.quiet:
        print(
            f"wrote {out}{f' and {png}' if png else ''}: {x.shape} {x.dtype}, "
            f"{s.num_steps} steps ({s.mode}) on {s.provider} in {dt:.3f} s"
        )
    return 0


def _sampler_file(a: argparse.Namespace, path: Path, data: bytes, meta: dict, provider_kw):
    """A complete sampler file: schedule, sampler, options and noise are baked in; a flag
    that would change them is refused (it could not take effect)."""
    import json

    from .metadata import PREFIX

    info = {}
    try:
        info = json.loads(meta.get(PREFIX + "sampler", "{}"))
    except ValueError:
        pass
    noise = meta.get(PREFIX + "noise", "input")
    baked = []
    pb = _Problems()
    for flag in (
        _schedule_flags(a)
        + _given(a, _SAMPLER_FLAGS)
        + _given(a, _WALK_FLAGS)
        + ["--prediction-type"] * (a.prediction_type is not None)
        + ["--timestep-convention"] * (a.timestep_convention is not None)
        + [OVERRIDE] * a.override_metadata
        + _given(a, _GUIDE_FLAGS)
    ):
        if flag == "--sampler" and a.sampler == info.get("name"):
            continue  # agrees with the file
        if flag == "--noise" and a.noise == noise:
            continue
        baked.append(flag)
    if baked:
        what = f"{info.get('name', '?')}, noise {noise}"
        pb.add(
            ", ".join(baked),
            f"{path} is a complete sampler ({what}; schedule, steps and "
            "options are baked in), so these cannot take effect; sample its denoiser with "
            "them, or re-export with `refdiff export --kind sampler`",
        )
    if a.mode not in (None, "graph"):
        pb.add("--mode", f"{path} is a whole-sampler graph: it runs in --mode graph only")
    if a.cuda_graph:
        pb.add("--cuda-graph", "CUDA graphs cannot hold the sampler file's Loop/Scan")
    if noise == "graph" and a.seed is not None:
        baked_seed = meta.get(PREFIX + "seed")
        if baked_seed is None or int(baked_seed) != a.seed:
            pb.add(
                "--seed",
                f"{path} draws its noise in-graph with seed {baked_seed} baked in; "
                "re-export it with `refdiff export --noise graph --seed N`",
            )
    pb.raise_any()
    from .metadata import ModelBytes
    from .model_io import CorruptModelError
    from .runtime import OrtSampler

    mb = ModelBytes(data, path, meta)
    if not mb.is_sampler_file:  # truncated metadata: the full check names the problem
        return OrtSampler(path, mode="graph", **provider_kw)
    try:  # from the bytes already read: onnxruntime parses and checks them, no onnx import
        return OrtSampler(mb, mode="graph", **provider_kw)
    except CorruptModelError as e:
        if "external" not in str(e).lower():
            raise
    return OrtSampler(path, mode="graph", **provider_kw)  # external data: load from the file


def _denoiser_sampler(a: argparse.Namespace, path: Path, meta: dict, shape, provider_kw):
    from .metadata import PREFIX
    from .runtime import OrtSampler

    kind = meta.get(PREFIX + "kind")
    if kind not in (None, "denoiser", "sampler"):
        raise InputError(
            "--model", f"{path} is a refdiff {kind!r} model; give a denoiser or a sampler file"
        )
    pb = _Problems()
    _check_sampler_options(a, a.sampler or "ddpm", pb)
    if a.uncond and a.guidance_scale is None:
        pb.add("--uncond", "applies to classifier-free guidance: add --guidance-scale")
    pb.raise_any()
    sampler = a.sampler or "ddpm"
    den = _open_for_cli(a, path, sampler)
    base = _base_schedule(a, den.signature.metadata.get(PREFIX + "schedule"), den.label, sampler)
    sched, grid = _walk(a, base, sampler)
    batch = a.batch if a.batch is not None else 16
    return OrtSampler(
        den,
        sched,
        sampler=sampler,
        mode=a.mode or "steps",
        noise=a.noise or "input",
        seed=a.seed if a.seed is not None else 0,
        cuda_graph=a.cuda_graph,
        batch=(shape[0] if shape else batch) if a.cuda_graph else None,
        state_shape=shape,
        guidance_scale=a.guidance_scale,
        guidance_rescale=a.guidance_rescale if a.guidance_rescale is not None else 0.0,
        guidance_mode=a.guidance_mode or "batched",
        **provider_kw,
        **_options(a, sampler),
        **grid,
    )


def _show_warning(message, shown: set, verbose: bool) -> None:
    """Print each distinct warning once: one line, and the details with ``--verbose``."""
    text = str(message)
    if text in shown:
        return
    shown.add(text)
    print(f"refdiff: warning: {text}", file=sys.stderr)
    details = getattr(message, "details", "")
    if verbose and details:
        print(f"refdiff:   details: {details}", file=sys.stderr)
