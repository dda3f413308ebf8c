"""Part 2: the onnxruntime samplers against the bare denoiser and the diffusers-style loop.

(Filled in once :mod:`refdiff.export` provides its runtime; until then the section says why
it was skipped.)
"""

from __future__ import annotations


def run(*, quick: bool, provider: str = "cpu", peers: bool = True, log=print) -> dict:
    return {"rows": [], "notes": ["onnxruntime samplers not benchmarked yet"], "targets": [], "provider": provider}


def scaling_rows(grid, *, quick: bool, provider: str = "cpu", log=print):
    return [], ["onnxruntime scaling not benchmarked yet"]
