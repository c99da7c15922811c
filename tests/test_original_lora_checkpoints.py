"""Checkpoints written by the original fine-tuning code with `--use_llm_lora r` / `--use_backbone_lora r`.

The reference is built here the way the original does it (`InternVLChatModel.wrap_llm_lora` / `wrap_backbone_lora`):
the LLM (`XForCausalLM`, `task_type="CAUSAL_LM"`) and the vision tower are wrapped with
`peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=<the original's list>, lora_dropout=0.05)`, the LoRA tensors
are set to random non-zero values, the logits are computed in eval mode with those PEFT modules in place (the
original's forward), and the state dict is saved under the original's module names (`language_model.` + the PEFT
model's keys, ...) with `use_llm_lora: r` / `use_backbone_lora: r` in `config.json`.
"""

import json
import shutil
from pathlib import Path

import peft
import pytest
import torch
from helpers import MODELS, load_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl import InternVLModel
from transformers_internvl.conversion.original_lora import (
    ORIGINAL_BACKBONE_LORA_TARGET_MODULES,
    ORIGINAL_LLM_LORA_TARGET_MODULES,
)
from transformers_internvl.modeling import original_lora_loading

TOLERANCE = 1e-4  # fp32 logits, acceptance bound; the merge itself is exact up to fp32 rounding (~1e-6)


def _randomise_lora(module: torch.nn.Module, generator: torch.Generator) -> None:
    for name, parameter in module.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            with torch.no_grad():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


def _load(directory: Path):
    return load_model(directory).eval()


def _logits(model, io) -> torch.Tensor:
    with torch.no_grad():
        return model(
            input_ids=io["input_ids"], pixel_values=io["pixel_values"], attention_mask=io["attention_mask"]
        ).logits


def write_original_lora_checkpoint(
    fixture: str, out: Path, llm_rank: int, vision_rank: int, seed: int = 0, with_logits: bool = True
):
    """Save an original-style unmerged LoRA checkpoint in `out`; return `(reference_logits, base_logits, io)` (the
    logits `None` unless `with_logits`)."""
    directory = MODELS / fixture
    io = load_file(directory / "io.safetensors")
    model = _load(directory)
    base_logits = _logits(model, io) if with_logits else None
    config = model.config
    generator = torch.Generator().manual_seed(seed)

    # The original's `language_model` is the whole causal LM, wrapped as one PEFT model.
    causal_lm = AutoModelForCausalLM.from_config(config.text_config)
    head_name = next(name for name, module in causal_lm.named_modules() if module is causal_lm.get_output_embeddings())
    llm_state = {f"model.{key}": value for key, value in model.model.language_model.state_dict().items()}
    llm_state[f"{head_name}.weight"] = model.lm_head.weight
    causal_lm.load_state_dict(llm_state, strict=True)
    language_model = causal_lm
    if llm_rank:
        target_modules = list(ORIGINAL_LLM_LORA_TARGET_MODULES[config.text_config.architectures[0]])
        lora_config = peft.LoraConfig(
            r=llm_rank, lora_alpha=2 * llm_rank, target_modules=target_modules, lora_dropout=0.05, task_type="CAUSAL_LM"
        )
        language_model = peft.get_peft_model(causal_lm, lora_config)
        _randomise_lora(language_model, generator)
    vision_model = model.model.vision_model
    if vision_rank:
        lora_config = peft.LoraConfig(
            r=vision_rank,
            lora_alpha=2 * vision_rank,
            target_modules=list(ORIGINAL_BACKBONE_LORA_TARGET_MODULES),
            lora_dropout=0.05,
        )
        vision_model = peft.get_peft_model(vision_model, lora_config)  # injects into `model.model.vision_model`
        _randomise_lora(vision_model, generator)

    # The original's forward with the PEFT modules in place (the tower is wrapped in place; the LLM is swapped in).
    model.model.language_model = causal_lm.model
    model.lm_head = causal_lm.get_output_embeddings()
    model.eval()
    reference_logits = _logits(model, io) if with_logits else None

    state_dict = {}
    for prefix, module in (
        ("vision_model.", vision_model),
        ("mlp1.", model.model.mlp1),
        ("language_model.", language_model),
    ):
        state_dict.update(
            {prefix + key: value.detach().clone().contiguous() for key, value in module.state_dict().items()}
        )
    out.mkdir(parents=True, exist_ok=True)
    save_file(state_dict, out / "model.safetensors", metadata={"format": "pt"})
    original_config = json.loads((directory / "config.json").read_text())
    original_config["use_llm_lora"] = llm_rank
    original_config["use_backbone_lora"] = vision_rank
    (out / "config.json").write_text(json.dumps(original_config, indent=2))
    shutil.copy(directory / "meta.json", out / "meta.json")
    return reference_logits, base_logits, io


CASES = [
    ("tiny-qwen2", 4, 0),
    ("tiny-qwen2", 4, 8),
    ("tiny-internlm2", 4, 0),
    ("tiny-internlm2", 8, 4),
]


