"""``refdiff bench``: run the benchmarks in the repository's ``benchmarks/`` folder.

The benchmarks are scripts that live beside the package, not inside it (DESIGN §5), so this
entry point finds them next to ``export/`` (an editable install or a checkout) and runs
``benchmarks.run.main``.  ``refdiff bench --help`` lists the options (``--quick``,
``--provider cpu|cuda|auto``, ``--only``, ``--out``).
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["main", "benchmarks_dir"]


def benchmarks_dir() -> Path | None:
    """The ``benchmarks/`` folder of the checkout this package was installed from, if any."""
    here = Path(__file__).resolve().parent
    for root in (here.parent, Path.cwd()):
        if (root / "benchmarks" / "run.py").is_file():
            return root / "benchmarks"
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; returns the exit status (0 when every section ran)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    bdir = benchmarks_dir()
    if bdir is None:
        print(
            "refdiff bench: the benchmarks/ folder was not found (they ship with the source "
            "checkout, not the wheel); run it from a checkout of refdiff",
            file=sys.stderr,
        )
        return 2
    root = str(bdir.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks.run import main as run_main

    return run_main(argv)
