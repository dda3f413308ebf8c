"""``refdiff bench``: run the benchmarks in the repository's ``benchmarks/`` folder.

The benchmarks are scripts that live beside the package, not inside it (docs/benchmarks.md),
so this entry point finds them next to ``export/`` (an editable install or a checkout) and
runs ``python -m benchmarks.run`` there.  ``refdiff bench --help`` lists the options (``--quick``,
``--provider cpu|cuda|auto``, ``--only``, ``--out``).
"""

from __future__ import annotations

import subprocess
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
    """Run the benchmarks (``python -m benchmarks.run`` in the checkout, a child process that
    imports the installed refdiff); returns its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    bdir = benchmarks_dir()
    if bdir is None:
        print(
            "refdiff bench: the benchmarks/ folder was not found (they ship with the source "
            "checkout, not the wheel); run it from a checkout of refdiff",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, "-m", "benchmarks.run", *argv], cwd=bdir.parent)
