"""The public API is a contract: every name exported today stays importable, every command's
``--help`` runs.

The lists below are the ``__all__`` of each public module as they stood before the
conformance code moved into :mod:`refdiff.conformance`; a module may export more, never less.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PUBLIC_API: dict[str, tuple[str, ...]] = {
    "refdiff": (
        "affine", "errors", "forward", "losses", "parameterization", "posterior", "respacing",
        "reverse", "sampling", "schedule", "RefdiffError", "Schedule", "make_schedule",
        "respace", "__version__",
    ),
    "refdiff.testing": (
        "UNIT_ROUNDOFF", "Tolerance", "Setting", "Case", "Check", "OPS", "make_inputs",
        "expected", "magnitude", "tolerance_array", "compare", "compare_alpha_bar",
        "compare_timesteps", "options_label", "check_alpha_bar", "check_q_sample",
        "check_posterior", "check_ddpm_step", "check_ddim_step", "assert_alpha_bar_close",
        "assert_q_sample_close", "assert_posterior_close", "assert_ddpm_step_close",
        "assert_ddim_step_close", "assert_checks", "assert_sampler_law", "settings",
        "schedules", "timesteps", "states", "ddpm_options", "ddim_options",
    ),
    "refdiff.verify": (
        "ProtocolTarget", "Item", "plan", "run", "Report", "diagnose", "diagnosis_for",
        "explained_by", "load_target", "main",
    ),
    "refdiff.stats": (
        "DEFAULT_FALSE_PASS_RATE", "StatisticalAssertionError", "CheckResult", "LedgerEntry",
        "LEDGER", "record", "reset_ledger", "ledger_total", "ledger_summary",
        "isolated_ledger", "dkw_epsilon", "ks_statistic", "default_directions", "check_cdf",
        "assert_cdf", "min_discrepancy_cdf", "min_num_samples_cdf", "check_two_sample",
        "assert_two_sample", "min_discrepancy_two_sample", "min_num_samples_two_sample",
        "check_mean", "assert_mean", "min_discrepancy_mean", "min_num_samples_mean",
        "check_covariance", "assert_covariance", "min_discrepancy_covariance",
        "min_num_samples_covariance", "check_mvn", "assert_mvn", "min_discrepancy_mvn",
        "min_num_samples_mvn", "check_mixture", "assert_mixture", "min_discrepancy_mixture",
        "min_num_samples_mixture", "check_gaussian", "assert_gaussian",
        "min_discrepancy_gaussian", "min_num_samples_gaussian", "assert_check", "combine",
        "assert_all",
    ),
    "refdiff.exact": (
        "Gaussian", "GaussianMixture", "ReverseKernel", "AffineStep", "as_mixture", "marginal",
        "forward_joint", "posterior_mean_x0", "score", "denoiser", "reverse_coefficients",
        "reverse_kernel", "reverse_sample", "ddpm_affine_steps", "ddim_affine_steps",
        "propagate", "ddpm_law", "ddim_law",
    ),
    "refdiff.vectors": (
        "FORMAT", "SCHEMA_VERSION", "ARRAYS", "array_sha256", "grid", "make_case", "write",
        "read", "check", "main",
    ),
    "refdiff.adapters": (
        "to_numpy", "from_numpy_like", "looks_like_diffusers_scheduler", "DiffusersTarget",
        "DIFFUSERS_SCHEDULES", "DIFFUSERS_CONVENTIONS",
    ),
    "refdiff.export": (
        "IR_VERSION", "OPSET", "DTYPES", "MODES", "NOISE_SOURCES", "PROVIDERS", "SAMPLERS",
        "mixture_denoiser_model", "mlp_denoiser_model", "step_tables", "StepTables",
        "step_model", "fused_step_model", "sampler_model", "load_model", "save_model",
        "open_denoiser", "inspect_denoiser", "DenoiserModel", "DenoiserSignature",
        "runtime_limits", "read_metadata", "schedule_to_json", "schedule_from_json",
        "make_session", "resolve_provider", "session_provider", "cuda_status", "OnnxDenoiser",
        "OrtSampler", "sample", "builtin_mixture", "build_schedule", "BUILTIN_MIXTURES",
        "CorruptModelError", "UnsupportedVersionError", "ExternalDataError", "SignatureError",
        "ProviderError", "ProviderFallbackWarning",
    ),
}  # fmt: skip

# Subcommands of ``refdiff`` (and their own subcommands) that exist today.
COMMANDS = ("demo", "export", "sample", "vectors", "verify", "bench")
SUBCOMMANDS = {"vectors": ("write", "check")}
NEEDS_DEPLOY = {"demo", "export", "sample", "bench", "serve"}


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("module", sorted(PUBLIC_API))
def test_every_public_name_is_still_exported(module: str) -> None:
    if module == "refdiff.export" and not _has("onnx"):
        pytest.skip("refdiff.export needs the deploy extra (onnx)")
    mod = importlib.import_module(module)
    missing = [n for n in PUBLIC_API[module] if not hasattr(mod, n)]
    assert not missing, f"{module} lost public names: {missing}"
    if hasattr(mod, "__all__"):
        dropped = sorted(set(PUBLIC_API[module]) - set(mod.__all__))
        assert not dropped, f"{module}.__all__ dropped {dropped}"


def test_the_command_table_still_has_every_command() -> None:
    from refdiff import cli

    assert set(COMMANDS) <= set(cli.COMMANDS), sorted(set(COMMANDS) - set(cli.COMMANDS))


def _help_argvs() -> list[tuple[str, ...]]:
    from refdiff import cli

    out: list[tuple[str, ...]] = [("--help",)]
    for name in dict.fromkeys((*COMMANDS, *cli.COMMANDS)):
        out.append((name, "--help"))
        out += [(name, sub, "--help") for sub in SUBCOMMANDS.get(name, ())]
    return out


@pytest.mark.parametrize("argv", _help_argvs(), ids=lambda a: " ".join(a))
def test_every_command_help_runs(argv: tuple[str, ...]) -> None:
    if argv[0] in NEEDS_DEPLOY and not (_has("onnx") and _has("onnxruntime")):
        pytest.skip("needs the deploy extra")
    proc = subprocess.run(
        [sys.executable, "-m", "refdiff.cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"refdiff {' '.join(argv)}: exit {proc.returncode}\n{proc.stderr}"
    assert "usage" in proc.stdout.lower(), proc.stdout[:500]
