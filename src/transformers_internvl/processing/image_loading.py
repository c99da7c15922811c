"""Loading images (and video bytes) from paths, URLs, `data:` URLs, base64 strings and bytes, with one rule for all;
any image input (those sources, PIL images, uint8 arrays / tensors) to an RGB PIL image (`to_rgb_image`), and the
grouping of the `images` argument into samples (`group_images`).

The rule, for every source: the encoded file is decoded by Pillow exactly as `Image.open(source)` reads it, and **no
EXIF orientation is applied** (no `ImageOps.exif_transpose`). This is what the original does for paths
(`Image.open(image_file).convert('RGB')`, `load_image` in the InternVL 2.5 README / `internvl_chat` code), so a file gives
the same pixels whether it is passed as a path, a URL, bytes, a base64 string or a `data:` URL. (transformers'
`load_image` transposes by EXIF; this processor does not, to match the original.)

URLs are fetched by `url_fetching.fetch_url` in bounded time: a `timeout` (default `DEFAULT_URL_TIMEOUT`, 10 s)
bounds the response head and any stall of the body (its module docstring gives the rule). A status >= 400 or an
HTML/text body raises a `ValueError` that names the URL and the status; a silent or trickling server raises
`TimeoutError`; a connection failure raises `ConnectionError`.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import threading
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

from .local_files import check_regular_file
from .url_fetching import DEFAULT_URL_TIMEOUT, check_timeout, fetch_url, shown_url

__all__ = [
    "DEFAULT_URL_TIMEOUT",
    "MAX_IMAGES_PER_SAMPLE",
    "check_timeout",
    "decode_image_bytes",
    "fetch_url",
    "group_images",
    "load_image_source",
    "load_pil_image",
    "to_rgb_image",
]

# Most images in one sample (one text). Every image is at least one 256-token tile, so 1024 images are 262k tokens
# (8 times the 32k context) and 2.5 GB of float32 pixels: the bound of a video's frames (`MAX_NUM_SEGMENTS`).
MAX_IMAGES_PER_SAMPLE = 1024
_BASE64_RE = re.compile(r"^[A-Za-z0-9+/=_\-\s]+$")
# Lock striping for decoding lazily opened PIL images that several threads may share (PIL images are unhashable).
_LOAD_LOCKS = tuple(threading.Lock() for _ in range(64))


def decode_image_bytes(data: bytes | IO[bytes], name: str, shown: str) -> Image.Image:
    """Decode an encoded image fully (no EXIF transpose); undecodable data raises `ValueError` naming `shown`."""
    stream = io.BytesIO(bytes(data)) if isinstance(data, bytes | bytearray | memoryview) else data
    try:
        image = Image.open(stream)
        image.load()
    except Image.DecompressionBombError as error:
        # Pillow's pixel limit (`PIL.Image.MAX_IMAGE_PIXELS`) is respected, never disabled here; the message names the
        # argument and the source, and the type stays Pillow's.
        raise Image.DecompressionBombError(f"`{name}`: {shown}: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:  # UnidentifiedImageError is an OSError
        raise ValueError(f"`{name}`: could not decode an image from {shown}: {error}") from error
    return image


def _decode_base64(text: str, name: str, shown: str) -> bytes:
    cleaned = "".join(text.split())
    try:
        if "-" in cleaned or "_" in cleaned:
            return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"`{name}`: {shown} is not valid base64: {error}") from error


def load_image_source(source: object, name: str = "images", timeout: float | None = None) -> Image.Image:
    """Open and fully decode an image from a path, `http(s)` URL, `data:` URL, base64 string, bytes or binary file.

    Strings are read as: `http://` / `https://` -> URL; `data:[...][;base64],...` -> data URL; an existing file ->
    path; otherwise, if the text is base64 of an image -> that image; else `FileNotFoundError`. No EXIF orientation is
    applied for any source (the module docstring gives the rule).

    Raises:
        FileNotFoundError: a string that is no existing path, URL, data URL or base64 image.
        ValueError: undecodable data, a bad data URL, an HTTP error status or an HTML page (URL and status named),
            a path that is a directory, FIFO or device (`local_files.check_regular_file`).
        PIL.Image.DecompressionBombError: more pixels than Pillow's limit (`PIL.Image.MAX_IMAGE_PIXELS`).
        TimeoutError / ConnectionError: see `fetch_url`.
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str):
        stripped = source.strip()
        lowered = stripped[:16].lower()
        if lowered.startswith(("http://", "https://")):
            with fetch_url(stripped, name, timeout) as body:
                return decode_image_bytes(body.read(), name, repr(shown_url(stripped)))
        if lowered.startswith("data:"):
            header, comma, payload = stripped.partition(",")
            if not comma:
                raise ValueError(f"`{name}`: a `data:` URL needs a ',' before its data, got {shown_url(stripped)!r}.")
            if header.lower().endswith(";base64"):
                data = _decode_base64(payload, name, "the `data:` URL")
            else:
                from urllib.parse import unquote_to_bytes

                data = unquote_to_bytes(payload)
            return decode_image_bytes(data, name, "the `data:` URL")
        if os.path.exists(source):
            check_regular_file(source, name, "an image")
            with open(source, "rb") as handle:  # Pillow reads what it needs (a huge non-image fails at its header)
                return decode_image_bytes(handle, name, repr(source))
        if len(stripped) >= 16 and _BASE64_RE.match(stripped):
            try:
                data = _decode_base64(stripped, name, "the string")
            except ValueError:
                data = b""
            if data:
                try:
                    return decode_image_bytes(data, name, "the base64 string")
                except ValueError:
                    pass
        raise FileNotFoundError(
            f"`{name}`: {shown_url(source)!r} is no existing file, `http(s)` URL, `data:` URL or base64-encoded image."
        )
    if isinstance(source, bytes | bytearray | memoryview):
        return decode_image_bytes(bytes(source), name, f"{type(source).__name__} of length {len(source)}")
    if hasattr(source, "read"):
        if hasattr(source, "seek"):
            source.seek(0)
        return decode_image_bytes(source, name, type(source).__name__)
    raise TypeError(f"`{name}`: cannot load an image from {type(source).__name__}.")


