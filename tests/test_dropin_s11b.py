"""Session-11 drop-in follow-ups, against the ORIGINAL code (`tests/fixtures/dropin_s11b/`, made by its scripts; see
its README): the vision encoder called directly (`output_hidden_states`, `return_dict=False`), the vision tower's
`get_input_embeddings()`, and the Phi-3 / Yi slow tokenizer on pre-split words (`is_split_into_words=True`).
Nothing expected here was computed by this package."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

import transformers_internvl  # noqa: F401
from transformers_internvl.modeling.modeling_intern_vit import InternVisionModel

FIXTURES = Path(__file__).parent / "fixtures"
HERE = FIXTURES / "dropin_s11b"
TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------------------- vision encoder


@pytest.fixture(scope="module", params=["300m", "6b"])
def vit(request):
    torch.set_num_threads(1)
    style = request.param
    folder = FIXTURES / "dropin_s9" / "vit" / f"vit-{style}"
    model = AutoModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    pixel_values = torch.randn(2, 3, 448, 448, generator=torch.Generator().manual_seed(1111))
    expected = {k[len(style) + 1 :]: v for k, v in load_file(HERE / "vit_encoder.safetensors").items() if k.startswith(style)}
    meta = json.loads((HERE / "vit_encoder.json").read_text())[style]
    return model, pixel_values, expected, meta


def _close(actual, expected):
    return (actual[:, : expected.shape[1]] - expected).abs().max().item() <= TOLERANCE


def test_get_input_embeddings_is_the_whole_embeddings_module_as_the_original(vit):
    model, pixel_values, expected, meta = vit
    assert isinstance(model, InternVisionModel)
    embeddings = model.get_input_embeddings()
    assert embeddings is model.embeddings and meta["input_embeddings_class"] == "InternVisionEmbeddings"
    with torch.no_grad():
        assert _close(embeddings(pixel_values), expected["embeds"])


def test_encoder_called_directly_returns_the_original_hidden_states(vit):
    model, pixel_values, expected, meta = vit
    with torch.no_grad():
        embeds = model.get_input_embeddings()(pixel_values)
        out = model.encoder(inputs_embeds=embeds, output_hidden_states=True)
        plain = model.encoder(inputs_embeds=embeds)
    assert len(out.hidden_states) == meta["num_hidden_states"]
    for index, state in enumerate(out.hidden_states):
        assert _close(state, expected[f"hidden_{index}"]), index
    assert out.hidden_states[0] is embeds and torch.equal(out.hidden_states[-1], out.last_hidden_state)
    assert plain.hidden_states is None and meta["plain_hidden_states_none"]
    # the tower's own hidden states are the same tensors' values
    with torch.no_grad():
        tower = model(pixel_values=pixel_values, output_hidden_states=True)
    assert len(tower.hidden_states) == len(out.hidden_states)
    for ours, theirs in zip(tower.hidden_states, out.hidden_states):
        assert torch.equal(ours, theirs)


def test_encoder_return_dict_false_is_the_original_tuple(vit):
    model, pixel_values, expected, meta = vit
    with torch.no_grad():
        embeds = model.embeddings(pixel_values)
        as_tuple = model.encoder(inputs_embeds=embeds, output_hidden_states=True, return_dict=False)
        plain = model.encoder(inputs_embeds=embeds, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == meta["tuple_len"]
    assert isinstance(plain, tuple) and len(plain) == meta["tuple_len_plain"]
    assert _close(as_tuple[0], expected["tuple_last"]) and torch.equal(plain[0], as_tuple[0])
    assert len(as_tuple[1]) == meta["num_hidden_states"] and torch.equal(as_tuple[1][-1], as_tuple[0])


def test_encoder_follows_the_config_output_hidden_states(vit):
    model, pixel_values, _, meta = vit
    model.config.output_hidden_states = True
    try:
        with torch.no_grad():
            out = model.encoder(inputs_embeds=model.embeddings(pixel_values[:1]))
    finally:
        model.config.output_hidden_states = False
    assert len(out.hidden_states) == meta["num_hidden_states"]


def test_encoder_asked_for_attentions_names_the_tower():
    model = _tiny_tower("eager")
    with pytest.raises(ValueError, match="output_attentions.*InternVisionModel"):
        model.encoder(inputs_embeds=torch.zeros(1, 5, 16), output_attentions=True)


def _tiny_tower(implementation):
    from transformers_internvl.modeling.configuration_intern_vit import InternVisionConfig

    config = InternVisionConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=28, patch_size=14
    )
    config._attn_implementation = implementation
    torch.manual_seed(0)
    return InternVisionModel(config).eval()


def test_tower_call_still_records_hidden_states_and_attentions_once():
    """The tower's `output_hidden_states` / `output_attentions` (transformers' recording) are unchanged: one hidden
    state per layer plus the embeddings, one attention map per layer, the tuple layout of transformers."""
    model = _tiny_tower("eager")
    pixel_values = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True, output_attentions=True)
        as_tuple = model(pixel_values, output_hidden_states=True, output_attentions=True, return_dict=False)
        direct = model.encoder(model.embeddings(pixel_values), output_hidden_states=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert out.attentions[0].shape == (2, 2, 5, 5)
    assert len(as_tuple) == 4 and torch.equal(as_tuple[0], out.last_hidden_state)
    for ours, theirs in zip(out.hidden_states, direct.hidden_states):
        assert torch.equal(ours, theirs)


def test_enable_input_require_grads_hooks_the_vision_embeddings():
    """transformers' `enable_input_require_grads` hooks every sub-model's `get_input_embeddings()`: with the whole
    embeddings module a frozen tower's output still requires grad (what LoRA + gradient checkpointing need)."""
    model = _tiny_tower("sdpa")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.enable_input_require_grads()
    embeds = model.get_input_embeddings()(torch.randn(1, 3, 28, 28))
    assert embeds.requires_grad
    replacement = type(model.embeddings)(model.config)
    model.set_input_embeddings(replacement)
    assert model.get_input_embeddings() is replacement and model.embeddings is replacement


