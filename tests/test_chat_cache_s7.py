"""Session-7 attack on the multi-turn key/value-cache reuse of `model.chat()` (issue 13): it must never change an answer.

Each conversation runs twice, with the kept cache (`reuse_chat_cache = True`) and without it (every turn re-encoded, as
the original does); the answers must be equal. The models are tiny random InternVL checkpoints of the LLM families of
`fixtures/llm_families` (Llama, InternLM2) with 28 px tiles (one image token per tile), so a conversation takes well
under a second; the tiny Qwen2 model's conversations are in `test_chat_cache_reuse.py` / `test_attack_s5_chat.py`.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import FIXTURES, QWEN2_IMAGE_TOKEN_ID

import transformers_internvl  # noqa: F401
from transformers_internvl import InternVLConfig, InternVLForConditionalGeneration

GREEDY = {"max_new_tokens": 8, "do_sample": False}


def family_model(family: str) -> InternVLForConditionalGeneration:
    """A random InternVL model with the LLM of `fixtures/llm_families/<family>.json`, resized to the tiny Qwen2
    tokenizer (vocabulary 1000, `<|im_end|>` as end token, internvl2_5 template). The weights get extra noise so
    that greedy answers vary from token to token instead of repeating one token."""
    raw = json.loads((FIXTURES / "llm_families" / f"{family}.json").read_text())
    raw.pop("model_type", None)
    raw["template"] = "internvl2_5"
    raw["llm_config"].update(vocab_size=1000, bos_token_id=None, eos_token_id=992, pad_token_id=None)
    config = InternVLConfig(**raw)
    config.image_token_id = QWEN2_IMAGE_TOKEN_ID
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.float().eval()  # the fixtures say bfloat16


@pytest.fixture(scope="module")
def llama():
    return family_model("llama3")


@pytest.fixture(scope="module")
def internlm2():
    return family_model("internlm3_in_internlm2")


def _tiles(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


class _Prefills:
    """The number of positions each LLM forward pass runs (a served prefix leaves only the new tokens)."""

    def __init__(self, model):
        self.lengths: list[int] = []
        self.handle = model.model.language_model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        self.lengths.append(embeds.shape[1] if embeds is not None else kwargs["input_ids"].shape[1])

    def remove(self):
        self.handle.remove()


def _conversation(model, tokenizer, turns, reuse: bool, between=None) -> list:
    """The answers of `turns` (dicts: `pixel_values`, `question`, optional `config`, `seed`) as one conversation;
    `between(index)` runs before turn `index` (after the seed is set)."""
    model.clear_chat_cache()
    model.reuse_chat_cache = reuse
    history, answers = None, []
    try:
        for index, turn in enumerate(turns):
            if between is not None:
                between(index)
            if turn.get("seed") is not None:
                torch.manual_seed(turn["seed"])
            answer, history = model.chat(
                tokenizer,
                turn.get("pixel_values"),
                turn["question"],
                dict(turn.get("config", GREEDY)),
                history=history,
                return_history=True,
            )
            answers.append(answer)
    finally:
        model.reuse_chat_cache = True
        model.clear_chat_cache()
    return answers


def _reused_and_fresh(model, tokenizer, turns, between=None, setup=None) -> tuple[list, list, list[int]]:
    """Answers with and without reuse, and the first prefill length of each reused turn. `setup()` (if given) runs
    before each of the two conversations (to put weights or adapters back)."""
    if setup is not None:
        setup()
    prefills = _Prefills(model)
    firsts = []

    def record(index):
        if index:
            firsts.append(prefills.lengths[0] if prefills.lengths else None)
        prefills.lengths.clear()
        if between is not None:
            between(index)

    try:
        reused = _conversation(model, tokenizer, turns, True, record)
        firsts.append(prefills.lengths[0])
    finally:
        prefills.remove()
    if setup is not None:
        setup()
    fresh = _conversation(model, tokenizer, turns, False, between)
    return reused, fresh, firsts[1:]


# --- generation settings across LLM families (held: they pass; the prefixes are really served) --------------------

SETTINGS = {
    "greedy": GREEDY,
    "repetition_penalty": {"max_new_tokens": 10, "do_sample": False, "repetition_penalty": 1.5},
    "no_repeat_ngram_size": {"max_new_tokens": 12, "do_sample": False, "no_repeat_ngram_size": 2},
    "min_new_tokens": {"max_new_tokens": 12, "min_new_tokens": 10, "do_sample": False},
    "cut_mid_word": {"max_new_tokens": 3, "do_sample": False},  # cached tokens differ from the re-tokenized answer
    "one_token": {"max_new_tokens": 1, "do_sample": False},
    "eos_list": {"max_new_tokens": 12, "do_sample": False, "eos_token_id": [992, 500, 600, 700]},
    "prefill_chunks": {"max_new_tokens": 8, "do_sample": False, "prefill_chunk_size": 16},
    "sampling": {"max_new_tokens": 8, "do_sample": True, "top_k": 50, "temperature": 1.5},
}


# Two five-turn conversations per family; each turn has its own settings (the sampling turn its own seed).
CONVERSATIONS = {
    "a": ["greedy", "repetition_penalty", "no_repeat_ngram_size", "min_new_tokens", "cut_mid_word"],
    "b": ["one_token", "eos_list", "prefill_chunks", "sampling", "greedy"],
}


@pytest.mark.parametrize("family", ["llama", "internlm2"])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_turns_with_each_generation_setting_equal_the_fresh_answers(family, conversation, request, qwen2_tokenizer):
    model = request.getfixturevalue(family)
    pixel_values = _tiles(2)
    questions = ["Describe.", "More?", "Why so?", "ok", "Then?"]
    turns = [
        {"pixel_values": pixel_values, "question": question, "config": SETTINGS[setting], "seed": index}
        for index, (question, setting) in enumerate(zip(questions, CONVERSATIONS[conversation], strict=True))
    ]
    reused, fresh, prefills = _reused_and_fresh(model, qwen2_tokenizer, turns)
    assert reused == fresh
    assert all(length < 64 for length in prefills), prefills  # the system prompt alone is longer


def test_images_changing_between_turns_equal_the_fresh_answers(llama, qwen2_tokenizer):
    """Text first and an image only from the second turn; another image with another tile count; one tile of it;
    no image; two images with `num_patches_list` (one cached, one new)."""
    first, other = _tiles(2), _tiles(3, seed=5)
    turns = [
        {"question": "hi"},
        {"pixel_values": first, "question": "<image>\nlook"},
        {"pixel_values": first, "question": "again"},
        {"pixel_values": other, "question": "And this?"},
        {"pixel_values": other[:1], "question": "Now?"},
        {"question": "no image"},
    ]
    reused, fresh, _ = _reused_and_fresh(llama, qwen2_tokenizer, turns)
    assert reused == fresh


# --- state outside the weights that changes the answers (defects found in session 7) -------------------------------


def _peft_model(model):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], r=4, lora_alpha=64)
    config.init_lora_weights = False  # random B: the adapter changes the answers
    peft_model = peft.get_peft_model(model, config)
    peft_model.add_adapter("other", peft.LoraConfig(target_modules=["q_proj", "v_proj"], r=4, lora_alpha=64))
    for module in peft_model.modules():  # the second adapter also changes the answers
        if hasattr(module, "lora_B") and "other" in module.lora_B:
            torch.nn.init.normal_(module.lora_B["other"].weight, std=0.5)
    return peft_model.eval()


@pytest.mark.parametrize("change", ["disable_adapter", "set_adapter", "scale_layer"])
def test_a_peft_adapter_switched_between_turns_is_not_served_from_the_cache(change, qwen2_tokenizer):
    """Found in session 7: disabling, switching or rescaling a LoRA adapter changes no weight, dtype or config, so the
    second turn was served the K/V the first turn computed with the other adapter state: another answer than a
    fresh run gives."""
    peft_model = _peft_model(family_model("llama3"))
    model = peft_model.base_model.model
    pixel_values = _tiles(2)
    lora_layers = [module for module in peft_model.modules() if hasattr(module, "scale_layer")]

    def answers(reuse: bool) -> list[str]:
        model.clear_chat_cache()
        model.reuse_chat_cache = reuse
        peft_model.set_adapter("default")
        try:
            first, history = model.chat(qwen2_tokenizer, pixel_values, "Describe.", GREEDY, return_history=True)
            if change == "disable_adapter":
                with peft_model.disable_adapter():
                    second = model.chat(qwen2_tokenizer, pixel_values, "More?", GREEDY, history=history)
            elif change == "set_adapter":
                peft_model.set_adapter("other")
                second = model.chat(qwen2_tokenizer, pixel_values, "More?", GREEDY, history=history)
            else:
                for layer in lora_layers:
                    layer.scale_layer(0.1)
                second = model.chat(qwen2_tokenizer, pixel_values, "More?", GREEDY, history=history)
                for layer in lora_layers:
                    layer.unscale_layer(None)
            return [first, second]
        finally:
            peft_model.set_adapter("default")
            model.reuse_chat_cache = True
            model.clear_chat_cache()

    assert answers(reuse=True) == answers(reuse=False)


def test_an_unchanged_peft_adapter_still_reuses_the_cache(qwen2_tokenizer):
    peft_model = _peft_model(family_model("llama3"))
    model = peft_model.base_model.model
    turns = [{"pixel_values": _tiles(2), "question": question} for question in ("Describe.", "More?", "Again?")]
    reused, fresh, prefills = _reused_and_fresh(model, qwen2_tokenizer, turns)
    assert reused == fresh
    assert all(length < 64 for length in prefills), prefills


def test_a_forward_hook_added_between_turns_is_not_served_from_the_cache(qwen2_tokenizer):
    """A hook that edits activations (steering, ablation) changes the K/V of every position: a cache built without
    it must not serve a turn that runs with it."""
    model = family_model("llama3")
    layer = model.model.language_model.layers[0]
    steering = torch.randn(model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(2)) * 0.05
    handles = []

    def between(index):
        if index == 1:  # adds a direction to layer 0's output: the next layer's keys and values change
            handles.append(layer.register_forward_hook(lambda module, args, output: output + steering))

    turns = [{"pixel_values": _tiles(2), "question": question} for question in ("Describe.", "More?")]
    try:
        model.clear_chat_cache()
        reused = _conversation(model, qwen2_tokenizer, turns, True, between)
        handles.pop().remove()
        fresh = _conversation(model, qwen2_tokenizer, turns, False, between)
    finally:
        for handle in handles:
            handle.remove()
    assert reused == fresh


@pytest.mark.parametrize("fused", [True, False])
def test_an_optimizer_step_between_turns_is_not_served_from_the_cache(fused, qwen2_tokenizer):
    """Found in session 7: a fused optimizer (`AdamW(fused=True)`, transformers' default `adamw_torch_fused`)
    updates the weights in place without bumping their version counter; a training step between two turns went
    unseen and the second turn was answered from the K/V of the old weights."""
    model = family_model("llama3")
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    def setup():
        model.load_state_dict(initial)

    def between(index):
        if index == 1:
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused, foreach=None if fused else False)
            model.train()
            ids = torch.tensor([[1, 2, 3, 4]])
            with torch.enable_grad():
                model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            model.eval()

    turns = [{"pixel_values": _tiles(2), "question": question} for question in ("Describe.", "More?")]
    reused, fresh, _ = _reused_and_fresh(model, qwen2_tokenizer, turns, between=between, setup=setup)
    assert reused == fresh


def test_a_dynamic_cache_implementation_runs_without_reuse_instead_of_failing(llama, qwen2_tokenizer):
    """Found in session 7: `cache_implementation="dynamic"` (the default cache, named) made every reused turn raise
    transformers' "Passing both `cache_implementation` ... and `cache` ... is unsupported"; a fresh run answers."""
    config = {**GREEDY, "cache_implementation": "dynamic"}
    turns = [{"pixel_values": _tiles(2), "question": question, "config": config} for question in ("Describe.", "More?")]
    reused, fresh, _ = _reused_and_fresh(llama, qwen2_tokenizer, turns)
    assert reused == fresh


def test_a_forward_patched_on_a_module_between_turns_is_not_served_from_the_cache(qwen2_tokenizer):
    """`module.forward = wrapper` (research code, activation patching) changes the outputs without a hook: a cache
    built with the class's `forward` must not serve a turn that runs the patched one."""
    model = family_model("llama3")
    layer = model.model.language_model.layers[0]
    steering = torch.randn(model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(2)) * 0.05
    unpatched = layer.forward

    def patched(*args, **kwargs):
        return unpatched(*args, **kwargs) + steering

    def between(index):
        if index == 1:
            layer.forward = patched

    turns = [{"pixel_values": _tiles(2), "question": question} for question in ("Describe.", "More?")]
    try:
        reused = _conversation(model, qwen2_tokenizer, turns, True, between)
        del layer.forward
        fresh = _conversation(model, qwen2_tokenizer, turns, False, between)
    finally:
        vars(layer).pop("forward", None)
    assert reused == fresh


# --- penalties see the generated tokens only, as in the original (found comparing with the original's answers) -----

ORIGINAL_ANSWERS = json.loads((FIXTURES / "chat_cache_s7" / "original_answers.json").read_text())


@pytest.fixture(scope="module")
def qwen2():
    from helpers import load_model

    return load_model().eval()


@pytest.mark.parametrize(
    ("setting", "reuse"), [(setting, True) for setting in sorted(ORIGINAL_ANSWERS["chat"])] + [("both", False)]
)
def test_penalties_in_a_conversation_give_the_original_answers(setting, reuse, qwen2, qwen2_tokenizer):
    """Found in session 7: the original generates from embeddings, so `repetition_penalty` and
    `no_repeat_ngram_size` never look at the prompt; here they did (system message, question, the earlier answers in
    the history) and from the second turn on the answers differed from the original's."""
    pixel_values = torch.randn(2, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    turns = [
        {"pixel_values": pixel_values, "question": question, "config": ORIGINAL_ANSWERS["configs"][setting]}
        for question in ORIGINAL_ANSWERS["questions"]
    ]
    assert _conversation(qwen2, qwen2_tokenizer, turns, reuse) == ORIGINAL_ANSWERS["chat"][setting]


def test_penalties_in_batch_chat_give_the_original_answers(qwen2, qwen2_tokenizer):
    """Left-padded rows: the penalties start after the padded prompt width, as the original's empty `input_ids`."""
    pixel_values = torch.randn(2, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    questions = ["Describe.", "What is in this picture, in detail?"]
    config = dict(ORIGINAL_ANSWERS["configs"]["both"])
    answers = qwen2.batch_chat(qwen2_tokenizer, pixel_values, questions, config, num_patches_list=[1, 1])
    assert answers == ORIGINAL_ANSWERS["batch_chat"]


def test_generated_only_penalties_leave_the_callers_processors_alone():
    from transformers import GenerationConfig, LogitsProcessorList

    from transformers_internvl.modeling.chat_processors import (
        GeneratedNoRepeatNGramLogitsProcessor,
        GeneratedRepetitionPenaltyLogitsProcessor,
        generated_only_penalties,
    )

    own = LogitsProcessorList()
    kwargs = {"repetition_penalty": 1.2, "no_repeat_ngram_size": 2, "logits_processor": own}
    config = GenerationConfig(repetition_penalty=1.2, no_repeat_ngram_size=2)
    changed = generated_only_penalties(kwargs, 5, config)
    assert len(own) == 0 and kwargs["repetition_penalty"] == 1.2  # the caller's objects are not modified
    assert changed["repetition_penalty"] == 1.0 and changed["no_repeat_ngram_size"] == 0
    types = [type(processor) for processor in changed["logits_processor"]]
    assert types == [GeneratedRepetitionPenaltyLogitsProcessor, GeneratedNoRepeatNGramLogitsProcessor]
    # A penalty on the generated tokens only: token 3 (prompt) keeps its score, token 7 (generated) is penalised.
    scores = torch.ones(1, 10)
    out = changed["logits_processor"][0](torch.tensor([[3, 3, 3, 3, 3, 7]]), scores.clone())
    assert out[0, 3] == 1.0 and out[0, 7] == pytest.approx(1 / 1.2)
    # Nothing to change: the same dict back.
    assert generated_only_penalties(kwargs, 5, GenerationConfig()) is kwargs
