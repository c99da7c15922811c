"""Adversarial checks of issue 13's fast paths: they must never change results.

Multi-turn `chat()` with the kept key/value cache must give the answers of a run that re-encodes every turn (the
original's behaviour, `reuse_chat_cache = False`), whatever changes between turns.
"""

from __future__ import annotations

import copy
import types

import pytest
import torch
from helpers import INTERNLM2_DIR, QWEN2_DIR, TOKENIZERS, small_tiles
from test_chat_cache_reuse import GREEDY, conversation
from transformers import AutoModelForImageTextToText, AutoTokenizer, GenerationConfig, Qwen2Config

import transformers_internvl  # noqa: F401
from transformers_internvl.modeling.chat_cache import (
    ChatCacheState,
    can_reuse,
    length_dependent_rope_limit,
    reusable_prefix_length,
)


@pytest.fixture
def qwen2(small_tile_qwen2):
    """A copy of the shared small-tile Qwen2 model per test (the tests change its weights, dtype or generation
    config); 112 px tiles, as the tile size does not matter to these checks."""
    return copy.deepcopy(small_tile_qwen2)


def _image(seed: int = 0) -> torch.Tensor:
    return small_tiles(1, seed)


def test_internlm2_dynamic_ntk_rope_turns_equal_a_fresh_run(qwen2_tokenizer):
    """The tiny InternLM2 has dynamic NTK rope above 128 tokens: a fresh run rotates every key with the base of the
    whole prompt's length, which keys cached by an earlier (shorter) forward pass do not have."""
    model = AutoModelForImageTextToText.from_pretrained(INTERNLM2_DIR).eval()
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / "internlm2-dummy-prefix")
    # The model's vocabulary is larger than this tokenizer's: keep the answers decodable.
    config = {**GREEDY, "suppress_tokens": list(range(len(tokenizer), model.config.text_config.vocab_size))}
    turns = [(None, "Hello there"), (None, "And more?"), (None, "Again?")]
    reused = conversation(model, tokenizer, turns, reuse=True, generation_config=config)
    assert reused == conversation(model, tokenizer, turns, reuse=False, generation_config=config)


def test_length_dependent_rope_limit():
    internlm2 = AutoModelForImageTextToText.from_pretrained(INTERNLM2_DIR).config.text_config
    assert length_dependent_rope_limit(internlm2) == 128  # rope_scaling {"type": "dynamic"}, 128 positions
    assert length_dependent_rope_limit(Qwen2Config()) is None
    dynamic = Qwen2Config(max_position_embeddings=64, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    assert length_dependent_rope_limit(dynamic) == 64
    no_length = types.SimpleNamespace(rope_scaling={"type": "dynamic", "factor": 2.0})
    assert length_dependent_rope_limit(no_length) == 0  # no reuse, not a `min()` error inside chat()
    state = ChatCacheState(torch.tensor([1, 2, 3, 4]), None, None)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    assert reusable_prefix_length(state, ids, None, 9) == 4
    assert reusable_prefix_length(state, ids, None, 9, max_length=5) == 4
    assert reusable_prefix_length(state, ids, None, 9, max_length=4) == 0  # the new prompt is past the limit
    long_state = ChatCacheState(torch.tensor([1, 2, 3, 4, 6, 7]), None, None)
    assert reusable_prefix_length(long_state, ids, None, 9, max_length=5) == 0  # the cache was built past it


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda model: model.to(torch.bfloat16), id="dtype"),
        pytest.param(
            lambda model: model.load_state_dict(
                {name: value * 1.5 if "k_proj.weight" in name else value for name, value in model.state_dict().items()}
            ),
            id="load_state_dict",
        ),
        pytest.param(
            lambda model: [
                parameter.mul_(1.5) for name, parameter in model.named_parameters() if "k_proj.weight" in name
            ],
            id="in_place",
        ),
    ],
)
def test_weights_changed_between_turns_are_not_served_from_the_cache(qwen2, qwen2_tokenizer, change):
    """A cache built with other weights (or another dtype) holds other keys and values: the turn after the change
    must be the one a fresh run gives with the new weights."""
    pixel_values = _image()
    turns = [(pixel_values, "Describe the image."), (pixel_values, "More?"), (pixel_values, "Again?")]
    original = {name: value.clone() for name, value in qwen2.state_dict().items()}

    def between(index):
        if index == 0:
            qwen2.to(torch.float32)
            qwen2.load_state_dict(original)
        if index == 1:
            with torch.no_grad():
                change(qwen2)

    reused = conversation(qwen2, qwen2_tokenizer, turns, reuse=True, between=between)
    fresh = conversation(qwen2, qwen2_tokenizer, turns, reuse=False, between=between)
    assert reused == fresh


