"""Session-10 drop-in re-check: the tokenizer of an original InternVL folder with a sentencepiece `LlamaTokenizer`
(Phi-3: InternVL2-4B, Mini-InternVL-Chat-4B-V1-5; Yi: InternVL-Chat-V1-2, InternVL2-40B), called directly.

The original model cards load it with `AutoTokenizer.from_pretrained(path, trust_remote_code=True, use_fast=False)`
(transformers 4's slow class) and users tokenise and decode with it directly (prompts they build from
`model.conv_template`, `tokenizer.batch_decode` of `generate`'s output). Without `trust_remote_code`, the tokenizer
that `AutoTokenizer` / `AutoProcessor` give for such a folder (config.json `model_type: internvl_chat`) must encode and
decode as that slow class did, not as transformers 5's `LlamaTokenizer`. Expected values: the original's slow tokenizer,
recorded in `tests/fixtures/dropin_s9/phi3_tokenizer/` (non-legacy folders) and `tests/fixtures/legacy_tokenizer_s9/`
(legacy folders); their READMEs say how they were made. Before the fix, `processor.tokenizer(...)` and
`processor.batch_decode(...)` gave transformers 5's ids / texts on hundreds of these strings.
"""

import gzip
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from parity_helpers import tiny_phi3_chat_setup
from transformers import AutoProcessor, AutoTokenizer, LlamaTokenizer

import transformers_internvl  # noqa: F401  (registers the InternVL loaders)

FIXTURES = Path(__file__).parent / "fixtures"
PHI3 = FIXTURES / "dropin_s9" / "phi3_tokenizer"
LEGACY = FIXTURES / "legacy_tokenizer_s9"
PHI3_MODEL = FIXTURES / "dropin_s9" / "mini-4b-phi3-v1"
IMAGE_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>")

PHI3_EXPECTED = json.loads((PHI3 / "expected.json").read_text(encoding="utf-8"))
PHI3_DECODE = json.loads((PHI3 / "decode.json").read_text(encoding="utf-8"))
LEGACY_EXPECTED = json.loads(gzip.decompress((LEGACY / "expected.json.gz").read_bytes()))


def _records(name):
    """(tokenizer folder, strings, per-string ids, decode id lists, decoded texts {skip, keep}) of the original."""
    if name in PHI3_EXPECTED["folders"]:
        decode = {mode: PHI3_DECODE[name][mode] for mode in ("skip", "keep")}
        strings, ids = PHI3_EXPECTED["strings"], PHI3_EXPECTED["folders"][name]
        return PHI3 / name, strings, ids, PHI3_DECODE["id_lists"], decode
    records = LEGACY_EXPECTED["decode"][name]
    decode = {"skip": records["skip"], "keep": records["keep"]}
    strings, ids = LEGACY_EXPECTED["strings"], LEGACY_EXPECTED["folders"][name]
    return LEGACY / name, strings, ids, records["id_lists"], decode


FOLDERS = sorted(PHI3_EXPECTED["folders"]) + sorted(LEGACY_EXPECTED["folders"])


def _internvl_folder(tmp_path, name):
    """An original InternVL folder: the tokenizer files beside an InternVL config.json (Mini-InternVL-Chat-4B-V1-5)."""
    source = _records(name)[0]
    directory = tmp_path / name
    shutil.copytree(source, directory, ignore=shutil.ignore_patterns("*.py", "*.json.gz"))
    shutil.copy(PHI3_MODEL / "config.json", directory / "config.json")
    return directory


@pytest.fixture(scope="module", params=FOLDERS)
def loaded(request, tmp_path_factory):
    directory = _internvl_folder(tmp_path_factory.mktemp("dropin_s10"), request.param)
    return request.param, directory, AutoProcessor.from_pretrained(directory)


