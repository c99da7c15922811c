"""Session-11 held-out check of fine-tuning (issue 11) against the ORIGINAL training code: one training step.

`tests/fixtures/finetune_s11/` (README there) holds what OpenGVLab's `LazySupervisedDataset`,
`concat_pad_data_collator`, `PackedDataset.update_buffer` + `packed_collate_fn` and `InternVLChatModel.forward` (train
mode, every parameter trainable) give for a mixed batch (one image, text-only with a system turn and the dummy tile of
`image_flags` 0, two images) on both tiny models: the samples, the loss and the gradient of every parameter, padded
and packed, for `loss_reduction` token / square / sample. Here the same rows go through this package's dataset,
collators, `InternVLTrainer.compute_loss` and model.
"""

import json

import pytest
import torch
from finetune_helpers import load_inputs_module, original_name
from helpers import FIXTURES, TOKENIZERS, load_model
from safetensors.torch import load_file
from transformers import AutoTokenizer, TrainingArguments

import transformers_internvl  # noqa: F401
from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
from transformers_internvl.training.collator import InternVLDataCollator, InternVLPackingCollator
from transformers_internvl.training.data import InternVLSupervisedDataset
from transformers_internvl.training.stages import set_trainable
from transformers_internvl.training.trainer import InternVLTrainer

HERE = FIXTURES / "finetune_s11"
INPUTS = load_inputs_module(HERE / "finetune_s11_inputs.py")
DATA = json.loads((HERE / "original.json").read_text())
TENSORS = load_file(HERE / "original.safetensors")


def _tokenizer(name):
    _, tokenizer_name, _, specials = INPUTS.MODELS[name]
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / tokenizer_name)
    if specials:
        tokenizer.add_special_tokens({"additional_special_tokens": INPUTS.SPECIALS})
    return tokenizer


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    directory = tmp_path_factory.mktemp("s11-images")
    INPUTS.write_images(directory)
    return directory


_SAMPLES = {}


def _samples(name, root):
    if name not in _SAMPLES:
        dataset = InternVLSupervisedDataset(
            INPUTS.ROWS,
            _tokenizer(name),
            InternVLImageProcessor(use_thumbnail=True),
            INPUTS.TEMPLATE,
            num_image_token=INPUTS.NUM_IMAGE_TOKEN,
            max_length=8192,
            root=str(root),
            max_dynamic_patch=INPUTS.MAX_DYNAMIC_PATCH,
        )
        _SAMPLES[name] = [dataset[i] for i in range(len(dataset))]
        assert not dataset.skipped
    return _SAMPLES[name]


@pytest.mark.parametrize("name", sorted(INPUTS.MODELS))
def test_samples_equal_the_original(name, root):
    expected = DATA["models"][name]["samples"]
    samples = _samples(name, root)
    for sample, want in zip(samples, expected, strict=True):
        assert sample["input_ids"].tolist() == want["input_ids"]
        assert sample["labels"].tolist() == want["labels"]
        assert sample["image_flags"].tolist() == want["image_flags"]
        assert [INPUTS.tile_hash(tile) for tile in sample["pixel_values"]] == want["tile_sha256"]


def _model(name, checkpointing=False):
    folder, _, _, _ = INPUTS.MODELS[name]
    image_token = DATA["models"][name]["img_context_token_id"]
    model = load_model(folder, image_token_id=image_token, dtype=torch.float32, attn_implementation="eager")
    return set_trainable(model, "full", gradient_checkpointing=checkpointing)