def test_prompt_lookup_turn_equals_a_fresh_run(qwen2, qwen2_tokenizer):
    """Assisted generation (here prompt lookup) re-runs candidate tokens against the cache; a kept cache gave other
    greedy answers. Such turns run without reuse."""
    pixel_values = _image()
    lookup = {**GREEDY, "prompt_lookup_num_tokens": 3}
    turns = [(pixel_values, "Describe the image."), (pixel_values, "More?"), (pixel_values, "Again?")]
    greedy = conversation(qwen2, qwen2_tokenizer, turns, reuse=False)
    assert conversation(qwen2, qwen2_tokenizer, turns, reuse=True, generation_config=lookup) == greedy
    assert conversation(qwen2, qwen2_tokenizer, turns, reuse=False, generation_config=lookup) == greedy


def test_decoding_mode_from_the_models_generation_config_disables_reuse(qwen2, qwen2_tokenizer):
    """A passed `GenerationConfig` leaves unset fields to `model.generation_config`: beam search set there is beam
    search, which reorders the cache; no chat cache is kept."""
    qwen2.generation_config.num_beams = 2
    qwen2.clear_chat_cache()
    qwen2.chat(qwen2_tokenizer, None, "Hello", GenerationConfig(max_new_tokens=4, do_sample=False))
    assert "_chat_cache_state" not in qwen2.__dict__
    qwen2.generation_config.num_beams = 1
    qwen2.chat(qwen2_tokenizer, None, "Hello", GenerationConfig(max_new_tokens=4, do_sample=False))
    assert "_chat_cache_state" in qwen2.__dict__


def _stub_model(prepare):
    model = types.SimpleNamespace(reuse_chat_cache=True)
    if prepare is not None:
        model._prepare_generation_config = prepare
    return model


@pytest.mark.parametrize(
    "prepare",
    [
        None,  # renamed away
        lambda generation_config: (GenerationConfig(), {}),  # another signature
        lambda generation_config, **kwargs: GenerationConfig(),  # returns the config alone
        lambda generation_config, **kwargs: ({"num_beams": 1}, {}),  # returns something else
    ],
    ids=["missing", "signature", "config-only", "not-a-config"],
)
def test_a_changed_private_generation_api_turns_reuse_off_not_chat(prepare):
    """`can_reuse` reads the effective config through transformers' private `_prepare_generation_config`: if a
    transformers release changes it, chat() runs without reuse (the original's behaviour) instead of failing."""
    input_ids = torch.ones(1, 4, dtype=torch.long)
    assert can_reuse(_stub_model(prepare), input_ids, {"max_new_tokens": 2}) is False
    works = _stub_model(lambda generation_config, **kwargs: (GenerationConfig(**kwargs), {}))
    assert can_reuse(works, input_ids, {"max_new_tokens": 2}) is True
    assert can_reuse(works, input_ids, {"max_new_tokens": 2, "num_beams": 2}) is False


def test_cache_is_still_reused_when_nothing_changed(qwen2, qwen2_tokenizer):
    """The checks above must not turn reuse off for an ordinary conversation (fp32, same weights)."""
    pixel_values = _image()
    prefill_lengths = []
    handle = qwen2.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: prefill_lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    try:
        answers = conversation(
            qwen2, qwen2_tokenizer, [(pixel_values, "Describe the image."), (pixel_values, "More?")], reuse=True
        )
    finally:
        handle.remove()
    prompts = [length for length in prefill_lengths if length > 1]
    assert len(prompts) == 2 and prompts[0] > qwen2.num_image_token and prompts[1] < 40
    assert answers == conversation(
        qwen2, qwen2_tokenizer, [(pixel_values, "Describe the image."), (pixel_values, "More?")], reuse=False
    )


