"""Collators: padding, packing (loss and logits equal to unpacked), loss weighting as the original."""

import math

import pytest
import torch
from finetune_helpers import dataset, write_image
from helpers import load_model

from transformers_internvl.training.collator import (
    InternVLDataCollator,
    InternVLPackingCollator,
    len2weight,
    weighted_lm_loss,
)

H = lambda v: {"from": "human", "value": v}  # noqa: E731
G = lambda v: {"from": "gpt", "value": v}  # noqa: E731
PAD = 990


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("img")
    write_image(root / "a.png", (500, 250), seed=3)
    write_image(root / "b.png", (200, 200), seed=4)
    rows = [
        {"image": "a.png", "conversations": [H("Describe."), G("Noise, mostly grey."), H("More?"), G("No.")]},
        {"conversations": [H("Say hi."), G("hi")]},
        {"image": ["b.png", "b.png"], "conversations": [H("<image>\n<image>\nSame?"), G("Yes, the same.")]},
    ]
    ds = dataset(rows, root=root, max_dynamic_patch=2)
    return [ds[i] for i in range(len(ds))]


@pytest.fixture(scope="module")
def model():
    model = load_model()
    model.config.use_cache = model.config.text_config.use_cache = False  # transformers skips packing with a cache
    return model.eval()


def test_padding_collator(samples):
    batch = InternVLDataCollator(PAD)(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    assert batch["input_ids"].shape == (3, max(lengths))
    for row, n in enumerate(lengths):
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert (batch["labels"][row, n:] == -100).all() and (batch["input_ids"][row, n:] == PAD).all()
    assert torch.equal(batch["pixel_values"], torch.cat([s["pixel_values"] for s in samples]))
    assert batch["image_flags"].tolist() == [1, 1, 1, 0, 1, 1]
    assert InternVLDataCollator(PAD, pad_to_multiple_of=64)(samples)["input_ids"].shape[1] % 64 == 0


def test_packing_rows_and_position_ids(samples):
    lengths = [len(s["input_ids"]) for s in samples]
    collator = InternVLPackingCollator(PAD, max_tokens=lengths[0] + lengths[1])
    assert collator.pack(samples) == [[0, 1], [2]]
    batch = collator(samples)
    assert "attention_mask" not in batch
    row0 = batch["position_ids"][0].tolist()
    assert row0[: lengths[0] + lengths[1]] == list(range(lengths[0])) + list(range(lengths[1]))
    assert batch["position_ids"][1].tolist()[lengths[2] :] == list(range(batch["input_ids"].shape[1] - lengths[2]))
    assert (batch["labels"][1, lengths[2] :] == -100).all()
    with pytest.raises(ValueError, match="max_tokens=10"):
        InternVLPackingCollator(PAD, max_tokens=10)(samples)


def test_packed_loss_and_logits_equal_unpacked(samples, model):
    with torch.no_grad():
        unpacked = model(**InternVLDataCollator(PAD)(samples))
        packed = model(**InternVLPackingCollator(PAD, max_tokens=10_000)(samples))
    assert packed.logits.shape[0] == 1
    assert abs(packed.loss.item() - unpacked.loss.item()) <= 1e-5
    start = 0
    for row, sample in enumerate(samples):  # attention stays inside each sample
        n = len(sample["input_ids"])
        torch.testing.assert_close(packed.logits[0, start : start + n], unpacked.logits[row, :n], atol=1e-5, rtol=0)
        start += n


def test_packed_sample_loss_reduction_matches_the_original_rule(samples, model):
    for reduction in ("sample", "square"):
        batch = InternVLPackingCollator(PAD, max_tokens=10_000, loss_reduction=reduction)(samples)
        weights = batch.pop("loss_weight")
        with torch.no_grad():
            logits = model(**batch).logits
        loss = weighted_lm_loss(logits, batch["labels"], weights)
        # first principles: per-sample mean CE combined with weights len2weight(n_i) * n_i
        numerator = denominator = 0.0
        start = 0
        for sample in samples:
            n = len(sample["input_ids"])
            targets = sample["labels"][1:]
            ce = torch.nn.functional.cross_entropy(
                logits[0, start : start + n - 1], targets, ignore_index=-100, reduction="sum"
            )
            count = int((targets != -100).sum())
            numerator += ce.item() * len2weight(count, reduction)
            denominator += count * len2weight(count, reduction)
            start += n
        assert math.isclose(loss.item(), numerator / denominator, rel_tol=1e-5)


def test_len2weight():
    assert len2weight(4, "token") == 1 and len2weight(4, "sample") == 0.25 and len2weight(4, "square") == 0.5
    assert len2weight(0, "square") == 0
    with pytest.raises(ValueError, match="loss_reduction"):
        len2weight(3, "mean")
