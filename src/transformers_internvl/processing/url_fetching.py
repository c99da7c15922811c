"""Fetching `http(s)` image and video URLs in bounded time (standard library only).

The `timeout` (seconds, default `DEFAULT_URL_TIMEOUT` = 10) bounds every phase of a download, so that no server, silent
or trickling, can hold a call for long:

- the connection, TLS handshake, request and the whole response head (status line and headers) must complete within
  `2 * timeout` of the start (a watchdog closes the socket otherwise);
- the body must keep arriving: every window of `timeout` seconds must bring at least `MIN_BYTES_PER_WINDOW` bytes
  (64 KiB, i.e. 6.4 KB/s at the default) or the end of the body; one that trickles slower is stalled;
- the body may hold at most `MAX_DOWNLOAD_BYTES` (2 GiB);
- redirects are followed to `http(s)` URLs only (urllib's default would follow `ftp://` too), within the same bound.

A stalled or silent server raises `TimeoutError` (within about `2 * timeout`), a status >= 400 or an HTML / text body a
`ValueError`, an unreachable host a `ConnectionError`; each message names the URL. (The per-read socket timeout that
`urllib` / `requests` offer alone does not bound a server that sends one byte every few seconds; hence the watchdog and
the rate rule, written here.)
"""

from __future__ import annotations

import http.client
import io
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any

__all__ = ["DEFAULT_URL_TIMEOUT", "MAX_DOWNLOAD_BYTES", "MIN_BYTES_PER_WINDOW", "check_timeout", "fetch_url"]

DEFAULT_URL_TIMEOUT = 10.0
# Largest download accepted for one image or video (bytes).
MAX_DOWNLOAD_BYTES = 2 << 30
# Least a body must deliver per `timeout`-second window (bytes) not to count as stalled.
MIN_BYTES_PER_WINDOW = 64 << 10
_CHUNK = 1 << 20
_USER_AGENT = "transformers-internvl"


def check_timeout(value: object) -> float:
    """`timeout` as a positive finite number of seconds (`None` -> `DEFAULT_URL_TIMEOUT`).

    Raises:
        TypeError: not a number. ValueError: not positive, or not finite.
    """
    if value is None:
        return DEFAULT_URL_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`timeout` must be a number of seconds, got {type(value).__name__} ({value!r}).")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"`timeout` must be a positive finite number of seconds, got {value!r}.")
    return float(value)


def shown_url(url: str, limit: int = 120) -> str:
    """`url` cut to `limit` characters for error messages."""
    return url if len(url) <= limit else url[:limit] + "..."