def load_pil_image(image: Image.Image, name: str = "images") -> Image.Image:
    """Decode a (possibly lazily opened) PIL image once, safely when several threads share it.

    `Image.open` reads pixels only at first use, from a shared file handle; two threads decoding the same image at once
    corrupt each other's pixels. The decode runs under a lock chosen by the image's identity, so exactly one thread
    decodes and the others then see the finished pixels.
    """
    with _LOAD_LOCKS[id(image) % len(_LOAD_LOCKS)]:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise ValueError(f"`{name}`: the PIL image could not be decoded: {error}") from error
    return image


# Any image input -> an RGB PIL image (what the original's `Image.open(f).convert('RGB')` makes)


def _is_single_image(item: object) -> bool:
    if isinstance(item, Image.Image | str | os.PathLike | bytes | bytearray):
        return True
    if isinstance(item, np.ndarray | torch.Tensor):
        return item.ndim in (2, 3)
    return hasattr(item, "read")


def _array_to_pil(array: np.ndarray, name: str, channels_first: bool | None) -> Image.Image:
    if array.dtype != np.uint8:
        raise TypeError(
            f"`{name}` must hold uint8 pixels (0-255), got dtype {array.dtype}. Convert it, e.g. "
            "`(x * 255).round().clip(0, 255).astype(np.uint8)` for values in [0, 1]."
        )
    if array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(array), mode="L")
    if array.ndim != 3:
        raise ValueError(f"`{name}` must be (H, W), (H, W, C) or (C, H, W), got shape {tuple(array.shape)}.")
    if channels_first is None:
        # numpy / `Image.fromarray` convention: channels last unless only the first axis looks like one. (transformers'
        # `infer_channel_dimension_format` takes the first axis when both could be channels, e.g. (3, W, 3).)
        if array.shape[-1] in (1, 3, 4):
            channels_first = False
        elif array.shape[0] in (1, 3, 4):
            channels_first = True
        else:
            raise ValueError(
                f"`{name}`: cannot tell the channel axis of an array of shape {tuple(array.shape)}; expected 1, 3 or "
                "4 channels first or last (pass `input_data_format`)."
            )
    if channels_first:
        array = np.moveaxis(array, 0, -1)
    channels = array.shape[-1]
    array = np.ascontiguousarray(array)
    if channels == 1:
        return Image.fromarray(array[..., 0], mode="L")
    if channels == 3:
        return Image.fromarray(array, mode="RGB")
    if channels == 4:
        return Image.fromarray(array, mode="RGBA")
    raise ValueError(f"`{name}` must have 1, 3 or 4 channels, got shape {tuple(array.shape)}.")


def _channels_first_flag(input_data_format: object) -> bool | None:
    if input_data_format is None:
        return None
    value = getattr(input_data_format, "value", input_data_format)
    if value in ("channels_first", "first"):
        return True
    if value in ("channels_last", "last"):
        return False
    raise ValueError(
        f"`input_data_format` must be 'channels_first', 'channels_last' or None, got {input_data_format!r}."
    )


