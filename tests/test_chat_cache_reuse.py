"""`model.chat()` reuses the key/value cache of earlier turns with the same answers (issue 13)."""

from __future__ import annotations

import pytest
import torch
from helpers import small_tiles

import transformers_internvl  # noqa: F401
from transformers_internvl.modeling.chat_cache import reusable_prefix_length

GREEDY = {"max_new_tokens": 8, "do_sample": False}


@pytest.fixture(scope="module")
def model(small_tile_qwen2):
    """The shared small-tile Qwen2 model (112 px tiles; the tile size does not matter here): tests leave it as they
    found it (reuse setting and chat cache restored)."""
    return small_tile_qwen2


@pytest.fixture(scope="module")
def tokenizer(qwen2_tokenizer):
    return qwen2_tokenizer


class _CountVision:
    """Counts vision-tower calls and the prompt lengths the LLM runs on (forward hooks)."""

    def __init__(self, model):
        self.vision_calls = 0
        self.llm_lengths = []
        self.handles = [
            model.model.vision_model.register_forward_hook(lambda *_: self._vision()),
            model.model.language_model.register_forward_pre_hook(self._llm, with_kwargs=True),
        ]

    def _vision(self):
        self.vision_calls += 1

    def _llm(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        self.llm_lengths.append(embeds.shape[1] if embeds is not None else kwargs["input_ids"].shape[1])

    def remove(self):
        for handle in self.handles:
            handle.remove()


def conversation(model, tokenizer, turns, reuse: bool, between=None, generation_config=GREEDY, catch=()):
    """The answers of `turns` as one `chat()` conversation, with the KV-cache reuse on or off. A turn is a
    `(pixel_values, question)` pair or a dict with `pixel_values`, `question` and optionally `config` (generation
    config) and `num_patches_list`. `between(index)` runs before turn `index`; an exception of a type in `catch`
    becomes that turn's answer as `(type name, message)` and the conversation goes on. The model's reuse setting and
    cache are restored after."""
    model.clear_chat_cache()
    model.reuse_chat_cache = reuse
    history, answers = None, []
    try:
        for index, turn in enumerate(turns):
            if not isinstance(turn, dict):
                turn = {"pixel_values": turn[0], "question": turn[1]}
            if between is not None:
                between(index)
            try:
                answer, history = model.chat(
                    tokenizer,
                    turn["pixel_values"],
                    turn["question"],
                    turn.get("config", generation_config),
                    history=history,
                    return_history=True,
                    num_patches_list=turn.get("num_patches_list"),
                )
            except catch as error:
                answer = (type(error).__name__, str(error))
            answers.append(answer)
    finally:
        model.reuse_chat_cache = True
        model.clear_chat_cache()
    return answers


def test_multi_turn_answers_are_the_same_with_and_without_reuse(model, tokenizer):
    pixel_values = small_tiles(2)
    questions = ["Describe the image.", "What colour is it?", "And the shape?"]
    for pixels in (pixel_values, None):
        turns = [(pixels, question) for question in questions]
        assert conversation(model, tokenizer, turns, reuse=True) == conversation(model, tokenizer, turns, reuse=False)


def test_second_turn_skips_the_image_and_the_history(model, tokenizer):
    pixel_values = small_tiles(1)
    model.clear_chat_cache()
    counter = _CountVision(model)
    try:
        _, history = model.chat(tokenizer, pixel_values, "Describe the image.", GREEDY, return_history=True)
        first_prefill = counter.llm_lengths[0]
        counter.llm_lengths.clear()
        model.chat(tokenizer, pixel_values, "More?", GREEDY, history=history, return_history=True)
    finally:
        counter.remove()
        model.clear_chat_cache()
    assert counter.vision_calls == 1  # the first turn only
    assert first_prefill > model.num_image_token and first_prefill > 100  # system prompt, image, question
    assert counter.llm_lengths[0] < 40  # only the tokens after the common prefix


def test_other_history_or_images_invalidate_the_cache(model, tokenizer):
    pixel_values = small_tiles(1)
    model.clear_chat_cache()
    counter = _CountVision(model)
    try:
        model.chat(tokenizer, pixel_values, "Describe the image.", GREEDY, return_history=True)
        # Another history that shares the system prompt and the image: the cached prefix serves it (causal K/V),
        # the rest runs; the answer is the one of a fresh run.
        other = [("<image>\nSomething else entirely.", "An answer the model never gave.")]
        reused = model.chat(tokenizer, pixel_values, "More?", GREEDY, history=tuple(other))
        assert counter.vision_calls == 1
        model.reuse_chat_cache = False
        fresh = model.chat(tokenizer, pixel_values, "More?", GREEDY, history=tuple(other))
        model.reuse_chat_cache = True
        assert reused == fresh and counter.vision_calls == 2
        # A history whose image comes after other text: image tokens after the common prefix, run from scratch.
        moved = [("Look at this: <image>\nWhat is it?", "A picture.")]
        reused = model.chat(tokenizer, pixel_values, "More?", GREEDY, history=tuple(moved))
        assert counter.vision_calls == 3
        model.reuse_chat_cache = False
        assert model.chat(tokenizer, pixel_values, "More?", GREEDY, history=tuple(moved)) == reused
        model.reuse_chat_cache = True
        # Other pixel values with the same prompt: the vision tower runs again.
        model.chat(tokenizer, pixel_values + 1, "More?", GREEDY, history=tuple(moved))
        assert counter.vision_calls == 5
    finally:
        model.reuse_chat_cache = True
        counter.remove()
        model.clear_chat_cache()


def test_reusable_prefix_length_rules():
    from transformers.cache_utils import DynamicCache

    from transformers_internvl.modeling.chat_cache import ChatCacheState

    pixels = torch.zeros(1, 3, 4, 4)
    state = ChatCacheState(torch.tensor([1, 2, 9, 9, 3, 4]), DynamicCache(), pixels)
    ids = torch.tensor([[1, 2, 9, 9, 3, 5, 6]])
    assert reusable_prefix_length(None, ids, pixels, 9) == 0
    assert reusable_prefix_length(state, ids, pixels, 9) == 5
    assert reusable_prefix_length(state, ids, pixels + 1, 9) == 0  # other images
    assert reusable_prefix_length(state, torch.tensor([[1, 2, 9, 9, 3, 4]]), pixels, 9) == 5  # one token left to run
    assert reusable_prefix_length(state, torch.tensor([[1, 7, 9, 9]]), pixels, 9) == 0  # image tokens after the prefix
    assert reusable_prefix_length(state, torch.tensor([[1, 2, 5, 6]]), None, 9) == 2
    assert reusable_prefix_length(state, torch.tensor([[1, 2, 5, 6]]), pixels, 9) == 0  # images, no image tokens
    assert reusable_prefix_length(state, ids, None, 9) == 0  # image tokens, no images


def test_generate_keeps_only_the_last_position_logits_at_prefill(model, tokenizer):
    assert model._supports_logits_to_keep()
    seen = []
    handle = model.register_forward_pre_hook(lambda m, a, k: seen.append(k.get("logits_to_keep")), with_kwargs=True)
    try:
        ids = tokenizer("Hello there", return_tensors="pt")
        model.generate(**ids, max_new_tokens=2, do_sample=False)
    finally:
        handle.remove()
    assert seen and seen[0] == 1
