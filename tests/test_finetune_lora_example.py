"""`examples/finetune_lora.py` on the tiny model: 30 LoRA steps halve the loss; only LoRA parameters change."""

import sys
from pathlib import Path

import pytest
import torch
from finetune_helpers import tokenizer
from helpers import QWEN2_DIR, QWEN2_TOKENIZER, SMALL_TILE_SIZE, small_tile_qwen2_model

from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
from transformers_internvl.training.collator import InternVLDataCollator
from transformers_internvl.training.data import InternVLSupervisedDataset

pytest.importorskip("peft")
sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
import finetune_lora  # noqa: E402


def _loss(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


def test_thirty_lora_steps_halve_the_loss_and_change_only_lora(tmp_path):
    """On the small-tile (112 px) random Qwen2 model saved to a folder: the example tiles at the checkpoint's
    `force_image_size`, so every tile costs 64 patches and 16 image tokens instead of 1024 and 256 (the claim does
    not depend on the tile size)."""
    (tmp_path / "data").mkdir()
    model_dir = tmp_path / "model"
    base = small_tile_qwen2_model()
    base.save_pretrained(model_dir)
    samples = InternVLSupervisedDataset(
        finetune_lora.demo_rows(str(tmp_path / "data")),
        tokenizer(),
        InternVLImageProcessor(image_size=SMALL_TILE_SIZE),
        "internvl2_5",
        root=str(tmp_path / "data"),
        num_image_token=base.num_image_token,
        max_dynamic_patch=1,
    )
    batch = InternVLDataCollator(990)([samples[i] for i in range(len(samples))])
    assert batch["pixel_values"].shape[-1] == SMALL_TILE_SIZE

    before_state = {k: v.clone() for k, v in base.state_dict().items()}
    loss_before = _loss(base, batch)

    trainer = finetune_lora.main(
        [
            "--model", str(model_dir),
            "--tokenizer", str(QWEN2_TOKENIZER),
            "--output-dir", str(tmp_path / "out"),
            "--max-steps", "30",
            "--learning-rate", "1e-2",
            "--lora-rank", "8",
            "--batch-size", "2",
            "--disable-tqdm",
        ]
    )  # fmt: skip
    model = trainer.model
    assert model.config.force_image_size == SMALL_TILE_SIZE
    loss_after = _loss(model, batch)
    print(f"loss on the 4 demo samples: {loss_before:.4f} -> {loss_after:.4f}")
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


@pytest.mark.slow
def test_packing_square_loss_and_checkpointing_run_through_the_trainer(tmp_path):
    trainer = finetune_lora.main(
        [
            "--model", str(QWEN2_DIR),
            "--tokenizer", str(QWEN2_TOKENIZER),
            "--output-dir", str(tmp_path / "out"),
            "--max-steps", "2",
            "--lora-rank", "4",
            "--packing", "--max-tokens", "900",
            "--loss-reduction", "square",
            "--gradient-checkpointing",
            "--disable-tqdm",
        ]
    )  # fmt: skip
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(loss > 0 and loss == loss for loss in losses)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert batch["input_ids"].shape[0] == 2  # 381 + 382 + 130 | 130 tokens: rows of at most 900
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        logits = trainer.model(**{k: v for k, v in batch.items() if k not in ("labels", "loss_weight")}).logits
    from transformers_internvl.training.collator import weighted_lm_loss

    torch.testing.assert_close(loss, weighted_lm_loss(logits, batch["labels"], batch["loss_weight"]))