@pytest.mark.parametrize(("fixture", "llm_rank", "vision_rank"), CASES)
def test_unmerged_lora_checkpoint_gives_the_original_logits(tmp_path, fixture, llm_rank, vision_rank):
    reference, base_logits, io = write_original_lora_checkpoint(fixture, tmp_path / "lora", llm_rank, vision_rank)
    saved_keys = set(load_file(tmp_path / "lora" / "model.safetensors"))
    assert any(key.startswith("language_model.base_model.model.") and ".lora_A.default." in key for key in saved_keys)
    assert any(key.startswith("vision_model.base_model.model.") for key in saved_keys) == bool(vision_rank)
    # The LoRA changes the numbers, so a load that dropped it would fail the comparison below.
    assert (reference - base_logits).abs().max().item() > 1e-2

    model = _load(tmp_path / "lora")
    logits = _logits(model, io)
    error = (logits - reference).abs().max().item()
    assert error <= TOLERANCE, f"max |logits - original| = {error:.3g}"
    assert (model.config.use_llm_lora, model.config.use_backbone_lora) == (0, 0)
    assert not any("lora" in name or "base_layer" in name for name, _ in model.named_parameters())

    # The merged model saves plain original keys under a config that says so; a reload does not merge again.
    model.save_pretrained(tmp_path / "merged")
    shutil.copy(tmp_path / "lora" / "meta.json", tmp_path / "merged" / "meta.json")
    plain_keys = set(load_file(MODELS / fixture / "model.safetensors"))
    assert set(load_file(tmp_path / "merged" / "model.safetensors")) == plain_keys
    saved_config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert (saved_config["use_llm_lora"], saved_config["use_backbone_lora"]) == (0, 0)
    reloaded = _load(tmp_path / "merged")
    assert torch.equal(_logits(reloaded, io), logits)


def test_merge_is_w_plus_two_b_a_in_fp32():
    """First principles: PEFT's eval forward of a wrapped linear layer equals `x @ (W + (alpha / r) B A).T + b`."""
    generator = torch.Generator().manual_seed(1)
    weight, lora_a, lora_b = (torch.randn(shape, generator=generator) for shape in ((6, 5), (3, 5), (6, 3)))
    merged = original_lora_loading.MergeOriginalLora().convert(
        {"base_layer.weight": [weight], "lora_A.default.weight": [lora_a], "lora_B.default.weight": [lora_b]},
        source_patterns=[],
        target_patterns=["weight"],
        full_layer_name="model.language_model.layers.0.mlp.up_proj.weight",
    )
    assert torch.allclose(
        merged["model.language_model.layers.0.mlp.up_proj.weight"], weight + 2.0 * lora_b @ lora_a, atol=1e-6
    )


def test_lora_of_another_rank_than_the_config_is_rejected(tmp_path):
    write_original_lora_checkpoint("tiny-qwen2", tmp_path, llm_rank=4, vision_rank=0, with_logits=False)
    config = json.loads((tmp_path / "config.json").read_text())
    config["use_llm_lora"] = 8
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"`use_llm_lora` is 8 in the config but the checkpoint's LoRA tensors have rank \[4\]"
    ):
        AutoModelForImageTextToText.from_pretrained(tmp_path)


def test_incomplete_lora_layer_is_named_in_the_original_layout(tmp_path):
    write_original_lora_checkpoint("tiny-internlm2", tmp_path, llm_rank=4, vision_rank=0, with_logits=False)
    state_dict = load_file(tmp_path / "model.safetensors")
    del state_dict["language_model.base_model.model.model.layers.1.attention.wo.lora_B.default.weight"]
    save_file(state_dict, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match=r"language_model\.model\.layers\.1\.attention\.wo\.weight: the checkpoint has no lora_B"
    ):
        AutoModelForImageTextToText.from_pretrained(tmp_path)


def test_lora_tensors_under_a_config_without_lora_are_merged_with_a_warning(tmp_path):
    reference, _, io = write_original_lora_checkpoint("tiny-qwen2", tmp_path, llm_rank=4, vision_rank=0)
    config = json.loads((tmp_path / "config.json").read_text())
    config["use_llm_lora"] = 0
    (tmp_path / "config.json").write_text(json.dumps(config))
    logger = logging.get_logger(original_lora_loading.__name__)
    with CaptureLogger(logger) as captured:
        model = _load(tmp_path)
    assert "`use_llm_lora` is 0" in captured.out
    assert (_logits(model, io) - reference).abs().max().item() <= TOLERANCE


