"""Held-out re-check of the conversion (issue 9), session 8: what the earlier conversion tests did not reach.

- `-hf` -> original of checkpoints with a tokenizer: the original-layout tokenizer must be the source's (the `<video>`
  token that `--to hf` adds for transformers' processor is removed again; the `-hf` list form of
  `extra_special_tokens` goes back to `additional_special_tokens`, the form the original's transformers 4.x reads);
  an InternLM2 `-hf` tokenizer re-saved without tokenizer.model is warned about;
- `--merge-lora` of an adapter on the `lm_head` of transformers' port (`-hf` source), and on an `-hf` source saved
  with the module-tree names;
- a broken tokenizer file and an unwritable destination folder are reported in one line naming them;
- transformers' own port in bfloat16 (eager) on converted weights gives the ORIGINAL implementation's recorded
  bfloat16 logits bit for bit (`fixtures/heldout_s7`), and float32 ones within 1e-5;
- unmerged original LoRA runs in bfloat16 merge to what the original's `tools/merge_lora.py` writes, bit for bit
  (runs saved by the original code: `fixtures/conversion_heldout_s8`; and runs built here with PEFT);
- every LLM family in bfloat16 through sharded input and output round-trips byte for byte;
- an InternViT-6B-style tower with downsample 0.25 converts exactly.

`fixtures/conversion_heldout_s8/check_round_trip_with_original.py` runs the round-trip results through the original
code itself (tokenizers and logits; see its README).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import transformers
from helpers import copy_tokenizer
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl.cli import main
from transformers_internvl.conversion.convert import ConversionError, convert_checkpoint

HELDOUT_S7 = Path(__file__).parent / "fixtures" / "heldout_s7"
sys.path.insert(0, str(HELDOUT_S7))
from heldout_s7_inputs import make_image  # noqa: E402

CASES = ("qwen2-train", "internlm2-ds1-single")  # a BPE tokenizer.json and an InternLM2 sentencepiece tokenizer


class _Converted(dict):
    """`{case: (its -hf folder, the folder converted back)}`, made once per module on first use."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> tuple[Path, Path]:
        hf = convert_checkpoint(HELDOUT_S7 / name, self.root / f"{name}-hf", to="hf", progress=False).path
        back = convert_checkpoint(hf, self.root / f"{name}-back", to="original", progress=False).path
        self[name] = (hf, back)
        return self[name]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> _Converted:
    return _Converted(tmp_path_factory.mktemp("conversion_s8"))


def _tokenizer(folder: Path):
    """The tokenizer the original code uses for `folder`: InternLM2's sentencepiece class, else AutoTokenizer."""
    from transformers import AutoTokenizer

    from transformers_internvl.processing.tokenization_internlm2 import InternLM2Tokenizer

    config = json.loads((folder / "tokenizer_config.json").read_text())
    if config.get("tokenizer_class") == "InternLM2Tokenizer":
        return InternLM2Tokenizer.from_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


# ---- -hf -> original: the tokenizer comes back as the source's --------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_round_trip_tokenizer_encodes_like_the_source_and_has_its_size(converted, name):
    """`--to hf` adds `<video>` (transformers' processor needs it; its id is past the LLM vocabulary here). Back in the
    original layout it made "<video>" one token the model cannot embed (id == vocab_size: the original model raised
    IndexError on a prompt the source folder runs) and the tokenizer one entry longer than the source's."""
    _, back = converted[name]
    source, result = _tokenizer(HELDOUT_S7 / name), _tokenizer(back)
    assert len(result) == len(source)
    for text in ("a <video> b", "<|im_start|>user\n<img><IMG_CONTEXT></img>\n<video>中文<|im_end|>\n"):
        assert result(text)["input_ids"] == source(text)["input_ids"], text
    vocab_size = json.loads((back / "config.json").read_text())["llm_config"]["vocab_size"]
    assert max(result("a <video> b")["input_ids"]) < vocab_size


