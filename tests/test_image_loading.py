"""Image and video sources (issue 12): URL timeouts and error statuses, base64 / `data:` URLs, one EXIF rule for every
source, and a lazily opened PIL image shared by threads. A local `http.server` on 127.0.0.1 stands in for the web."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from helpers import QWEN2_TOKENIZER
from PIL import Image, ImageOps

from transformers_internvl import InternVLImageProcessor, InternVLVideoProcessor
from transformers_internvl.processing.image_loading import check_timeout, fetch_url, load_image_source
from transformers_internvl.processing.video_processing_internvl import read_video_frames


def _exif_rotated_jpeg() -> bytes:
    """A 64x32 JPEG whose EXIF says 'rotate 90 degrees' (orientation 6); the left half dark, the right half light."""
    array = np.zeros((32, 64, 3), np.uint8)
    array[:, 32:] = 230
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def _tiny_video() -> bytes:
    av = pytest.importorskip("av")
    buffer = io.BytesIO()
    container = av.open(buffer, "w", format="mp4")
    stream = container.add_stream("mpeg4", rate=5)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    for index in range(10):
        frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), index * 25, np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return buffer.getvalue()


JPEG = _exif_rotated_jpeg()
ROUTES: dict[str, tuple[int, str, bytes]] = {
    "/photo.jpg": (200, "image/jpeg", JPEG),
    "/photo-no-type": (200, "application/octet-stream", JPEG),
    "/missing.jpg": (404, "text/html", b"<html><body>Not Found</body></html>"),
    "/gone.mp4": (410, "text/plain", b"gone"),
    "/login": (200, "text/html; charset=utf-8", b"<!DOCTYPE html><html><body>Please log in</body></html>"),
    "/disguised": (200, "application/octet-stream", b"<!doctype html><html><head></head><body>hi</body></html>"),
    "/broken.jpg": (200, "image/jpeg", JPEG[: len(JPEG) // 3]),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status, content_type, body = ROUTES.get(self.path, (404, "text/plain", b"no route"))
        if self.path == "/clip.mp4":
            status, content_type, body = 200, "video/mp4", _tiny_video()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def silent_server():
    """Accepts TCP connections (the kernel does) but never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/photo.jpg"
    listener.close()


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_silent_server_times_out_within_the_bound(silent_server):
    started = time.perf_counter()
    with pytest.raises(TimeoutError, match=r"127\.0\.0\.1.*within 0\.5 s"):
        load_image_source(silent_server, timeout=0.5)
    assert time.perf_counter() - started < 3.0
    started = time.perf_counter()
    with pytest.raises(TimeoutError, match="127.0.0.1"):
        InternVLImageProcessor()(silent_server, timeout=0.5)
    with pytest.raises(TimeoutError, match="127.0.0.1"):
        InternVLVideoProcessor()(silent_server.replace("photo.jpg", "clip.mp4"), timeout=0.5)
    assert time.perf_counter() - started < 6.0


def test_default_timeout_and_its_validation():
    assert check_timeout(None) == 10.0
    for bad, error in ((0, ValueError), (-1, ValueError), (float("nan"), ValueError), ("5", TypeError)):
        with pytest.raises(error, match="timeout"):
            check_timeout(bad)
    with pytest.raises(ValueError, match="timeout"):
        InternVLImageProcessor()(Image.new("RGB", (8, 8)), timeout=-1)


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("/missing.jpg", r"/missing\.jpg.*HTTP status 404"),
        ("/login", r"/login.*HTTP status 200.*text/html"),
        ("/disguised", r"/disguised.*HTTP status 200.*HTML page"),
        ("/broken.jpg", r"could not decode an image from '.*/broken\.jpg'"),
    ],
)
def test_error_pages_name_the_url_and_status(server, path, match):
    with pytest.raises(ValueError, match=match):
        load_image_source(server + path)
    with pytest.raises(ValueError, match=match):
        InternVLImageProcessor()(server + path)


