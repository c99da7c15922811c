"""`examples/finetune_lora.py` on the tiny model: 30 LoRA steps halve the loss; only LoRA parameters change."""

import sys
from pathlib import Path

import pytest
import torch
from finetune_helpers import FIXTURES, QWEN2_DIR, dataset

from transformers_internvl.training.collator import InternVLDataCollator

pytest.importorskip("peft")
sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
import finetune_lora  # noqa: E402


def _loss(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


@pytest.mark.slow
def test_thirty_lora_steps_halve_the_loss_and_change_only_lora(tmp_path):
    (tmp_path / "data").mkdir()
    samples = dataset(finetune_lora.demo_rows(str(tmp_path / "data")), root=tmp_path / "data", max_dynamic_patch=1)
    batch = InternVLDataCollator(990)([samples[i] for i in range(len(samples))])
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(QWEN2_DIR, image_token_id=995)
    before_state = {k: v.clone() for k, v in base.state_dict().items()}
    loss_before = _loss(base, batch)

    trainer = finetune_lora.main(
        [
            "--model", str(QWEN2_DIR),
            "--tokenizer", str(FIXTURES / "tokenizers" / "qwen2-tiny"),
            "--output-dir", str(tmp_path / "out"),
            "--max-steps", "30",
            "--learning-rate", "1e-2",
            "--lora-rank", "8",
            "--disable-tqdm",
        ]
    )  # fmt: skip
    model = trainer.model
    loss_after = _loss(model, batch)
    assert loss_after <= 0.5 * loss_before, (loss_before, loss_after)

    changed = []
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        if not torch.equal(parameter.detach(), before_state[key]):
            changed.append(name)
    assert changed == []
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