def test_merge_keeps_the_weight_dtype_and_adds_in_fp32():
    generator = torch.Generator().manual_seed(2)
    weight, lora_a, lora_b = (torch.randn(shape, generator=generator) for shape in ((64, 32), (4, 32), (64, 4)))
    name = "model.vision_model.encoder.layers.0.attn.qkv.weight"
    merged = original_lora_loading.MergeOriginalLora().convert(
        {
            "base_layer.weight": [weight.bfloat16()],
            "lora_A.default.weight": [lora_a.bfloat16()],
            "lora_B.default.weight": [lora_b.bfloat16()],
        },
        source_patterns=[],
        target_patterns=["weight"],
        full_layer_name=name,
    )[name]
    assert merged.dtype == torch.bfloat16
    expected = (weight.bfloat16().float() + 2.0 * lora_b.bfloat16().float() @ lora_a.bfloat16().float()).bfloat16()
    assert torch.equal(merged, expected)


def _state_dicts_equal(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def test_sharded_checkpoint_merges_across_shards(tmp_path):
    """The merge collects a layer's tensors across shards."""
    write_original_lora_checkpoint("tiny-qwen2", tmp_path / "one", llm_rank=4, vision_rank=8, with_logits=False)
    full = _load(tmp_path / "one")

    state_dict = load_file(tmp_path / "one" / "model.safetensors")
    shards = {"model-00001-of-00002.safetensors": {}, "model-00002-of-00002.safetensors": {}}
    for key, value in state_dict.items():  # LoRA factors in the second shard, everything else in the first
        shards[sorted(shards)[1 if ".lora_" in key else 0]][key] = value
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    weight_map = {}
    for filename, tensors in shards.items():
        save_file(tensors, sharded / filename, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, filename))
    index = {"metadata": {}, "weight_map": weight_map}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    for name in ("config.json", "meta.json"):
        shutil.copy(tmp_path / "one" / name, sharded / name)
    assert _state_dicts_equal(_load(sharded).state_dict(), full.state_dict())


def test_base_model_load_merges_the_same(tmp_path):
    write_original_lora_checkpoint("tiny-qwen2", tmp_path, llm_rank=4, vision_rank=8, with_logits=False)
    full = _load(tmp_path)
    # The base model's class name (`InternVLChatBaseModel`) is not transformers' own `InternVLModel`, whose class-name
    # conversion mapping (Llava's) would otherwise take priority over the `internvl_chat` one and skip the merge.
    base = InternVLModel.from_pretrained(tmp_path)  # AutoModel gives the chat model, as the original's
    assert type(base).__name__ == "InternVLChatBaseModel"
    assert _state_dicts_equal(base.state_dict(), full.model.state_dict())
    assert (base.config.use_llm_lora, base.config.use_backbone_lora) == (0, 0)


def test_bfloat16_load_of_a_lora_checkpoint(tmp_path):
    write_original_lora_checkpoint("tiny-internlm2", tmp_path, llm_rank=4, vision_rank=4, with_logits=False)
    fp32 = _load(tmp_path)
    bf16 = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype=torch.bfloat16)
    for (name, parameter), (_, reference) in zip(bf16.named_parameters(), fp32.named_parameters()):
        assert parameter.dtype == torch.bfloat16, name
        # One bf16 rounding of the fp32 merge or of the inputs: within a few bf16 ulps.
        assert torch.allclose(parameter.float(), reference, rtol=2**-6, atol=1e-3), name


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_lora_factors_are_refused_at_load(tmp_path, bad):
    """NaN / inf in a factor would make every output NaN: the load names the layer instead of merging silently."""
    write_original_lora_checkpoint("tiny-qwen2", tmp_path, llm_rank=4, vision_rank=0, with_logits=False)
    state_dict = load_file(tmp_path / "model.safetensors")
    key = "language_model.base_model.model.model.layers.0.mlp.up_proj.lora_A.default.weight"
    state_dict[key][1, 2] = bad
    save_file(state_dict, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match=r"language_model\.model\.layers\.0\.mlp\.up_proj\.weight: merging lora_A / lora_B gives \d+ "
    ):
        AutoModelForImageTextToText.from_pretrained(tmp_path)


def test_a_merge_beyond_the_dtype_range_is_refused():
    """Finite factors whose sum overflows float16 are named too (the cast back would give inf)."""
    weight = torch.full((4, 3), 60000.0, dtype=torch.float16)
    lora_a, lora_b = torch.full((2, 3), 100.0), torch.full((4, 2), 100.0)
    record = original_lora_loading.LoraLoadRecord()
    model = type("M", (), {})()
    model._original_lora_record = record
    out = original_lora_loading.MergeOriginalLora().convert(
        {"base_layer.weight": [weight], "lora_A.default.weight": [lora_a], "lora_B.default.weight": [lora_b]},
        source_patterns=[],
        target_patterns=["weight"],
        full_layer_name="model.language_model.layers.0.mlp.up_proj.weight",
        model=model,
    )
    assert torch.equal(next(iter(out.values())), weight)  # left as the base; the load then fails with the record
    assert "range of float16" in record.problems[0][1]
    # A base weight that is already non-finite is the checkpoint's own content: not blamed on the LoRA.
    weight[0, 0] = float("nan")
    assert original_lora_loading.nonfinite_merge_problem(weight, weight.clone()) is None