def test_processor_tokenizer_called_directly_gives_the_original_ids(loaded):
    name, _, processor = loaded
    _, strings, expected, _, _ = _records(name)
    tokenizer = processor.tokenizer
    assert isinstance(tokenizer, LlamaTokenizer)
    ids = tokenizer(strings)["input_ids"]
    plain = tokenizer(strings, add_special_tokens=False)["input_ids"]
    assert [i for i, (row, record) in enumerate(zip(ids, expected)) if row != record["input_ids"]] == []
    assert [i for i, (row, record) in enumerate(zip(plain, expected)) if row != record["input_ids_no_special"]] == []
    # one text at a time, `encode`, `tokenize` and tensors give the same ids
    for index in range(0, len(strings), 37):
        text, record = strings[index], expected[index]
        assert tokenizer(text)["input_ids"] == record["input_ids"]
        assert tokenizer.encode(text) == record["input_ids"]
        assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)) == record["input_ids_no_special"]
        tensor = tokenizer(text, return_tensors="pt")["input_ids"]
        assert tensor.shape == (1, len(record["input_ids"])) and tensor[0].tolist() == record["input_ids"]


def test_auto_tokenizer_on_the_internvl_folder_gives_the_original_ids(loaded):
    """The model card's `AutoTokenizer.from_pretrained(path, trust_remote_code=True, use_fast=False)` without
    `trust_remote_code`."""
    name, directory, _ = loaded
    _, strings, expected, id_lists, decoded = _records(name)
    tokenizer = AutoTokenizer.from_pretrained(directory, use_fast=False)
    ids = tokenizer(strings)["input_ids"]
    assert [i for i, (row, record) in enumerate(zip(ids, expected)) if row != record["input_ids"]] == []
    texts = tokenizer.batch_decode(id_lists, skip_special_tokens=True)
    assert [i for i, (text, want) in enumerate(zip(texts, decoded["skip"])) if text != want] == []


def test_processor_decoding_equals_the_original(loaded):
    name, _, processor = loaded
    _, _, _, id_lists, decoded = _records(name)
    for mode, skip in (("skip", True), ("keep", False)):
        texts = processor.batch_decode(id_lists, skip_special_tokens=skip)
        assert [i for i, (text, want) in enumerate(zip(texts, decoded[mode])) if text != want] == []
        singles = [processor.tokenizer.decode(ids, skip_special_tokens=skip) for ids in id_lists[:60]]
        assert singles == decoded[mode][:60]
    tensor = torch.tensor([id_lists[0]])
    assert processor.batch_decode(tensor, skip_special_tokens=True) == [decoded["skip"][0]]


def test_processor_call_and_offsets_keep_working(loaded):
    """The processor tokenises through the same tokenizer: no second "▁" prefix; offsets still index the text."""
    name, _, processor = loaded
    _, strings, expected, _, _ = _records(name)
    chosen = [i for i, text in enumerate(strings) if text and not any(token in text for token in IMAGE_TOKENS)]
    ids = processor(text=[strings[i] for i in chosen[:80]])["input_ids"]
    assert [i for i, row in zip(chosen, ids) if row != expected[i]["input_ids"]] == []
    text = ("<|im_start|>" if name.startswith("hermes") else "<|user|>") + "\nhi there"
    spans = processor.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    token = text[: text.index("\n")]
    first = next(span for span in spans if span[1] > span[0])  # the chat token (with the newline it strips)
    assert first[0] == 0 and text[: first[1]].rstrip() == token and spans[-1][1] == len(text)
    assert "".join(text[start:end] for start, end in spans).endswith("hi there")


def test_saved_processor_names_the_llama_class_and_reloads(loaded, tmp_path):
    name, _, processor = loaded
    _, strings, expected, _, _ = _records(name)
    processor.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "LlamaTokenizer"
    # the mode the original's slow class runs in is written (transformers 5 drops `legacy`; no key means legacy)
    assert config["legacy"] is (name not in PHI3_EXPECTED["folders"])
    reloaded = AutoProcessor.from_pretrained(tmp_path / "saved")
    assert reloaded.tokenizer(strings[:50])["input_ids"] == [record["input_ids"] for record in expected[:50]]
    copy = pickle.loads(pickle.dumps(processor.tokenizer))
    assert copy(strings[:50])["input_ids"] == [record["input_ids"] for record in expected[:50]]


