"""refdiff.export: the ONNX deploy half of refdiff (docs/deploy.md).

Build graphs (IR 10 / opset 21, checked, self-describing metadata)::

    mixture_denoiser_model(mixture, schedule, prediction_type=, dtype=)   exact GM denoiser
    mlp_denoiser_model(mlp, prediction_type=, dtype=, max_time=)           refdiff.mlp network
    step_tables(schedule, sampler, prediction_type=, **options)            host-side coefficients
    step_model(denoiser, tables, noise=)         the update step (any denoiser signature)
    fused_step_model(denoiser, tables, noise=)   denoiser + update in one graph
    sampler_model(denoiser, tables, noise=)      the whole sampler: a Loop over Scan chunks

Run them with onnxruntime::

    open_denoiser(path_or_model, prediction_type=, timestep_convention=)   check + recognise
    OnnxDenoiser(model)                     NumPy callable f(x, t) for refdiff.sampling
    OrtSampler(model, schedule, sampler=, mode="steps"|"fused"|"graph", provider=)
    sample(model, schedule, shape, ...)     one-shot
    make_session(model, provider="auto"|"cuda"|"cpu")

Imports onnx and onnxruntime (the ``deploy`` extra); ``import refdiff`` never does.
"""

from ._graph import IR_VERSION, OPSET
from .cli import BUILTIN_MIXTURES, build_schedule, builtin_mixture
from .denoisers import DTYPES, mixture_denoiser_model, mlp_denoiser_model
from .metadata import read_metadata, schedule_from_json, schedule_to_json
from .model_io import (
    CorruptModelError,
    DenoiserModel,
    DenoiserSignature,
    ExternalDataError,
    SignatureError,
    UnsupportedVersionError,
    inspect_denoiser,
    load_model,
    open_denoiser,
    runtime_limits,
    save_model,
)
from .providers import (
    PROVIDERS,
    ProviderError,
    ProviderFallbackWarning,
    cuda_status,
    make_session,
    resolve_provider,
    session_provider,
)
from .runtime import MODES, OnnxDenoiser, OrtSampler, sample
from .sampler_graph import sampler_model
from .steps import NOISE_SOURCES, fused_step_model, step_model
from .tables import SAMPLERS, StepTables, step_tables

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
