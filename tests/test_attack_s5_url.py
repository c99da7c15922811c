"""Hostile servers against `fetch_url` (session-5 attack): a chunked body that blocks inside http.client (a trickled
chunk-size line, endless trailers), a TLS server trickling its head, a head cut short by the watchdog, an endless
redirect body, a Content-Length over the cap, URLs with spaces / non-ASCII / bad hosts and ports, a bad redirect
Location, huge timeouts, the connection an HTTP error keeps open, and concurrent fetches. Raw sockets on 127.0.0.1
play the servers; every failure must be the documented exception, name the URL and come within its bound."""

from __future__ import annotations

import io
import socket
import ssl
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from transformers_internvl import InternVLVideoProcessor
from transformers_internvl.processing.image_loading import load_image_source
from transformers_internvl.processing.url_fetching import MAX_DOWNLOAD_BYTES, check_timeout, fetch_url

T = 0.4  # `timeout` of the hostile fetches: the head bound and each body window's bound are 2 * T


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()
OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"


def _forever(connection: socket.socket, data: bytes, pause: float) -> None:
    while True:
        connection.sendall(data)
        time.sleep(pause)


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _raises_within(error: type[BaseException], match: str, bound: float, call: Callable[[], object]) -> None:
    started = time.perf_counter()
    with pytest.raises(error, match=match):
        call()
    assert time.perf_counter() - started < bound


@pytest.mark.parametrize(
    "behaviour",
    [
        # The chunk-size line never ends (http.client reads up to 64 KiB of it, one byte every 0.05 s).
        lambda c, _: (c.sendall(CHUNKED_HEAD), _forever(c, b"1", 0.05)),
        # A chunk extension that never ends.
        lambda c, _: (c.sendall(CHUNKED_HEAD + b"10;name="), _forever(c, b"a", 0.05)),
        # The CRLF after a chunk's data never comes.
        lambda c, _: (c.sendall(CHUNKED_HEAD + b"1\r\nx"), _forever(c, b" ", 0.05)),
        # The whole image, the last chunk, then trailers for ever, fast (http.client reads trailers without a count).
        lambda c, _: (
            c.sendall(CHUNKED_HEAD + b"%x\r\n" % len(PNG) + PNG + b"\r\n0\r\n"),
            _forever(c, b"X: y\r\n" * 500, 0),
        ),
    ],
    ids=["chunk-size-line", "chunk-extension", "chunk-crlf", "endless-trailers"],
)
def test_a_chunked_body_blocking_inside_http_client_is_stalled(raw_http_server, behaviour):
    url = raw_http_server(behaviour)
    _raises_within(TimeoutError, r"127\.0\.0\.1.*stalled", 4 * T + 3, lambda: fetch_url(url, timeout=T))


def test_a_head_cut_short_by_the_watchdog_is_a_timeout_not_an_empty_image(raw_http_server):
    # The status line comes whole, then a header line one byte at a time: when the watchdog shuts the socket,
    # http.client sees the end of the head and would answer "200, empty body".
    url = raw_http_server(lambda c, _: (c.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: "), _forever(c, b"a", 0.05)))
    # The watchdog's "response head within 0.8 s", or (a loaded machine starving the server for over T between two
    # bytes) the per-read timeout's "did not answer": the bound is what is tested, and without the watchdog it fails.
    _raises_within(TimeoutError, r"127\.0\.0\.1.*`timeout`", 2 * T + 3, lambda: fetch_url(url, timeout=T))
    _raises_within(TimeoutError, r"127\.0\.0\.1", 2 * T + 3, lambda: load_image_source(url, timeout=T))


@pytest.fixture
def tls_contexts(tmp_path, monkeypatch):
    """A server context with a fresh self-signed certificate for 127.0.0.1, trusted by the client (SSL_CERT_FILE)."""
    x509 = pytest.importorskip("cryptography.x509")
    import datetime
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))
    return server


