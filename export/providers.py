"""onnxruntime sessions on the provider that truly runs them.

``onnxruntime.get_available_providers()`` lists CUDA whenever the GPU build is installed,
even when its libraries cannot load; the session then runs on CPU after logging an error.
The truth is ``session.get_providers()`` after creation, and that is what refdiff checks:

- ``provider="cpu"``   CPU only;
- ``provider="cuda"``  CUDA or a :class:`ProviderError` that says why CUDA is not running;
- ``provider="auto"``  CUDA when it truly runs, else CPU with a :class:`ProviderFallbackWarning`
  that says why (no CUDA build, a library that does not load, no GPU visible, …).

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
    "resolve_provider",
    "make_session",
    "session_provider",
]

PROVIDERS = ("auto", "cuda", "cpu")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


class ProviderError(InputError, RuntimeError):
    """The asked-for execution provider is not what runs (``argument`` is ``"provider"``)."""


class ProviderFallbackWarning(UserWarning):
    """``provider="auto"`` fell back to CPU; the message says why."""


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


def _why_no_cuda() -> str:
    import ctypes

    import onnxruntime as ort

    if _CUDA not in ort.get_available_providers():
        v = ort.__version__
        return f"this onnxruntime build ({v}) has no CUDA provider; install onnxruntime-gpu"
    reasons = []
    lib = os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime_providers_cuda.so")
    if os.path.exists(lib):
        try:
            ctypes.CDLL(lib)
        except OSError as e:
            reasons.append(
                f"the CUDA provider library does not load ({e}); "
                f"onnxruntime-gpu {ort.__version__} needs "
                "the CUDA 13 and cuDNN 9 libraries (pip install 'onnxruntime-gpu[cuda,cudnn]')"
            )
    if not (os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia/version")):
        reasons.append("no NVIDIA GPU or driver is visible (/dev/nvidia0 is absent)")
    if not reasons:
        reasons.append("onnxruntime created the session without CUDA (see its log with severity 0)")
    return "; ".join(reasons)


@functools.lru_cache(maxsize=8)
def cuda_status(device_id: int = 0) -> tuple[bool, str]:
    """(CUDA truly runs a session on ``device_id``, why not).  Probed once per process.

    Preloads NVIDIA's pip-installed CUDA/cuDNN libraries (``onnxruntime.preload_dlls``)
    first, then creates a one-node session asking for CUDA and reads ``get_providers()``.
    """
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if _CUDA not in ort.get_available_providers():
        return False, _why_no_cuda()
    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
            ort.preload_dlls()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "probe", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    try:
        with _quiet_ort():
            s = ort.InferenceSession(
                m.SerializeToString(), providers=[(_CUDA, {"device_id": str(device_id)}), _CPU]
            )
            s.run(None, {"x": np.ones(1, np.float32)})
    except Exception as e:  # noqa: BLE001 - any failure means CUDA does not run
        return False, f"creating a CUDA session failed: {str(e).splitlines()[0]}"
    if s.get_providers()[0] != _CUDA:
        return False, _why_no_cuda()
    return True, ""


def resolve_provider(provider: str = "auto", device_id: int = 0, *, warn: bool = True) -> str:
    """``"cuda"`` or ``"cpu"``: what to run on, per the policy in the module docstring."""
    if provider not in PROVIDERS:
        raise OptionError("provider", provider, list(PROVIDERS))
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise InputError("device_id", f"must be an int >= 0; got {device_id!r}")
    if provider == "cpu":
        return "cpu"
    ok, why = cuda_status(device_id)
    if ok:
        return "cuda"
    if provider == "cuda":
        raise ProviderError("provider", f"'cuda' was asked for but CUDA does not run here: {why}")
    if warn:
        warnings.warn(f"provider='auto' runs on CPU: {why}", ProviderFallbackWarning, stacklevel=3)
    return "cpu"


def session_provider(session) -> str:
    """``"cuda"`` or ``"cpu"``: the first provider of a created session."""
    return "cuda" if session.get_providers()[0] == _CUDA else "cpu"


def make_session(
    model: object,
    provider: str = "auto",
    *,
    device_id: int = 0,
    use_tf32: bool = False,
    cuda_graph: bool = False,
    threads: int | None = None,
    warn: bool = True,
):
    """An ``onnxruntime.InferenceSession`` on the provider that truly runs.

    Args:
        model: serialised bytes, an ``onnx.ModelProto`` or a file path
        provider: ``auto`` | ``cuda`` | ``cpu`` (module docstring); ``cuda`` raises
            :class:`ProviderError` when CUDA is not what runs the session
        device_id: CUDA device ordinal
        use_tf32: allow TF32 matmuls on CUDA (faster, ~1e-3 relative error)
        cuda_graph: capture and replay a CUDA graph (fixed shapes; IO binding; no Loop)
        threads: intra-op threads (None: onnxruntime's default)
    """
    import onnx
    import onnxruntime as ort

    choice = resolve_provider(provider, device_id, warn=warn)
    if cuda_graph and choice != "cuda":
        raise InputError("cuda_graph", f"CUDA graphs need the CUDA provider; running on {choice}")
    if hasattr(model, "SerializeToString") and isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, os.PathLike):
        model = os.fspath(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = int(threads)
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
        why = _why_no_cuda()
        if provider == "cuda":
            raise ProviderError(
                "provider", f"'cuda' was asked for but the session runs on CPU: {why}"
            )
        if warn:
            warnings.warn(
                f"provider='auto' runs on CPU: {why}", ProviderFallbackWarning, stacklevel=2
            )
    return sess
