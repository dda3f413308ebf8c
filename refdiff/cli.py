"""The ``refdiff`` command.  Each subcommand lives in its own module, imported on demand,
so ``refdiff --help`` works without the optional extras installed."""

from __future__ import annotations

import importlib
import sys

# name -> ("module:function", one-line help, extra that provides it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": (
        "refdiff.export.demo:main",
        "train, export, sample on ONNX and verify, in one go",
        "deploy,plots",
    ),
    "export": ("refdiff.export.cli:export_main", "export denoisers and samplers to ONNX", "deploy"),
    "sample": ("refdiff.export.cli:sample_main", "run DDPM/DDIM with an ONNX denoiser", "deploy"),
    "vectors": ("refdiff.vectors:main", "write or check golden vectors", ""),
    "verify": ("refdiff.verify:main", "verify an implementation against the reference", ""),
    "bench": ("refdiff.export.bench:main", "run the benchmarks", "deploy"),
    "serve": ("refdiff.export.serve:serve_main", "serve a sampler over HTTP (Ray Serve)", "serve"),
}


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
    mod_name, func = target.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        hint = f" (pip install 'refdiff[{extra}]')" if extra else ""
        print(f"refdiff {name}: missing module {e.name!r}{hint}", file=sys.stderr)
        return 2
    return int(getattr(mod, func)(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