# ------------------------------------------------------------------------------------ pre-split words (tokenizer)

SPLIT = json.loads((HERE / "split_words.json").read_text(encoding="utf-8"))
CASES = SPLIT["cases"]
TOKENIZER_FOLDERS = {
    **{name: FIXTURES / "legacy_tokenizer_s9" / name for name in (
        "phi3-rstrip-legacy-true", "phi3-rstrip-no-key", "phi3-nostrip-no-key", "hermes-no-key", "hermes-legacy-true")},
    **{name: FIXTURES / "dropin_s9" / "phi3_tokenizer" / name for name in ("phi3-rstrip", "phi3-nostrip")},
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(TOKENIZER_FOLDERS))
def slow(request, tmp_path_factory):
    """The folder's tokenizer as `AutoTokenizer` loads it from an original InternVL folder (its config.json beside
    it, so the package gives the slow class's ids), and the original's records for it."""
    folder = tmp_path_factory.mktemp(request.param)
    shutil.copytree(TOKENIZER_FOLDERS[request.param], folder, dirs_exist_ok=True)
    shutil.copy(FIXTURES / "dropin_s9" / "mini-4b-phi3-v1" / "config.json", folder / "config.json")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(tokenizer).__name__ == "OriginalLlamaTokenizer"
    return tokenizer, SPLIT["folders"][request.param]


def test_split_words_give_the_original_ids(slow):
    tokenizer, expected = slow
    for words, ids, bare in zip(CASES, expected["single"], expected["no_special"]):
        assert tokenizer(words, is_split_into_words=True)["input_ids"] == ids, words
        assert tokenizer(words, is_split_into_words=True, add_special_tokens=False)["input_ids"] == bare, words
        assert tokenizer(tuple(words), is_split_into_words=True)["input_ids"] == ids, words


def test_split_word_pairs_and_truncation_give_the_original_ids(slow):
    tokenizer, expected = slow
    for index, ids in enumerate(expected["pairs"]):
        assert tokenizer(CASES[index], CASES[index + 1], is_split_into_words=True)["input_ids"] == ids, index
    for words, ids in zip(CASES, expected["truncated"]):
        assert tokenizer(words, is_split_into_words=True, max_length=4, truncation=True)["input_ids"] == ids, words