def test_https_heads_and_bodies_are_bounded_too(raw_http_server, tls_contexts):
    # `ssl` detaches the socket object the watchdog held: shutting that down did nothing, so HTTPS was unbounded.
    good = raw_http_server(lambda c, _: c.sendall(OK_HEAD % len(PNG) + PNG), tls=tls_contexts)
    assert load_image_source(good, timeout=2).size == (8, 8)
    head = raw_http_server(lambda c, _: (c.sendall(b"HTTP/1.1 200 OK\r\n"), _forever(c, b"a", 0.05)), tls=tls_contexts)
    _raises_within(TimeoutError, r"https://127\.0\.0\.1.*`timeout`", 2 * T + 3, lambda: fetch_url(head, timeout=T))
    body = raw_http_server(lambda c, _: (c.sendall(CHUNKED_HEAD), _forever(c, b"1", 0.05)), tls=tls_contexts)
    _raises_within(TimeoutError, r"https://127\.0\.0\.1.*stalled", 4 * T + 3, lambda: fetch_url(body, timeout=T))


def test_a_redirect_body_is_not_read(raw_http_server):
    # urllib read a redirect's body whole before following it: an endless one filled memory until the head bound.
    target = raw_http_server(lambda c, _: c.sendall(OK_HEAD % len(PNG) + PNG))
    url = raw_http_server(
        lambda c, _: (
            c.sendall(b"HTTP/1.1 302 Found\r\nLocation: %s\r\n\r\n" % target.encode()),
            _forever(c, b"z" * 65536, 0),
        )
    )
    with fetch_url(url, timeout=T) as body:
        assert body.read() == PNG


def test_a_content_length_over_the_cap_is_refused_before_downloading(raw_http_server):
    url = raw_http_server(lambda c, _: (c.sendall(OK_HEAD % (MAX_DOWNLOAD_BYTES + 1) + PNG), time.sleep(5)))
    _raises_within(
        ValueError, rf"127\.0\.0\.1.*larger than {MAX_DOWNLOAD_BYTES} bytes", T + 2, lambda: fetch_url(url, timeout=T)
    )


def test_huge_timeouts_are_refused_clearly():
    assert check_timeout(1e8) == 1e8
    for huge in (1e10, 1e300, float("inf")):
        with pytest.raises(ValueError, match=r"`timeout` must be a positive number of seconds up to 1e\+08"):
            check_timeout(huge)


def test_spaces_and_non_ascii_in_the_path_are_percent_encoded(raw_http_server):
    requests: list[bytes] = []
    url = raw_http_server(
        lambda c, request: (requests.append(request.split(b"\r\n")[0]), c.sendall(OK_HEAD % len(PNG) + PNG))
    )
    assert load_image_source(url.replace("photo", "my photo ф") + "?q=a b", timeout=2).size == (8, 8)
    assert load_image_source(url.replace("photo", "my%20photo"), timeout=2).size == (8, 8)  # already encoded: kept
    assert requests == [b"GET /my%20photo%20%D1%84.png?q=a%20b HTTP/1.1", b"GET /my%20photo.png HTTP/1.1"]


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http:///photo.png", r"'http:///photo\.png' is not an http\(s\) URL with a host"),
        ("http://127.0.0.1:abc/photo.png", r"'http://127\.0\.0\.1:abc/photo\.png' is not a valid URL"),
        ("http://127.0.0.1:99999/photo.png", r"'http://127\.0\.0\.1:99999/photo\.png' is not a valid URL"),
        ("http://[::1/photo.png", r"'http://\[::1/photo\.png' is not a valid URL"),
        ("file:///etc/passwd", r"'file:///etc/passwd' is not an http\(s\) URL"),
    ],
    ids=["no-host", "non-numeric-port", "port-out-of-range", "bad-ipv6", "file-scheme"],
)
def test_malformed_urls_are_value_errors_naming_them(url, match):
    with pytest.raises(ValueError, match=match):
        fetch_url(url, timeout=1)


