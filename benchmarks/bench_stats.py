"""Part 4: seconds per statistical assertion of the statistical test suite.

Runs ``pytest -m "not slow"`` on ``tests/test_statistical_*.py`` in a fresh process with
``CI=1`` (the derandomized profile CI uses), then reads the session's ledger of statistical
assertions (``refdiff.stats.LEDGER``: every ``assert_*`` records its false-failure rate) in
that same process.  Seconds per assertion = pytest's wall time / number of ledger entries;
the wall time includes Hypothesis' example generation and collection, i.e. what an
assertion costs in the suite as it runs in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "BENCH_STATS_JSON:"

# Runs inside the child process: pytest in-process, then the ledger.
_CHILD = r"""
import json, sys, time
import pytest

class Count:
    def __init__(self):
        self.outcomes = {}
    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            self.outcomes[report.outcome] = self.outcomes.get(report.outcome, 0) + 1

files = json.loads(sys.argv[1])
count = Count()
t0 = time.perf_counter()
rc = pytest.main(["-q", "-p", "no:cacheprovider", "-m", "not slow", *files], plugins=[count])
wall = time.perf_counter() - t0
out = {"exit_code": int(rc), "wall_s": wall, "outcomes": count.outcomes}
try:
    from refdiff import stats
    ledger = getattr(stats, "LEDGER", None)
except Exception as e:
    ledger, out["ledger_error"] = None, f"{type(e).__name__}: {e}"
if ledger is not None:
    entries = ledger
    for attr in ("entries", "records", "items"):
        v = getattr(ledger, attr, None)
        if v is not None and not callable(v):
            entries = v
            break
    try:
        entries = list(entries.values()) if isinstance(entries, dict) else list(entries)
    except TypeError:
        entries = []
    alphas = []
    for e in entries:
        a = None
        for k in ("false_fail_rate", "alpha"):
            a = e.get(k) if isinstance(e, dict) else getattr(e, k, None)
            if a is not None:
                break
        if a is None and isinstance(e, (tuple, list)):
            a = next((x for x in e if isinstance(x, float)), None)
        if isinstance(a, (int, float)):
            alphas.append(float(a))
    out["assertions"] = len(entries)
    out["alpha_total"] = sum(alphas) if alphas else None
print("__MARK__" + json.dumps(out))
""".replace("__MARK__", MARK)


def statistical_files(root: Path = ROOT) -> list[Path]:
    return sorted((root / "tests").glob("test_statistical_*.py"))


def run(*, quick: bool = False, files: list[Path] | None = None, timeout_s: float = 900, log=print) -> dict:
    """Time the statistical suite in a child process; returns the JSON section."""
    files = statistical_files() if files is None else list(files)
    sec: dict = {"files": len(files), "notes": [], "targets": []}
    if not files:
        sec["notes"].append("no tests/test_statistical_*.py found: nothing to time")
        return sec
    env = dict(os.environ, CI="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-c", _CHILD, json.dumps([str(f) for f in files])]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    line = next((ln for ln in proc.stdout.splitlines()[::-1] if ln.startswith(MARK)), None)
    if line is None:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise RuntimeError(f"statistical suite child printed no result (rc {proc.returncode}):\n{tail}")
    res = json.loads(line[len(MARK) :])
    outcomes = res.get("outcomes", {})
    n = res.get("assertions")
    sec.update(
        exit_code=res["exit_code"],
        wall_s=res["wall_s"],
        tests=sum(outcomes.values()),
        outcomes=outcomes,
        assertions=n,
        alpha_total=res.get("alpha_total"),
        s_per_assertion=(res["wall_s"] / n) if n else None,
    )
    if "ledger_error" in res:
        sec["notes"].append(f"no ledger: {res['ledger_error']}")
    if res["exit_code"] != 0:
        sec["notes"].append(f"pytest exit code {res['exit_code']}: the suite did not pass as timed")
    log(
        f"  statistical suite: {sec['tests']} tests, {n} assertions, {res['wall_s']:.1f} s"
        + (f", {sec['s_per_assertion']:.3f} s/assertion" if n else "")
    )
    return sec