def to_rgb_image(
    image: object, name: str = "images", input_data_format: object = None, timeout: float | None = None
) -> Image.Image:
    """Any supported image input -> an RGB PIL image, as the original's `.convert("RGB")` makes it.

    Accepted: PIL images (any mode: RGBA loses its alpha without compositing, L is replicated), numpy arrays
    `(H, W)`, `(H, W, C)` / `(C, H, W)` uint8, torch tensors likewise (`(C, H, W)` preferred when ambiguous), local
    paths, `http(s)` URLs (fetched with `timeout` seconds, default 10), `data:` URLs, base64 strings, encoded bytes and
    binary file objects. No EXIF orientation is applied for any source (as the original for paths; see
    `image_loading`). A lazily opened PIL image shared by threads is decoded once, under a lock. An image of zero
    width or height raises `ValueError` naming `name` and its size.
    """
    channels_first = _channels_first_flag(input_data_format)
    if isinstance(image, Image.Image):
        pil = load_pil_image(image, name)  # decode lazily opened files now, once (threads read the pixels later)
    elif isinstance(image, np.ndarray):
        pil = _array_to_pil(image, name, channels_first)
    elif isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            # Checked here: numpy cannot even hold some dtypes (bfloat16), and float pixels have no agreed range.
            raise TypeError(
                f"`{name}` must hold uint8 pixels (0-255), got a tensor of dtype {image.dtype}. Convert it, e.g. "
                "`(x * 255).round().clamp(0, 255).to(torch.uint8)` for values in [0, 1]."
            )
        array = image.detach().cpu().numpy()
        if channels_first is None and array.ndim == 3 and array.shape[0] in (1, 3, 4):
            channels_first = True  # torch convention
        pil = _array_to_pil(array, name, channels_first)
    elif isinstance(image, str | os.PathLike | bytes | bytearray) or hasattr(image, "read"):
        pil = load_image_source(image, name, timeout)
    else:
        raise TypeError(
            f"`{name}` must be a PIL image, a numpy array, a torch tensor, a path, a URL or bytes, "
            f"got {type(image).__name__}."
        )
    if pil.width < 1 or pil.height < 1:  # the original divides by the height (`dynamic_preprocess`)
        raise ValueError(f"`{name}` is {pil.width} x {pil.height} (width x height): an image with no pixels.")
    return _convert_to_rgb(pil, name)


def _convert_to_rgb(image: Image.Image, name: str) -> Image.Image:
    """`image.convert("RGB")` as the original, with clear errors.

    Modes Pillow converts directly (P, PA, L, LA, 1, I, I;16, F, RGBA, RGBa, CMYK, YCbCr, ...) are converted exactly
    as the original's `.convert('RGB')` does. `La` (gray with premultiplied alpha), which Pillow cannot convert to RGB
    (the original raises), goes through `LA` (un-premultiplied), as Pillow's own `RGBa -> RGB` does. A float (`F`)
    image with NaN or infinite pixels raises `ValueError` (Pillow would silently turn them into 0 or 255).
    """
    if image.mode == "RGB":
        return image
    if image.mode == "F":
        pixels = np.asarray(image)
        if not np.isfinite(pixels).all():
            raise ValueError(f"`{name}`: the float (mode 'F') image has NaN or infinite pixels.")
    try:
        if image.mode == "La":
            image = image.convert("LA")
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(f"`{name}`: cannot convert a PIL image of mode {image.mode!r} to RGB: {error}") from error


def group_images(images: object, name: str = "images") -> list[list[Any]]:
    """Normalise the `images` argument to a batch of samples, each a list of images sharing one tile budget.

    A single image -> one sample with one image; a flat list -> ONE sample; a list of lists -> a batch of samples.
    A 4-D array / tensor `(N, H, W, C)` counts as a flat list. A sample of more than `MAX_IMAGES_PER_SAMPLE` (1024)
    images raises `ValueError` before any is decoded.
    """
    samples = _group_images(images, name)
    for index, sample in enumerate(samples):
        if len(sample) > MAX_IMAGES_PER_SAMPLE:
            where = f"`{name}[{index}]`" if len(samples) > 1 else f"`{name}`"
            raise ValueError(
                f"{where} holds {len(sample)} images for one sample, more than MAX_IMAGES_PER_SAMPLE "
                f"({MAX_IMAGES_PER_SAMPLE}; each image is at least one 256-token tile)."
            )
    return samples


def _group_images(images: object, name: str) -> list[list[Any]]:
    if images is None:
        raise ValueError(f"`{name}` must be given, got None.")
    if _is_single_image(images):
        return [[images]]
    if isinstance(images, np.ndarray | torch.Tensor):
        if images.ndim == 4:
            return [list(images)]
        raise ValueError(f"`{name}`: an array of images must have 2, 3 or 4 dimensions, got {tuple(images.shape)}.")
    if not isinstance(images, list | tuple):
        raise TypeError(
            f"`{name}` must be an image, a list of images (one sample) or a list of lists (a batch of samples), "
            f"got {type(images).__name__}."
        )
    if len(images) == 0:
        raise ValueError(f"`{name}` is an empty list; expected at least one image.")
    nested = [isinstance(item, list | tuple) for item in images]
    if all(nested):
        samples = [list(sample) for sample in images]
        for index, sample in enumerate(samples):
            if len(sample) == 0:
                raise ValueError(f"`{name}[{index}]` is an empty list; every sample needs at least one image.")
            for inner, item in enumerate(sample):
                if not _is_single_image(item):
                    raise TypeError(
                        f"`{name}[{index}][{inner}]` must be an image, got {type(item).__name__}; nesting deeper "
                        "than a list of lists is not supported."
                    )
        return samples
    if any(nested):
        raise ValueError(
            f"`{name}` mixes images and lists of images; pass either a flat list (one sample) or a list of lists "
            "(a batch of samples)."
        )
    for index, item in enumerate(images):
        if not _is_single_image(item):
            raise TypeError(f"`{name}[{index}]` must be an image, got {type(item).__name__}.")
    return [list(images)]
