"""k-diffusion's ``sampling`` module for the cross-check tier, without its package.

``k-diffusion==0.1.1.post1`` is installed with ``--no-deps`` (its dependencies pull
torchvision, wandb, clean-fid, CLIP, scikit-image).  Its ``__init__`` imports all of them,
so ``from k_diffusion import sampling`` fails; ``sampling.py`` itself needs only torch,
scipy, torchdiffeq, torchsde, tqdm and ``k_diffusion.utils``, whose one top-level import
that is not installed, ``torchvision.transforms.functional``, is used only by image helpers
that sampling never calls.  :func:`load_sampling` therefore registers the package without
running its ``__init__``, stands in an empty ``torchvision.transforms.functional`` if (and
only if) torchvision is absent, and imports k-diffusion's real ``utils`` and ``sampling``.

Use:  ``from tests._kdiffusion import load_sampling; K = load_sampling()`` (skips the test
when k-diffusion or torch is not installed).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest


def load_sampling() -> types.ModuleType:
    """``k_diffusion.sampling`` (the real module), or skip when k-diffusion is absent."""
    pytest.importorskip("torch")
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (make test installs it)")
    if importlib.util.find_spec("torchvision") is None:
        tv = types.ModuleType("torchvision")
        tv.__path__ = []
        tr = types.ModuleType("torchvision.transforms")
        tr.__path__ = []
        tf = types.ModuleType("torchvision.transforms.functional")
        tv.transforms, tr.functional = tr, tf
        sys.modules["torchvision"] = tv
        sys.modules["torchvision.transforms"] = tr
        sys.modules["torchvision.transforms.functional"] = tf
    if "k_diffusion" not in sys.modules:
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        sys.modules["k_diffusion"] = pkg
    return importlib.import_module("k_diffusion.sampling")