@pytest.mark.parametrize("name", CASES)
def test_round_trip_tokenizer_config_keeps_the_original_special_token_list(converted, name):
    """transformers 5 writes `extra_special_tokens` as a list; the transformers 4.x that the original code and the
    tools serving OpenGVLab checkpoints run on read only `additional_special_tokens` and fail on that list
    ("'list' object has no attribute 'keys'", measured with transformers 4.47.1). The original layout gets the
    source's `additional_special_tokens` back."""
    _, back = converted[name]
    config = json.loads((back / "tokenizer_config.json").read_text())
    original = json.loads((HELDOUT_S7 / name / "tokenizer_config.json").read_text())
    assert not isinstance(config.get("extra_special_tokens"), list)
    assert config["additional_special_tokens"] == original["additional_special_tokens"]
    assert "<video>" not in json.dumps(config)
    with open(back / "tokenizer.json", encoding="utf-8") as reader:
        assert "<video>" not in {token["content"] for token in json.load(reader)["added_tokens"]}


@pytest.mark.parametrize("name", CASES)
def test_round_trip_folder_serves_the_processor_and_generation_config(converted, name):
    """The original-layout result loads with `AutoProcessor` (this package's processor, the original template's
    prompt for one image) and `GenerationConfig`; the `-hf` folder's generation config stops at the chat stop token
    (`<|im_end|>`: what the original `chat()` passes as `eos_token_id` for both templates)."""
    from transformers import AutoProcessor, GenerationConfig

    hf, back = converted[name]
    processor = AutoProcessor.from_pretrained(back)
    assert type(processor).__module__.startswith("transformers_internvl")
    meta = json.loads((HELDOUT_S7 / name / "outputs.json").read_text())
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    # The original templates (conversation.py): internvl2_5 separates turns with "<|im_end|>\n", internlm2-chat
    # with "<|im_end|>" alone.
    separator = {"internvl2_5": "<|im_end|>\n", "internlm2-chat": "<|im_end|>"}[meta["case"]["template"]]
    assert prompt.endswith(f"<|im_start|>user\n<image>\nHi{separator}<|im_start|>assistant\n"), prompt
    stop = _tokenizer(HELDOUT_S7 / name).convert_tokens_to_ids("<|im_end|>")
    for folder in (hf, back):
        eos = GenerationConfig.from_pretrained(folder).eos_token_id
        assert stop in (eos if isinstance(eos, list) else [eos]), (folder, eos)
    assert meta["num_image_token"] == json.loads((hf / "processor_config.json").read_text())["image_seq_length"]


def test_hf_folder_not_made_here_keeps_its_video_token(converted, tmp_path):
    """A `-hf` folder without the conversion record (made by another tool, or a hub `-hf` repository) keeps its
    tokenizer's `<video>`: only a token that `--to hf` added itself is removed."""
    hf, _ = converted["qwen2-train"]
    plain = tmp_path / "plain-hf"
    shutil.copytree(hf, plain)
    config = json.loads((plain / "config.json").read_text())
    del config["internvl_chat_original"]
    (plain / "config.json").write_text(json.dumps(config))
    back = convert_checkpoint(plain, tmp_path / "back", to="original", progress=False).path
    with open(back / "tokenizer.json", encoding="utf-8") as reader:
        assert "<video>" in {token["content"] for token in json.load(reader)["added_tokens"]}
    assert not isinstance(json.loads((back / "tokenizer_config.json").read_text()).get("extra_special_tokens"), list)


def test_internlm2_hf_tokenizer_resaved_without_its_sentencepiece_model_warns(converted, tmp_path):
    """A `-hf` InternLM2 folder whose tokenizer was re-saved by transformers (tokenizer.json only, as after
    fine-tuning with transformers' port): `--to original` restores the `InternLM2Tokenizer` class, which the original
    code can only build from tokenizer.model, so it says so; this package still reads the result."""
    from transformers import AutoTokenizer
    from transformers.testing_utils import CaptureLogger

    from transformers_internvl.conversion import original_layout

    hf, _ = converted["internlm2-ds1-single"]
    resaved = tmp_path / "resaved"
    shutil.copytree(hf, resaved)
    (resaved / "tokenizer.model").unlink()
    with CaptureLogger(original_layout.logger) as captured:
        back = convert_checkpoint(resaved, tmp_path / "back", to="original", progress=False).path
    assert "has no tokenizer.model" in captured.out
    text = "<|im_start|>user\n<img><IMG_CONTEXT></img>\n<video> 中文<|im_end|>"
    assert (
        AutoTokenizer.from_pretrained(back)(text)["input_ids"]
        == _tokenizer(HELDOUT_S7 / "internlm2-ds1-single")(text)["input_ids"]
    )
    with CaptureLogger(original_layout.logger) as captured:
        convert_checkpoint(hf, tmp_path / "back2", to="original", progress=False)
    assert "has no tokenizer.model" not in captured.out