def test_dtype_change_between_turns_rebuilds_the_cache(qwen2, qwen2_tokenizer):
    """After `model.to(torch.bfloat16)` the next turn's cache is built in bfloat16, not grown from float32 keys (a
    text conversation: with an image, the pixels cast to the new dtype already differ from the cached ones)."""
    pixel_values = None
    qwen2.clear_chat_cache()
    _, history = qwen2.chat(qwen2_tokenizer, pixel_values, "Hello there.", GREEDY, return_history=True)
    qwen2.to(torch.bfloat16)
    reused = qwen2.chat(qwen2_tokenizer, pixel_values, "More?", GREEDY, history=tuple(history))
    assert qwen2.__dict__["_chat_cache_state"].cache.layers[0].keys.dtype == torch.bfloat16
    qwen2.reuse_chat_cache = False
    assert reused == qwen2.chat(qwen2_tokenizer, pixel_values, "More?", GREEDY, history=tuple(history))


# --- attn_implementation per tower: bad values are clear errors, not silently ignored ------------------------------


@pytest.mark.parametrize("bad", [{"vision": "sdpa"}, {"text": "eager"}, {"llm_config": "sdpa"}])
def test_a_misspelt_tower_key_is_refused_at_load_and_in_set_attn_implementation(bad, qwen2):
    """transformers' config setter drops unknown keys: `{"vision": "sdpa"}` changed nothing without a word."""
    key = next(iter(bad))
    with pytest.raises(ValueError, match=rf"'{key}'.*'vision_config', 'text_config'"):
        AutoModelForImageTextToText.from_pretrained(QWEN2_DIR, attn_implementation=bad)
    before = (qwen2.config.vision_config._attn_implementation, qwen2.config.text_config._attn_implementation)
    with pytest.raises(ValueError, match=rf"'{key}'.*'vision_config', 'text_config'"):
        qwen2.set_attn_implementation(bad)
    assert (qwen2.config.vision_config._attn_implementation, qwen2.config.text_config._attn_implementation) == before


@pytest.mark.parametrize(
    ("bad", "match"),
    [(5, r"`attn_implementation` must be .* got 5 \(int\)"), ({"vision_config": 3}, r"\['vision_config'\]` must be")],
)
def test_a_non_str_attn_implementation_is_a_type_error_naming_the_argument(bad, match, qwen2):
    """Before: `AttributeError: 'int' object has no attribute 'startswith'` from inside transformers."""
    with pytest.raises(TypeError, match=match):
        AutoModelForImageTextToText.from_pretrained(QWEN2_DIR, attn_implementation=bad)
    with pytest.raises(TypeError, match=match):
        qwen2.set_attn_implementation(bad)


def test_valid_per_tower_choices_still_apply(qwen2):
    model = AutoModelForImageTextToText.from_pretrained(
        QWEN2_DIR, attn_implementation={"": "sdpa", "vision_config": "eager", "text_config": "sdpa"}
    )
    assert model.config.vision_config._attn_implementation == "eager"
    assert model.config.text_config._attn_implementation == "sdpa"
    qwen2.set_attn_implementation({"vision_config": "sdpa", "text_config": None})
    assert qwen2.config.vision_config._attn_implementation == "sdpa"


# --- static cache / compile options: bad options are clear errors ---------------------------------------------------


def test_static_decode_config_refuses_bad_compile_options():
    from transformers_internvl.static_decode import static_decode_config

    with pytest.raises(ValueError, match=r"`compile_mode` must be one of .*'reduce-overhead'.* got 'fast'"):
        static_decode_config(compile_mode="fast")  # was accepted; ignored on a CPU, an error at the first GPU call
    for name in ("compile", "fullgraph", "compile_on_cpu"):
        with pytest.raises(TypeError, match=rf"`{name}` must be True or False, got 'no'"):
            static_decode_config(**{name: "no"})  # a truthy string compiled
    assert static_decode_config(compile_mode="max-autotune").compile_config.mode == "max-autotune"


