"""Static key/value cache (+ torch.compile) decoding offered through the generation config (issue 13).

Greedy tokens with a static cache must be the dynamic cache's tokens, which are the original implementation's
(`generated_ids` of the fixtures), for both LLM families: transformers' Qwen2 and this package's InternLM2.
"""

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoTokenizer, GenerationConfig

import transformers_internvl  # noqa: F401
from transformers_internvl.static_decode import static_decode_config

FIXTURES = Path(__file__).parent / "fixtures"
# name -> (image_token_id, pad id)
MODELS = {"tiny-qwen2": (995, 990), "tiny-internlm2": (997, 2)}


def _load(name):
    image_token_id, _ = MODELS[name]
    return AutoModelForImageTextToText.from_pretrained(FIXTURES / "models" / name, image_token_id=image_token_id).eval()


@pytest.fixture(scope="module", params=sorted(MODELS))
def case(request):
    name = request.param
    return name, _load(name), load_file(FIXTURES / "models" / name / "io.safetensors")


def _greedy(model, pad_token_id, **kwargs):
    kwargs.setdefault("max_new_tokens", 8)
    with torch.no_grad():
        return model.generate(do_sample=False, eos_token_id=None, pad_token_id=pad_token_id, **kwargs)


def test_static_cache_gives_the_dynamic_and_original_tokens(case):
    name, model, io = case
    pad = MODELS[name][1]
    inputs = dict(input_ids=io["input_ids"], attention_mask=io["attention_mask"], pixel_values=io["pixel_values"])
    dynamic = _greedy(model, pad, **inputs)
    static = _greedy(
        model, pad, generation_config=static_decode_config(model.generation_config, compile=False), **inputs
    )
    assert torch.equal(static, dynamic)
    assert torch.equal(static[:, io["input_ids"].shape[1] :], io["generated_ids"])


def test_static_cache_set_on_the_models_generation_config(case):
    """`model.generation_config = static_decode_config(...)`: plain `generate` calls use it, a sized cache too."""
    name, model, io = case
    pad = MODELS[name][1]
    inputs = dict(input_ids=io["input_ids"], pixel_values=io["pixel_values"])
    dynamic = _greedy(model, pad, **inputs)
    saved = model.generation_config
    try:
        model.generation_config = static_decode_config(
            saved, compile=False, max_cache_len=io["input_ids"].shape[1] + 32
        )
        seen = []
        hook = model.model.language_model.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(type(kwargs.get("cache")).__name__), with_kwargs=True
        )
        try:
            static = _greedy(model, pad, **inputs)
        finally:
            hook.remove()
    finally:
        model.generation_config = saved
    assert seen and set(seen) == {"StaticCache"}
    assert torch.equal(static, dynamic)


def test_static_cache_left_padded_batch_of_image_and_text_samples(case):
    name, model, io = case
    pad = MODELS[name][1]
    image_ids = io["input_ids"][0]
    low, high = (200, 980) if name == "tiny-qwen2" else (100, 980)
    text_ids = torch.randint(low, high, (12,), generator=torch.Generator().manual_seed(3))
    length = image_ids.shape[0]
    input_ids = torch.full((2, length), pad, dtype=torch.long)
    attention_mask = torch.zeros((2, length), dtype=torch.long)
    input_ids[0], attention_mask[0] = image_ids, 1
    input_ids[1, -12:], attention_mask[1, -12:] = text_ids, 1
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=io["pixel_values"])
    dynamic = _greedy(model, pad, **inputs)
    static = _greedy(
        model, pad, generation_config=static_decode_config(model.generation_config, compile=False), **inputs
    )
    assert torch.equal(static, dynamic)
    assert torch.equal(static[0, length:], io["generated_ids"][0])


def test_chat_with_a_static_cache_answers_as_with_the_dynamic_cache():
    model = _load("tiny-qwen2")
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "tokenizers" / "qwen2-tiny")
    pixel_values = load_file(FIXTURES / "models" / "tiny-qwen2" / "io.safetensors")["pixel_values"]
    dynamic = model.chat(tokenizer, pixel_values, "Describe.", dict(max_new_tokens=6, do_sample=False))
    model.clear_chat_cache()
    static_config = static_decode_config(GenerationConfig(max_new_tokens=6, do_sample=False), compile=False)
    static = model.chat(tokenizer, pixel_values, "Describe.", static_config)
    assert static == dynamic
    # A static cache is not kept between turns (chat-cache reuse needs a dynamic cache).
    assert "_chat_cache_state" not in model.__dict__


def test_no_compile_on_cpu_unless_asked():
    model = _load("tiny-qwen2")
    io = load_file(FIXTURES / "models" / "tiny-qwen2" / "io.safetensors")
    config = static_decode_config(model.generation_config)  # compile=True, but transformers compiles on GPUs only
    _greedy(model, 990, input_ids=io["input_ids"], pixel_values=io["pixel_values"], generation_config=config)
    assert not hasattr(model, "_compiled_call")


@pytest.mark.slow
def test_compiled_static_decode_with_internlm2_matches_dynamic_cache():
    """Compiled (fullgraph, on CPU) decode of this package's own InternLM2 LLM: no graph break, same tokens.
    (transformers' Qwen2 is covered by `test_generation.py`.) ~60 s on a CPU, most of it compiling."""
    model = _load("tiny-internlm2")
    io = load_file(FIXTURES / "models" / "tiny-internlm2" / "io.safetensors")
    inputs = dict(input_ids=io["input_ids"], pixel_values=io["pixel_values"])
    torch._dynamo.reset()
    config = static_decode_config(model.generation_config, compile_on_cpu=True)
    compiled = _greedy(model, 2, generation_config=config, **inputs)
    assert hasattr(model, "_compiled_call")
    assert torch.equal(compiled, _greedy(model, 2, **inputs))
    assert torch.equal(compiled[:, io["input_ids"].shape[1] :], io["generated_ids"])


def test_static_decode_config_copies_and_validates():
    base = GenerationConfig(max_new_tokens=5)
    before = base.to_dict()
    config = static_decode_config(base, max_cache_len=64, compile_mode="default", compile_on_cpu=True)
    assert base.to_dict() == before
    assert config.cache_implementation == "static" and config.max_cache_len == 64 and config.max_new_tokens == 5
    assert config.compile_config.fullgraph is True and config.compile_config.mode == "default"
    assert config.compile_config._compile_all_devices is True
    eager = static_decode_config(compile=False)
    assert eager.cache_implementation == "static" and eager.compile_config is None and eager.disable_compile is True
    with pytest.raises(TypeError, match="GenerationConfig"):
        static_decode_config({"max_new_tokens": 5})
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="max_cache_len"):
            static_decode_config(base, max_cache_len=bad)
    assert copy.deepcopy(config).compile_config.fullgraph is True