def test_broken_tokenizer_file_is_named(tmp_path, capsys):
    """A tokenizer.json that is not JSON: the error names the folder (it gave only the JSON parser's message)."""
    source = tmp_path / "src"
    shutil.copytree(HELDOUT_S7 / "qwen2-train", source, ignore=shutil.ignore_patterns("io.safetensors", "outputs.json"))
    (source / "tokenizer.json").write_text("{not json", encoding="utf-8")
    assert main(["convert", str(source), str(tmp_path / "out"), "--to", "hf", "--quiet"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "tokenizer" in error[0] and str(source) in error[0], error
    assert not (tmp_path / "out").exists()


def _read_only_folder(folder: Path) -> bool:
    """Make `folder` unwritable (chmod; as root, where chmod does not stop writes, the immutable attribute)."""
    import os
    import subprocess

    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return True
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False).returncode == 0
    return done


def test_read_only_destination_folder_is_one_clear_line(tmp_path, capsys):
    """DST in a folder that cannot be written: one line naming DST and that folder, exit 1, nothing left."""
    import subprocess

    parent = tmp_path / "read-only"
    parent.mkdir()
    if not _read_only_folder(parent):
        pytest.skip("cannot make a read-only folder here")
    try:
        dst = parent / "out"
        assert main(["convert", str(HELDOUT_S7 / "qwen2-train"), str(dst), "--to", "hf", "--quiet"]) == 1
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and f"cannot write the destination {dst}" in error[0] and str(parent) in error[0]
        assert list(parent.iterdir()) == []
    finally:
        subprocess.run(["chattr", "-i", str(parent)], capture_output=True, check=False)
        parent.chmod(0o755)


# ---- --merge-lora on a -hf source ------------------------------------------------------------------------------------


def test_merge_lora_on_the_lm_head_of_an_hf_source(converted, tmp_path):
    """An adapter trained on transformers' port with `lm_head` among its targets: `--to original --merge-lora` was
    refused ("adapts 'lm_head.weight', which the checkpoint does not have"; the head is `language_model.lm_head`).
    The merged head is `W + (alpha / r) B @ A` by hand and the result gives the PEFT model's logits."""
    from peft import LoraConfig, get_peft_model

    hf, _ = converted["qwen2-train"]
    base = transformers.InternVLForConditionalGeneration.from_pretrained(hf, attn_implementation="eager").eval()
    head = base.lm_head.weight.detach().clone()
    torch.manual_seed(0)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["lm_head", "q_proj"], init_lora_weights=False)
    ).eval()
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    layer = peft_model.base_model.model.lm_head
    expected_head = head + 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight

    result = convert_checkpoint(hf, tmp_path / "merged", to="original", merge_lora=adapter, progress=False)
    with safe_open(result.path / "model.safetensors", "pt") as reader:
        merged_head = reader.get_tensor("language_model.lm_head.weight")
    assert (merged_head - expected_head).abs().max() <= 1e-6
    assert not torch.equal(merged_head, head)

    ours = transformers.AutoModelForImageTextToText.from_pretrained(result.path, attn_implementation="eager").eval()
    ids = torch.tensor([[1, 2, 3] + [base.config.image_token_id] * base.config.image_seq_length + [4, 5, 6]])
    pixel_values = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = peft_model(input_ids=ids, pixel_values=pixel_values).logits
        logits = ours(input_ids=ids, pixel_values=pixel_values).logits
    assert (logits - reference).abs().max() <= 1e-4


