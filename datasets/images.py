"""Image files and bytes to NHWC uint8 arrays and back, with Pillow."""
import io

import numpy as np
from PIL import Image

from datasets import DataError


def channels_of(mode):
    return 1 if mode in ("1", "L", "I", "I;16", "F") else 3


def header(data, name):
    """(channels, (height, width)) from the header of `data` (a path or encoded bytes)."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            return channels_of(image.mode), (image.height, image.width)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the image {name}: {e}. Replace or remove it.") from e


def decode(data, channels, size, name):
    """`data` (a path or encoded bytes) as an (height, width, channels) uint8 array; `size`
    (height, width) resizes, None keeps the image's own."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]))
            array = np.asarray(image)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the image {name}: {e}. Replace or remove it.") from e
    return array[..., None] if channels == 1 else array


def encode_png(array):
    """An (height, width, channels) uint8 array as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()
