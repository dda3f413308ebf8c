"""A PNG grid of image-shaped samples, written with zlib and struct (no imaging dependency).

Samples (B, C, H, W) with C ∈ {1, 3} (channels first, as diffusers' UNets) or (B, H, W)
are mapped from [lo, hi] (default [−1, 1], the data range of image diffusion models) to
0..255, clipped, and tiled row by row into a grid of ``ncol`` columns with a ``pad``-pixel
gap; written atomically (refdiff._io) as an 8-bit greyscale or RGB PNG.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from refdiff._io import write_bytes
from refdiff.errors import InputError, ShapeError

__all__ = ["is_image_batch", "image_grid", "png_bytes", "write_png_grid"]


def is_image_batch(shape: tuple[int, ...]) -> bool:
    """Whether samples of ``shape`` can be shown as images: (B, C∈{1,3}, H, W) or (B, H, W),
    with H, W ≥ 2."""
    if len(shape) == 4:
        return shape[1] in (1, 3) and min(shape[2:]) >= 2
    return len(shape) == 3 and min(shape[1:]) >= 2


def image_grid(
    samples, *, ncol: int | None = None, lo: float = -1.0, hi: float = 1.0, pad: int = 2
) -> np.ndarray:
    """uint8 grid (rows, cols, C) of the batch (module docstring); ``ncol`` default ⌈√B⌉."""
    a = np.asarray(samples, dtype=np.float64)
    if not is_image_batch(a.shape):
        raise ShapeError("samples", f"shape {a.shape} is not (B, 1|3, H, W) or (B, H, W)")
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise InputError("hi", f"the range [{lo}, {hi}] is empty")
    if a.ndim == 3:
        a = a[:, None]
    B, C, H, W = a.shape
    ncol = int(math.ceil(math.sqrt(B))) if ncol is None else int(ncol)
    if ncol < 1:
        raise InputError("ncol", f"must be >= 1; got {ncol}")
    nrow = -(-B // ncol)
    u8 = np.clip(np.rint((np.nan_to_num(a) - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)
    grid = np.zeros((nrow * H + (nrow - 1) * pad, ncol * W + (ncol - 1) * pad, C), np.uint8)
    for i in range(B):
        r, c = divmod(i, ncol)
        y, x = r * (H + pad), c * (W + pad)
        grid[y : y + H, x : x + W] = np.moveaxis(u8[i], 0, -1)
    return grid


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png_bytes(img: np.ndarray) -> bytes:
    """An 8-bit PNG of a uint8 image (H, W, 1|3) (filter 0 on every row)."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    H, W, C = img.shape
    color = {1: 0, 3: 2}[C]  # greyscale, truecolour
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(H))
    header = struct.pack(">IIBBBBB", W, H, 8, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def write_png_grid(
    samples, path: str | os.PathLike, *, ncol: int | None = None, lo: float = -1.0, hi: float = 1.0
) -> Path:
    """Write :func:`image_grid` of ``samples`` to ``path`` as a PNG (atomically); the path."""
    write_bytes(path, png_bytes(image_grid(samples, ncol=ncol, lo=lo, hi=hi)))
    return Path(path)