def test_merge_lora_on_an_hf_source_saved_with_module_tree_names(converted, tmp_path):
    """`-hf` weights saved with the in-memory names (`model.language_model.*`, `lm_head.*`: accepted by the
    converter) and `--merge-lora`: refused ("adapts 'language_model.model.layers.0.self_attn.q_proj.weight', which
    the checkpoint does not have"); now the same merged tensors as from the saved-name folder."""
    from peft import LoraConfig, get_peft_model

    hf, _ = converted["internlm2-ds1-single"]
    renamed = tmp_path / "module-names"
    shutil.copytree(hf, renamed)
    prefixes = {"vision_tower.": "model.vision_tower.", "multi_modal_projector.": "model.multi_modal_projector."}
    prefixes |= {"language_model.model.": "model.language_model.", "language_model.lm_head.": "lm_head."}
    tensors = {}
    for key, tensor in load_file(hf / "model.safetensors").items():
        old = next(prefix for prefix in prefixes if key.startswith(prefix))
        tensors[prefixes[old] + key[len(old) :]] = tensor
    save_file(tensors, renamed / "model.safetensors", metadata={"format": "pt"})
    base = transformers.InternVLForConditionalGeneration.from_pretrained(hf)
    torch.manual_seed(0)
    adapter = tmp_path / "adapter"
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "linear_1", "lm_head"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(adapter)

    expected = convert_checkpoint(hf, tmp_path / "a", to="original", merge_lora=adapter, progress=False).path
    result = convert_checkpoint(renamed, tmp_path / "b", to="original", merge_lora=adapter, progress=False).path
    before, after = load_file(expected / "model.safetensors"), load_file(result / "model.safetensors")
    assert set(before) == set(after)
    assert all(torch.equal(before[key], after[key]) for key in before)
    source = load_file(HELDOUT_S7 / "internlm2-ds1-single" / "model.safetensors")
    assert not torch.equal(after["language_model.output.weight"], source["language_model.output.weight"])


def test_hf_model_made_by_transformers_with_its_default_image_seq_length_converts(tmp_path):
    """A model built and saved with transformers' own classes for 56 px tiles keeps `InternVLConfig`'s default
    `image_seq_length` 256 (transformers' model never reads it; the tower gives 4 tokens per tile). `--to original`
    refused it ("does not match the vision tower"); it converts, and this package on the result gives transformers'
    logits bit for bit."""
    from transformers import AutoConfig, InternVLConfig

    text = AutoConfig.for_model(
        "qwen2", vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, tie_word_embeddings=False,
    )  # fmt: skip
    vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "image_size": [56, 56], "patch_size": [14, 14]}  # fmt: skip
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=299)
    assert config.image_seq_length == 256
    torch.manual_seed(0)
    model = transformers.InternVLForConditionalGeneration(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save_pretrained(tmp_path / "hf")
    back = convert_checkpoint(tmp_path / "hf", tmp_path / "back", to="original", progress=False).path
    ours = transformers.AutoModelForImageTextToText.from_pretrained(back).eval()
    assert ours.config.num_image_token == 4
    ids = torch.tensor([[1, 2, 3] + [299] * 4 + [4, 5, 6]])
    pixel_values = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=pixel_values).logits
        assert torch.equal(ours(input_ids=ids, pixel_values=pixel_values).logits, expected)


# ---- transformers' port against the original's recorded numbers ------------------------------------------------------


def _expand(prompt: str) -> str:
    return re.sub(r"<IMG_CONTEXT\*(\d+)>", lambda run: "<IMG_CONTEXT>" * int(run[1]), prompt)


