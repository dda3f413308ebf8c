"""onnxruntime sessions on the provider that truly runs them.

``onnxruntime.get_available_providers()`` lists CUDA whenever the GPU build is installed,
even when its libraries cannot load; the session then runs on CPU after logging an error.
The truth is ``session.get_providers()`` after creation, and that is what refdiff checks:

- ``provider="cpu"``   CPU only;
- ``provider="cuda"``  CUDA or a :class:`ProviderError` that says why CUDA is not running;
- ``provider="auto"``  CUDA when it truly runs, else CPU with a :class:`ProviderFallbackWarning`
  whose one-line message says the main reason ("running on CPU: no NVIDIA GPU visible"); its
  ``details`` (and :func:`cuda_details`) list every finding and the fix.

Without a visible NVIDIA device (checked with a few file lookups) nothing is probed: no CUDA
session is created and the decision costs well under a millisecond.

CUDA options: ``use_tf32`` (default off: TF32 matmuls cost ~1e-3 relative accuracy, see
docs/deploy.md), ``cuda_graph`` (``enable_cuda_graph``; fixed shapes and IO binding only).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings

from refdiff.errors import InputError, OptionError

__all__ = [
    "PROVIDERS",
    "ProviderError",
    "ProviderFallbackWarning",
    "cuda_status",
    "cuda_details",
    "nvidia_visible",
    "resolve_provider",
    "make_session",
    "session_provider",
]

PROVIDERS = ("auto", "cuda", "cpu")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


class ProviderError(InputError, RuntimeError):
    """The asked-for execution provider is not what runs (``argument`` is ``"provider"``).

    The message is one line with the main reason; ``details`` has every finding and the fix.
    """

    def __init__(self, argument: str, message: str, details: str = ""):
        super().__init__(argument, message)
        self.details = details


class ProviderFallbackWarning(UserWarning):
    """``provider="auto"`` fell back to CPU.  The message is one line, "running on CPU:
    <main reason>"; ``reason`` holds that reason and ``details`` every finding and the fix."""

    reason: str = ""
    device_id: int = 0

    @property
    def details(self) -> str:
        return cuda_details(self.device_id)


def _quiet_ort(severity: int = 4):
    """Raise onnxruntime's C++ logger threshold for a while (4: fatal only; 3: errors).

    While probing, onnxruntime prints the CUDA load error itself (refdiff's warning says
    why in one line); onnxruntime 1.31 also warns "No registered plugin EP device found"
    for every CUDA session, a message about its plugin mechanism, not about this session.
    """
    import onnxruntime as ort

    @contextlib.contextmanager
    def cm():
        ort.set_default_logger_severity(severity)
        try:
            yield
        finally:
            ort.set_default_logger_severity(2)  # onnxruntime's default (warning)

    return cm()


# A one-node float32 Neg model (IR 10, opset 21), serialised once so that probing CUDA needs
# neither onnx nor a graph builder.
_PROBE_MODEL = (
    b'\x08\n:6\n\x0b\n\x01x\x12\x01y"\x03Neg\x12\x05probeZ\x0f\n\x01x\x12\n\n\x08\x08\x01'
    b"\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\x15"
)


def nvidia_visible() -> bool:
    """Whether an NVIDIA GPU device or driver is visible to this process (file checks only).

    ``CUDA_VISIBLE_DEVICES`` set to an empty string or ``-1`` hides every GPU, as CUDA does.
    """
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and cvd.strip() in ("", "-1"):
        return False
    if os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/dxg"):  # WSL: dxg
        return True
    try:
        return any(n.startswith("nvidia") and n[6:].isdigit() for n in os.listdir("/dev"))
    except OSError:
        return False


def _cuda_lib_error() -> str | None:
    """The loader's error for onnxruntime's CUDA provider library, or None when it loads."""
    import ctypes

    import onnxruntime as ort

    lib = os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime_providers_cuda.so")
    if not os.path.exists(lib):
        return None
    try:
        ctypes.CDLL(lib)
    except OSError as e:
        return str(e)
    return None


