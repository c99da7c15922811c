"""URL downloads end in bounded time whatever the server does: one that trickles its response head or its body a byte
at a time (each byte within the per-read timeout, so a socket timeout alone never fires), one that breaks off before
its Content-Length, and a fast body of many windows that must still succeed. Raw sockets on 127.0.0.1 play the
servers."""

from __future__ import annotations

import io
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from transformers_internvl import InternVLImageProcessor, InternVLVideoProcessor
from transformers_internvl.processing import url_fetching
from transformers_internvl.processing.image_loading import load_image_source
from transformers_internvl.processing.url_fetching import MIN_BYTES_PER_WINDOW, fetch_url


def _png(size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _trickle(connection: socket.socket, data: bytes, pause: float) -> None:
    for byte in data:
        connection.sendall(bytes([byte]))
        time.sleep(pause)


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n"


@pytest.fixture
def trickling_head(raw_http_server):
    """Sends the status line and headers one byte every 0.1 s (a 0.5 s read timeout never fires), for ever."""
    return raw_http_server(lambda c, _: _trickle(c, b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 10_000, 0.1))


@pytest.fixture
def trickling_body(raw_http_server):
    """A prompt head, then the body one byte every 0.1 s."""
    body = _png()
    return raw_http_server(lambda c, _: (c.sendall(HEAD % len(body)), _trickle(c, body, 0.1)))


@pytest.fixture
def truncated_body(raw_http_server):
    """Promises 1,000 bytes more than it sends, then closes."""
    body = _png()
    return raw_http_server(lambda c, _: c.sendall(HEAD % (len(body) + 1000) + body))


@pytest.fixture
def fast_big_body(raw_http_server):
    """A 3 MB PNG (many `MIN_BYTES_PER_WINDOW` windows) sent in 16 KiB pieces as fast as the socket takes them."""
    body = _png((1024, 1024))
    assert len(body) > 40 * MIN_BYTES_PER_WINDOW

    def send(connection: socket.socket, request: bytes) -> None:
        connection.sendall(HEAD % len(body))
        for start in range(0, len(body), 16384):
            connection.sendall(body[start : start + 16384])

    return raw_http_server(send)


def test_a_trickled_response_head_times_out_within_twice_the_timeout(trickling_head):
    started = time.perf_counter()
    with pytest.raises(TimeoutError, match=r"127\.0\.0\.1.*`timeout`"):
        fetch_url(trickling_head, timeout=0.5)
    assert time.perf_counter() - started < 2.5
    started = time.perf_counter()
    with pytest.raises(TimeoutError, match="127.0.0.1"):
        InternVLImageProcessor()(trickling_head, timeout=0.5)
    with pytest.raises(TimeoutError, match="127.0.0.1"):
        InternVLVideoProcessor()(trickling_head.replace("photo.png", "clip.mp4"), timeout=0.5)
    assert time.perf_counter() - started < 5.0


def test_a_trickled_body_is_stalled_within_twice_the_timeout(trickling_body):
    started = time.perf_counter()
    with pytest.raises(TimeoutError, match=rf"less than {MIN_BYTES_PER_WINDOW} bytes in 0\.5 s.*stalled"):
        load_image_source(trickling_body, timeout=0.5)
    assert time.perf_counter() - started < 2.5


def test_a_body_shorter_than_its_content_length_is_a_connection_error(truncated_body):
    with pytest.raises(ConnectionError, match=r"broke off after \d+ bytes, 1000 short"):
        fetch_url(truncated_body, timeout=2)


def test_a_fast_body_of_many_windows_downloads_whole(fast_big_body):
    expected = _png((1024, 1024))
    with fetch_url(fast_big_body, timeout=2) as body:
        assert body.read() == expected
    assert load_image_source(fast_big_body, timeout=2).size == (1024, 1024)


def test_the_download_cap_is_enforced(fast_big_body, monkeypatch):
    monkeypatch.setattr(url_fetching, "MAX_DOWNLOAD_BYTES", 1 << 20)
    with pytest.raises(ValueError, match=r"larger than 1048576 bytes"):
        fetch_url(fast_big_body, timeout=2)


def test_the_watchdog_leaves_no_thread_behind(trickling_head):
    before = threading.active_count()
    for _ in range(3):
        with pytest.raises(TimeoutError):
            fetch_url(trickling_head, timeout=0.3)
    time.sleep(0.2)
    # The server's own handler threads may still be trickling; the fetches' watchdog threads are gone.
    assert not [t for t in threading.enumerate() if t.name == "url-fetch-watchdog" and t.is_alive()]
    assert threading.active_count() <= before + 3


@pytest.fixture
def redirect_to_ftp(raw_http_server):
    return raw_http_server(lambda c, _: c.sendall(b"HTTP/1.1 302 Found\r\nLocation: ftp://127.0.0.1/photo.png\r\n\r\n"))


def test_a_redirect_to_ftp_is_refused(redirect_to_ftp):
    with pytest.raises(ValueError, match=r"HTTP status 302 \(redirect to a non-http\(s\) URL 'ftp://127\.0\.0\.1"):
        fetch_url(redirect_to_ftp, timeout=2)


@pytest.fixture
def redirect_loop(raw_http_server):
    """Redirects to itself for ever (urllib stops after 10), each answer a little slow."""

    def answer(connection: socket.socket, request: bytes) -> None:
        time.sleep(0.05)
        connection.sendall(b"HTTP/1.1 302 Found\r\nLocation: /photo.png?again\r\nContent-Length: 0\r\n\r\n")

    return raw_http_server(answer)


def test_a_redirect_loop_ends_with_a_clear_error(redirect_loop):
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"HTTP status 302"):
        fetch_url(redirect_loop, timeout=2)
    assert time.perf_counter() - started < 4.0


def test_the_per_window_rate_rule_stalls_a_trickle_on_its_own(trickling_body, monkeypatch):
    """The rule "a window short of 64 KiB after `timeout` is stalled", not only the watchdog's 2 * timeout: with the
    watchdog pushed 30 s away, a body trickling a byte every 0.1 s still ends soon after `timeout`."""
    extend = url_fetching._Watchdog.extend
    monkeypatch.setattr(url_fetching._Watchdog, "extend", lambda self, seconds: extend(self, 30.0))
    started = time.perf_counter()
    with pytest.raises(TimeoutError, match=rf"less than {MIN_BYTES_PER_WINDOW} bytes in 0\.5 s.*stalled"):
        fetch_url(trickling_body, timeout=0.5)
    assert time.perf_counter() - started < 10  # ~0.6 s; 30 s if only the watchdog ended it


def test_connect_attempts_share_the_head_deadline(monkeypatch):
    """A host name with several addresses that never answer: each connect attempt gets only the time left of the
    `2 * timeout` deadline (a socket is watched only once connected), not `timeout` each."""
    real_getaddrinfo = socket.getaddrinfo
    attempts: list[float] = []

    def getaddrinfo(host, *args, **kwargs):
        if host == "blackhole.example":
            return real_getaddrinfo("127.0.0.1", *args, **kwargs) * 6
        return real_getaddrinfo(host, *args, **kwargs)

    def create_connection(address, timeout, *args, **kwargs):
        attempts.append(timeout)
        time.sleep(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    with pytest.raises(TimeoutError, match=r"blackhole\.example.*`timeout`"):
        fetch_url("http://blackhole.example/photo.png", timeout=0.3)
    assert attempts and sum(attempts) <= 2 * 0.3  # 6 x 0.3 s without the shared deadline
