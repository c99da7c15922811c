"""Session-11 held-out checks of generation (issue 5) and the multi-turn chat cache (issue 13).

Against the ORIGINAL implementation (`fixtures/generation_s11/`, see its README; the cases are in
`generation_s11_cases.py`, shared by the generator and this test): multi-turn `chat` whose history is edited, whose
pixel values or tile counts change, whose system message changes between turns, beam search / sampling / length
limits / eos lists / penalties over several turns, per-family single-turn settings and `batch_chat` settings, on
Qwen2, Llama, Phi-3 and InternLM2 checkpoints. The original re-ran every turn on a fresh model; here ONE model per
checkpoint serves every turn and case, so the chat key/value cache is reused wherever it may be. Answers, histories
and the generated token ids must be identical.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from parity_helpers import load_chat_checkpoint
import pytest
import torch

import transformers_internvl  # noqa: F401
from transformers_internvl.modeling import chat_cache

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "generation_s11"))
from generation_s11_cases import CHECKPOINTS, FIXTURES, cases, load_expected, run_case, tile_size  # noqa: E402

EXPECTED = load_expected()


@functools.cache
def _checkpoint(name: str):
    return load_chat_checkpoint(FIXTURES / CHECKPOINTS[name][0], tile_size)


def _set_system(model, value):
    if value is None:
        del model.system_message
    else:
        model.system_message = value


def _run(name: str, case: dict) -> tuple[dict, list]:
    model, tokenizer, size = _checkpoint(name)
    captured: list = []
    reused: list = []
    generate = type(model).generate
    reusing = chat_cache.generate_reusing_cache

    def recording_generate(*args, **kwargs):  # new tokens only, as the original's generate returns them
        output = generate(model, *args, **kwargs)
        captured.append(output[:, kwargs["input_ids"].shape[1] :].tolist())
        return output

    def counting_reuse(*args, **kwargs):
        state = model.__dict__.get(chat_cache._STATE_ATTRIBUTE)
        reused.append(state is not None)
        return reusing(*args, **kwargs)

    model.generate = recording_generate
    chat_cache.generate_reusing_cache = counting_reuse
    try:
        result = run_case(torch, model, tokenizer, case, size, lambda: model, _set_system)
    finally:
        del model.generate
        del model.system_message
        chat_cache.generate_reusing_cache = reusing
    result["generate_calls"] = captured
    return result, reused


PARAMS = [pytest.param(name, case, id=f"{name}-{case['name']}") for name in CHECKPOINTS for case in cases()]


@pytest.mark.parametrize("name, case", PARAMS)
def test_answers_and_ids_match_the_original(name, case):
    expected = EXPECTED[name]["cases"][case["name"]]
    result, reused = _run(name, case)
    assert result == expected
    if case["kind"] == "conversation" and len(case["turns"]) > 1 and case["name"] != "conv_beams_turns":
        assert any(reused[1:])  # later turns went through the kept cache (beam search never does)


# ---------------------------------------------------------------------------------------------------------------------
# pipeline("image-text-to-text"), generate and streaming, checked against `model.chat` / each other on the same
# held-out checkpoints (original OpenGVLab folders: weights + tokenizer files).

PIPELINE_CHECKPOINTS = ["qwen2-train", "phi3-su", "internlm2-tie-bias", "llama3-hermes"]
GREEDY8 = {"max_new_tokens": 8, "do_sample": False}
SAMPLE8 = {"max_new_tokens": 8, "do_sample": True, "top_k": 10}


def _image(seed: int, size=(500, 300)):
    import numpy
    from PIL import Image

    return Image.fromarray(numpy.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=numpy.uint8))


def _user(images, text):
    return {"role": "user", "content": [{"type": "image", "image": image} for image in images] + [_text(text)]}


def _text(text):
    return {"type": "text", "text": text}


_PIPES: dict[str, object] = {}


def _pipe(name: str):
    if name not in _PIPES:
        from transformers import pipeline

        torch.set_num_threads(1)
        _PIPES[name] = pipeline("image-text-to-text", model=str(FIXTURES / CHECKPOINTS[name][0]))
    return _PIPES[name]


def _chat(pipe, images, question, config=GREEDY8, history=None):
    """`model.chat` on the tiles the pipeline's processor makes of `images` (re-run from scratch)."""
    processor, model = pipe.processor, pipe.model
    pixel_values = tile_counts = None
    if images:
        tiles = processor.image_processor(images=images, return_tensors="pt")
        pixel_values, tile_counts = tiles["pixel_values"], tiles["num_tiles"].tolist()
    model.reuse_chat_cache = False
    try:
        return model.chat(processor.tokenizer, pixel_values, question, dict(config), history=history,
                          num_patches_list=tile_counts)  # fmt: skip
    finally:
        del model.reuse_chat_cache


