"""`convert --merge-lora` with an adapter saved in the original module names.

`examples/finetune_lora.py` saves its adapter with the original names by default
(`training.adapters.save_adapter_original_layout`: `base_model.model.language_model.model.layers.N...`,
`...vision_model...`, `...mlp1...`, `...language_model.lm_head` / `.output`). `--merge-lora` refused such a folder
("LoRA module 'language_model.model.layers.0.mlp.down_proj' is not part of an InternVL model in the original layout").
The same adapter saved under either naming must give the same converted weights.
"""

from __future__ import annotations

import pytest
import torch
from helpers import original_model_dir
from safetensors.torch import load_file

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl.conversion.convert import ConversionError, convert_checkpoint
from transformers_internvl.conversion.lora import lora_deltas


@pytest.mark.parametrize(
    ("model", "tokenizer", "targets"),
    [
        ("tiny-qwen2", "qwen2-tiny", ["qkv", "mlp1.1", "q_proj", "down_proj", "lm_head"]),
        ("tiny-internlm2", "internlm2-dummy-prefix", ["qkv", "mlp1.3", "wqkv", "w2", "lm_head"]),
    ],
)
def test_adapter_in_original_names_merges_like_the_peft_names(tmp_path, model, tokenizer, targets):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from transformers_internvl.training.adapters import save_adapter_original_layout

    source = original_model_dir(tmp_path / "src", model=model, tokenizer=tokenizer)
    base = AutoModelForImageTextToText.from_pretrained(source).eval()
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "peft-names")
    save_adapter_original_layout(peft_model, tmp_path / "original-names")
    saved = load_file(tmp_path / "original-names" / "adapter_model.safetensors")
    head = "output" if model == "tiny-internlm2" else "lm_head"
    assert any(key.startswith(f"base_model.model.language_model.{head}.") for key in saved)
    assert any(key.startswith("base_model.model.language_model.model.layers.") for key in saved)

    peft_deltas = lora_deltas(tmp_path / "peft-names", "original", head)
    original_deltas = lora_deltas(tmp_path / "original-names", "original", head)
    assert sorted(original_deltas) == sorted(peft_deltas)
    assert f"language_model.{head}.weight" in original_deltas

    results = {}
    for naming in ("peft-names", "original-names"):
        convert_checkpoint(
            source,
            tmp_path / f"hf-{naming}",
            to="hf",
            merge_lora=tmp_path / naming,
            verify=naming == "original-names" and model == "tiny-internlm2",  # verify: unmerged PEFT on the source
        )
        results[naming] = load_file(tmp_path / f"hf-{naming}" / "model.safetensors")
    assert results["peft-names"].keys() == results["original-names"].keys()
    for key, tensor in results["peft-names"].items():
        assert torch.equal(tensor, results["original-names"][key]), key
    unmerged = load_file(tmp_path / "src" / "model.safetensors")
    assert not torch.equal(
        results["original-names"]["language_model.lm_head.weight"], unmerged[f"language_model.{head}.weight"]
    )


def test_foreign_module_names_are_refused_with_both_namings(tmp_path):
    import json

    from safetensors.torch import save_file

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    save_file(
        {
            "base_model.model.text_model.layers.0.q_proj.lora_A.weight": torch.zeros(2, 8),
            "base_model.model.text_model.layers.0.q_proj.lora_B.weight": torch.zeros(8, 2),
        },
        adapter / "adapter_model.safetensors",
    )
    with pytest.raises(ConversionError, match=r"'text_model\.layers\.0\.q_proj'.*`language_model\.model\.\*`"):
        lora_deltas(adapter, "original")
