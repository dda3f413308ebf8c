"""PNG grid of image-shaped samples (refdiff.export.png): decoded back with zlib and struct."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from refdiff.errors import ShapeError

png = pytest.importorskip("refdiff.export.png")


def _decode(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, hdr = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    W, H, depth, color = hdr[:4]
    C = {0: 1, 2: 3}[color]
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(H, 1 + W * C)
    assert depth == 8 and np.all(raw[:, 0] == 0)
    return raw[:, 1:].reshape(H, W, C)


def test_rgb_grid_round_trips_and_maps_the_range(tmp_path):
    x = np.zeros((5, 3, 4, 6))
    x[0, 0] = 1.0  # red image: channel 0 at hi
    x[1] = -1.0  # black
    x[2, 2, 1, 2] = 0.0  # mid grey in blue at one pixel
    x[3] = 7.0  # clipped to 255
    path = png.write_png_grid(x, tmp_path / "g.png", ncol=3)
    img = _decode(path.read_bytes())
    assert img.shape == (2 * 4 + 2, 3 * 6 + 2 * 2, 3)
    assert np.all(img[0:4, 0:6] == [255, 128, 128])
    assert np.all(img[0:4, 8:14] == 0)
    assert img[1, 16 + 2, 2] == 128 and img[0, 16, 2] == 128
    assert np.all(img[6:10, 0:6] == 255)
    assert np.all(img[6:10, 16:22] == 0)  # the empty sixth cell and the gaps stay black
    assert np.all(img[4:6] == 0)


def test_greyscale_and_refusals(tmp_path):
    img = _decode(png.png_bytes(png.image_grid(np.full((1, 3, 2), 1.0))))
    assert img.shape == (3, 2, 1) and np.all(img == 255)
    assert png.is_image_batch((4, 3, 8, 8)) and not png.is_image_batch((4, 2))
    with pytest.raises(ShapeError, match="samples"):
        png.image_grid(np.zeros((4, 2)))