def _why_no_cuda(device_id: int = 0, *, details: bool = False) -> str:
    """Why CUDA does not run a session: the main reason in a few words, or (``details``) every
    finding and the fix.  The short form only looks at files unless a GPU is visible."""
    import onnxruntime as ort

    v = ort.__version__
    if _CUDA not in ort.get_available_providers():
        if not details:
            return "this onnxruntime is the CPU build"
        return (
            f"onnxruntime {v} has no CUDAExecutionProvider (the CPU-only package). "
            "For CUDA: pip uninstall onnxruntime; pip install onnxruntime-gpu "
            '(or pip install "refdiff[deploy-gpu-cuda]" for the CUDA libraries from PyPI).'
        )
    gpu = nvidia_visible()
    if not gpu and not details:
        return "no NVIDIA GPU visible"
    lib_err = _cuda_lib_error()
    if not details:
        if lib_err is not None:
            return f"the CUDA libraries do not load ({lib_err.split(':')[0].strip()})"
        return f"onnxruntime created the session without CUDA on device {device_id}"
    found = []
    if not gpu:
        found.append(
            "no NVIDIA GPU or driver is visible (no /dev/nvidia<N>, no /proc/driver/nvidia; "
            "or CUDA_VISIBLE_DEVICES hides every GPU)"
        )
    if lib_err is not None:
        found.append(
            f"onnxruntime-gpu {v}'s CUDA provider library does not load ({lib_err}); it needs "
            "the CUDA 13 and cuDNN 9 libraries: pip install 'onnxruntime-gpu[cuda,cudnn]'"
        )
    if not found:
        found.append("onnxruntime did not use CUDA; see its log with log severity 0 for why")
    return "; ".join(found)


@functools.lru_cache(maxsize=8)
def _probe(device_id: int) -> tuple[bool, str, str | None]:
    """(CUDA runs, short reason, details or None: not computed yet); once per process/device.

    Without a visible NVIDIA device this reads a few files and creates no session; otherwise
    it preloads NVIDIA's pip-installed CUDA/cuDNN libraries (``onnxruntime.preload_dlls``),
    creates a one-node session asking for CUDA and reads ``get_providers()``.
    """
    import numpy as np
    import onnxruntime as ort

    if _CUDA not in ort.get_available_providers() or not nvidia_visible():
        return False, _why_no_cuda(device_id), None
    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
            ort.preload_dlls()
    try:
        with _quiet_ort():
            s = ort.InferenceSession(
                _PROBE_MODEL, providers=[(_CUDA, {"device_id": str(device_id)}), _CPU]
            )
            s.run(None, {"x": np.ones(1, np.float32)})
    except Exception as e:  # noqa: BLE001 - any failure means CUDA does not run
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return False, f"creating a CUDA session failed on device {device_id}", first
    if s.get_providers()[0] != _CUDA:
        return False, _why_no_cuda(device_id), None
    return True, "", ""


def cuda_status(device_id: int = 0) -> tuple[bool, str]:
    """(CUDA truly runs a session on ``device_id``, the main reason why not, in a few words).

    Probed once per process; :func:`cuda_details` gives every finding and the fix.
    """
    ok, why, _ = _probe(device_id)
    return ok, why


@functools.lru_cache(maxsize=8)
def cuda_details(device_id: int = 0) -> str:
    """Every finding about why CUDA does not run on ``device_id`` and the fix ("" when it runs)."""
    ok, _, details = _probe(device_id)
    if ok:
        return ""
    return details if details is not None else _why_no_cuda(device_id, details=True)


def _fallback(reason: str, device_id: int, stacklevel: int) -> None:
    w = ProviderFallbackWarning(f"running on CPU: {reason}")
    w.reason, w.device_id = reason, device_id
    warnings.warn(w, stacklevel=stacklevel + 1)


def resolve_provider(provider: str = "auto", device_id: int = 0, *, warn: bool = True) -> str:
    """``"cuda"`` or ``"cpu"``: what to run on, per the policy in the module docstring."""
    if provider not in PROVIDERS:
        raise OptionError("provider", provider, list(PROVIDERS))
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise InputError("device_id", f"must be an int >= 0; got {device_id!r}")
    if provider == "cpu":
        return "cpu"
    ok, why, _ = _probe(device_id)
    if ok:
        return "cuda"
    if provider == "cuda":
        raise ProviderError(
            "provider",
            f"'cuda' was asked for but CUDA does not run here: {why}",
            cuda_details(device_id),
        )
    if warn:
        _fallback(why, device_id, stacklevel=3)
    return "cpu"


