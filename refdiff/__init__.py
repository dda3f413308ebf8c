"""refdiff: a float64 NumPy specification of denoising diffusion (DDPM / DDIM).

Imports numpy and scipy only.  The modules, one math object each (docs/math.md):

- :mod:`refdiff.schedule`          β, ᾱ, SNR, σ; named schedules; zero-terminal SNR; respace
- :mod:`refdiff.respacing`         which timesteps a sampler visits (leading / trailing / …)
- :mod:`refdiff.forward`           q(x_t|x_{t−1}), q(x_t|x_0), q(x_t|x_s)
- :mod:`refdiff.posterior`         q(x_{t−1}|x_t, x_0)
- :mod:`refdiff.parameterization`  ε / x̂_0 / v / score conversions
- :mod:`refdiff.reverse`           one DDPM or DDIM step
- :mod:`refdiff.affine`            the same step as an affine map (what the loops run)
- :mod:`refdiff.sampling`          the sampling loops
- :mod:`refdiff.sigma`             the σ (VE) view, the denoiser D(x; σ), conversions, σ schedules
- :mod:`refdiff.flow`              flow matching: straight path, velocity, shifts
- :mod:`refdiff.solvers`           σ-view ODE/SDE samplers (Euler … UniPC) and flow Euler
- :mod:`refdiff.losses`            training targets, MSE, VLB, bits/dim
- :mod:`refdiff.errors`            the typed errors
"""

from . import (
    affine,
    errors,
    flow,
    forward,
    losses,
    parameterization,
    posterior,
    respacing,
    reverse,
    sampling,
    schedule,
    sigma,
    solvers,
)
from .errors import RefdiffError
from .schedule import Schedule, make_schedule, respace

__version__ = "0.1.0"

__all__ = [
    "affine",
    "errors",
    "flow",
    "forward",
    "losses",
    "parameterization",
    "posterior",
    "respacing",
    "reverse",
    "sampling",
    "schedule",
    "sigma",
    "solvers",
    "RefdiffError",
    "Schedule",
    "make_schedule",
    "respace",
    "__version__",
]
