"""refdiff.export: the ONNX deploy half of refdiff (docs/deploy.md).

Build graphs (IR 10 / opset 21, checked, self-describing metadata)::

    mixture_denoiser_model(mixture, schedule, prediction_type=, dtype=)   exact GM denoiser
    mlp_denoiser_model(mlp, prediction_type=, dtype=, max_time=)           refdiff.mlp network
    step_tables(schedule, sampler, prediction_type=, **options)            host-side coefficients
    step_model(denoiser, tables, noise=)         the update step (any denoiser signature)
    fused_step_model(denoiser, tables, noise=)   denoiser + update in one graph
    sampler_model(denoiser, tables, noise=)      the whole sampler: a Scan over the steps

Run them with onnxruntime::

    open_denoiser(path_or_model, prediction_type=, timestep_convention=)   check + recognise
    OnnxDenoiser(model)                     NumPy callable f(x, t) for refdiff.sampling
    OrtSampler(model, schedule, sampler=, mode="steps"|"fused"|"graph", provider=)
    sample(model, schedule, shape, ...)     one-shot
    make_session(model, provider="auto"|"cuda"|"cpu")

Needs onnx and onnxruntime (the ``deploy`` extra); ``import refdiff`` never imports them.
Importing this package only checks that both are installed (an :class:`ImportError` naming
the extra otherwise); the names below are imported on first use, so ``refdiff sample --help``
or running an exported sampler file never pays for ``import onnx`` (about half a second,
most of it ml_dtypes), which only building or checking a graph needs.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

INSTALL_HINT = 'pip install "refdiff[deploy]" (or "refdiff[deploy-gpu]" for CUDA)'


def _missing(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is None
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


def _require_extra() -> None:
    missing = [m for m in ("onnx", "onnxruntime") if _missing(m)]
    if missing:
        raise ImportError(
            f"refdiff.export needs {' and '.join(missing)}, which is not installed: {INSTALL_HINT}",
            name=missing[0],
        )


_require_extra()

# public name -> the submodule that defines it (imported on first access)
_LAZY = {
    "IR_VERSION": "_graph",
    "OPSET": "_graph",
    "BUILTIN_MIXTURES": "cli",
    "build_schedule": "cli",
    "builtin_mixture": "cli",
    "DTYPES": "denoisers",
    "mixture_denoiser_model": "denoisers",
    "mlp_denoiser_model": "denoisers",
    "read_metadata": "metadata",
    "schedule_from_json": "metadata",
    "schedule_to_json": "metadata",
    "CorruptModelError": "model_io",
    "DenoiserModel": "model_io",
    "DenoiserSignature": "model_io",
    "ExternalDataError": "model_io",
    "SignatureError": "model_io",
    "UnsupportedVersionError": "model_io",
    "inspect_denoiser": "model_io",
    "load_model": "model_io",
    "open_denoiser": "model_io",
    "runtime_limits": "model_io",
    "save_model": "model_io",
    "PROVIDERS": "providers",
    "ProviderError": "providers",
    "ProviderFallbackWarning": "providers",
    "cuda_status": "providers",
    "make_session": "providers",
    "resolve_provider": "providers",
    "session_provider": "providers",
    "MODES": "runtime",
    "OnnxDenoiser": "runtime",
    "OrtSampler": "runtime",
    "sample": "runtime",
    "sampler_model": "sampler_graph",
    "NOISE_SOURCES": "steps",
    "fused_step_model": "steps",
    "step_model": "steps",
    "SAMPLERS": "tables",
    "StepTables": "tables",
    "step_tables": "tables",
}

__all__ = [
    "IR_VERSION",
    "OPSET",
    "DTYPES",
    "MODES",
    "NOISE_SOURCES",
    "PROVIDERS",
    "SAMPLERS",
    "mixture_denoiser_model",
    "mlp_denoiser_model",
    "step_tables",
    "StepTables",
    "step_model",
    "fused_step_model",
    "sampler_model",
    "load_model",
    "save_model",
    "open_denoiser",
    "inspect_denoiser",
    "DenoiserModel",
    "DenoiserSignature",
    "runtime_limits",
    "read_metadata",
    "schedule_to_json",
    "schedule_from_json",
    "make_session",
    "resolve_provider",
    "session_provider",
    "cuda_status",
    "OnnxDenoiser",
    "OrtSampler",
    "sample",
    "builtin_mixture",
    "build_schedule",
    "BUILTIN_MIXTURES",
    "CorruptModelError",
    "UnsupportedVersionError",
    "ExternalDataError",
    "SignatureError",
    "ProviderError",
    "ProviderFallbackWarning",
]


def __getattr__(name: str) -> object:
    """Import the submodule that defines ``name`` on first use (PEP 562)."""
    mod = _LAZY.get(name)
    if mod is None:
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