@pytest.mark.parametrize("name", [pytest.param("qwen2-train", marks=pytest.mark.slow), "internlm2-ds1-single"])
def test_port_in_bf16_and_fp32_gives_the_original_recorded_logits(converted, name, tmp_path):
    """downsample 1.0 / 224 px / one tile without thumbnail (InternLM2) and 448 px, 4 tiles + thumbnail (Qwen2):
    transformers' own image processor and model on the `-hf` folder (float32, and converted with `--dtype bf16`) give
    the original's recorded tiles, logits within 1e-5 (fp32) and its bfloat16 logits bit for bit (eager, as the
    original ran); the bf16 folder keeps bfloat16 in every tensor and in config.json."""
    from transformers import AutoImageProcessor

    hf, _ = converted[name]
    bf16 = convert_checkpoint(HELDOUT_S7 / name, tmp_path / "bf16", to="hf", dtype="bf16", progress=False).path
    meta = json.loads((HELDOUT_S7 / name / "outputs.json").read_text())
    io = load_file(HELDOUT_S7 / name / "io.safetensors")
    processor = AutoImageProcessor.from_pretrained(hf)
    outputs = [processor(images=[make_image(w, h, seed)], return_tensors="pt") for w, h, seed in meta["case"]["images"]]
    assert [int(out["num_patches"][0]) for out in outputs] == meta["num_patches_list"]
    pixel_values = torch.cat([out["pixel_values"] for out in outputs])
    assert torch.equal(pixel_values[:, :, ::37, ::29], io["pixel_values_sample"])
    input_ids = io["forward_input_ids"]
    assert torch.equal(transformers.AutoTokenizer.from_pretrained(hf)(_expand(meta["chat"]["prompt1"]),
                                                                      return_tensors="pt")["input_ids"], input_ids)  # fmt: skip

    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    assert {tensor.dtype for tensor in load_file(bf16 / "model.safetensors").values()} == {torch.bfloat16}
    for folder, prefix, tolerance in ((hf, "", 1e-5), (bf16, "bf16_", 0.0)):
        model = transformers.InternVLForConditionalGeneration.from_pretrained(folder, attn_implementation="eager")
        with torch.no_grad():
            logits = model.eval()(pixel_values=pixel_values.to(model.dtype), input_ids=input_ids).logits[0]
        at = logits[io["forward_positions"]].float()
        assert (at - io[f"{prefix}forward_logits_at"].float()).abs().max().item() <= tolerance, prefix
        assert torch.equal(logits.argmax(-1).to(torch.int32), io[f"{prefix}forward_argmax"].to(torch.int32)), prefix


# ---- unmerged original LoRA in bfloat16: the original's merge script ---------------------------------------------------


def test_bf16_original_lora_run_merges_as_the_original_merge_script(tmp_path):
    """The original's `internvl_chat/tools/merge_lora.py` loads the unmerged run in bfloat16 and calls PEFT's
    `merge_and_unload` on `vision_model` and `language_model`. `--to hf` merges while streaming; every merged
    tensor (after the round trip back to the original layout) equals the installed PEFT's bfloat16
    `merge_and_unload` bit for bit, and `W + 2 B@A` computed by hand in float32, rounded once to bfloat16."""
    import peft
    from test_original_lora_checkpoints import write_original_lora_checkpoint

    from transformers_internvl.conversion.original_lora import plan_original_lora_merge

    source = tmp_path / "lora"
    write_original_lora_checkpoint("tiny-qwen2", source, 4, 8, with_logits=False)
    state = {key: tensor.to(torch.bfloat16) for key, tensor in load_file(source / "model.safetensors").items()}
    save_file(state, source / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    config["torch_dtype"] = "bfloat16"
    (source / "config.json").write_text(json.dumps(config))
    copy_tokenizer("qwen2-tiny", source)
    hf = convert_checkpoint(source, tmp_path / "hf", to="hf", progress=False).path
    back = load_file(
        convert_checkpoint(hf, tmp_path / "back", to="original", progress=False).path / "model.safetensors"
    )

    _, merges = plan_original_lora_merge(state)
    assert merges
    for plain, (key_a, key_b) in merges.items():
        base_key = key_a.replace("lora_A.default.weight", "base_layer.weight")
        weight, lora_a, lora_b = state[base_key], state[key_a], state[key_b]
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=torch.bfloat16)
        wrapped = peft.get_peft_model(
            torch.nn.Sequential(layer),
            peft.LoraConfig(r=lora_a.shape[0], lora_alpha=2 * lora_a.shape[0], target_modules=["0"]),
        )
        lora = wrapped.base_model.model[0]
        with torch.no_grad():
            lora.base_layer.weight.copy_(weight)
            lora.lora_A["default"].weight.copy_(lora_a)
            lora.lora_B["default"].weight.copy_(lora_b)
        peft_merged = wrapped.merge_and_unload()[0].weight
        assert back[plain].dtype == torch.bfloat16
        assert torch.equal(back[plain], peft_merged), plain
        by_hand = weight.float() + 2.0 * lora_b.float() @ lora_a.float()
        assert torch.equal(back[plain], by_hand.to(torch.bfloat16)), plain
    with pytest.raises(ConversionError, match="already in the 'original' layout"):
        convert_checkpoint(source, tmp_path / "again", to="original", progress=False)


