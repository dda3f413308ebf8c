"""The ``refdiff`` command.  Each subcommand lives in its own module, imported on demand,
so ``refdiff --help`` works without the optional extras installed."""

from __future__ import annotations

import importlib
import importlib.util
import sys

# name -> ("module:function", one-line help, extra that provides it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": (
        "refdiff.export.demo:main",
        "train, export, sample on ONNX and verify, in one go",
        "demo",
    ),
    "export": ("refdiff.export.cli:export_main", "export denoisers and samplers to ONNX", "deploy"),
    "sample": ("refdiff.export.cli:sample_main", "run DDPM/DDIM with an ONNX denoiser", "deploy"),
    "vectors": ("refdiff.vectors:main", "write or check golden vectors", ""),
    "verify": ("refdiff.verify:main", "verify an implementation against the reference", ""),
    "bench": ("refdiff.export.bench:main", "run the benchmarks", "deploy"),
    "serve": ("refdiff.export.serve:serve_main", "serve a sampler over HTTP (Ray Serve)", "serve"),
}


# modules a subcommand needs before it starts any work (checked without importing them)
REQUIRES: dict[str, tuple[str, ...]] = {"demo": ("onnx", "onnxruntime", "matplotlib", "tqdm")}
#: exit status when an extra is missing (distinct from 1, "a check failed", and 2, bad input)
EXIT_MISSING_EXTRA = 3


def _missing(name: str) -> list[str]:
    return [m for m in REQUIRES.get(name, ()) if importlib.util.find_spec(m) is None]


def _usage() -> str:
    lines = [
        "usage: refdiff COMMAND [options]   (refdiff COMMAND --help for each)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<9} {help_}" for name, (_, help_, _) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from . import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"refdiff: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _, extra = COMMANDS[name]
    missing = _missing(name)
    if missing and not any(a in ("-h", "--help") for a in rest):
        print(
            f"refdiff {name}: needs {', '.join(missing)}, not installed; "
            f'install the extra first: pip install "refdiff[{extra}]"',
            file=sys.stderr,
        )
        return EXIT_MISSING_EXTRA
    mod_name, func = target.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        if "pip install" in str(e):  # refdiff's own message names the extra
            print(f"refdiff {name}: {e}", file=sys.stderr)
        else:
            hint = f': pip install "refdiff[{extra}]"' if extra else ""
            print(f"refdiff {name}: missing module {e.name!r}{hint}", file=sys.stderr)
        return 3  # a missing extra: neither 1 (a check failed) nor 2 (bad input)
    return int(getattr(mod, func)(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