class _Watchdog:
    """Shuts the connection's socket down when the response head has not arrived by the deadline."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.fired:
                self._shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed or never connected: nothing left to unblock
            pass


def _watched_connection(base: type[http.client.HTTPConnection], watchdog: _Watchdog) -> type:
    class WatchedConnection(base):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            create = self._create_connection

            def create_and_watch(*c_args: Any, **c_kwargs: Any) -> socket.socket:
                sock = create(*c_args, **c_kwargs)
                watchdog.watch(sock)
                return sock

            self._create_connection = create_and_watch

    return WatchedConnection


def _opener(watchdog: _Watchdog) -> urllib.request.OpenerDirector:
    http_connection = _watched_connection(http.client.HTTPConnection, watchdog)
    https_connection = _watched_connection(http.client.HTTPSConnection, watchdog)

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> Any:
            return self.do_open(http_connection, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> Any:
            return self.do_open(https_connection, req)

    class RedirectHandler(urllib.request.HTTPRedirectHandler):
        # urllib follows redirects to ftp:// as well, outside the watchdog; only http(s) is followed here.
        def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 - urllib's signature
            if urllib.parse.urlparse(newurl).scheme.lower() not in ("http", "https"):
                raise urllib.error.HTTPError(
                    req.full_url, code, f"redirect to a non-http(s) URL {shown_url(newurl)!r} refused", headers, fp
                )
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler, RedirectHandler)


def _open_url(url: str, name: str, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    watchdog = _Watchdog(2 * timeout)
    silent = f"`{name}`: {shown_url(url)} did not answer within {timeout} s (`timeout`)."
    watchdog.start()
    try:
        return _opener(watchdog).open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        raise ValueError(
            f"`{name}`: fetching {shown_url(url)} failed with HTTP status {error.code} ({error.reason})."
        ) from error
    except urllib.error.URLError as error:
        if watchdog.fired or isinstance(error.reason, TimeoutError | socket.timeout):
            raise TimeoutError(silent) from error
        raise ConnectionError(f"`{name}`: could not fetch {shown_url(url)}: {error.reason}") from error
    except TimeoutError as error:
        raise TimeoutError(silent) from error
    except (OSError, http.client.HTTPException) as error:
        if watchdog.fired:
            raise TimeoutError(
                f"`{name}`: {shown_url(url)} did not send its response head within {2 * timeout} s (`timeout`)."
            ) from error
        raise ConnectionError(f"`{name}`: could not fetch {shown_url(url)}: {error!r}") from error
    finally:
        watchdog.cancel()


def _read_body(response: Any, body: IO[bytes], url: str, name: str, timeout: float) -> None:
    stalled = (
        f"`{name}`: {shown_url(url)} sent less than {MIN_BYTES_PER_WINDOW} bytes in {timeout} s (`timeout`): stalled."
    )
    size = 0
    window_start, window_bytes = time.monotonic(), 0
    while True:
        try:
            chunk = response.read1(_CHUNK)
        except TimeoutError as error:
            raise TimeoutError(stalled) from error
        except (OSError, http.client.HTTPException) as error:
            raise ConnectionError(f"`{name}`: the download of {shown_url(url)} broke off: {error!r}") from error
        if not chunk:
            missing = getattr(response, "length", None)
            if missing:
                raise ConnectionError(
                    f"`{name}`: the download of {shown_url(url)} broke off after {size} bytes, {missing} short of "
                    "its Content-Length."
                )
            return
        size += len(chunk)
        if size > MAX_DOWNLOAD_BYTES:
            raise ValueError(f"`{name}`: {shown_url(url)} is larger than {MAX_DOWNLOAD_BYTES} bytes.")
        body.write(chunk)
        window_bytes += len(chunk)
        now = time.monotonic()
        if window_bytes >= MIN_BYTES_PER_WINDOW:
            window_start, window_bytes = now, 0
        elif now - window_start > timeout:
            raise TimeoutError(stalled)


def fetch_url(url: str, name: str = "images", timeout: float | None = None, spool: bool = False) -> IO[bytes]:
    """GET an `http(s)` URL and return its body as a binary file positioned at 0, in bounded time (module docstring).

    Args:
        url: `http://` or `https://` URL.
        name: argument name used in error messages.
        timeout: seconds (`None`: `DEFAULT_URL_TIMEOUT`); the response head must arrive within `2 * timeout` and
            every `timeout`-second window of the body must bring `MIN_BYTES_PER_WINDOW` bytes or the end.
        spool: keep large bodies on disk (a `SpooledTemporaryFile`, for videos) instead of memory.

    Raises:
        ValueError: HTTP status >= 400, an HTML / text body (an error page, not media), or a body over
            `MAX_DOWNLOAD_BYTES`; the message names the URL and the status.
        TimeoutError: no connection or response head in time, or a stalled body.
        ConnectionError: the host cannot be reached, or the connection broke.
    """
    timeout = check_timeout(timeout)
    response = _open_url(url, name, timeout)
    body: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=64 << 20) if spool else io.BytesIO()
    try:
        status = getattr(response, "status", 200)
        content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type.startswith("text/") or content_type in ("application/xhtml+xml", "application/json"):
            raise ValueError(
                f"`{name}`: {shown_url(url)} answered HTTP status {status} with a {content_type!r} body, not an "
                "image or video (an error or login page?)."
            )
        _read_body(response, body, url, name, timeout)
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
            f"`{name}`: {shown_url(url)} answered HTTP status {status} with an HTML page, not an image or video."
        )
    return body