def test_a_malformed_redirect_location_names_the_url(raw_http_server):
    url = raw_http_server(
        lambda c, _: c.sendall(b"HTTP/1.1 302 Found\r\nLocation: http://[zz\r\nContent-Length: 0\r\n\r\n")
    )
    with pytest.raises(ValueError, match=r"127\.0\.0\.1.*Invalid IPv6 URL"):
        fetch_url(url, timeout=1)


def test_an_http_error_does_not_keep_the_connection_open(raw_http_server):
    closed = threading.Event()

    def not_found(connection: socket.socket, _: bytes) -> None:
        connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10)
        connection.settimeout(5)
        if connection.recv(1) == b"":
            closed.set()

    url = raw_http_server(not_found)
    with pytest.raises(ValueError, match="HTTP status 404") as caught:
        fetch_url(url, timeout=1)
    assert closed.wait(3), "the client kept the connection open while the error lives"
    del caught


def test_a_video_that_is_not_one_names_its_url(raw_http_server):
    url = raw_http_server(lambda c, _: c.sendall(OK_HEAD % 0)).replace("photo.png", "clip.mp4")
    with pytest.raises(ValueError, match=r"could not open 'http://127\.0\.0\.1:\d+/clip\.mp4' as a video"):
        InternVLVideoProcessor()(url, timeout=1)


def test_concurrent_fetches_keep_their_own_bounds_and_leave_no_thread(raw_http_server):
    slow = raw_http_server(lambda c, _: (c.sendall(b"HTTP/1.1 200 OK\r\n"), _forever(c, b"a", 0.05)))
    fast = raw_http_server(lambda c, _: c.sendall(OK_HEAD % len(PNG) + PNG))
    results: dict[str, object] = {}

    def run(key: str, url: str, times: int) -> None:
        # The fast fetches get a generous timeout: their 2 * T head bound is not under test, and a loaded CI machine
        # could miss it; what they show is that the slow fetches' watchdogs do not cut them.
        timeout = T if key.startswith("slow") else 10
        started = time.perf_counter()
        try:
            for _ in range(times):
                fetch_url(url, timeout=timeout).close()
            results[key] = time.perf_counter() - started
        except TimeoutError as error:
            results[key] = (error, time.perf_counter() - started)

    threads = [threading.Thread(target=run, args=(f"slow{i}", slow, 1)) for i in range(3)]
    threads += [threading.Thread(target=run, args=(f"fast{i}", fast, 10)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for i in range(3):
        error, elapsed = results[f"slow{i}"]
        # The watchdog's "response head" message, or the per-read timeout's when a loaded machine starves the
        # trickling server for more than T between bytes: both are this bound's TimeoutError naming the URL.
        assert "127.0.0.1" in str(error) and "`timeout`" in str(error) and elapsed < 2 * T + 3
        assert isinstance(results[f"fast{i}"], float)  # all ten fast fetches succeeded
    time.sleep(0.1)
    assert not [thread for thread in threading.enumerate() if thread.name == "url-fetch-watchdog"]


def test_a_stuck_host_name_resolution_is_bounded_too(raw_http_server, monkeypatch):
    # getaddrinfo (DNS) runs before there is a socket for the watchdog to shut, and cannot be interrupted: a resolver
    # that hangs (the system's takes 5 s per try and name server) held the fetch for as long.
    url = raw_http_server(lambda c, _: c.sendall(OK_HEAD % len(PNG) + PNG))
    release = threading.Event()
    real = socket.getaddrinfo

    def resolver(host, *args, **kwargs):
        if host == "stuck.example":
            release.wait(10)
        return real("127.0.0.1" if host == "stuck.example" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    try:
        stuck = url.replace("127.0.0.1", "stuck.example")
        _raises_within(TimeoutError, r"stuck\.example.*`timeout`", 2 * T + 3, lambda: fetch_url(stuck, timeout=T))
        assert load_image_source(url, timeout=2).size == (8, 8)  # other hosts still resolve
    finally:
        release.set()
