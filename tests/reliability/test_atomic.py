"""Atomic writes (docs/reliability.md §3): a writer killed or failing mid-write leaves the old
file intact, or no file — never half of one.

- SIGKILL: a child process writes a large file through ``refdiff._io`` and is killed (a) in
  the middle of its data, (b) after its data but before the rename, (c) at random moments
  of a loop that rewrites the target; the target is always the complete old or new file.
- Injected failure: every writer refdiff has (``write_bytes``, ``write_text``,
  ``write_json``, ``save_npz``, ``save_mlp``, ``refdiff.export.save_model``, golden vectors)
  hits a "disk full" ``OSError`` (or a ``KeyboardInterrupt``) after a few bytes: the target is
  untouched and no temporary file is left behind.
- A source scan: no module writes a file except through ``refdiff._io``.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from refdiff import _io
from refdiff import mlp as M
from refdiff.errors import NonFiniteError

ROOT = Path(__file__).resolve().parents[2]
BIG = 32 * 2**20  # bytes a child writes: large enough to be caught mid-write


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _child(code: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _kill_when(proc: subprocess.Popen, marker: str) -> None:
    line = proc.stdout.readline()
    assert line.strip() == marker, (line, proc.stderr.read() if proc.poll() is not None else "")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _strays(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.*.tmp"))


# -- SIGKILL --------------------------------------------------------------------------------
@pytest.mark.parametrize("old", [True, False], ids=["old-file", "no-file"])
def test_sigkill_in_the_middle_of_the_data(tmp_path, old):
    target = tmp_path / "data.bin"
    if old:
        target.write_bytes(b"old contents\n" * 1000)
        before = _digest(target)
    proc = _child(f"""
        import sys, time
        from refdiff._io import atomic_write
        with atomic_write({str(target)!r}) as f:
            f.write(b"N" * {BIG // 2})
            f.flush()
            print("HALF", flush=True)
            time.sleep(60)
            f.write(b"N" * {BIG // 2})
    """)
    _kill_when(proc, "HALF")
    if old:
        assert _digest(target) == before
    else:
        assert not target.exists()
    # what an interrupted write may leave: one stray temporary file beside the target,
    # hidden (dot) and named after it; never the target itself
    strays = _strays(tmp_path, "data.bin")
    assert len(strays) == 1 and strays[0].stat().st_size == BIG // 2


def test_sigkill_between_data_and_rename_keeps_old_npz(tmp_path):
    target = tmp_path / "w.npz"
    _io.save_npz(target, x=np.zeros(10))
    proc = _child(f"""
        import os, time
        import numpy as np
        from refdiff import _io

        def stuck_fsync(fd):  # the data is written; die before os.replace
            print("SYNCED", flush=True)
            time.sleep(60)

        _io.os.fsync = stuck_fsync
        _io.save_npz({str(target)!r}, x=np.ones({BIG // 8}))
    """)
    _kill_when(proc, "SYNCED")
    z = _io.load_npz(target)
    assert np.array_equal(z["x"], np.zeros(10))


def test_sigkill_at_random_moments_never_leaves_half_a_file(tmp_path):
    """A child rewrites the target with A, B, A, … (8 MiB each); kill it at random times."""
    target = tmp_path / "loop.npz"
    n = 2**20
    _io.save_npz(target, x=np.full(n, -1.0))
    rng = np.random.default_rng(12345)
    seen = set()
    for delay in rng.uniform(0.05, 0.4, size=3):
        proc = _child(f"""
            import numpy as np
            from refdiff._io import save_npz
            print("GO", flush=True)
            for k in range(10_000):
                save_npz({str(target)!r}, x=np.full({n}, float(k % 2)))
        """)
        assert proc.stdout.readline().strip() == "GO"
        time.sleep(float(delay))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        x = _io.load_npz(target)["x"]  # a complete .npz …
        assert x.shape == (n,) and np.all(x == x[0]) and x[0] in (-1.0, 0.0, 1.0)  # … of one write
        seen.add(float(x[0]))
    assert seen - {-1.0}, "the child never completed a write: the test proved nothing"


# -- injected failures in process ------------------------------------------------------------
class _DiskFull:
    """A file wrapper whose writes fail with ENOSPC after ``budget`` bytes (or raise
    ``exc``), as a full disk or a Ctrl-C in the middle of a write would."""

    def __init__(self, f, budget: int, exc: BaseException):
        self._f, self._left, self._exc = f, budget, exc

    def write(self, data):
        n = len(memoryview(data).cast("B"))
        if n > self._left:
            self._f.write(bytes(memoryview(data).cast("B")[: self._left]))
            self._left = 0
            raise self._exc
        self._left -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


def _writers():
    """name -> write(path): every way refdiff writes a file."""
    big = np.arange(200_000, dtype=np.float64)

    def onnx_model(path):
        from refdiff.export import save_model

        from tests.reliability.test_reliability import tiny_denoiser_model

        save_model(tiny_denoiser_model(), path)

    out = {
        "write_bytes": lambda p: _io.write_bytes(p, b"x" * 100_000),
        "write_text": lambda p: _io.write_text(p, "ü" * 100_000),
        "write_json": lambda p: _io.write_json(p, {"a": list(range(20_000))}),
        "save_npz": lambda p: _io.save_npz(p, a=big),
        "save_mlp": lambda p: M.save_mlp(p, M.init_mlp(np.random.default_rng(0), hidden=64)),
        "export.save_model": onnx_model,
    }
    return out


WRITERS = _writers()


@pytest.mark.parametrize(
    "exc",
    [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()],
    ids=["ENOSPC", "KeyboardInterrupt"],
)
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_failure_mid_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch, name, exc):
    write = WRITERS[name]
    target = tmp_path / "target.out"
    target.write_bytes(b"the old, complete file")
    real_fdopen = os.fdopen
    monkeypatch.setattr(
        _io.os, "fdopen", lambda fd, mode: _DiskFull(real_fdopen(fd, mode), 64, exc)
    )
    with pytest.raises(type(exc)):
        write(target)
    monkeypatch.undo()
    assert target.read_bytes() == b"the old, complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target.out"], "a temporary file was left"
    write(target)  # and the writer works once the disk has room again
    assert target.read_bytes() != b"the old, complete file"


def test_write_json_refuses_nan_before_touching_the_file(tmp_path):
    target = tmp_path / "r.json"
    _io.write_json(target, {"ok": 1})
    with pytest.raises((ValueError, NonFiniteError)):
        _io.write_json(target, {"bad": float("nan")})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


# -- every file written goes through refdiff._io ----------------------------------------------
SAVE_CALLS = {"save", "savez", "savez_compressed", "savefig", "tofile", "save_model", "dump"}


def _name(f: ast.expr) -> str:
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _owner(f: ast.expr) -> str:
    return f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""


def _violations(path: Path) -> list[str]:
    """Calls that write a file other than through refdiff._io, found in the syntax tree.

    ``np.save``/``savez``/``tofile``/``savefig``/``json.dump``/``pickle.dump``/``onnx.save`` are
    fine only into a name bound by ``with atomic_write(...) as name`` or assigned
    ``io.BytesIO()``; ``open(..., "w"/"a"/"x"/"+")``, ``Path.write_text``/``write_bytes`` and
    ``os.rename``/``os.replace`` are never fine outside ``refdiff/_io.py``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    safe: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            for item in node.items:
                c = item.context_expr
                if (
                    isinstance(c, ast.Call)
                    and _name(c.func) == "atomic_write"
                    and isinstance(item.optional_vars, ast.Name)
                ):
                    safe.add(item.optional_vars.id)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            if _name(node.value.func) == "BytesIO":
                safe |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f, name, owner = node.func, _name(node.func), _owner(node.func)
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        if isinstance(f, ast.Name) and name == "open":
            modes = node.args[1:2] + [k.value for k in node.keywords if k.arg == "mode"]
            for m in modes:
                if (
                    isinstance(m, ast.Constant)
                    and isinstance(m.value, str)
                    and set(m.value) & set("wax+")
                ):
                    bad.append(f"{where} open(..., {m.value!r})")
        elif not isinstance(f, ast.Attribute):
            continue
        elif name in ("write_text", "write_bytes"):
            bad.append(f"{where} .{name}()")
        elif name in ("rename", "replace") and owner == "os":
            bad.append(f"{where} os.{name}()")
        elif name in SAVE_CALLS and (name != "dump" or owner in ("json", "pickle")):
            k = 1 if name == "dump" or owner == "onnx" else 0
            target = node.args[k] if len(node.args) > k else None
            if not (isinstance(target, ast.Name) and target.id in safe):
                bad.append(f"{where} {owner or '…'}.{name}() not into atomic_write/BytesIO")
    return bad


def _sources() -> list[Path]:
    files = []
    for folder in ("refdiff", "export", "benchmarks"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return [p for p in files if p != ROOT / "refdiff" / "_io.py"]


# Reviewed exceptions: (file, call) -> why it is safe.  Folder outputs are built in a
# temporary folder whose files go through refdiff._io, then renamed into place (the old
# folder is moved aside first: an interruption leaves the old folder, or none, never half).
ALLOWED = {
    ("refdiff/conformance/vectors.py", "os.replace()"): "publishes a finished temporary folder",
    ("export/demo/run.py", "os.replace()"): "publishes the finished report folder",
    ("benchmarks/run.py", ".write_text()"): "a scratch test file in a TemporaryDirectory",
    ("benchmarks/_timing.py", "open(..., 'w')"): "a kernel control file (/proc/self/clear_refs)",
}


def test_no_module_writes_files_except_through_refdiff_io():
    found = [v for p in _sources() for v in _violations(p)]
    bad = [v for v in found if (v.split(":")[0], v.split(" ", 1)[1]) not in ALLOWED]
    assert not bad, "direct file writes (route them through refdiff._io):\n" + "\n".join(bad)


def test_the_scan_finds_direct_writes(tmp_path):
    """The scanner itself can fail: each pattern it must catch, planted in a file."""
    planted = tmp_path / "planted.py"
    planted.write_text(
        textwrap.dedent("""
        import io, json, os
        import numpy as np
        from refdiff._io import atomic_write
        def bad(p, x, fig, model):
            open(p, "w").write("x")
            with open(p, mode="ab") as f:
                f.write(b"x")
            p.write_text("x")
            np.save(p, x)
            fig.savefig(p)
            json.dump({}, open(p))
            os.replace(p, p)
        def good(p, x, fig):
            with atomic_write(p) as f:
                np.save(f, x)
            buf = io.BytesIO()
            fig.savefig(buf)
            open(p).read()
    """)
    )
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = _violations(planted)
    finally:
        ROOT = saved
    lines = sorted(int(v.split(":")[1].split()[0]) for v in found)
    assert lines == [6, 7, 9, 10, 11, 12, 13], found
