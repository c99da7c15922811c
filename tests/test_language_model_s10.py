"""Session-10 drop-in: `model.language_model` is the original's whole causal LM.

In the original remote code `InternVLChatModel.language_model` is the LLM's causal-LM class (`Qwen2ForCausalLM`,
`InternLM2ForCausalLM`, ...): `.model` is the decoder, `.lm_head` (InternLM2 `.output`) the head, and the original
training script (`internvl/train/internvl_chat_finetune.py`) freezes the LLM with
`model.language_model = model.language_model.eval(); _freeze_params(model.language_model)`, which freezes the head too.
Here `model.language_model` was the decoder alone, so that recipe left the LM head trainable and `.lm_head`,
`.model.layers`, `get_output_embeddings()`, `generate` were missing. Expected values: the original code, recorded in
`tests/fixtures/language_model_s10/original.json` (its README says how).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from finetune_helpers import original_name
from torch import nn
from transformers import AutoModel

import transformers_internvl  # noqa: F401  (registers the InternVL loaders)

FIXTURES = Path(__file__).parent / "fixtures"
ORIGINAL = json.loads((FIXTURES / "language_model_s10" / "original.json").read_text(encoding="utf-8"))


def _load(folder: str):
    return AutoModel.from_pretrained(FIXTURES / "models" / folder, dtype=torch.float32)


def _freeze(module: nn.Module) -> None:  # the original script's `_freeze_params`
    for parameter in module.parameters():
        parameter.requires_grad = False


@pytest.mark.parametrize("case", ORIGINAL["cases"], ids=lambda case: case["name"])
def test_the_original_freezing_steps_freeze_what_the_original_freezes(case):
    model = _load(case["model"])
    keys = list(model.state_dict())
    model.train()
    flags, error = case["flags"], None
    if flags.get("freeze_backbone"):
        _freeze(model.vision_model)
    if flags.get("freeze_llm"):
        model.language_model = model.language_model.eval()
        _freeze(model.language_model)
    if flags.get("unfreeze_lm_head"):
        try:
            model.language_model.lm_head.requires_grad = True  # a module attribute: no parameter changes
        except AttributeError as exc:  # InternLM2's head is `output`, as in the original
            error = type(exc).__name__
    head = "output" if "internlm2" in case["model"] else "lm_head"
    trainable = sorted(original_name(n, head) for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == case["trainable"]
    assert error == case["error"]
    training = sorted(n for n, m in model.language_model.named_modules() if m.training)
    assert training == case["language_model_training"]
    assert not model.lm_head.training and not model.model.language_model.training
    assert model.vision_model.training  # only the LLM was put in eval mode
    # the layout is unchanged: no second, top-level copy of the decoder, the same state-dict keys
    assert list(model._modules) == ["model", "lm_head"] and list(model.state_dict()) == keys


@pytest.mark.parametrize("folder", sorted(ORIGINAL["models"]))
def test_language_model_has_the_original_causal_lm_names_and_numbers(folder):
    record = ORIGINAL["models"][folder]
    model = _load(folder).eval()
    language_model = model.language_model
    assert [n for n, _ in language_model.named_parameters()] == record["parameter_names"]
    assert list(language_model.state_dict()) == record["state_dict_keys"]
    head = language_model.get_output_embeddings()
    assert head is model.lm_head and head is getattr(language_model, record["output_embeddings"][0])
    assert [n for n, m in language_model.named_modules() if m is head] == record["output_embeddings"]
    embeddings = language_model.get_input_embeddings()
    assert [n for n, m in language_model.named_modules() if m is embeddings] == record["input_embeddings"]
    assert language_model.model is model.model.language_model is model.get_decoder()
    ids = torch.tensor(record["ids"])
    with torch.no_grad():
        out = language_model(input_ids=ids, labels=ids)
    assert (out.logits[0, -1] - torch.tensor(record["last_logits"])).abs().max().item() <= 1e-4
    assert abs(out.loss.item() - record["loss"]) <= 1e-4
    assert language_model.generate(input_ids=ids, max_new_tokens=4, do_sample=False).tolist() == record["greedy"]


def test_language_model_keeps_the_decoder_attributes_and_transformers_layout():
    model = _load("tiny-qwen2")
    decoder = model.model.language_model
    language_model = model.language_model
    assert type(decoder).__name__ == "Qwen2Model" and model.get_decoder() is decoder
    assert language_model is model.language_model  # one view per model (hooks on it stay)
    assert language_model.layers is decoder.layers and language_model.model.layers is decoder.layers
    assert language_model.embed_tokens is decoder.embed_tokens and language_model.norm is decoder.norm
    assert language_model.config is model.config.text_config is model.config.llm_config
    assert model.get_input_embeddings() is decoder.embed_tokens and model.get_output_embeddings() is model.lm_head
    with pytest.raises(AttributeError, match="no_such_attribute"):
        language_model.no_such_attribute  # noqa: B018
    model.language_model = model.language_model
    assert model.model.language_model is decoder and list(model._modules) == ["model", "lm_head"]
    # nothing of the view is registered: no new module names, parameters or keys
    assert not any(name.startswith("language_model") for name, _ in model.named_modules())


def test_language_model_training_switches_of_the_original_script_reach_the_llm():
    model = _load("tiny-qwen2")
    model.language_model.config.use_cache = False
    assert model.config.text_config.use_cache is False
    model.language_model.gradient_checkpointing_enable()
    assert model.model.language_model.gradient_checkpointing
    model.language_model.enable_input_require_grads()
    _freeze(model.language_model)
    embedded = model.language_model.get_input_embeddings()(torch.tensor([[1, 2, 3]]))
    assert embedded.requires_grad  # the hook of `enable_input_require_grads`, as in the original


def test_replacing_the_head_through_language_model_replaces_the_models_head():
    model = _load("tiny-qwen2")
    config = model.config.text_config
    new_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
    model.language_model.lm_head = new_head
    assert model.lm_head is new_head and model.language_model.get_output_embeddings() is new_head
    other = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
    model.language_model.set_output_embeddings(other)
    assert model.lm_head is other


def test_resize_token_embeddings_through_language_model_resizes_the_head_too():
    """The original script's new-token path: `model.language_model.resize_token_embeddings(len(tokenizer))` then
    `model.language_model.get_output_embeddings().weight.data[-n:] = mean` (the causal LM resizes both)."""
    model = _load("tiny-qwen2")
    vocab = model.config.text_config.vocab_size
    model.language_model.resize_token_embeddings(vocab + 3)
    output_embeddings = model.language_model.get_output_embeddings().weight.data
    assert output_embeddings.shape[0] == vocab + 3 and model.lm_head.weight.shape[0] == vocab + 3
    assert model.language_model.get_input_embeddings().weight.shape[0] == vocab + 3
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, vocab + 2]])).logits
    assert logits.shape[-1] == vocab + 3


def test_language_model_is_the_peft_model_while_wrapped_with_lora():
    peft = pytest.importorskip("peft")
    model = _load("tiny-qwen2")
    model.wrap_llm_lora(r=2, lora_alpha=4, lora_dropout=0.0)
    assert isinstance(model.language_model, peft.PeftModel)
    assert not model.lm_head.weight.requires_grad
    model.language_model.merge_and_unload()  # the original's tools/merge_lora.py
    model.language_model = model.language_model.model
    assert type(model.model.language_model).__name__ == "Qwen2Model"
    assert model.language_model.get_output_embeddings() is model.lm_head


@pytest.mark.parametrize("folder", ["tiny-qwen2", "tiny-internlm2"])
def test_language_model_save_pretrained_saves_the_whole_causal_lm(folder, tmp_path):
    """`model.language_model.save_pretrained(dir)` (extracting the LLM) writes the causal LM, head included, that
    `AutoModelForCausalLM` reloads with the same logits (before: the decoder alone, without its head)."""
    from transformers import AutoModelForCausalLM

    model = _load(folder).eval()
    causal_lm = model.language_model.as_causal_lm()
    assert type(causal_lm).__name__ == ORIGINAL["models"][folder]["class"]
    assert causal_lm.get_output_embeddings() is model.lm_head and causal_lm.get_decoder() is model.get_decoder()
    model.language_model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 17, 123]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        assert torch.equal(reloaded(input_ids=ids).logits, expected)


def test_deepcopy_and_pickle_of_language_model_give_an_independent_causal_lm():
    """`copy.deepcopy(model.language_model)` / `torch.save(model.language_model)` copy the causal LM, as for the
    original's `Qwen2ForCausalLM`; the copy shares no tensor with the chat model."""
    import copy
    import io

    model = _load("tiny-qwen2").eval()
    ids = torch.tensor([[1, 5, 17, 123]])
    buffer = io.BytesIO()
    torch.save(model.language_model, buffer)
    buffer.seek(0)
    for copied in (copy.deepcopy(model.language_model), torch.load(buffer, weights_only=False)):
        assert type(copied).__name__ == "Qwen2ForCausalLM"
        assert copied.lm_head.weight is not model.lm_head.weight
        with torch.no_grad():
            assert torch.equal(copied(input_ids=ids).logits, model(input_ids=ids).logits)


def test_tied_embeddings_are_one_parameter_through_language_model(tmp_path):
    """Qwen3 with `tie_word_embeddings` (InternVL3.5 small models): the head is the embedding matrix, listed once, as
    `Qwen3ForCausalLM.named_parameters()` lists it."""
    from test_llm_families import load, original_folder

    folder, _ = original_folder("qwen3_tied", tmp_path)
    language_model = load(folder).language_model
    assert language_model.get_output_embeddings().weight is language_model.get_input_embeddings().weight
    names = [name for name, _ in language_model.named_parameters()]
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    _freeze(language_model)
    assert not language_model.get_output_embeddings().weight.requires_grad