def _step(name, batch, tmp_path, trl=False, checkpointing=False):
    """Loss and gradients of one `InternVLTrainer.compute_loss` (TRL: `InternVLSFTTrainer.compute_loss`) + backward,
    by original parameter name."""
    model = _model(name, checkpointing)
    if trl:
        from transformers_internvl.training.sft import internvl_sft_config, sft_trainer

        args = internvl_sft_config(output_dir=str(tmp_path), report_to=[], use_cpu=True)
        trainer = sft_trainer(model, args, _SAMPLES[name], InternVLDataCollator(0), processing_class=_tokenizer(name))
    else:
        args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
        trainer = InternVLTrainer(model=model, args=args)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    head = INPUTS.MODELS[name][2]
    grads = {original_name(n, head): p.grad for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def _check(name, key, loss, grads):
    expected = DATA["models"][name][key]
    assert loss == pytest.approx(expected["loss"], abs=2e-5)
    assert set(grads) == set(expected["grad_params"])
    for param in expected["grad_params"]:
        norm = TENSORS[f"{name}.{key}.norm.{param}"].item()
        flat = grads[param].flatten()
        assert flat.double().norm().item() == pytest.approx(norm, rel=1e-4, abs=1e-7), param
        torch.testing.assert_close(
            INPUTS.grad_sample(flat), TENSORS[f"{name}.{key}.sample.{param}"], atol=1e-5 * max(1.0, norm), rtol=1e-4
        )


@pytest.mark.parametrize("reduction", INPUTS.REDUCTIONS)
@pytest.mark.parametrize("name", sorted(INPUTS.MODELS))
def test_padded_step_equals_the_original(name, reduction, root, tmp_path):
    """A padded batch mixing image, multi-image and text-only rows (dummy tile, image_flags 0): loss and every
    gradient as the original's forward (InternLM2: dynamic NTK RoPE at the padded length, as the original)."""
    pad = DATA["models"][name]["pad_token_id"]
    batch = InternVLDataCollator(pad, loss_reduction=reduction)(_samples(name, root))
    assert batch["attention_mask"].sum(1).tolist() == DATA["models"][name][f"padded.{reduction}"]["attention_mask_rows"]
    _check(name, f"padded.{reduction}", *_step(name, batch, tmp_path))


@pytest.mark.parametrize("reduction", INPUTS.REDUCTIONS)
@pytest.mark.parametrize("name", sorted(INPUTS.MODELS))
def test_packed_step_equals_the_original(name, reduction, root, tmp_path):
    """The three samples packed in one row: position ids, boundaries, loss weights, loss and every gradient as the
    original's packed training (InternLM2: its packed-training attention patch, RoPE base at the row length)."""
    pad = DATA["models"][name]["pad_token_id"]
    expected = DATA["models"][name][f"packed.{reduction}"]
    batch = InternVLPackingCollator(pad, max_tokens=8192, loss_reduction=reduction)(_samples(name, root))
    assert batch["input_ids"].shape[0] == 1
    assert batch["position_ids"][0].tolist() == expected["position_ids"]
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    assert starts == expected["cu_seqlens"]
    weights = batch.get("loss_weight", torch.where(batch["labels"] == -100, 0.0, 1.0))
    torch.testing.assert_close(weights[0], torch.tensor(expected["loss_weight"]), atol=1e-7, rtol=0)
    _check(name, f"packed.{reduction}", *_step(name, batch, tmp_path))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reduction", ["token", "square"])
def test_trl_sft_trainer_step_equals_the_original(reduction, packed, root, tmp_path):
    """TRL's `SFTTrainer` (`training.sft`) on the same batches: the original's loss and gradients."""
    pytest.importorskip("trl")
    name = "qwen2"
    pad = DATA["models"][name]["pad_token_id"]
    samples = _samples(name, root)
    if packed:
        batch = InternVLPackingCollator(pad, max_tokens=8192, loss_reduction=reduction)(samples)
    else:
        batch = InternVLDataCollator(pad, loss_reduction=reduction)(samples)
    key = f"{'packed' if packed else 'padded'}.{reduction}"
    _check(name, key, *_step(name, batch, tmp_path, trl=True))


@pytest.mark.parametrize("name", sorted(INPUTS.MODELS))
def test_packed_step_with_gradient_checkpointing_equals_the_original(name, root, tmp_path):
    """Gradient checkpointing in both towers on a packed row (square weights): still the original's gradients."""
    pad = DATA["models"][name]["pad_token_id"]
    batch = InternVLPackingCollator(pad, max_tokens=8192, loss_reduction="square")(_samples(name, root))
    _check(name, "packed.square", *_step(name, batch, tmp_path, checkpointing=True))


@pytest.mark.parametrize(
    "case", DATA["lora_families"], ids=lambda c: f"{c['family']}-{c['case']}"
)
def test_lora_trainable_parameters_equal_the_original_per_family(case):
    """`set_trainable("llm_lora")` on Phi-3 (fused qkv_proj / gate_up_proj) and Llama configs: the same LoRA modules,
    ranks, scalings and dropout, and the same trainable parameters and shapes, as the original's `wrap_llm_lora` /
    `wrap_backbone_lora` with its LoRA scripts' freezing."""
    from test_llm_families import read_fixture

    from transformers_internvl import InternVLChatForConditionalGeneration
    from transformers_internvl.modeling.configuration_internvl import InternVLConfig

    raw = read_fixture(case["family"])
    model = InternVLChatForConditionalGeneration(InternVLConfig(**{k: v for k, v in raw.items() if k != "model_type"}))
    flags = case["flags"]
    peft_model = set_trainable(
        model, "llm_lora", lora_rank=flags["use_llm_lora"], vision_lora_rank=flags["use_backbone_lora"]
    )
    trainable = {
        original_name(n, "lm_head").replace("base_model.model.", ""): list(p.shape)
        for n, p in peft_model.named_parameters()
        if p.requires_grad
    }
    assert trainable == case["trainable"]
    lora = {}
    for module_name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            name = original_name(module_name, "lm_head").replace("base_model.model.", "")
            lora[name] = {
                "r": module.r["default"],
                "scaling": module.scaling["default"],
                "dropout": module.lora_dropout["default"].p,
            }
    assert lora == case["lora"]


def test_example_packing_skips_samples_longer_than_a_packed_row(tmp_path):
    """`--packing --max-tokens` below `--max-length`: the original's PackedDataset clamps the dataset's `max_tokens`
    to `max_packed_tokens` (with a warning) and trains on; here the longer samples are skipped with their reason and
    training continues (before: the packing collator raised at the first such batch and training stopped)."""
    import sys

    sys.path.insert(0, str(FIXTURES.parents[1] / "examples"))
    import finetune_lora

    argv = ["--model", str(FIXTURES / "models" / "tiny-qwen2"), "--tokenizer", str(TOKENIZERS / "qwen2-tiny"),
            "--output-dir", str(tmp_path / "out"), "--packing", "--max-tokens", "300", "--max-steps", "2",
            "--batch-size", "2", "--lora-rank", "2", "--train-sampling", "sequential", "--disable-tqdm"]  # fmt: skip
    with pytest.warns(UserWarning, match="--max-length 8192 is above --max-tokens 300"):
        trainer = finetune_lora.main(argv)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(loss == loss for loss in losses)
    dataset = trainer.data_collator.dataset if hasattr(trainer.data_collator, "dataset") else trainer.train_dataset
    assert dataset.max_length == 300
    assert dataset.skipped and all("over-length" in reason for reason in dataset.skipped.reasons.values())
