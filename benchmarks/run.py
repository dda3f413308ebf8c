"""``refdiff bench``: race the reference and the ONNX samplers against their peers and floors.

Sections (``--only`` picks some):

- ``steps``    the reference DDPM/DDIM step and loop vs diffusers' schedulers, and the floor;
- ``ort``      the onnxruntime samplers: per-step loop vs the bare denoiser, the whole-sampler
               graph vs the loop, both vs the diffusers/optimum-style loop;
- ``scaling``  time against steps and batch, peak memory;
- ``stats``    seconds per statistical assertion of the statistical test suite;
- ``assertions`` each statistical check at n = 10⁶, d = 16 against its NumPy/SciPy primitive;
- ``loops``    the sampling loops at batch 1 against their bare step (fixed cost per step);
- ``sigma``    each σ-view sampler's step against diffusers' step for it, and the floor.

Prints a table per section and a summary of the targets of docs/benchmarks.md, and writes
every number as JSON (atomically).  ``--quick`` runs a smaller version (a few minutes) that
keeps every section; ``--smoke`` checks the harness at toy sizes in seconds (its numbers mean
nothing).
Standalone: ``python -m benchmarks.run [options]`` from the repository root, with refdiff
installed (``make install`` or ``pip install -e '.[deploy]'``): the benchmarks import the
installed package.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTIONS = ("steps", "ort", "scaling", "stats", "assertions", "loops", "sigma")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="refdiff bench",
        description="Benchmarks: reference and ONNX samplers against peers and floors "
        "(ratios measured side by side in one run).",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="smaller sizes and fewer rounds (minutes)"
    )
    size.add_argument(
        "--smoke", action="store_true", help="toy sizes, one round: checks the harness in seconds"
    )
    p.add_argument(
        "--provider",
        choices=("cpu", "cuda", "auto"),
        default="cpu",
        help="onnxruntime provider for the ort/scaling sections (default cpu)",
    )
    p.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default all)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="JSON file (default benchmarks/results*.json)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for torch and onnxruntime on CPU (default 1: NumPy's ufuncs use one "
        "core, and one thread each keeps a shared machine's numbers stable; 0 = library default)",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="report wall time (default) or this process's CPU time, which leaves out waiting "
        "for a core on a busy shared machine (CPU provider only)",
    )
    p.add_argument("--no-peers", action="store_true", help="skip torch/diffusers even if installed")
    return p


def _sections(text: str) -> list[str]:
    out = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in out if s not in SECTIONS]
    if bad or not out:
        raise SystemExit(f"refdiff bench: --only takes {','.join(SECTIONS)}; got {text!r}")
    return out


def _default_out(args) -> Path:
    name = "results"
    if args.provider != "cpu":
        name += f"-{args.provider}"
    if _size(args) != "full":
        name += f"-{_size(args)}"
    return HERE / f"{name}.json"


def _size(args) -> str:
    return "smoke" if args.smoke else "quick" if args.quick else "full"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sections = _sections(args.only)
    from refdiff._io import write_json

    from . import _timing, report

    out_path = args.out or _default_out(args)
    size = _size(args)
    if args.clock == "cpu" and args.provider != "cpu":
        print("refdiff bench: --clock cpu needs --provider cpu (GPU work is not CPU time)")
        return 2
    _timing.set_clock(args.clock)
    t_start = time.perf_counter()
    info = _timing.machine_info()
    print(f"refdiff bench ({size}) on {info['cpu']} ({info['cores']} cores)")
    bw = _timing.copy_bandwidth({"smoke": 8, "quick": 64, "full": 256}[size] * 2**20)
    info["copy_bandwidth_GBps"] = bw / 1e9
    print(f"  copy bandwidth (read + write, large numpy.copyto): {bw / 1e9:.1f} GB/s")
    result: dict = {
        "machine": info,
        "size": size,
        "argv": list(argv) if argv is not None else sys.argv[1:],
        "provider": args.provider,
        "threads": args.threads or None,
        "clock": args.clock,
        "sections": {},
        "errors": {},
    }

    for name in sections:
        t0 = time.perf_counter()
        print(f"\n== {name} ==")
        try:
            result["sections"][name] = _run_section(name, args, bw)
        except Exception as e:  # one broken section must not lose the others' numbers
            traceback.print_exc()
            result["errors"][name] = f"{type(e).__name__}: {e}"
        else:
            print(report.section_table(name, result["sections"][name]))
        print(f"  ({name}: {time.perf_counter() - t0:.0f} s)")

    result["targets"] = report.collect_targets(result["sections"])
    result["wall_s"] = time.perf_counter() - t_start
    print("\n== targets (docs/benchmarks.md) ==")
    print(report.targets_table(result["targets"]))
    write_json(out_path, _clean(result))
    print(f"\nwrote {out_path} ({result['wall_s']:.0f} s)")
    return 1 if result["errors"] else 0


def _run_section(name: str, args, bw: float) -> dict:
    threads, size, peers = args.threads or None, _size(args), not args.no_peers
    if name == "steps":
        from . import bench_steps

        return bench_steps.run(size=size, bandwidth=bw, peers=peers, threads=threads)
    if name == "ort":
        from . import bench_ort

        return bench_ort.run(size=size, provider=args.provider, peers=peers, threads=threads)
    if name == "scaling":
        from . import bench_scaling

        return bench_scaling.run(size=size, provider=args.provider, threads=threads)
    if name == "sigma":
        from . import bench_sigma

        return bench_sigma.run(size=size, peers=peers, threads=threads)
    if name in ("assertions", "loops"):
        from . import bench_fixed_cost

        if name == "assertions":
            return bench_fixed_cost.run_assertions(size=size)
        return bench_fixed_cost.run_loops(size=size)
    from . import bench_stats

    if size != "smoke":
        return bench_stats.run()
    with tempfile.TemporaryDirectory() as tmp:  # the harness on one tiny statistical test
        f = Path(tmp) / "test_statistical_smoke.py"
        f.write_text(SMOKE_TEST)
        return bench_stats.run(files=[f], env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})


SMOKE_TEST = """
import numpy as np
from refdiff import stats


def test_mean_of_normals():
    x = np.random.default_rng(0).standard_normal((1000, 2))
    stats.assert_mean(x, np.zeros(2), np.eye(2), false_fail_rate=1e-6)
"""


def _clean(obj):
    """JSON-safe copy: NaN/Inf become None (write_json refuses them), tuples lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):
        try:
            return _clean(obj.item())
        except (TypeError, ValueError):
            return str(obj)
    return obj


if __name__ == "__main__":  # python -m benchmarks.run, from the repository root
    raise SystemExit(main())
