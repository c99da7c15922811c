"""`pipeline("image-text-to-text")` end to end, on an original OpenGVLab directory (weights + tokenizer files only)
and on a directory saved by this package (model + processor files)."""

import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import original_model_dir
from PIL import Image
from transformers import AutoProcessor, pipeline

import transformers_internvl  # noqa: F401
from transformers_internvl import InternVLForConditionalGeneration, InternVLProcessor

GENERATE = {"max_new_tokens": 4, "do_sample": False}


def _original_dir(tmp_path: Path, model_name: str, tokenizer_name: str) -> Path:
    return original_model_dir(tmp_path / f"{model_name}-original", model_name, tokenizer_name)


def _image(seed: int, size=(500, 300)) -> Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _user(*content):
    return [{"role": "user", "content": list(content)}]


def _text(text):
    return {"type": "text", "text": text}


@pytest.fixture(scope="module")
def qwen2_original(tmp_path_factory):
    return _original_dir(tmp_path_factory.mktemp("models"), "tiny-qwen2", "qwen2-tiny")


@pytest.fixture(scope="module")
def qwen2_pipe(qwen2_original):
    return pipeline("image-text-to-text", model=str(qwen2_original))


def _answer(pipe, messages, **kwargs):
    return pipe(text=messages, generate_kwargs=GENERATE, **kwargs)[0]["generated_text"]


def test_original_directory_loads_model_and_processor(qwen2_pipe):
    assert isinstance(qwen2_pipe.model, InternVLForConditionalGeneration)
    assert isinstance(qwen2_pipe.processor, InternVLProcessor)
    assert qwen2_pipe.model.config.image_token_id == 995  # from the tokenizer files next to the weights
    assert qwen2_pipe.model.generation_config.eos_token_id == 992  # <|im_end|>


def test_image_multi_image_video_and_text_only_chats(qwen2_pipe, tmp_path):
    av = pytest.importorskip("av")
    image_path = tmp_path / "image.png"
    _image(1).save(image_path)
    video_path = tmp_path / "clip.mp4"
    with av.open(str(video_path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), index * 10, dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())

    chats = {
        "pil image": _user({"type": "image", "image": _image(0)}, _text("What is this?")),
        "image path": _user({"type": "image", "path": str(image_path)}, _text("Describe.")),
        "two images": _user(
            {"type": "image", "image": _image(0)}, {"type": "image", "image": _image(1)}, _text("Compare.")
        ),
        "video": _user({"type": "video", "path": str(video_path)}, _text("What happens?")),
        "text only": _user(_text("Hello")),
    }
    for name, messages in chats.items():
        conversation = _answer(qwen2_pipe, messages)
        assert conversation[-1]["role"] == "assistant", name
        assert isinstance(conversation[-1]["content"], str) and conversation[-1]["content"], name


def test_http_image_url(qwen2_pipe, tmp_path):
    _image(2).save(tmp_path / "remote.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/remote.png"
        from_url = _answer(qwen2_pipe, _user({"type": "image", "url": url}, _text("What is this?")))
    finally:
        server.shutdown()
    from_pil = _answer(qwen2_pipe, _user({"type": "image", "image": _image(2)}, _text("What is this?")))
    assert from_url[-1]["content"] == from_pil[-1]["content"]


def test_batched_pipeline_equals_unbatched(qwen2_pipe):
    chats = [
        _user({"type": "image", "image": _image(0)}, _text("What is this?")),
        _user(_text("Hi")),
        _user({"type": "image", "image": _image(3, (300, 900))}, _text("A tall picture, described at length?")),
    ]
    alone = [_answer(qwen2_pipe, chat)[-1]["content"] for chat in chats]
    batched = qwen2_pipe(text=chats, generate_kwargs=GENERATE, batch_size=3)
    assert [result[0]["generated_text"][-1]["content"] for result in batched] == alone


def test_return_full_text_semantics(qwen2_pipe):
    messages = _user(_text("Hello"))
    full = qwen2_pipe(text=messages, generate_kwargs=GENERATE)[0]["generated_text"]
    new_only = qwen2_pipe(text=messages, generate_kwargs=GENERATE, return_full_text=False)[0]["generated_text"]
    # Chat input: the full text is the conversation with the assistant turn appended; otherwise only the new text.
    assert full[:-1] == messages and full[-1] == {"role": "assistant", "content": new_only}


def test_saved_directory_round_trip(qwen2_pipe, tmp_path):
    qwen2_pipe.model.save_pretrained(tmp_path)
    qwen2_pipe.processor.save_pretrained(tmp_path)
    reloaded = pipeline("image-text-to-text", model=str(tmp_path))
    assert isinstance(reloaded.processor, InternVLProcessor)
    messages = _user({"type": "image", "image": _image(0)}, _text("What is this?"))
    assert _answer(reloaded, messages) == _answer(qwen2_pipe, messages)


def test_internlm2_original_directory(tmp_path):
    directory = _original_dir(tmp_path, "tiny-internlm2", "internlm2-dummy-prefix")
    pipe = pipeline("image-text-to-text", model=str(directory))
    processor = AutoProcessor.from_pretrained(directory)
    # The fixture's synthetic ids differ from this tokenizer's; the model takes <IMG_CONTEXT> from the tokenizer files.
    assert pipe.model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    # The tiny model's vocabulary (1000) is larger than this tokenizer's (609): keep generation inside the tokenizer.
    generate_kwargs = dict(GENERATE, suppress_tokens=list(range(len(processor.tokenizer), 1000)))
    messages = _user({"type": "image", "image": _image(0)}, _text("What is this?"))
    conversation = pipe(text=messages, generate_kwargs=generate_kwargs)[0]["generated_text"]
    assert isinstance(conversation[-1]["content"], str)
    prompt = processor.apply_chat_template(_user(_text("Hi")), add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert "<|im_end|><|im_start|>" in prompt  # internlm2-chat: no newline after the separator
    with torch.no_grad():
        inputs = processor(text=prompt, return_tensors="pt")
    assert inputs["input_ids"][0, 0].item() == processor.tokenizer.bos_token_id
