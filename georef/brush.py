"""Label Studio brush RLE <-> boolean masks.

Label Studio stores a brush region as an RLE of an RGBA image of the displayed
size; the mask is the alpha channel. Encoding and decoding use
``label_studio_sdk.converter.brush`` so the bytes are exactly Label Studio's.
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
    values = np.where(array != 0, 255, 0).astype(np.uint8)
    encoded = ls_brush.mask2rle(values)  # type: ignore[no-untyped-call]
    return [int(v) for v in encoded]
