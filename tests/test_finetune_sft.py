"""TRL `SFTTrainer` with this package's dataset and collator (`training.sft`, `examples/finetune_lora.py --trainer trl`)."""

import sys
from pathlib import Path

import pytest
import torch
from finetune_helpers import dataset
from helpers import QWEN2_DIR, QWEN2_TOKENIZER, load_model

from transformers_internvl.training.collator import InternVLDataCollator, weighted_lm_loss

pytest.importorskip("peft")
pytest.importorskip("trl")
sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
import finetune_lora  # noqa: E402

from transformers_internvl.training.sft import IndexedCollator, InternVLSFTTrainer, index_dataset  # noqa: E402


def _main(tmp_path, *extra):
    return finetune_lora.main(
        [
            "--model", str(QWEN2_DIR),
            "--tokenizer", str(QWEN2_TOKENIZER),
            "--output-dir", str(tmp_path / "out"),
            "--trainer", "trl",
            "--lora-rank", "4",
            "--lora-dropout", "0",
            "--train-sampling", "sequential",
            "--batch-size", "2",
            "--disable-tqdm",
            *extra,
        ]
    )  # fmt: skip


@pytest.mark.slow
def test_sft_trainer_trains_on_the_original_labels(tmp_path):
    (tmp_path / "data").mkdir()
    samples = dataset(finetune_lora.demo_rows(str(tmp_path / "data")), root=tmp_path / "data", max_dynamic_patch=1)
    first_batch = InternVLDataCollator(990)([samples[0], samples[1]])

    base = load_model().eval()
    with torch.no_grad():
        expected_first_loss = base(**first_batch).loss.item()  # LoRA B = 0 at step 1: the base model's loss

    trainer = _main(tmp_path, "--max-steps", "3", "--learning-rate", "1e-2")
    assert isinstance(trainer, InternVLSFTTrainer)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3
    assert losses[0] == pytest.approx(expected_first_loss, rel=1e-5)
    assert "mean_token_accuracy" in trainer.state.log_history[0]  # SFTTrainer's own metrics ran
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_sft_trainer_square_loss_uses_the_sample_weights(tmp_path):
    trainer = _main(tmp_path, "--max-steps", "1", "--loss-reduction", "square")
    batch = trainer.data_collator([{"index": 0}, {"index": 2}])
    assert "loss_weight" in batch
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        logits = trainer.model(**{k: v for k, v in batch.items() if k not in ("labels", "loss_weight")}).logits
    torch.testing.assert_close(loss, weighted_lm_loss(logits, batch["labels"], batch["loss_weight"]))


def test_indexed_collator_fetches_rows_and_rejects_bad_features():
    collator = IndexedCollator(["a", "b", "c"], lambda samples: {"rows": samples})
    assert collator([{"index": 2}, {"index": 0}]) == {"rows": ["c", "a"]}
    assert index_dataset(["a", "b", "c"])["index"] == [0, 1, 2]
    with pytest.raises(KeyError, match="index"):
        collator([{"input_ids": [1]}])
    with pytest.raises(IndexError, match="outside the dataset of 3"):
        collator([{"index": 3}])
