"""`generate()` the transformers way: mixed batches, prefill-only pixels, streaming, static cache + compile."""

import json
import threading

import pytest
import torch
from helpers import QWEN2_DIR, QWEN2_IMAGE_TOKEN_ID, QWEN2_PAD_ID, QWEN2_TOKENIZER
from transformers import AutoTokenizer, CompileConfig, TextIteratorStreamer

import transformers_internvl  # noqa: F401


@pytest.fixture(scope="module")
def model(qwen2_model):
    return qwen2_model


@pytest.fixture(scope="module")
def io(qwen2_io):
    return qwen2_io


def _greedy(model, **kwargs):
    kwargs.setdefault("max_new_tokens", 6)
    with torch.no_grad():
        return model.generate(do_sample=False, eos_token_id=None, pad_token_id=QWEN2_PAD_ID, **kwargs)


def _left_pad(sequences: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), length), QWEN2_PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, length - len(sequence) :] = sequence
        attention_mask[row, length - len(sequence) :] = 1
    return input_ids, attention_mask


def test_batch_with_text_only_and_image_samples_equals_each_alone(model, io):
    meta = json.loads((QWEN2_DIR / "meta.json").read_text())
    segments = meta["inputs"]["samples"][0]["segments"]
    image_start = next(s["start"] for s in segments if s["kind"] == "img_start")
    image_end = next(s["start"] for s in segments if s["kind"] == "img_end")
    with_image = io["input_ids"][0]
    text_only = torch.cat([with_image[:image_start], with_image[image_end + 2 :]])  # drop <img>…</img>\n
    assert (text_only == QWEN2_IMAGE_TOKEN_ID).sum() == 0

    input_ids, attention_mask = _left_pad([text_only, with_image, text_only[:20]])
    batch = _greedy(model, input_ids=input_ids, attention_mask=attention_mask, pixel_values=io["pixel_values"])
    new = batch[:, input_ids.shape[1] :]
    assert torch.equal(new[0], _greedy(model, input_ids=text_only[None])[0, len(text_only) :])
    assert torch.equal(new[1], io["generated_ids"][0, :6])
    assert torch.equal(new[2], _greedy(model, input_ids=text_only[None, :20])[0, 20:])


def test_pixel_values_are_encoded_once_at_prefill(model, io, monkeypatch):
    calls = []
    original = model.model.vision_model.forward

    def counting_forward(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model.model.vision_model, "forward", counting_forward)
    _greedy(model, input_ids=io["input_ids"], pixel_values=io["pixel_values"], max_new_tokens=4)
    assert len(calls) == 1


def test_logits_to_keep(model, io):
    with torch.no_grad():
        full = model(input_ids=io["input_ids"], pixel_values=io["pixel_values"]).logits
        last = model(input_ids=io["input_ids"], pixel_values=io["pixel_values"], logits_to_keep=1).logits
    assert last.shape == (1, 1, full.shape[-1])
    assert torch.allclose(last[0, 0], full[0, -1], atol=1e-6, rtol=0)


def test_text_iterator_streamer_streams_the_generated_text(model, io):
    tokenizer = AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    kwargs = dict(input_ids=io["input_ids"], pixel_values=io["pixel_values"], max_new_tokens=8, streamer=streamer)
    thread = threading.Thread(target=_greedy, args=(model,), kwargs=kwargs)
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    expected = tokenizer.decode(io["generated_ids"][0])
    assert streamed == expected


@pytest.mark.slow  # torch.compile
def test_static_cache_with_fullgraph_compile_matches_dynamic_cache(model, io):
    kwargs = dict(input_ids=io["input_ids"], pixel_values=io["pixel_values"], max_new_tokens=8)
    dynamic = _greedy(model, **kwargs)
    compile_config = CompileConfig(fullgraph=True)
    compile_config._compile_all_devices = True  # generate compiles on CUDA only unless asked
    static = _greedy(model, cache_implementation="static", compile_config=compile_config, **kwargs)
    assert torch.equal(dynamic, static)
    assert torch.equal(static[:, io["input_ids"].shape[1] :], io["generated_ids"])


def test_several_return_sequences_keep_each_samples_tiles(model, io):
    torch.manual_seed(0)
    meta_ids = io["input_ids"][0]
    image_tokens = (meta_ids == QWEN2_IMAGE_TOKEN_ID).nonzero()[:, 0]
    # Two tiles for one sample: repeat the <IMG_CONTEXT> run.
    start, end = image_tokens[0].item(), image_tokens[-1].item() + 1
    two_tiles = torch.cat([meta_ids[:end], meta_ids[start:end], meta_ids[end:]])[None]
    pixel_values = torch.cat([io["pixel_values"], torch.randn_like(io["pixel_values"])])
    greedy = _greedy(model, input_ids=two_tiles, pixel_values=pixel_values)
    with torch.no_grad():
        sampled = model.generate(
            input_ids=two_tiles,
            pixel_values=pixel_values,
            do_sample=True,
            top_k=1,
            num_return_sequences=3,
            max_new_tokens=6,
            eos_token_id=None,
            pad_token_id=QWEN2_PAD_ID,
        )
    assert torch.equal(sampled, greedy.expand(3, -1))


def test_zero_tiles_and_several_return_sequences(model):
    input_ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            pixel_values=torch.zeros(0, 3, 448, 448),
            num_tiles=torch.zeros(0, dtype=torch.long),
            do_sample=True,
            top_k=1,
            num_return_sequences=2,
            max_new_tokens=3,
            pad_token_id=QWEN2_PAD_ID,
        )
    assert torch.equal(out, _greedy(model, input_ids=input_ids, max_new_tokens=3).expand(2, -1))


@pytest.mark.slow  # torch.compile
def test_prefill_with_images_compiles_without_graph_breaks(model, io):
    # fullgraph=True fails on any graph break: the vision tower, the placeholder check and the merge must all trace.
    compiled = torch.compile(model.forward, fullgraph=True, backend="eager")
    with torch.no_grad():
        logits = compiled(input_ids=io["input_ids"], pixel_values=io["pixel_values"], use_cache=False).logits
    assert (logits - io["logits"]).abs().max().item() <= 1e-5
