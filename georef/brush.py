"""Label Studio brush RLE <-> boolean masks.

Label Studio stores a brush region as an RLE of an RGBA image of the displayed
size; the mask is the alpha channel. Decoding uses ``label_studio_sdk.converter.brush``;
encoding is a vectorised re-implementation of its ``mask2rle`` (which builds a
Python string bit by bit: ~100 ms for a 512 x 512 mask, too slow for a click),
tested to give exactly the same bytes.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from label_studio_sdk.converter import brush as ls_brush

from georef.errors import InvalidGeometryError

BoolMask = npt.NDArray[np.bool_]


def rle_to_mask(rle: list[int], width: int, height: int) -> BoolMask:
    """Decode a Label Studio brush RLE into a ``(height, width)`` boolean mask.

    Raises:
        InvalidGeometryError: if the RLE does not hold ``width * height`` RGBA pixels.
    """
    try:
        flat = ls_brush.decode_rle(rle)
    except (ValueError, IndexError) as exc:
        raise InvalidGeometryError(f"brush RLE could not be decoded: {exc}") from exc
    if flat.size != width * height * 4:
        raise InvalidGeometryError(
            f"brush RLE holds {flat.size // 4} pixels, expected {width}x{height}={width * height}"
        )
    alpha = flat.reshape(height, width, 4)[:, :, 3]
    return np.asarray(alpha > 0)


def mask_to_rle(mask: npt.ArrayLike) -> list[int]:
    """Encode a 2-D mask (non-zero = inside) as a Label Studio brush RLE.

    Raises:
        InvalidGeometryError: if ``mask`` is not two-dimensional.
    """
    array = np.asarray(mask)
    if array.ndim != 2:
        raise InvalidGeometryError(f"a brush mask must be 2-D, got shape {array.shape}")
    return _encode_rgba_runs(np.asarray(array != 0).ravel())


#: Header of every brush RLE: word size 8 (stored as 7 in 5 bits), run-length field sizes
#: 3, 4, 8 and 16 bits (stored minus one in 4 bits each).
_HEADER_BITS = "00111" + "0010" + "0011" + "0111" + "1111"
_LONGEST = 2**16


def _encode_rgba_runs(inside: npt.NDArray[np.bool_]) -> list[int]:
    """Label Studio's RLE of the RGBA image whose 4 channels are 255 inside and 0 outside."""
    values = np.where(inside, 255, 0).astype(np.int64)
    change = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate(([0], change))
    lengths = np.diff(np.concatenate((starts, [values.size]))) * 4  # each pixel is 4 equal bytes
    run_values = values[starts]
    # Runs longer than 2**16 are written as chunks of 2**16 followed by the remainder.
    chunks = np.maximum((lengths - 1) // _LONGEST, 0)
    lengths = np.repeat(lengths, chunks + 1)
    run_values = np.repeat(run_values, chunks + 1)
    last = np.cumsum(chunks + 1) - 1
    is_full_chunk = np.ones(lengths.size, dtype=bool)
    is_full_chunk[last] = False
    remainder = lengths - (chunks.repeat(chunks + 1)) * _LONGEST
    lengths = np.where(is_full_chunk, _LONGEST, remainder)
    codes, widths = _codes(lengths, run_values)
    header = f"{values.size * 4:032b}" + _HEADER_BITS
    bits = np.concatenate((np.frombuffer(header.encode(), dtype=np.uint8) - ord("0"), _bits(codes, widths)))
    padding = 8 - bits.size % 8  # Label Studio always pads, with a whole zero byte when already aligned
    bits = np.concatenate((bits, np.zeros(padding, dtype=np.uint8)))
    return list(np.packbits(bits).tolist())


def _codes(
    lengths: npt.NDArray[np.int64], values: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each run as ``(code, bit width)``: flag, size index, length - 1, 8-bit value."""
    size_index = np.select([lengths <= 8, lengths <= 16, lengths <= 256], [0, 1, 2], 3)
    field_bits = np.array([3, 4, 8, 16])[size_index]
    flag = (lengths > 1).astype(np.int64)  # a single byte is "0 00 000 value"
    count = np.where(lengths > 1, lengths - 1, 0)
    code = (((flag << 2 | size_index) << field_bits | count) << 8) | values
    return code, 1 + 2 + field_bits + 8


def _bits(codes: npt.NDArray[np.int64], widths: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """Concatenate each code's ``width`` low bits, most significant first."""
    widest = int(widths.max()) if widths.size else 0
    shifts = widths[:, None] - 1 - np.arange(widest)[None, :]
    keep = shifts >= 0
    bits: npt.NDArray[np.int64] = (codes[:, None] >> np.where(keep, shifts, 0)) & 1
    return bits[keep].astype(np.uint8)
