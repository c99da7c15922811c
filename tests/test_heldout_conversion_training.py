"""Held-out cases for conversion (issue 9) and fine-tuning (issue 11): cases of the same kinds as the other tests,
with other inputs (template x tokenizer pairs and conversations, LLM head counts, an InternViT-6B-style vision tower,
sharded bf16 sources, InternLM2 packing, tag placement)."""

import json

import pytest
import torch
from finetune_helpers import dataset, write_image
from helpers import TOKENIZERS, load_model
from safetensors import safe_open
from safetensors.torch import save_file
from test_conversion_families import assert_port_and_ours_agree
from test_llm_families import load, original_folder, read_fixture
from transformers import AutoTokenizer

import transformers_internvl  # noqa: F401
from transformers_internvl.conversion.convert import convert_checkpoint
from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
from transformers_internvl.training.collator import InternVLDataCollator, InternVLPackingCollator
from transformers_internvl.training.data import InternVLSupervisedDataset

H = lambda v: {"from": "human", "value": v}  # noqa: E731
G = lambda v: {"from": "gpt", "value": v}  # noqa: E731
S = lambda v: {"from": "system", "value": v}  # noqa: E731

# The held-out label cases (`fixtures/finetune/labels_heldout.json`, outputs of the ORIGINAL preprocess functions)
# run in `test_finetune_labels.py::test_labels_equal_the_original`.


# ---- tag placement of the dataset (documented differences from `internvl_chat_finetune.py`) ------------------------


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout-img")
    write_image(root / "a.png", (120, 90), seed=7)
    (root / "clip").mkdir()
    for index in range(3):
        write_image(root / "clip" / f"{index:03d}.png", (64, 48), seed=index)
    return root


def _turn_of_first_image(sample, tokenizer):
    """Index of the `<|im_start|>` block (0 = system) that holds the first `<img>` of a sample's input_ids."""
    ids = sample["input_ids"].tolist()
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    return sum(1 for token in ids[: ids.index(tokenizer.convert_tokens_to_ids("<img>"))] if token == start) - 1


def test_single_image_goes_to_the_tagged_later_turn(image_root):
    row = {"image": "a.png", "conversations": [H("Hello"), G("Hi."), H("<image>\nAnd this?"), G("A picture.")]}
    ds = dataset([row], root=image_root, max_dynamic_patch=1)
    sample = ds[0]
    tokenizer = ds.tokenizer
    assert _turn_of_first_image(sample, tokenizer) == 3  # system, user, assistant, user
    assert "<image>" not in tokenizer.decode(sample["input_ids"])


def test_single_image_with_a_system_turn_keeps_the_system_text_clean(image_root):
    row = {"image": "a.png", "conversations": [S("Be brief."), H("What is it?"), G("Noise.")]}
    ds = dataset([row], root=image_root, max_dynamic_patch=1)
    text = ds.tokenizer.decode(ds[0]["input_ids"])
    assert "<|im_start|>system\nBe brief.<|im_end|>" in text
    assert _turn_of_first_image(ds[0], ds.tokenizer) == 1


def test_video_tag_only_in_a_later_turn_is_skipped(image_root):
    rows = [
        {"video": "clip", "conversations": [H("Hi"), G("Hello"), H("<video>\nWhat moves?"), G("Nothing.")]},
        {"video": "clip", "conversations": [H("<video>\nWhat moves?"), G("Nothing.")]},
    ]
    ds = dataset(rows, root=image_root, num_video_frames=3)
    sample = ds[0]  # the first row is skipped, the second used
    assert list(ds.skipped.reasons) == ["records[0]"]
    assert sample["pixel_values"].shape[0] == 3
    assert ds.tokenizer.decode(sample["input_ids"]).count("Frame-") == 3


# ---- packing on InternLM2 -----------------------------------------------------------------------------------------


