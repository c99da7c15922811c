"""Loading images (and video bytes) from paths, URLs, `data:` URLs, base64 strings and bytes, with one rule for all.

The rule, for every source: the encoded file is decoded by Pillow exactly as `Image.open(source)` reads it, and **no
EXIF orientation is applied** (no `ImageOps.exif_transpose`). This is what the original does for paths
(`Image.open(image_file).convert('RGB')`, `load_image` in the InternVL 2.5 README / `internvl_chat` code), so a file gives
the same pixels whether it is passed as a path, a URL, bytes, a base64 string or a `data:` URL. (transformers'
`load_image` transposes by EXIF; this processor does not, to match the original.)

URLs are fetched with the standard library with a `timeout` (seconds the server may take to accept the connection and
to send each further piece of data; default `DEFAULT_URL_TIMEOUT`, 10 s). A status >= 400 or an HTML/text body raises
a `ValueError` that names the URL and the status; no answer within the timeout raises `TimeoutError`; a connection
failure raises `ConnectionError`.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import socket
import tempfile
import threading
import urllib.error
import urllib.request
from typing import IO, Any

from PIL import Image

__all__ = [
    "DEFAULT_URL_TIMEOUT",
    "check_timeout",
    "decode_image_bytes",
    "fetch_url",
    "load_image_source",
    "load_pil_image",
]

DEFAULT_URL_TIMEOUT = 10.0
# Largest download accepted for one image or video (bytes).
MAX_DOWNLOAD_BYTES = 2 << 30
_CHUNK = 1 << 20
_USER_AGENT = "transformers-internvl"
_BASE64_RE = re.compile(r"^[A-Za-z0-9+/=_\-\s]+$")
# Lock striping for decoding lazily opened PIL images that several threads may share (PIL images are unhashable).
_LOAD_LOCKS = tuple(threading.Lock() for _ in range(64))


def check_timeout(value: object) -> float:
    """`timeout` as a positive finite number of seconds (`None` -> `DEFAULT_URL_TIMEOUT`)."""
    if value is None:
        return DEFAULT_URL_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`timeout` must be a number of seconds, got {type(value).__name__} ({value!r}).")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"`timeout` must be a positive finite number of seconds, got {value!r}.")
    return float(value)


def _shown(url: str, limit: int = 120) -> str:
    return url if len(url) <= limit else url[:limit] + "..."


def _open_url(url: str, name: str, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) only, checked by the caller
    except urllib.error.HTTPError as error:
        raise ValueError(
            f"`{name}`: fetching {_shown(url)} failed with HTTP status {error.code} ({error.reason})."
        ) from error
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError | socket.timeout):
            raise TimeoutError(f"`{name}`: {_shown(url)} did not answer within {timeout} s (`timeout`).") from error
        raise ConnectionError(f"`{name}`: could not fetch {_shown(url)}: {error.reason}") from error
    except TimeoutError as error:
        raise TimeoutError(f"`{name}`: {_shown(url)} did not answer within {timeout} s (`timeout`).") from error
    except OSError as error:
        raise ConnectionError(f"`{name}`: could not fetch {_shown(url)}: {error}") from error


def fetch_url(url: str, name: str = "images", timeout: float | None = None, spool: bool = False) -> IO[bytes]:
    """GET an `http(s)` URL and return its body as a binary file positioned at 0.

    Args:
        url: `http://` or `https://` URL.
        name: argument name used in error messages.
        timeout: seconds to wait for the connection and for each piece of data (`None`: `DEFAULT_URL_TIMEOUT`).
        spool: keep large bodies on disk (a `SpooledTemporaryFile`, for videos) instead of memory.

    Raises:
        ValueError: HTTP status >= 400, an HTML / text body (an error page, not media), or a body over
            `MAX_DOWNLOAD_BYTES`; the message names the URL and the status.
        TimeoutError: no connection or no data within `timeout` seconds.
        ConnectionError: the host cannot be reached.
    """
    timeout = check_timeout(timeout)
    response = _open_url(url, name, timeout)
    body: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=64 << 20) if spool else io.BytesIO()
    try:
        status = getattr(response, "status", 200)
        content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type.startswith("text/") or content_type in ("application/xhtml+xml", "application/json"):
            raise ValueError(
                f"`{name}`: {_shown(url)} answered HTTP status {status} with a {content_type!r} body, not an image "
                "or video (an error or login page?)."
            )
        size = 0
        while True:
            try:
                chunk = response.read(_CHUNK)
            except TimeoutError as error:
                raise TimeoutError(
                    f"`{name}`: {_shown(url)} stopped sending data for {timeout} s (`timeout`)."
                ) from error
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_DOWNLOAD_BYTES:
                raise ValueError(f"`{name}`: {_shown(url)} is larger than {MAX_DOWNLOAD_BYTES} bytes.")
            body.write(chunk)
    except BaseException:
        body.close()
        raise
    finally:
        response.close()
    body.seek(0)
    head = body.read(512).lstrip().lower()
    body.seek(0)
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")) and b"<svg" not in head:
        body.close()
        raise ValueError(
            f"`{name}`: {_shown(url)} answered HTTP status {status} with an HTML page, not an image or video."
        )
    return body


def decode_image_bytes(data: bytes | IO[bytes], name: str, shown: str) -> Image.Image:
    """Decode an encoded image fully (no EXIF transpose); undecodable data raises `ValueError` naming `shown`."""
    stream = io.BytesIO(bytes(data)) if isinstance(data, bytes | bytearray | memoryview) else data
    try:
        image = Image.open(stream)
        image.load()
    except Image.DecompressionBombError:
        # Pillow's pixel limit (`PIL.Image.MAX_IMAGE_PIXELS`) is respected, never disabled here.
        raise
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
        ValueError: undecodable data, a bad data URL, an HTTP error status or an HTML page (URL and status named).
        TimeoutError / ConnectionError: see `fetch_url`.
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str):
        stripped = source.strip()
        lowered = stripped[:16].lower()
        if lowered.startswith(("http://", "https://")):
            with fetch_url(stripped, name, timeout) as body:
                return decode_image_bytes(body.read(), name, repr(_shown(stripped)))
        if lowered.startswith("data:"):
            header, comma, payload = stripped.partition(",")
            if not comma:
                raise ValueError(f"`{name}`: a `data:` URL needs a ',' before its data, got {_shown(stripped)!r}.")
            if header.lower().endswith(";base64"):
                data = _decode_base64(payload, name, "the `data:` URL")
            else:
                from urllib.parse import unquote_to_bytes

                data = unquote_to_bytes(payload)
            return decode_image_bytes(data, name, "the `data:` URL")
        if os.path.exists(source):
            with open(source, "rb") as handle:
                return decode_image_bytes(handle.read(), name, repr(source))
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
            f"`{name}`: {_shown(source)!r} is no existing file, `http(s)` URL, `data:` URL or base64-encoded image."
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