# ---- every family, bfloat16, sharded in and out: the files come back byte for byte ----------------------------------


def test_every_family_round_trips_byte_for_byte_in_bf16_through_sharded_folders(tmp_path):
    """Every LLM family of `fixtures/llm_families` (Phi-3, Llama, Qwen3 tied and untied, Qwen3-MoE, GPT-OSS, InternLM2
    holding InternLM3) stored in bfloat16 over three shards with an index: `--to hf` and `--to original` with 50 kB
    output shards keep bfloat16 in every tensor and in config.json, write an index whose `total_size` is the bytes
    written, and give back the source's tensor names, shapes and bytes."""
    from test_llm_families import FAMILIES, IMAGE_TOKEN_ID, original_folder

    for family in sorted(FAMILIES):
        work = tmp_path / family
        work.mkdir()
        folder, _ = original_folder(family, work)
        with safe_open(folder / "model.safetensors", "pt") as reader:
            source = {key: reader.get_tensor(key).to(torch.bfloat16) for key in reader.keys()}
        (folder / "model.safetensors").unlink()
        keys, weight_map = sorted(source), {}
        for index in range(3):
            name = f"model-{index + 1:05d}-of-00003.safetensors"
            part = {key: source[key] for key in keys[index::3]}
            save_file(part, folder / name, metadata={"format": "pt"})
            weight_map |= dict.fromkeys(part, name)
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        hf = convert_checkpoint(
            folder, work / "hf", to="hf", image_token_id=IMAGE_TOKEN_ID, max_shard_size="50kB", progress=False
        )
        back = convert_checkpoint(hf.path, work / "back", to="original", max_shard_size="50kB", progress=False)
        for result in (hf, back):
            assert len(result.shards) > 1, family
            index = json.loads((result.path / "model.safetensors.index.json").read_text())
            assert index["metadata"]["total_size"] == result.total_bytes == sum(t.nbytes for t in source.values())
            assert json.loads((result.path / "config.json").read_text())["dtype"] == "bfloat16", family
        tensors = {}
        for shard in back.shards:
            with safe_open(back.path / shard, "pt") as reader:
                assert reader.metadata() == {"format": "pt"}
                tensors |= {key: reader.get_tensor(key) for key in reader.keys()}
        assert set(tensors) == set(source), family
        for key, tensor in source.items():
            assert tensors[key].dtype == torch.bfloat16 and tensors[key].shape == tensor.shape, (family, key)
            assert torch.equal(tensors[key].view(torch.int16), tensor.view(torch.int16)), (family, key)


# ---- InternViT-6B style tower with other downsample ratios -----------------------------------------------------------