def test_split_word_batches_pad_and_return_tensors_as_the_original(slow):
    tokenizer, expected = slow
    assert tokenizer.padding_side == expected["padding_side"]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = expected["pad_token"]
    batch = tokenizer(CASES, is_split_into_words=True, padding=True)
    assert batch["input_ids"] == expected["batch"]["input_ids"]
    assert batch["attention_mask"] == expected["batch"]["attention_mask"]
    tensors = tokenizer(
        CASES, is_split_into_words=True, padding="max_length", max_length=12, truncation=True, return_tensors="pt"
    )
    assert isinstance(tensors["input_ids"], torch.Tensor)
    assert tensors["input_ids"].tolist() == expected["batch_pt"]["input_ids"]
    assert tensors["attention_mask"].tolist() == expected["batch_pt"]["attention_mask"]
    one = tokenizer(CASES[0], is_split_into_words=True, return_tensors="pt")
    assert one["input_ids"].tolist() == [expected["single"][0]]


def test_split_words_refuse_what_the_slow_class_cannot_do(slow):
    tokenizer, _ = slow
    with pytest.raises(NotImplementedError, match="return_offsets_mapping"):
        tokenizer(["a", "b"], is_split_into_words=True, return_offsets_mapping=True)
    with pytest.raises(TypeError, match=r"`text\[1\]` must be a list of words"):
        tokenizer([["a"], "b"], is_split_into_words=True)


# ------------------------------------------------------------------ model.language_model(..., return_dict=False)

LM_FOLDERS = {
    "llama": FIXTURES / "dropin_s11" / "hermes-224",
    "internlm2": FIXTURES / "dropin_s9" / "v1-5-internlm2-vit6b-v1",
    "phi3": FIXTURES / "dropin_s9" / "mini-4b-phi3-v1",
}


@pytest.mark.parametrize("key", sorted(LM_FOLDERS))
def test_language_model_return_dict_false_is_the_original_tuple(key):
    """The original's `language_model` is the LLM's causal-LM class: `return_dict=False` gives
    `(loss, logits, past_key_values, hidden_states)` (a ModelOutput iterates over its keys: `loss, logits = out[:2]`
    worked, `loss, logits, *_ = out` did not). The cache is transformers 5's `Cache` (4.47 returned legacy tuples)."""
    torch.set_num_threads(1)
    expected = {k[len(key) + 1 :]: v for k, v in load_file(HERE / "lm_tuple.safetensors").items() if k.startswith(key)}
    meta = json.loads((HERE / "lm_tuple.json").read_text())[key]
    model = AutoModel.from_pretrained(LM_FOLDERS[key], torch_dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 7, 9, 11, 3]])
    with torch.no_grad():
        out = model.language_model(input_ids=ids, labels=ids, output_hidden_states=True, return_dict=False)
        as_dict = model.language_model(input_ids=ids, labels=ids)
    assert type(out) is tuple and len(out) == meta["length"]
    loss, logits, cache, hidden_states = out
    assert (loss.reshape(1) - expected["loss"]).abs().max().item() <= 1e-5
    assert (logits - expected["logits"]).abs().max().item() <= 1e-4
    assert isinstance(hidden_states, tuple) and (hidden_states[-1] - expected["hidden_last"]).abs().max() <= 1e-4
    assert cache is not None and torch.equal(as_dict.logits, logits)


OTHERS = json.loads((HERE / "split_words_others.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("folder", sorted(OTHERS))
def test_split_words_of_internlm2_and_qwen2_tokenizers_stay_the_original_ids(folder):
    """Already right before this session (checked, kept): the InternLM2 port (slow and fast) and transformers'
    Qwen2 tokenizer give the original's ids for pre-split words."""
    expected = OTHERS[folder]
    tokenizers = [AutoTokenizer.from_pretrained(FIXTURES / folder)]
    if "internlm2" in folder:
        from transformers_internvl import InternLM2Tokenizer

        tokenizers.append(InternLM2Tokenizer.from_pretrained(FIXTURES / folder))
    for tokenizer in tokenizers:
        assert [tokenizer(words, is_split_into_words=True)["input_ids"] for words in CASES] == expected["single"]
        if "pairs" in expected:
            pairs = [tokenizer(CASES[i], CASES[i + 1], is_split_into_words=True)["input_ids"] for i in range(len(CASES) - 1)]
            assert pairs == expected["pairs"]
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.unk_token
            assert tokenizer(CASES, is_split_into_words=True, padding=True)["input_ids"] == expected["batch"]
