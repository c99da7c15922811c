"""Fetching `http(s)` image and video URLs in bounded time (standard library only).

The `timeout` (seconds, default `DEFAULT_URL_TIMEOUT` = 10, at most `MAX_URL_TIMEOUT`) bounds every phase of a
download, so that no server, silent or trickling, can hold a call for long:

- the host name's resolution, the connection, TLS handshake, request and the whole response head (status line and
  headers) must complete within `2 * timeout` of the start (a watchdog shuts the connection down otherwise; a head it
  cut short is not used);
- the body must keep arriving in windows of `MIN_BYTES_PER_WINDOW` bytes (64 KiB, i.e. 6.4 KB/s at the default): a
  window still short of 64 KiB (and of the body's end) more than `timeout` seconds after it started (at the head or
  at the previous full window) is stalled at its next read, and a read that blocks (a silent server, or a chunk-size
  line or chunk trailers that never end inside `http.client`) is ended by the same watchdog `2 * timeout` after the
  last full window;
- the body may hold at most `MAX_DOWNLOAD_BYTES` (2 GiB; a larger Content-Length is refused before reading);
- redirects are followed to `http(s)` URLs only (urllib's default would follow `ftp://` too), within the same bound,
  without reading the redirect responses' bodies.

A stalled or silent server raises `TimeoutError` (within about `2 * timeout` of the start or of the last full body
window), a status >= 400, an HTML / text body or a malformed URL a `ValueError`, an unreachable host a
`ConnectionError`; each message names the URL. (The per-read socket timeout that `urllib` / `requests` offer alone does
not bound a server that sends one byte every few seconds; hence the watchdog and the rate rule, written here.)
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

__all__ = [
    "DEFAULT_URL_TIMEOUT",
    "MAX_DOWNLOAD_BYTES",
    "MAX_URL_TIMEOUT",
    "MIN_BYTES_PER_WINDOW",
    "check_timeout",
    "fetch_url",
    "shown_url",
]

DEFAULT_URL_TIMEOUT = 10.0
# Largest download accepted for one image or video (bytes).
MAX_DOWNLOAD_BYTES = 2 << 30
# Least a body must deliver per `timeout`-second window (bytes) not to count as stalled.
MIN_BYTES_PER_WINDOW = 64 << 10
_CHUNK = 1 << 20
_USER_AGENT = "transformers-internvl"
# Characters left as they are when a URL's path and query are percent-encoded (`requests`' `requote_uri` set).
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"
# Largest `timeout` accepted (seconds): far beyond any real download, and within what threads and sockets can wait.
MAX_URL_TIMEOUT = 1e8


def check_timeout(value: object) -> float:
    """`timeout` as a positive finite number of seconds (`None` -> `DEFAULT_URL_TIMEOUT`).

    Raises:
        TypeError: not a number. ValueError: not positive, or over `MAX_URL_TIMEOUT` (1e8 s; NaN and inf included).
    """
    if value is None:
        return DEFAULT_URL_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`timeout` must be a number of seconds, got {type(value).__name__} ({value!r}).")
    if not 0 < value <= MAX_URL_TIMEOUT:
        raise ValueError(f"`timeout` must be a positive number of seconds up to {MAX_URL_TIMEOUT:g}, got {value!r}.")
    return float(value)


def shown_url(url: str, limit: int = 120) -> str:
    """`url` cut to `limit` characters for error messages."""
    return url if len(url) <= limit else url[:limit] + "..."


class _Watchdog:
    """Shuts a download's sockets down once its deadline passes; `extend` moves the deadline (one thread per fetch).

    It holds a duplicate of each socket's descriptor: `ssl` detaches the socket object it wraps, so shutting that
    object down would do nothing once TLS starts, while `shutdown` on any descriptor of a connection ends its reads.
    """

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._deadline = time.monotonic() + seconds
        self._closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="url-fetch-watchdog", daemon=True)
        self._thread.start()

    def watch(self, sock: socket.socket) -> None:
        with self._wake:
            self._sockets.append(sock.dup())
            if self.fired:
                self._shut(self._sockets[-1])

    def extend(self, seconds: float) -> None:
        with self._wake:
            self._deadline = time.monotonic() + seconds

    def seconds_left(self) -> float:
        with self._wake:
            return self._deadline - time.monotonic()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        for sock in self._sockets:
            sock.close()

    def _run(self) -> None:
        with self._wake:
            while not self._closed:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    self.fired = True
                    for sock in self._sockets:
                        self._shut(sock)
                    return
                self._wake.wait(left)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # never connected or already reset: nothing left to unblock
            pass


def _resolve(host: str, port: int, seconds: float) -> list[tuple[Any, ...]]:
    """`socket.getaddrinfo(host, port)` for TCP, waited for at most `seconds` (in a daemon thread, left to finish).

    Raises:
        TimeoutError: no answer in time. OSError: the resolver's own error (unknown host).
    """
    answer: list[Any] = []

    def resolve() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except OSError as error:
            answer.append(error)

    thread = threading.Thread(target=resolve, name="url-fetch-resolver", daemon=True)
    thread.start()
    thread.join(max(seconds, 0.0))
    if not answer:
        raise TimeoutError(f"resolving {host!r} took more than {seconds:.3g} s")
    if isinstance(answer[0], OSError):
        raise answer[0]
    return answer[0]


def _watched_connection(base: type[http.client.HTTPConnection], watchdog: _Watchdog) -> type:
    class WatchedConnection(base):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            create = self._create_connection

            def create_and_watch(
                address: tuple[str, int], timeout: float, *c_args: Any, **c_kwargs: Any
            ) -> socket.socket:
                # The host is resolved here, within the deadline (a stuck resolver cannot be interrupted), and the
                # addresses tried in turn as `socket.create_connection` does, each connect attempt cut to the time
                # left (a socket is watched only once connected; several unanswering addresses would each take
                # `timeout`). The socket keeps `timeout` for its reads.
                host, port = address
                failures: list[OSError] = []
                for *_, sockaddr in _resolve(host, port, watchdog.seconds_left()):
                    left = watchdog.seconds_left()
                    if left <= 0:
                        raise TimeoutError(f"connecting to {host!r} took more than the deadline")
                    try:
                        sock = create((sockaddr[0], port), min(timeout, left), *c_args, **c_kwargs)
                    except OSError as error:
                        failures.append(error)
                        continue
                    sock.settimeout(timeout)
                    try:
                        watchdog.watch(sock)
                    except OSError:  # no descriptor left for the duplicate
                        sock.close()
                        raise
                    return sock
                raise failures[-1] if failures else OSError(f"{host!r} resolves to no address")

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
            # urllib reads a redirect's whole body into memory before following it, however long; it is not needed.
            fp.close()
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler, RedirectHandler)


def _request_url(url: str, name: str) -> str:
    """`url` checked (`http(s)`, a host, a valid port) with its path and query percent-encoded where they hold spaces,
    control or non-ASCII characters (as browsers and `requests` send them); the fragment is dropped.

    Raises:
        ValueError: not an `http(s)` URL, no host, or a malformed host or port (the message names the URL).
    """
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
    except ValueError as error:
        raise ValueError(f"`{name}`: {shown_url(url)!r} is not a valid URL ({error}).") from error
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"`{name}`: {shown_url(url)!r} is not an http(s) URL with a host.")
    path, query = (urllib.parse.quote(part, safe=_URL_SAFE) for part in (parts.path, parts.query))
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def _open_url(url: str, name: str, timeout: float, watchdog: _Watchdog) -> Any:
    request = urllib.request.Request(_request_url(url, name), headers={"User-Agent": _USER_AGENT})
    silent = f"`{name}`: {shown_url(url)} did not answer within {timeout} s (`timeout`)."
    cut = f"`{name}`: {shown_url(url)} did not send its response head within {2 * timeout} s (`timeout`)."
    try:
        response = _opener(watchdog).open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()  # its response holds the connection open
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
            raise TimeoutError(cut) from error
        if isinstance(error, http.client.InvalidURL):
            raise ValueError(f"`{name}`: could not fetch {shown_url(url)}: {error}") from error
        raise ConnectionError(f"`{name}`: could not fetch {shown_url(url)}: {error!r}") from error
    except ValueError as error:  # a malformed redirect Location
        raise ValueError(f"`{name}`: could not fetch {shown_url(url)}: {error}") from error
    if watchdog.fired:  # the head was cut short: what http.client parsed of it is not the server's answer
        response.close()
        raise TimeoutError(cut)
    return response


def _read_body(response: Any, body: IO[bytes], url: str, name: str, timeout: float, watchdog: _Watchdog) -> None:
    stalled = (
        f"`{name}`: {shown_url(url)} sent less than {MIN_BYTES_PER_WINDOW} bytes in {timeout} s (`timeout`): stalled."
    )
    declared = getattr(response, "length", None)
    if declared is not None and declared > MAX_DOWNLOAD_BYTES:
        raise ValueError(f"`{name}`: {shown_url(url)} is larger than {MAX_DOWNLOAD_BYTES} bytes ({declared}).")
    size = 0
    window_start, window_bytes = time.monotonic(), 0
    # A read can block past a window inside http.client (a trickled chunk-size line, endless chunk trailers): the
    # watchdog ends it 2 windows after the last full one.
    watchdog.extend(2 * timeout)
    while True:
        try:
            chunk = response.read1(_CHUNK)
        except TimeoutError as error:
            raise TimeoutError(stalled) from error
        except (OSError, http.client.HTTPException) as error:
            if watchdog.fired:
                raise TimeoutError(stalled) from error
            raise ConnectionError(f"`{name}`: the download of {shown_url(url)} broke off: {error!r}") from error
        if watchdog.fired:
            raise TimeoutError(stalled)
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
            watchdog.extend(2 * timeout)
        elif now - window_start > timeout:
            raise TimeoutError(stalled)


def fetch_url(url: str, name: str = "images", timeout: float | None = None, spool: bool = False) -> IO[bytes]:
    """GET an `http(s)` URL and return its body as a binary file positioned at 0, in bounded time (module docstring).

    Args:
        url: `http://` or `https://` URL (spaces and non-ASCII characters in its path and query are percent-encoded).
        name: argument name used in error messages.
        timeout: seconds (`None`: `DEFAULT_URL_TIMEOUT`); the response head must arrive within `2 * timeout` and
            every `timeout`-second window of the body must bring `MIN_BYTES_PER_WINDOW` bytes or the end.
        spool: keep large bodies on disk (a `SpooledTemporaryFile`, for videos) instead of memory.

    Raises:
        ValueError: not an `http(s)` URL with a host, a malformed host, port or redirect `Location`, a redirect to a
            non-http(s) URL, an HTTP status >= 400, an HTML / text body (an error page, not media), or a body (or its
            Content-Length) over `MAX_DOWNLOAD_BYTES`; the message names the URL.
        TypeError: `timeout` is not a number (`check_timeout`; a `ValueError` when not positive or over
            `MAX_URL_TIMEOUT`).
        TimeoutError: no name resolution, connection or response head in time, or a stalled body.
        ConnectionError: the host cannot be reached, the connection broke, or the body ended short of its
            Content-Length.
    """
    timeout = check_timeout(timeout)
    watchdog = _Watchdog(2 * timeout)
    try:
        response = _open_url(url, name, timeout, watchdog)
        body: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=64 << 20) if spool else io.BytesIO()
        try:
            status = getattr(response, "status", 200)
            content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if content_type.startswith("text/") or content_type in ("application/xhtml+xml", "application/json"):
                raise ValueError(
                    f"`{name}`: {shown_url(url)} answered HTTP status {status} with a {content_type!r} body, not an "
                    "image or video (an error or login page?)."
                )
            _read_body(response, body, url, name, timeout, watchdog)
        except BaseException:
            body.close()
            raise
        finally:
            response.close()
    finally:
        watchdog.close()
    body.seek(0)
    head = body.read(512).lstrip().lower()
    body.seek(0)
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")) and b"<svg" not in head:
        body.close()
        raise ValueError(
            f"`{name}`: {shown_url(url)} answered HTTP status {status} with an HTML page, not an image or video."
        )
    return body