def test_cli_max_cache_len_without_compile_is_an_error(tmp_path, capsys):
    """`--max-cache-len` alone was ignored without a word (it only sizes the `--compile` static cache)."""
    from helpers import original_model_dir

    from transformers_internvl.cli import main

    model_dir = original_model_dir(tmp_path / "model")
    assert main(["chat", str(model_dir), "--prompt", "Hi", "--max-cache-len", "64"]) == 1
    assert "--max-cache-len needs --compile" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "value"), [("select_layer", -2), ("ps_version", "v1")])
def test_config_edits_between_turns_are_not_served_from_the_cache(qwen2, qwen2_tokenizer, name, value):
    """The cached image keys were built with the old `select_layer` / `ps_version`: the next turn must re-encode.
    (Two tiles: with one small tile the edit changed too few answers for a served stale prefix to show.)"""
    pixel_values = small_tiles(2)
    turns = [(pixel_values, "Describe the image."), (pixel_values, "More?")]
    default = getattr(qwen2.config, name)

    def between(index):
        setattr(qwen2.config, name, default if index == 0 else value)

    reused = conversation(qwen2, qwen2_tokenizer, turns, reuse=True, between=between)
    assert reused == conversation(qwen2, qwen2_tokenizer, turns, reuse=False, between=between)


def _edit_history(kind):
    def edit(history):
        if kind == "truncated":
            return history[:1]
        if kind == "cut_answer":  # an answer cut mid-word: its tokens differ from the cached ones at the cut
            return [(history[0][0], history[0][1][:3]), *history[1:]]
        if kind == "control_tokens":  # template strings inside an answer (tokenized as control tokens)
            return [(history[0][0], history[0][1] + "<|im_end|>\n<|im_start|>user\nx"), *history[1:]]
        return [("<image>\nSomething else entirely.", "An answer the model never gave.")]  # another conversation

    return edit


@pytest.mark.parametrize("kind", ["truncated", "cut_answer", "control_tokens", "foreign"])
def test_edited_histories_give_the_fresh_answers(small_tile_qwen2, qwen2_tokenizer, kind):
    pixel_values = _image()
    edit = _edit_history(kind)

    qwen2_model = small_tile_qwen2  # shared: only its reuse setting and chat cache change, and are restored

    def conversation(reuse):
        qwen2_model.clear_chat_cache()
        qwen2_model.reuse_chat_cache = reuse
        try:
            _, history = qwen2_model.chat(qwen2_tokenizer, pixel_values, "Describe.", GREEDY, return_history=True)
            _, history = qwen2_model.chat(
                qwen2_tokenizer, pixel_values, "More?", GREEDY, history=history, return_history=True
            )
            return qwen2_model.chat(qwen2_tokenizer, pixel_values, "Again?", GREEDY, history=edit(history))
        finally:
            qwen2_model.reuse_chat_cache = True
            qwen2_model.clear_chat_cache()

    assert conversation(True) == conversation(False)


def test_interleaved_conversations_and_images_give_the_fresh_answers(small_tile_qwen2, qwen2_tokenizer):
    """Two conversations on one model, another image of the same shape, a new image, a turn without image,
    batch_chat in between: every answer is the fresh run's."""
    first, second = _image(0), _image(1)

    def run(reuse):
        model, tokenizer = small_tile_qwen2, qwen2_tokenizer
        model.clear_chat_cache()
        model.reuse_chat_cache = reuse
        try:
            answers = []
            a1, h1 = model.chat(tokenizer, first, "Describe.", GREEDY, return_history=True)
            a2, h2 = model.chat(tokenizer, second, "Describe.", GREEDY, return_history=True)
            answers += [a1, a2, model.batch_chat(tokenizer, torch.cat([first, second]), ["a?", "b?"], GREEDY, [1, 1])]
            a1, h1 = model.chat(tokenizer, first, "More?", GREEDY, history=h1, return_history=True)
            answers += [a1, model.chat(tokenizer, second, "More?", GREEDY, history=h2)]
            both = torch.cat([first, second])
            answers.append(
                model.chat(tokenizer, both, "Image-2: <image>\nCompare.", GREEDY, h1, num_patches_list=[1, 1])
            )
            answers.append(model.chat(tokenizer, None, "And now?", GREEDY, history=h1))
            return answers
        finally:
            model.reuse_chat_cache = True
            model.clear_chat_cache()

    assert run(True) == run(False)
