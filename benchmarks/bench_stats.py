"""Part 4: seconds per statistical assertion of the statistical test suite.

Runs pytest (``-m "not slow"``, ``CI=1``: the derandomized profile CI uses) in a fresh process
on ``tests/ground_truth/test_statistical_*.py`` — or, when no file has that name, on every
test file — and watches :data:`refdiff.stats.LEDGER`, where every statistical assertion records its
false-failure rate: a small plugin notes, per test, its wall time and how many ledger entries
it added.  Seconds per assertion = the time of the tests that made statistical assertions /
the number of assertions (each test's time includes its Hypothesis example generation, its
sampling and its other checks, i.e. what an assertion costs in the suite as CI runs it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "BENCH_STATS_JSON:"

# Runs inside the child process: pytest in-process, watching the ledger test by test.
_CHILD = r"""
import json, sys, time
import pytest

class Watch:
    def __init__(self):
        self.tests, self.outcomes = {}, {}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        from refdiff import stats
        n0, t0 = len(stats.LEDGER), time.perf_counter()
        yield
        self.tests[item.nodeid] = [time.perf_counter() - t0, len(stats.LEDGER) - n0]

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            self.outcomes[report.outcome] = self.outcomes.get(report.outcome, 0) + 1

files = json.loads(sys.argv[1])
w = Watch()
t0 = time.perf_counter()
args = ["-q", "-p", "no:cacheprovider", "-m", "not slow", "--ignore", sys.argv[2], *files]
rc = pytest.main(args, plugins=[w])
wall = time.perf_counter() - t0
from refdiff import stats
out = {
    "exit_code": int(rc), "wall_s": wall, "outcomes": w.outcomes, "tests": w.tests,
    "assertions": len(stats.LEDGER), "alpha_total": float(sum(e.alpha for e in stats.LEDGER)),
}
print("__MARK__" + json.dumps(out))
""".replace("__MARK__", MARK)


def statistical_files(root: Path = ROOT) -> list[Path]:
    return sorted((root / "tests" / "ground_truth").glob("test_statistical_*.py"))


def run(
    *, files: list[Path] | None = None, timeout_s: float = 900, env: dict | None = None, log=print
) -> dict:
    """Time the statistical suite in a child process; returns the JSON section."""
    if files is None:
        files = statistical_files() or [ROOT / "tests"]
        scope = (
            "tests/ground_truth/test_statistical_*.py"
            if files[0].name != "tests"
            else "all of tests/"
        )
    else:
        scope = ", ".join(f.name for f in files)
    sec: dict = {"scope": scope, "notes": [], "targets": []}
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if k not in ("REFDIFF_MUTANT", "HYPOTHESIS_PROFILE")}
    env.update(CI="1", PYTHONHASHSEED="0", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    own = str(ROOT / "tests" / "test_bench_smoke.py")  # not the benchmark inside itself
    cmd = [sys.executable, "-c", _CHILD, json.dumps([str(f) for f in files]), own]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    line = next((ln for ln in proc.stdout.splitlines()[::-1] if ln.startswith(MARK)), None)
    if line is None:
        tail = (proc.stdout + proc.stderr)[-2000:]
        raise RuntimeError(f"the test child printed no result (rc {proc.returncode}):\n{tail}")
    res = json.loads(line[len(MARK) :])
    tests = res["tests"]
    stat = {k: v for k, v in tests.items() if v[1] > 0}
    n = res["assertions"]
    stat_s = sum(v[0] for v in stat.values())
    worst = sorted(stat.items(), key=lambda kv: -kv[1][0] / kv[1][1])[:5]
    sec.update(
        exit_code=res["exit_code"],
        wall_s=res["wall_s"],
        tests=len(tests),
        outcomes=res["outcomes"],
        statistical_tests=len(stat),
        statistical_tests_s=stat_s,
        assertions=n,
        alpha_total=res["alpha_total"],
        s_per_assertion=(stat_s / n) if n else None,
        slowest_per_assertion=[
            {"test": k, "s": v[0], "assertions": v[1], "s_per_assertion": v[0] / v[1]}
            for k, v in worst
        ],
    )
    if res["exit_code"] != 0:
        sec["notes"].append(f"pytest exit code {res['exit_code']}: the suite did not pass as timed")
    log(
        f"  {scope}: {len(tests)} tests in {res['wall_s']:.1f} s; {len(stat)} made {n} statistical "
        f"assertions in {stat_s:.1f} s" + (f" = {stat_s / n:.3f} s/assertion" if n else "")
    )
    return sec