def test_a_tokenizer_only_folder_stays_transformers_own():
    """Outside an InternVL folder `AutoTokenizer` is left alone: transformers 5's ids (which differ here)."""
    tokenizer = AutoTokenizer.from_pretrained(PHI3 / "phi3-rstrip")
    strings, expected = PHI3_EXPECTED["strings"], PHI3_EXPECTED["folders"]["phi3-rstrip"]
    assert type(tokenizer) is LlamaTokenizer
    assert sum(row != record["input_ids"] for row, record in zip(tokenizer(strings)["input_ids"], expected)) > 50


@pytest.mark.parametrize("name", ["phi3-rstrip", "phi3-nostrip"])
def test_chat_with_the_folder_tokenizer_feeds_the_original_prompts(name, tmp_path, monkeypatch):
    """`model.chat` / `batch_chat` given the folder's tokenizer (already original-exact) prefix nothing twice."""
    directory = _internvl_folder(tmp_path, name)
    tokenizer = AutoTokenizer.from_pretrained(directory, use_fast=False)
    expected = json.loads((PHI3 / "chat.json").read_text(encoding="utf-8"))[name]
    model, pixel_values, config, fed = tiny_phi3_chat_setup(PHI3_MODEL, tokenizer, monkeypatch)
    answer1, history = model.chat(
        tokenizer, pixel_values, "<image>\nWhat is in the picture?", dict(config), return_history=True
    )
    answer2 = model.chat(tokenizer, pixel_values, "And the colours?", dict(config), history=history)
    original_prompts = [row for call in expected["prompt_ids"] for row in call][:2]
    pad = tokenizer.pad_token_id
    assert [[t for t in row if t != pad] for row in fed] == [[t for t in row if t != pad] for row in original_prompts]
    assert [answer1, answer2] == expected["runs"]["image_chat"]["answers"]


def test_the_pipeline_decoding_keeps_transformers_own(loaded):
    """`post_process_image_text_to_text` (the pipeline's decoding of the sequence and of the prompt, which it then
    removes) stays transformers' decoding: the slow class's would put a space between `<|assistant|>` and the answer
    and keep `<|end|>`."""
    name, _, processor = loaded
    source, _, _, id_lists, _ = _records(name)
    plain = LlamaTokenizer.from_pretrained(source)
    assert type(plain) is LlamaTokenizer
    assert processor.post_process_image_text_to_text(id_lists) == plain.batch_decode(id_lists, skip_special_tokens=True)
    assert processor.post_process_image_text_to_text(torch.tensor(id_lists[0])) == plain.decode(
        id_lists[0], skip_special_tokens=True
    )


@pytest.fixture(scope="module")
def phi3_folder(tmp_path_factory):
    """`mini-4b-phi3-v1` with the `phi3-rstrip` Phi-3 tokenizer: an original Mini-InternVL-Chat-4B-V1-5 folder, its
    model, its processor, and generation settings that end the answer at `<|end|>` after 4 new tokens."""
    from transformers import AutoModel

    directory = tmp_path_factory.mktemp("phi3") / "mini-4b-phi3"
    shutil.copytree(PHI3_MODEL, directory)
    for stale in ("tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json"):
        (directory / stale).unlink()
    for item in (PHI3 / "phi3-rstrip").iterdir():
        shutil.copy(item, directory / item.name)
    processor = AutoProcessor.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory, dtype=torch.float32).eval()
    end = processor.tokenizer.convert_tokens_to_ids("<|end|>")
    settings = dict(
        max_new_tokens=4, forced_eos_token_id=end, suppress_tokens=list(range(len(processor.tokenizer), 1004))
    )
    return directory, model, processor, settings


