import os
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import (
    FIXTURES,
    QWEN2_DIR,
    QWEN2_TOKENIZER,
    load_model,
    original_model_dir,
    small_tile_qwen2_model,
    small_tiles,
)


def pytest_collection_modifyitems(config, items):
    # transformers' generic compile tests (tests/test_transformers_mixins.py) are `slow` like ours; they still run by
    # default (nothing deselects `slow`): `-m "not slow"` leaves them out.
    for item in items:
        if "torch_compile_test" in item.keywords and "slow" not in item.keywords:
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (`-n 2`, the README's test command): each test file runs whole on one worker, so module-scoped
    fixtures are built once and a file's tests run in their order; files go out in collection order as workers free
    up. (xdist's file scheduling queues the files with the most tests first, which leaves the few-test files that wait
    on fresh interpreters for the end: about 10 s longer on 2 workers, simulated from per-file CPU times.) Another
    `--dist` mode given on the command line is left to xdist."""
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import LoadFileScheduling

    config.option.loadscopereorder = False
    return LoadFileScheduling(config, log)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="module")
def qwen2_model():
    """The tiny Qwen2 InternVL model in eval mode with its `<IMG_CONTEXT>` id, loaded once per test module (tests that
    patch it undo their patches; a module that needs a pristine copy loads its own)."""
    return load_model().eval()


@pytest.fixture(scope="module")
def qwen2_io() -> dict:
    """The original implementation's inputs and outputs on the tiny Qwen2 model (`io.safetensors`), per module."""
    from safetensors.torch import load_file

    return load_file(QWEN2_DIR / "io.safetensors")


@pytest.fixture(scope="session")
def qwen2_model_dir(tmp_path_factory) -> Path:
    """The tiny Qwen2 InternVL checkpoint in the original layout with the tiny Qwen2 tokenizer next to it (so
    `<IMG_CONTEXT>` and the chat template resolve from the folder), written once; tests must not write into it."""
    return original_model_dir(tmp_path_factory.mktemp("tiny-internvl-qwen2"))


@pytest.fixture(scope="module")
def qwen2_tokenizer():
    """The tiny Qwen2 tokenizer (`tests/fixtures/tokenizers/qwen2-tiny`), per module."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)


@pytest.fixture(scope="session")
def small_tile_qwen2(qwen2_tokenizer_session):
    """`helpers.small_tile_qwen2_model()`, built once per session and shared: tests must not change it (a test that
    changes weights, dtype, config or generation config takes a `copy.deepcopy`). Checked here so that no test using
    it passes vacuously: greedy answers vary from token to token and with the image."""
    model = small_tile_qwen2_model()
    greedy = {"max_new_tokens": 8, "do_sample": False}
    model.reuse_chat_cache = False
    try:
        answers = [model.chat(qwen2_tokenizer_session, small_tiles(1, seed), "Describe.", greedy) for seed in (0, 1)]
    finally:
        model.reuse_chat_cache = True
        model.clear_chat_cache()
    tokens = qwen2_tokenizer_session(answers[0], add_special_tokens=False).input_ids
    assert len(set(tokens)) >= 4, answers  # not one token repeated
    assert answers[0] != answers[1], answers  # the image reaches the answer
    return model


@pytest.fixture(scope="session")
def qwen2_tokenizer_session():
    """The tiny Qwen2 tokenizer, once per session (for session-scoped fixtures)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)


@pytest.fixture(scope="module")
def qwen2_model_and_processor(qwen2_model_dir):
    """`AutoModelForImageTextToText` (eval) and `AutoProcessor` loaded from `qwen2_model_dir`, per module."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return (
        AutoModelForImageTextToText.from_pretrained(qwen2_model_dir).eval(),
        AutoProcessor.from_pretrained(qwen2_model_dir),
    )


os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One intra-op thread for the whole session: the tests run tiny models, whose ops are too small to split, and a second
# OpenMP thread mostly spins. Measured on the shared 2-CPU machine (tests/test_chat_cache_s7.py +
# test_attention_layout_cpu.py, back to back): 2 threads 46 s of CPU and 73-114 s wall, 1 thread 12 s and 24-35 s.
# The held-out fixtures set 1 thread anyway; before, the files that ran before the first of them used 2.
torch.set_num_threads(1)


# Marks used by transformers' generic test modules (tests/test_transformers_mixins.py imports them from the
# transformers sdist); registered here because setup.cfg runs pytest with --strict-markers.
TRANSFORMERS_TEST_MARKERS = (
    "accelerate_tests",
    "flash_attn_test",
    "flash_attn_3_test",
    "flash_attn_4_test",
    "torch_compile_test",
    "is_agent_test",
    "is_expert_parallel_test",
    "is_fsdp_test",
    "is_pipeline_test",
    "is_staging_test",
    "is_tensor_parallel_test",
    "is_training_test",
    "order",
)


@pytest.fixture
def raw_http_server():
    """`raw_http_server(behaviour, tls=None)` -> URL of a raw server on 127.0.0.1 that runs `behaviour(connection,
    request)` for each client in a daemon thread (hostile servers for the URL-fetching tests; `tls`: an
    `ssl.SSLContext` to serve https)."""
    listeners: list[socket.socket] = []

    def start(behaviour: Callable[[socket.socket, bytes], None], tls: ssl.SSLContext | None = None) -> str:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listeners.append(listener)

        def handle(connection: socket.socket) -> None:
            try:
                with connection:
                    if tls is not None:
                        connection = tls.wrap_socket(connection, server_side=True)
                    behaviour(connection, connection.recv(65536))
            except OSError:  # the client gave up: expected of hostile servers
                pass

        def accept() -> None:
            while True:
                try:
                    connection, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=handle, args=(connection,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        scheme = "https" if tls else "http"
        return f"{scheme}://127.0.0.1:{listener.getsockname()[1]}/photo.png"

    yield start
    for listener in listeners:
        listener.close()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than 10 s on a CPU")
    for marker in TRANSFORMERS_TEST_MARKERS:
        config.addinivalue_line("markers", f"{marker}: used by transformers' generic tests")