def session_provider(session) -> str:
    """``"cuda"`` or ``"cpu"``: the first provider of a created session."""
    return "cuda" if session.get_providers()[0] == _CUDA else "cpu"


_SHARED_ARENA: list = []  # [True] once registered, [False] if onnxruntime refused


def _shared_cpu_arena(ort) -> bool:
    """Register (once per process) the CPU arena that ``shared_arena`` sessions allocate
    from; False when onnxruntime refuses (e.g. the host program registered its own)."""
    if not _SHARED_ARENA:
        info = ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        try:  # extend by what is asked for: the loop allocates the same few sizes every step
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
            _SHARED_ARENA.append(True)
        except Exception:  # noqa: BLE001 - sharing is an optimisation; sessions work without
            _SHARED_ARENA.append(False)
    return _SHARED_ARENA[0]


def make_session(
    model: object,
    provider: str = "auto",
    *,
    device_id: int = 0,
    use_tf32: bool = False,
    cuda_graph: bool = False,
    threads: int | None = None,
    warn: bool = True,
    shared_arena: bool = False,
):
    """An ``onnxruntime.InferenceSession`` on the provider that truly runs.

    Args:
        model: serialised bytes, an ``onnx.ModelProto`` or a file path (bytes already in
            memory are not read again)
        provider: ``auto`` | ``cuda`` | ``cpu`` (module docstring); ``cuda`` raises
            :class:`ProviderError` when CUDA is not what runs the session
        device_id: CUDA device ordinal
        use_tf32: allow TF32 matmuls on CUDA (faster, ~1e-3 relative error)
        cuda_graph: capture and replay a CUDA graph (fixed shapes; IO binding; no Loop)
        threads: intra-op threads (None: onnxruntime's default)
        shared_arena: on CPU, allocate from one process-wide arena shared by every session
            made so (the per-step loop's two sessions reuse each other's freed blocks)
    """
    import onnxruntime as ort

    choice = resolve_provider(provider, device_id, warn=warn)
    if cuda_graph and choice != "cuda":
        raise InputError("cuda_graph", f"CUDA graphs need the CUDA provider; running on {choice}")
    if hasattr(model, "SerializeToString"):  # an onnx.ModelProto (onnx is then imported)
        model = model.SerializeToString()
    elif isinstance(model, os.PathLike):
        model = os.fspath(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = int(threads)
    if choice == "cpu":
        # No pre-planned block per input shape: on CPU it only saves allocations, and it holds
        # ~4 states more at the peak of a sampler run (docs/deploy.md, "Memory").
        so.enable_mem_pattern = False
        # Run each node as soon as its inputs are ready, not every ready Mul first: the step
        # update then holds 2 fresh states at once instead of 3 (docs/deploy.md, "Memory").
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        if shared_arena and _shared_cpu_arena(ort):
            so.add_session_config_entry("session.use_env_allocators", "1")
    if choice == "cuda":
        opts = {
            "device_id": str(device_id),
            "use_tf32": "1" if use_tf32 else "0",
            "enable_cuda_graph": "1" if cuda_graph else "0",
        }
        providers = [(_CUDA, opts), _CPU]
    else:
        providers = [_CPU]
    try:
        with _quiet_ort(3) if choice == "cuda" else contextlib.nullcontext():
            sess = ort.InferenceSession(model, so, providers=providers)
    except Exception as e:  # onnxruntime's Fail, InvalidGraph, …: a file it cannot load
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        from .model_io import CorruptModelError

        label = str(model) if isinstance(model, str | os.PathLike) else "<model>"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CorruptModelError(label, f"onnxruntime cannot load it: {first}") from None
    if choice == "cuda" and session_provider(sess) != "cuda":
        why = _why_no_cuda(device_id)
        if provider == "cuda":
            raise ProviderError(
                "provider",
                f"'cuda' was asked for but the session runs on CPU: {why}",
                _why_no_cuda(device_id, details=True),
            )
        if warn:
            _fallback(why, device_id, stacklevel=2)
    return sess