def test_vit6b_tower_with_downsample_quarter_converts_exactly(tmp_path):
    """`fixtures/heldout_s7/llama-vit6b-224` (RMSNorm, QK-norm, no qkv bias, 4 layers, drop-path 0.2 in eval) at its
    tower's own 448 px: transformers' port on the converted folder gives this package's logits on the original one,
    bit for bit (both eager), with downsample 0.25 (64 tokens per tile) and `select_layer` -4. (Downsample 1.0 is
    checked against the original's own numbers above, on `internlm2-ds1-single`.)"""
    downsample_ratio, select_layer = 0.25, -4
    source = tmp_path / "src"
    shutil.copytree(HELDOUT_S7 / "llama-vit6b-224", source, ignore=shutil.ignore_patterns("io.safetensors"))
    config = json.loads((source / "config.json").read_text())
    config |= {"force_image_size": 448, "downsample_ratio": downsample_ratio, "select_layer": select_layer}
    (source / "config.json").write_text(json.dumps(config))
    tensors = load_file(source / "model.safetensors")
    width = int(config["vision_config"]["hidden_size"] / downsample_ratio**2)
    generator = torch.Generator().manual_seed(0)
    tensors["mlp1.0.weight"] = torch.rand(width, generator=generator) + 0.5
    tensors["mlp1.0.bias"] = torch.randn(width, generator=generator) * 0.1
    tensors["mlp1.1.weight"] = torch.randn(tensors["mlp1.1.weight"].shape[0], width, generator=generator) * 0.05
    save_file(tensors, source / "model.safetensors", metadata={"format": "pt"})

    hf = convert_checkpoint(source, tmp_path / "hf", to="hf", progress=False).path
    port = transformers.InternVLForConditionalGeneration.from_pretrained(hf, attn_implementation="eager").eval()
    ours = transformers.AutoModelForImageTextToText.from_pretrained(source, attn_implementation="eager").eval()
    tokens = int((448 // 14) ** 2 * downsample_ratio**2)
    assert port.config.image_seq_length == ours.config.num_image_token == tokens
    ids = torch.tensor([[1, 2, 3] + [port.config.image_token_id] * tokens + [4, 5]])
    pixel_values = torch.randn(1, 3, 448, 448, generator=generator)
    with torch.no_grad():
        expected = ours(input_ids=ids, pixel_values=pixel_values).logits
        assert torch.equal(port(input_ids=ids, pixel_values=pixel_values).logits, expected)


# ---- unmerged LoRA runs written by the ORIGINAL code: the original's merge script ---------------------------------


S8_FIXTURES = Path(__file__).parent / "fixtures" / "conversion_heldout_s8"
ORIGINAL_LORA_SOURCES = {
    "phi3-su": Path(__file__).parent / "fixtures" / "heldout_s6" / "phi3-su",
    "internlm2-ds1-single": HELDOUT_S7 / "internlm2-ds1-single",
}


@pytest.mark.parametrize("name", sorted(ORIGINAL_LORA_SOURCES))
def test_original_lora_run_converts_to_what_the_original_merge_script_writes(name, tmp_path):
    """`fixtures/conversion_heldout_s8/<case>-lora`: a bfloat16 unmerged run saved by the ORIGINAL code
    (`wrap_backbone_lora` r=2 and `wrap_llm_lora` r=4: Phi-3's fused `qkv_proj` / `gate_up_proj`, InternLM2's `wqkv` /
    `w1..w3`); `<case>-merged.json`: the sha256 of every tensor the original's `tools/merge_lora.py` steps wrote
    (see `make_original_lora.py`). `--to hf` then `--to original` gives those tensors bit for bit, and the config
    says `use_backbone_lora` / `use_llm_lora` 0 as the script leaves it."""
    import hashlib

    source = tmp_path / "lora"
    shutil.copytree(S8_FIXTURES / f"{name}-lora", source)
    for file in ORIGINAL_LORA_SOURCES[name].iterdir():
        if file.name.startswith("tokenizer") or file.name in ("special_tokens_map.json", "added_tokens.json"):
            shutil.copy(file, source / file.name)
    hf = convert_checkpoint(source, tmp_path / "hf", to="hf", progress=False).path
    back = convert_checkpoint(hf, tmp_path / "back", to="original", progress=False).path
    expected = json.loads((S8_FIXTURES / f"{name}-merged.json").read_text())
    tensors = load_file(back / "model.safetensors")
    assert sorted(tensors) == sorted(expected)
    for key, (dtype, shape, digest) in expected.items():
        tensor = tensors[key]
        assert (str(tensor.dtype).removeprefix("torch."), list(tensor.shape)) == (dtype, shape), key
        assert hashlib.sha256(tensor.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest() == digest, key
    config = json.loads((back / "config.json").read_text())
    assert (config.get("use_backbone_lora", 0), config.get("use_llm_lora", 0)) == (0, 0)