def _generated(pipe, messages, **kwargs):
    return pipe(text=messages, **kwargs)[0]["generated_text"]


@pytest.mark.parametrize("name", PIPELINE_CHECKPOINTS)
def test_pipeline_answers_equal_chat(name):
    """One image, two images (`Image-i: <image>` lines), text only, a multi-turn history, a system message, beam
    search and seeded sampling through `generate_kwargs`: the pipeline's new text (transformers' decoding, not
    stripped) is `model.chat`'s answer (the original's decoding, stripped)."""
    pipe = _pipe(name)
    one, tall = _image(0), _image(1, (300, 900))
    calls = [
        ([_user([one], "What is this?")], ([one], "<image>\nWhat is this?", GREEDY8, None, None)),
        ([_user([one, tall], "Compare.")], ([one, tall], "Image-1: <image>\nImage-2: <image>\nCompare.", GREEDY8,
                                             None, None)),  # fmt: skip
        ([_user([], "Hello there")], ([], "Hello there", GREEDY8, None, None)),
        (
            [_user([one], "What is this?"), {"role": "assistant", "content": [_text("A cat.")]}, _user([], "Colour?")],
            ([one], "Colour?", GREEDY8, [("<image>\nWhat is this?", "A cat.")], None),
        ),
        (
            [{"role": "system", "content": [_text("You are a pirate.")]}, _user([one], "What is this?")],
            ([one], "<image>\nWhat is this?", GREEDY8, None, "You are a pirate."),
        ),
        ([_user([one], "What is this?")], ([one], "<image>\nWhat is this?", dict(GREEDY8, num_beams=3), None, None)),
        ([_user([one], "What is this?")], ([one], "<image>\nWhat is this?", SAMPLE8, None, None)),
    ]
    for messages, (images, question, config, history, system) in calls:
        torch.manual_seed(3)
        conversation = _generated(pipe, messages, generate_kwargs=config)
        assert conversation[:-1] == messages and conversation[-1]["role"] == "assistant"
        try:
            if system is not None:
                pipe.model.system_message = system
            torch.manual_seed(3)
            expected = _chat(pipe, images, question, config, history)
        finally:
            del pipe.model.system_message
        assert conversation[-1]["content"].strip() == expected, (question, config)


@pytest.mark.parametrize("name", ["qwen2-train", "phi3-su"])
def test_pipeline_output_structure_batches_and_lengths(name):
    """transformers' documented output: per input a list with one dict {"input_text", "generated_text"}; chat input
    with `return_full_text=True` (default) gives the conversation with the assistant turn appended, False the new
    text only; a string prompt gives the prompt + new text, or the new text only. `batch_size=2` over chats of 1, 2
    and 0 images equals each alone; `max_new_tokens` as a pipeline argument equals it in `generate_kwargs`."""
    pipe = _pipe(name)
    chats = [[_user([_image(0)], "What is this?")], [_user([_image(0), _image(1, (300, 900))], "Compare.")],
             [_user([], "Hi")]]  # fmt: skip
    alone = [pipe(text=chat, generate_kwargs=GREEDY8, return_full_text=False) for chat in chats]
    for chat, result in zip(chats, alone):
        assert isinstance(result, list) and len(result) == 1 and set(result[0]) == {"input_text", "generated_text"}
        assert result[0]["input_text"] == chat and isinstance(result[0]["generated_text"], str)
    batched = pipe(text=chats, generate_kwargs=GREEDY8, return_full_text=False, batch_size=2)
    assert batched == alone
    # (batch_size=3 would pad the text-only chat past Phi-3's 512-token `original_max_position_embeddings`, which
    # switches the whole batch to the long RoPE factors, as in the original)
    full = pipe(text=chats, generate_kwargs=GREEDY8)
    assert [r[0]["generated_text"] for r in full] == [
        [*chat, {"role": "assistant", "content": a[0]["generated_text"]}] for chat, a in zip(chats, alone)
    ]
    short = pipe(text=chats[0], max_new_tokens=3)[0]["generated_text"][-1]["content"]
    assert short == pipe(text=chats[0], generate_kwargs={"max_new_tokens": 3})[0]["generated_text"][-1]["content"]
    assert short != alone[0][0]["generated_text"]
    prompt = pipe.processor.apply_chat_template(chats[0], add_generation_prompt=True)  # the rendered chat, as text
    assert isinstance(prompt, str) and "<image>" in prompt
    new_text = pipe(images=[_image(0)], text=prompt, generate_kwargs=GREEDY8, return_full_text=False)
    full_text = pipe(images=[_image(0)], text=prompt, generate_kwargs=GREEDY8)
    assert new_text[0]["input_text"] == prompt
    assert full_text[0]["generated_text"] == prompt + new_text[0]["generated_text"]
    assert new_text[0]["generated_text"] == alone[0][0]["generated_text"]  # the same prompt as the message form