def test_internlm2_packed_loss_equals_unpacked_without_dynamic_rope(image_root):
    """tiny-internlm2 with its dynamic NTK RoPE switched off (with it, rows above max_position_embeddings=128 take the
    row's RoPE base, as the original's packed training does: see the collator's docstring)."""
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / "internlm2-dummy-prefix")
    model = load_model("tiny-internlm2", image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"))
    model.config.use_cache = model.config.text_config.use_cache = False
    for module in model.modules():
        if hasattr(module, "rope_type"):
            module.rope_type = "default"
    rows = [
        {"conversations": [H("x"), G("y"), H("z"), G("w")]},
        {"image": "a.png", "conversations": [H("<image>\nWhat?"), G("Stripes")]},
        {"conversations": [H("Hi?"), G("Hello, nice day.")]},
    ]
    processor = InternVLImageProcessor()
    ds = InternVLSupervisedDataset(rows, tokenizer, processor, "internvl2_5", root=str(image_root), max_dynamic_patch=1)
    samples = [ds[i] for i in range(len(ds))]
    assert not ds.skipped
    lengths = [len(s["input_ids"]) for s in samples]
    packing = InternVLPackingCollator(tokenizer.pad_token_id, max_tokens=lengths[0] + lengths[1], pad_to_multiple_of=8)
    assert packing.pack(samples) == [[0, 1], [2]]
    with torch.no_grad():
        unpacked = model.eval()(**InternVLDataCollator(tokenizer.pad_token_id)(samples))
        packed = model(**packing(samples))
    assert abs(packed.loss.item() - unpacked.loss.item()) <= 1e-5
    in_row = packed.logits[0, lengths[0] : lengths[0] + lengths[1]]
    torch.testing.assert_close(in_row, unpacked.logits[1, : lengths[1]], atol=1e-5, rtol=0)


# ---- conversion: other shapes, vision tower and dtypes -----------------------------------------------------------


def _variant_folder(tmp_path, family, llm=None, vision=None, dtype=torch.float32, shards=1):
    """`original_folder` of a family fixture with config overrides, saved in `dtype` and `shards` files + index."""
    raw = read_fixture(family)
    raw["llm_config"].update(llm or {})
    raw["vision_config"].update(vision or {})
    folder, _ = original_folder(family, tmp_path, raw=raw)
    path = folder / "model.safetensors"
    with safe_open(path, "pt") as handle:
        tensors = {key: handle.get_tensor(key).to(dtype) for key in handle.keys()}
    path.unlink()
    keys = sorted(tensors)
    per_shard = -(-len(keys) // shards)
    weight_map = {}
    for index in range(shards):
        name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors" if shards > 1 else "model.safetensors"
        part = {key: tensors[key] for key in keys[index * per_shard : (index + 1) * per_shard]}
        save_file(part, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    if shards > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}}
        (folder / "model.safetensors.index.json").write_text(json.dumps({**index, "weight_map": weight_map}))
    return folder, tensors


def _file_tensors(folder):
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as handle:
            out.update({key: handle.get_tensor(key) for key in handle.keys()})
    return out


VARIANTS = {
    # family, llm overrides, vision overrides (InternViT-6B style: RMSNorm, qk-norm, no qkv bias), dtype, shards
    "qwen3-8q2kv-vit6b": ("qwen3", {"num_attention_heads": 8}, {"norm_type": "rms_norm", "qk_normalization": True,
                          "qkv_bias": False, "num_attention_heads": 2}, torch.float32, 1),
    "internlm3-8q4kv-bf16-3shards": ("internlm3_in_internlm2", {"num_key_value_heads": 4}, {"num_attention_heads": 8},
                                     torch.bfloat16, 3),
    "phi3-gqa-fp16-2shards": ("phi3", {"num_key_value_heads": 2}, None, torch.float16, 2),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_heldout_checkpoint_converts_both_ways(name, tmp_path):
    family, llm, vision, dtype, shards = VARIANTS[name]
    folder, source_tensors = _variant_folder(tmp_path, family, llm, vision, dtype, shards)
    assert_port_and_ours_agree(load(folder), folder, tmp_path)

    convert_checkpoint(tmp_path / "hf", tmp_path / "back", to="original", progress=False)
    back = _file_tensors(tmp_path / "back")
    assert set(back) == set(source_tensors)
    for key, tensor in source_tensors.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key