def test_video_url_errors_and_success(server, tmp_path):
    with pytest.raises(ValueError, match=r"/gone\.mp4.*HTTP status 410"):
        InternVLVideoProcessor()(server + "/gone.mp4")
    with pytest.raises(ValueError, match=r"/login.*HTTP status 200"):
        read_video_frames(server + "/login")
    path = tmp_path / "clip.mp4"
    path.write_bytes(_tiny_video())
    by_url = InternVLVideoProcessor()(server + "/clip.mp4", num_segments=4, image_size=32)["pixel_values_videos"]
    by_path = InternVLVideoProcessor()(str(path), num_segments=4, image_size=32)["pixel_values_videos"]
    assert np.array_equal(by_url, by_path)


def test_one_exif_rule_for_every_source(server, tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(JPEG)
    # The original: Image.open(path).convert('RGB'), no EXIF transpose (the file stays 64 x 32).
    expected = _pixels(Image.open(path))
    assert expected.shape == (32, 64, 3)
    assert _pixels(ImageOps.exif_transpose(Image.open(path))).shape == (64, 32, 3)  # the tag is really there
    encoded = base64.b64encode(JPEG).decode()
    sources = {
        "path": str(path),
        "pathlike": path,
        "url": server + "/photo.jpg",
        "url without image type": server + "/photo-no-type",
        "bytes": JPEG,
        "file": io.BytesIO(JPEG),
        "base64": encoded,
        "base64 with newlines": base64.encodebytes(JPEG).decode(),
        "data url": "data:image/jpeg;base64," + encoded,
    }
    for label, source in sources.items():
        assert np.array_equal(_pixels(load_image_source(source)), expected), label
    processor = InternVLImageProcessor(max_dynamic_patch=1)
    reference = processor(Image.open(path))["pixel_values"]
    for label, source in sources.items():
        if hasattr(source, "seek"):
            source.seek(0)
        assert np.array_equal(processor(source)["pixel_values"], reference), label
    # transformers' fetch_images path (chat templates) follows the same rule.
    assert np.array_equal(_pixels(processor.fetch_images([server + "/photo.jpg"])[0]), expected)


@pytest.mark.parametrize(
    ("source", "error", "match"),
    [
        ("data:image/png;base64", ValueError, "needs a ','"),
        ("data:image/png;base64,!!!notbase64!!!", ValueError, "not valid base64"),
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", ValueError, "could not decode"),
        ("/no/such/file.png", FileNotFoundError, "no existing file"),
        ("aGVsbG8gd29ybGQgdGhpcyBpcyBub3QgYW4gaW1hZ2U=", FileNotFoundError, "base64-encoded image"),
    ],
)
def test_bad_string_sources(source, error, match):
    with pytest.raises(error, match=match):
        load_image_source(source)


def test_unreachable_host_is_a_connection_error():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with pytest.raises(ConnectionError, match=rf"127\.0\.0\.1:{port}"):
        fetch_url(f"http://127.0.0.1:{port}/x.png", timeout=2)


def test_lazily_opened_image_shared_by_threads(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "shared.png"
    Image.fromarray(rng.integers(0, 256, (700, 900, 3), dtype=np.uint8)).save(path)
    expected = InternVLImageProcessor(max_dynamic_patch=2)(Image.open(path), num_workers=1)["pixel_values"]
    for _ in range(3):
        shared = Image.open(path)  # lazy: pixels are read at first use, from one file handle
        results: list[np.ndarray] = []
        errors: list[BaseException] = []

        def work(image: Image.Image = shared) -> None:
            try:
                results.append(InternVLImageProcessor(max_dynamic_patch=2)(image, num_workers=1)["pixel_values"])
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(results) == 8 and all(np.array_equal(result, expected) for result in results)


def test_processor_passes_the_timeout_to_image_urls(silent_server):

    from transformers import AutoTokenizer

    from transformers_internvl.processing.processing_internvl import InternVLProcessor

    tokenizer = AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)
    processor = InternVLProcessor(
        image_processor=InternVLImageProcessor(), tokenizer=tokenizer, video_processor=InternVLVideoProcessor()
    )
    started = time.perf_counter()
    with pytest.raises(TimeoutError, match=r"within 0\.5 s"):
        processor(text="<image>\nWhat is it?", images=silent_server, timeout=0.5)
    assert time.perf_counter() - started < 3.0