def _batch_inputs(name: str):
    """The left-padded `batch_chat` prompts (1 and 2 tiles) with their tiles, as `batch_chat` hands them to
    `generate`, and the template's end token."""
    model, tokenizer, size = _checkpoint(name)
    pixel_values = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    captured = {}
    generate = type(model).generate

    def recording_generate(*args, **kwargs):
        captured.update(kwargs)
        return generate(model, *args, **kwargs)

    model.generate = recording_generate
    try:
        model.batch_chat(tokenizer, pixel_values, ["Hi.", "Describe this one in much more detail please."],
                         {"max_new_tokens": 1, "do_sample": False}, num_patches_list=[1, 2])  # fmt: skip
    finally:
        del model.generate
    assert (captured["attention_mask"] == 0).any()
    eos = tokenizer.convert_tokens_to_ids(model.conv_template.sep.strip())
    return model, tokenizer, captured["input_ids"], captured["attention_mask"], pixel_values, eos


@pytest.mark.parametrize("name", PIPELINE_CHECKPOINTS)
def test_generate_inputs_embeds_use_cache_and_logits_to_keep(name):
    """`generate(input_ids, inputs_embeds=<embeddings with the image features placed>)` and
    `generate(inputs_embeds=...)` (new tokens only, transformers' convention), and plain token embeddings with
    `pixel_values` (slots found by the `<IMG_CONTEXT>` embedding) give the tokens of
    `generate(input_ids, pixel_values)`; `use_cache=False` and a static cache the dynamic cache's tokens;
    `logits_to_keep` (int or indices)
    the matching slice of the full logits. Before the fix, `input_ids` + `inputs_embeds` without `pixel_values`
    raised "image tokens but no pixel_values" although the embeddings already hold the image features."""
    model, _, input_ids, attention_mask, pixel_values, eos = _batch_inputs(name)
    settings = {"max_new_tokens": 10, "do_sample": False, "eos_token_id": eos, "pad_token_id": eos}
    with torch.no_grad():
        reference = model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                                   **settings)  # fmt: skip
        uncached = model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                                  use_cache=False, **settings)  # fmt: skip
        static = model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                                cache_implementation="static", **settings)  # fmt: skip
        embeds = model.get_input_embeddings()(input_ids).clone()
        features = model.extract_feature(pixel_values)
        embeds[input_ids == model.config.image_token_id] = features.reshape(-1, features.shape[-1])
        with_ids = model.generate(input_ids=input_ids, inputs_embeds=embeds, attention_mask=attention_mask, **settings)
        embeds_only = model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **settings)
        raw = model.get_input_embeddings()(input_ids)  # image slots still hold the <IMG_CONTEXT> embedding
        raw_with_pixels = model.generate(inputs_embeds=raw, attention_mask=attention_mask, pixel_values=pixel_values,
                                         **settings)  # fmt: skip
        logits = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values).logits
        kept = {
            keep: model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                        logits_to_keep=keep).logits  # fmt: skip
            for keep in (1, 3)
        }
        positions = torch.tensor([0, 5, input_ids.shape[1] - 1])
        at = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                   logits_to_keep=positions).logits  # fmt: skip
    assert torch.equal(uncached, reference)
    assert torch.equal(static, reference)
    assert torch.equal(with_ids, reference)
    assert torch.equal(embeds_only, reference[:, input_ids.shape[1] :])
    assert torch.equal(raw_with_pixels, reference[:, input_ids.shape[1] :])
    for keep, value in kept.items():
        assert value.shape[1] == keep
        torch.testing.assert_close(value, logits[:, -keep:], atol=1e-5, rtol=0)
    torch.testing.assert_close(at, logits[:, positions], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", PIPELINE_CHECKPOINTS)
def test_streamed_text_equals_the_answer(name):
    """`TextIteratorStreamer` (from a thread, as the InternVL README streams `chat`) and `TextStreamer` over 40 new
    tokens of random models, whose answers hold multi-byte characters split over several byte tokens: the streamed text
    equals the decoded answer of `generate`, and, through `chat`, the chat answer (before stripping)."""
    import threading

    from transformers import TextIteratorStreamer, TextStreamer

    model, tokenizer, input_ids, attention_mask, pixel_values, eos = _batch_inputs(name)
    row, tiles = input_ids[1:2], pixel_values[1:]
    settings = {"max_new_tokens": 40, "do_sample": False, "eos_token_id": eos}
    with torch.no_grad():
        output = model.generate(input_ids=row, attention_mask=attention_mask[1:2], pixel_values=tiles, **settings)
    text = tokenizer.decode(output[0, row.shape[1] :], skip_special_tokens=True)
    assert any(ord(character) > 127 for character in text)  # multi-byte characters are streamed
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
    inputs = {"input_ids": row, "attention_mask": attention_mask[1:2], "pixel_values": tiles}
    thread = threading.Thread(target=model.generate, kwargs={**inputs, "streamer": streamer, **settings})
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    assert streamed == text

    class Recording(TextStreamer):
        pieces: list

        def on_finalized_text(self, piece, stream_end=False):
            self.pieces = [*getattr(self, "pieces", []), piece]

    recorder = Recording(tokenizer, skip_prompt=True, skip_special_tokens=True)
    config = {"max_new_tokens": 40, "do_sample": False, "streamer": recorder}
    answer = model.chat(tokenizer, tiles, "Describe this one in much more detail please.", config, num_patches_list=[2])
    assert "".join(recorder.pieces).strip() == answer


@pytest.mark.parametrize("name", ["qwen2-train", "phi3-su", "internlm2-tie-bias"])
def test_cli_chat_answers_equal_chat(name, tmp_path, monkeypatch, capsys):
    """`transformers-internvl chat FOLDER --image X --prompt Q` prints (streams) `model.chat`'s answer for the
    processor's tiles of X, greedy, and sampled with `--temperature --seed`; an interactive session (stdin, 3 turns,
    the image in the first) prints the answers
    `chat` gives with the history passed back (re-run from scratch each turn), while the CLI reuses its cache."""
    import io

    from transformers_internvl.cli import main

    pipe = _pipe(name)
    image_path = tmp_path / "picture.png"
    _image(4, (640, 420)).save(image_path)
    folder = str(FIXTURES / CHECKPOINTS[name][0])
    from PIL import Image

    image = Image.open(image_path).convert("RGB")
    assert main(["chat", folder, "--image", str(image_path), "--prompt", "What is this?", "--max-new-tokens", "8"]) == 0
    expected = _chat(pipe, [image], "<image>\nWhat is this?")
    assert capsys.readouterr().out.strip() == expected

    sampled = ["chat", folder, "--image", str(image_path), "--prompt", "What is this?", "--max-new-tokens", "10",
               "--temperature", "0.8", "--seed", "5"]  # fmt: skip
    assert main(sampled) == 0
    torch.manual_seed(5)
    sampling = {"max_new_tokens": 10, "do_sample": True, "temperature": 0.8}
    expected = _chat(pipe, [image], "<image>\nWhat is this?", sampling)
    assert capsys.readouterr().out.strip() == expected

    questions = ["What is this?", "Why?", "Tell me more, please."]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(questions) + "\nexit\n"))
    assert main(["chat", folder, "--image", str(image_path), "--max-new-tokens", "8"]) == 0
    printed = capsys.readouterr().out
    history, answers = None, []
    for index, question in enumerate(questions):
        # (a copy: chat() extends a given history list in place, as the original does)
        answer = _chat(pipe, [image], question if index else "<image>\n" + question, history=list(history or []))
        history = [*(history or []), ("<image>\n" + question if not index else question, answer)]
        answers.append(answer)
    assert [line.strip() for line in printed.strip().splitlines()] == answers