def _answer_ids(model, processor, chat, settings):
    inputs = processor.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    new = model.generate(**inputs, **settings, do_sample=False)[0, inputs["input_ids"].shape[1] :].tolist()
    assert new[-1] == processor.tokenizer.convert_tokens_to_ids("<|end|>")
    return new


def test_pipeline_answer_on_a_phi3_folder(phi3_folder):
    from transformers import pipeline

    _, model, processor, settings = phi3_folder
    chat = [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    answer = pipeline("image-text-to-text", model=model, processor=processor)(
        text=chat, generate_kwargs=dict(settings, do_sample=False)
    )[0]["generated_text"][-1]["content"]
    new = _answer_ids(model, processor, chat, settings)
    plain = LlamaTokenizer.from_pretrained(PHI3 / "phi3-rstrip")
    assert answer == plain.decode(new, skip_special_tokens=True) and "<|end|>" not in answer


def test_cli_chat_on_a_phi3_folder_prints_and_keeps_answers_without_the_stop_token(phi3_folder, monkeypatch, capsys):
    """The CLI decodes and streams the answer itself: without `<|end|>` (which the original's slow class keeps and
    `chat()` cuts off), also in the history the second turn's prompt is built from."""
    import io
    import sys

    from transformers_internvl.cli.app import main
    from transformers_internvl.cli.chat import ChatSession

    directory, model, processor, settings = phi3_folder
    original_kwargs = ChatSession._generation_kwargs
    monkeypatch.setattr(ChatSession, "_generation_kwargs", lambda self: {**original_kwargs(self), **settings})
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello there\nWhat did I say?\nexit\n"))
    assert main(["chat", str(directory), "--max-new-tokens", "4", "--dtype", "float32"]) == 0
    lines = [line.strip() for line in capsys.readouterr().out.strip().splitlines()]
    first = [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
    first_answer = processor.decode(_answer_ids(model, processor, first, settings)[:-1], skip_special_tokens=True)
    second = [
        *first,
        {"role": "assistant", "content": [{"type": "text", "text": first_answer.strip()}]},
        {"role": "user", "content": [{"type": "text", "text": "What did I say?"}]},
    ]
    second_answer = processor.decode(_answer_ids(model, processor, second, settings)[:-1], skip_special_tokens=True)
    assert lines == [first_answer.strip(), second_answer.strip()]
    assert not any("<|end|>" in line for line in lines)


def test_votes_on_a_phi3_folder_leave_out_the_stop_token(phi3_folder):
    from transformers_internvl.reasoning.voting import generate_with_votes

    _, model, processor, settings = phi3_folder
    chat = [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    inputs = processor.apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    result = generate_with_votes(model, processor, inputs, num_votes=2, seed=3, **settings)
    assert result.responses and not any("<|end|>" in response for response in result.responses)


def test_the_original_finetuning_setup_runs_on_the_model():
    """The model set-up steps of the original fine-tuning scripts (`internvl/train/internvl_chat_finetune.py`,
    `..._pretrain.py`, `..._mpo.py`), written out here: among them `model.num_image_token = int((force_image_size //
    patch_size) ** 2 * (down_sample_ratio ** 2))`, the value the config already gives, which raised before."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(FIXTURES / "models" / "tiny-qwen2", dtype=torch.float32)
    model.img_context_token_id = model.config.image_token_id
    assert model.config.downsample_ratio == 0.5
    patch_size = model.config.vision_config.patch_size
    force_image_size = model.config.force_image_size
    model.config.force_image_size = force_image_size
    model.num_image_token = int((force_image_size // patch_size) ** 2 * (0.5**2))
    assert model.num_image_token == 256
    with pytest.raises(AttributeError, match="num_image_token"):
        model.num_image_token = 64  # another value would not fit the vision tower
    model.language_model.config.use_cache = False
    model.vision_model.gradient_checkpointing = True
    model.vision_model.encoder.gradient_checkpointing = True
    model.language_model = model.language_model.eval()
    for parameter in model.vision_model.parameters():
        parameter.requires_grad = False
    model.wrap_llm_lora(r=4, lora_alpha=8)
    model.config.use_llm_lora = 4
    assert any("lora" in name for name, parameter in model.named_parameters() if parameter.requires_grad)


@pytest.mark.parametrize("name", ["phi3-rstrip", "phi3-rstrip-legacy-true", "phi3-rstrip-no-key"])
def test_phi3_folder_converts_both_ways_and_keeps_its_legacy_mode(name, tmp_path):
    """`convert --to hf` / `--to original` on a Phi-3 folder (Mini-InternVL-Chat-4B-V1-5 layout, `ps_version` v2 as
    InternVL2-4B): the -hf tokenizer is transformers' own class (its id check against the source's plain class
    passes), and the `legacy` key of the source's tokenizer_config.json comes back (transformers 5 drops it when
    saving; without it the original's slow class runs in legacy mode, so a `legacy: false` folder came back with
    other ids under the original)."""
    from transformers_internvl.conversion.convert import convert_checkpoint

    source = tmp_path / "source"
    shutil.copytree(PHI3_MODEL, source)
    for stale in ("tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json"):
        (source / stale).unlink()
    tokenizer_dir, strings, expected, _, _ = _records(name)
    for item in tokenizer_dir.iterdir():
        shutil.copy(item, source / item.name)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config["ps_version"] = "v2"
    (source / "config.json").write_text(json.dumps(config), encoding="utf-8")
    convert_checkpoint(source, tmp_path / "hf", to="hf", progress=False)
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tokenizer.convert_tokens_to_ids("<img>") == AutoTokenizer.from_pretrained(source).convert_tokens_to_ids(
        "<img>"
    )
    convert_checkpoint(tmp_path / "hf", tmp_path / "back", to="original", progress=False)
    source_config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    back_config = json.loads((tmp_path / "back" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert back_config.get("legacy", "no key") == source_config.get("legacy", "no key")


def test_phi3_folder_round_trip_keeps_the_slow_tokenizer_files(tmp_path):
    from transformers_internvl.conversion.convert import convert_checkpoint

    source = tmp_path / "source"
    shutil.copytree(PHI3_MODEL, source)
    for stale in ("tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json"):
        (source / stale).unlink()
    for item in (PHI3 / "phi3-rstrip").iterdir():
        shutil.copy(item, source / item.name)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config["ps_version"] = "v2"
    (source / "config.json").write_text(json.dumps(config), encoding="utf-8")
    convert_checkpoint(source, tmp_path / "hf", to="hf", progress=False)
    convert_checkpoint(tmp_path / "hf", tmp_path / "back", to="original", progress=False)
    back_config = json.loads((tmp_path / "back" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert (tmp_path / "back" / "tokenizer.model").is_file()
    assert "<img>" in back_config.get("additional_special_tokens", [])
    strings, expected = PHI3_EXPECTED["strings"], PHI3_EXPECTED["folders"]["phi3-rstrip"]
    back = AutoTokenizer.from_pretrained(tmp_path / "back")
    assert back(strings)["input_ids"] == [record["input_ids"] for record in expected]


def test_language_model_is_the_original_causal_lm():
    """`model.language_model` is the whole causal LM, as the original's `Qwen2ForCausalLM`: freezing it (the original
    scripts' `freeze_llm`) freezes the LM head too (more in `test_language_model_s10.py`)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(FIXTURES / "models" / "tiny-qwen2", dtype=torch.float32)
    for parameter in model.language_model.parameters():
        parameter.requires_grad = False
    assert not any(parameter.requires_grad for parameter in model.lm_head.parameters())
    assert model.language_model.get_output_embeddings() is model.lm_head