@pytest.mark.parametrize("name", ["qwen2-train", "llama-vit6b-224", "llama3-hermes"])
def test_processor_batch_of_different_image_counts_equals_each_alone(name):
    """A left-padded processor batch of a two-image chat, a text-only chat and a one-image chat (`num_tiles` per
    image, zero tiles for the text-only sample) gives each sample's greedy tokens when run alone."""
    pipe = _pipe(name)
    processor, model = pipe.processor, pipe.model
    first, tall, small = _image(0), _image(1, (300, 900)), _image(2, (200, 200))
    chats = [[_user([first, tall], "Compare.")], [_user([], "Just text, a longer question here?")],
             [_user([small], "Describe.")]]  # fmt: skip
    images = [[first, tall], [], [small]]
    texts = [processor.apply_chat_template(chat, add_generation_prompt=True) for chat in chats]
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True)
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        together = model.generate(**batch, max_new_tokens=8, do_sample=False)
        for index, (text, sample_images) in enumerate(zip(texts, images)):
            alone = processor(text=[text], images=[sample_images] if sample_images else None, return_tensors="pt")
            output = model.generate(**alone, max_new_tokens=8, do_sample=False)
            new = output[0, alone["input_ids"].shape[1] :].tolist()
            assert together[index, batch["input_ids"].shape[1] :].tolist()[: len(new)] == new
