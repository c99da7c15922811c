"""Session-9 held-out re-check of fine-tuning (issue 11) against the ORIGINAL training code.

Expected values come from `tests/fixtures/finetune_heldout_s9/` (README there), made by running OpenGVLab's
`internvl_chat_finetune.py` freezing / LoRA steps and the original `InternVLChatModel` in the scratch environment:
which parameters each original flag combination trains (stages 1 / 1.5 / 2, `unfreeze_vit_layers` of both signs,
`use_llm_lora` / `use_backbone_lora`), the logits of both LoRA wraps with fixed adapter weights, and one optimizer
step of two accumulated micro-batches per `loss_reduction` (gradients and the logged loss).
"""

import json
import re

import pytest
import torch
from finetune_helpers import load_inputs_module, original_name
from helpers import FIXTURES, QWEN2_TOKENIZER, load_model
from safetensors.torch import load_file
from transformers import AutoTokenizer, TrainerCallback, TrainingArguments

import transformers_internvl  # noqa: F401
from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
from transformers_internvl.training.collator import InternVLDataCollator
from transformers_internvl.training.data import InternVLSupervisedDataset
from transformers_internvl.training.stages import set_trainable
from transformers_internvl.training.trainer import InternVLTrainer

pytest.importorskip("peft")

HERE = FIXTURES / "finetune_heldout_s9"
INPUTS = load_inputs_module(HERE / "finetune_s9_inputs.py")
DATA = json.loads((HERE / "original.json").read_text())
TENSORS = load_file(HERE / "original.safetensors")
CASES = {case["name"]: case for case in DATA["trainable"]}
CALLS = {name: call for name, _, _, call in INPUTS.TRAINABLE_CASES}


def _trained(case_name):
    case = CASES[case_name]
    stage, kwargs = CALLS[case_name]
    model = load_model(case["model"])
    head = "output" if "internlm2" in case["model"] else "lm_head"
    trained = set_trainable(model, stage, **kwargs)
    return trained, head


@pytest.mark.parametrize("name", list(CASES))
def test_trainable_parameters_equal_the_original_flags(name):
    """The same parameters train (same shapes) as under the original's `freeze_*` / `unfreeze_vit_layers` /
    `use_llm_lora` / `use_backbone_lora` flags; LoRA modules have the original's rank, scaling `alpha / r` = 2 and
    dropout."""
    case = CASES[name]
    trained, head = _trained(name)
    ours = {original_name(n, head): list(p.shape) for n, p in trained.named_parameters() if p.requires_grad}
    assert ours == case["trainable"]
    lora = {}
    for module_name, module in trained.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            lora[original_name(module_name, head)] = {
                "r": module.r["default"],
                "scaling": module.scaling["default"],
                "dropout": module.lora_dropout["default"].p,
            }
    assert lora == case["lora"]


@pytest.mark.parametrize("name", INPUTS.LORA_LOGIT_CASES)
def test_lora_logits_with_fixed_adapters_equal_the_original(name):
    case = CASES[name]
    trained, head = _trained(name)
    with torch.no_grad():
        for pname, param in trained.named_parameters():
            if ".lora_A." in pname or ".lora_B." in pname:
                key = original_name(pname, head).replace(".default.weight", "")
                param.copy_(INPUTS.lora_values(key, tuple(param.shape)))
    io = load_file(FIXTURES / "models" / case["model"] / "io.safetensors")
    trained.eval()
    with torch.no_grad():
        logits = trained(
            input_ids=io["input_ids"], pixel_values=io["pixel_values"], attention_mask=io["attention_mask"]
        ).logits
    assert case["max_abs_logit_change_from_lora"] > 1.0  # the adapters matter
    torch.testing.assert_close(logits[0, -8:], TENSORS[f"lora_logits_last8.{name}"], atol=2e-5, rtol=0)
    torch.testing.assert_close(logits[0].logsumexp(-1), TENSORS[f"lora_logsumexp.{name}"], atol=2e-5, rtol=0)


def test_unfrozen_vit_layers_of_a_lora_stage_are_saved_with_the_adapter(tmp_path):
    """The original unfreezes ViT layers after its LoRA wrap and saves the whole model; here they are PEFT
    `modules_to_save`, so the adapter folder holds them (under the original names), reloads with identical logits and
    merges into the original key set."""
    import peft
    from safetensors import safe_open

    from transformers_internvl.training.adapters import save_adapter_original_layout

    model_dir = FIXTURES / "models" / "tiny-qwen2"
    trained, _ = _trained("lora_llm4_unfreeze_last_vit")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in trained.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    save_adapter_original_layout(trained, tmp_path / "adapter")
    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", framework="pt") as handle:
        keys = list(handle.keys())
    assert "base_model.model.vision_model.encoder.layers.1.attn.qkv.weight" in keys
    assert not any("vision_model.encoder.layers.0." in key for key in keys)

    io = load_file(model_dir / "io.safetensors")

    def logits(model):
        model.eval()
        with torch.no_grad():
            return model(input_ids=io["input_ids"], pixel_values=io["pixel_values"]).logits

    expected = logits(trained)
    assert (expected - logits(load_model("tiny-qwen2"))).abs().max() > 0.1
    reloaded = peft.PeftModel.from_pretrained(load_model("tiny-qwen2"), tmp_path / "adapter")
    assert torch.equal(logits(reloaded), expected)
    merged = reloaded.merge_and_unload()
    torch.testing.assert_close(logits(merged), expected, rtol=0, atol=2e-5)
    merged.save_pretrained(tmp_path / "merged")
    with safe_open(tmp_path / "merged" / "model.safetensors", framework="pt") as handle:
        merged_keys = set(handle.keys())
    with safe_open(model_dir / "model.safetensors", framework="pt") as handle:
        assert merged_keys == set(handle.keys())


@pytest.mark.parametrize("bad", [2, -3, 1.0, True])
def test_unfreeze_vit_layers_outside_the_layers_is_refused(bad):
    model = load_model("tiny-qwen2")  # 2 ViT layers
    with pytest.raises(ValueError, match=r"unfreeze_vit_layers.*-2\.\.1"):
        set_trainable(model, "mlp", unfreeze_vit_layers=bad)


def test_unfreeze_vit_layers_with_vision_lora_is_refused():
    with pytest.raises(ValueError, match="unfreeze_vit_layers.*vision_lora_rank"):
        set_trainable(load_model("tiny-qwen2"), "llm_lora", lora_rank=4, vision_lora_rank=2, unfreeze_vit_layers=-1)


# ----------------------------------------------------------------------------------------------------------------
# Gradient accumulation


class _GradientsAtStep(TrainerCallback):
    def __init__(self, names):
        self.names, self.grads = names, {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        params = dict(model.named_parameters())
        self.grads = {name: params[name].grad.detach().clone() for name in self.names}


def _accumulated_step(reduction, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)
    dataset = InternVLSupervisedDataset(
        INPUTS.GA_ROWS, tokenizer, InternVLImageProcessor(), "internvl2_5", num_image_token=256
    )
    for index, expected in enumerate(DATA["gradient_accumulation"]["samples"]):
        assert dataset[index]["input_ids"].tolist() == expected["input_ids"]
        assert dataset[index]["labels"].tolist() == expected["labels"]
    model = set_trainable(load_model("tiny-qwen2"), "full")
    ours = {original_name(n, "lm_head"): n for n, _ in model.named_parameters()}
    callback = _GradientsAtStep([ours[name] for name in INPUTS.GA_GRAD_PARAMS])
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=INPUTS.GA_MICRO_BATCH,
        gradient_accumulation_steps=INPUTS.GA_STEPS,
        learning_rate=0.0,
        max_grad_norm=0.0,  # no clipping: the raw accumulated gradients
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        use_cpu=True,
        train_sampling_strategy="sequential",
        disable_tqdm=True,
    )
    trainer = InternVLTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=InternVLDataCollator(tokenizer.pad_token_id, loss_reduction=reduction),
        callbacks=[callback],
    )
    trainer.train()
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    grads = {name: callback.grads[ours[name]] for name in INPUTS.GA_GRAD_PARAMS}
    return logged, grads


@pytest.mark.parametrize("reduction", ["square", "sample"])
def test_weighted_loss_with_gradient_accumulation_equals_the_original(reduction, tmp_path):
    """`loss_reduction` sample / square over 2 accumulated micro-batches: the step's gradient and logged loss are
    the mean over the micro-batches, as the original trains (before the fix: their sum, 2x)."""
    expected = DATA["gradient_accumulation"][reduction]
    logged, grads = _accumulated_step(reduction, tmp_path)
    assert logged == [pytest.approx(expected["logged_loss"], abs=1e-5)]
    for name, grad in grads.items():
        norm = TENSORS[f"ga_gradnorm.{reduction}.{name}"].item()
        assert grad.double().norm().item() == pytest.approx(norm, rel=1e-5), name
        flat = grad.flatten()
        sample = flat[:: max(1, flat.numel() // 256)]
        torch.testing.assert_close(sample, TENSORS[f"ga_grad.{reduction}.{name}"], atol=1e-5 * max(1.0, norm), rtol=0)


def test_token_loss_with_gradient_accumulation_averages_all_tokens_of_the_step(tmp_path):
    """Token averaging keeps transformers' rule (every supervised token of the step weighs the same), which is NOT
    the original's mean of micro-batch means when the micro-batches hold different token counts: the logged loss is
    the original's micro-batch losses weighted by their token counts."""
    expected = DATA["gradient_accumulation"]["token"]
    samples = DATA["gradient_accumulation"]["samples"]
    counts = []
    for step in range(INPUTS.GA_STEPS):
        rows = samples[step * INPUTS.GA_MICRO_BATCH : (step + 1) * INPUTS.GA_MICRO_BATCH]
        counts.append(sum(sum(label != -100 for label in row["labels"][1:]) for row in rows))
    assert counts[0] != counts[1]
    token_mean = sum(loss * n for loss, n in zip(expected["micro_batch_losses"], counts)) / sum(counts)
    logged, _ = _accumulated_step("token", tmp_path)
    assert logged == [pytest.approx(token_mean, abs=1e-5)]
    assert abs(token_mean - expected["logged_loss"]) > 1e-3  # the two rules differ on this data


def test_fixture_names_are_original_names():
    """Every name in the fixture is an original module name (no PEFT wrapper prefix left)."""
    for case in DATA["trainable"]:
        for name in list(case["trainable"]) + list(case["lora"]):
            assert "base_model" not in name and re.match(r"(language_model|vision_model|mlp1)\.", name), name


# ----------------------------------------------------------------------------------------------------------------
# Meta files: `repeat_time` over annotation files with blank lines


@pytest.mark.parametrize("case", DATA["meta_repeat_time"], ids=lambda c: f"{c['file']}-{c['repeat_time']}")
def test_repeat_time_keeps_the_rows_the_original_keeps(case, tmp_path):
    """The original cuts `int(lines * repeat_time)` of ALL the file's lines (`readlines()`, blank ones included);
    a blank line it keeps is a bad row there (replaced by a random row) and is left out here."""
    annotation = tmp_path / "data.jsonl"
    annotation.write_text(INPUTS.meta_lines(INPUTS.META_FILES[case["file"]]))
    meta = tmp_path / "meta.json"
    entry = {"root": str(tmp_path), "annotation": str(annotation), "repeat_time": case["repeat_time"]}
    meta.write_text(json.dumps({case["file"]: entry}))
    tokenizer = AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)
    dataset = InternVLSupervisedDataset.from_meta(meta, tokenizer, InternVLImageProcessor(), "internvl2_5")
    ids = [json.loads(row.text)["id"] for row in dataset.rows]
    assert ids == [i for i in case["raw_data_ids"] if i is not None]


# ----------------------------------------------------------------------------------------------------------------
# The LoRA recipe


def test_the_lora_example_trains_without_drop_path_as_the_original_lora_scripts(tmp_path):
    """The original LoRA scripts pass `--drop_path_rate 0.0`, which replaces the checkpoint's rate; the example does
    the same (`--drop-path-rate`, default 0.0), so the frozen ViT is not stochastic during LoRA training."""
    import shutil
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    import finetune_lora

    folder = tmp_path / "model"
    shutil.copytree(FIXTURES / "models" / "tiny-qwen2", folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["drop_path_rate"] = 0.4
    (folder / "config.json").write_text(json.dumps(config))
    common = ["--model", str(folder), "--tokenizer", str(QWEN2_TOKENIZER), "--max-steps", "1", "--lora-rank", "2"]
    trainer = finetune_lora.main([*common, "--output-dir", str(tmp_path / "a"), "--disable-tqdm"])
    layers = trainer.model.get_base_model().model.vision_model.encoder.layers
    assert all(isinstance(layer.drop_path1, torch.nn.Identity) for layer in layers)
    more = ["--drop-path-rate", "0.2", "--loss-reduction", "square", "--loss-reduction-all-gather"]
    trainer = finetune_lora.main([*common, "--output-dir", str(tmp_path / "b"), *more])
    layers = trainer.model.get_base_model().model.vision_model.encoder.layers
    assert layers[-1].drop_path1.drop_prob == pytest.approx(0.2)
    assert trainer.loss_reduction_all_gather is True


# ----------------------------------------------------------------------------------------------------------------
# loss_reduction_all_gather


def _all_gather_case():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 9, 11, generator=generator)
    labels = torch.randint(0, 11, (4, 9), generator=generator)
    labels[0, :6] = labels[1, :2] = labels[2, :8] = labels[3, :3] = -100  # rows with 3, 7, 1 and 6 trained tokens
    counts = (labels != -100).sum(-1, keepdim=True)
    weights = torch.where(labels == -100, 0.0, counts.float().rsqrt())  # `square`
    return logits, labels, weights


def _expected_grad(all_gather):
    """One process: the gradient of the global weighted mean (`all_gather`) or of the mean of the two halves' own
    weighted means (each process normalising alone, DDP averaging)."""
    from transformers_internvl.training.collator import weighted_lm_loss

    logits, labels, weights = _all_gather_case()
    whole = logits.clone().requires_grad_(True)
    if all_gather:
        weighted_lm_loss(whole, labels, weights).backward()
    else:
        halves = [weighted_lm_loss(whole[i : i + 2], labels[i : i + 2], weights[i : i + 2]) for i in (0, 2)]
        (sum(halves) / 2).backward()
    return whole.grad


def _ddp_grad(rank, world, all_gather):
    """Rank `rank`'s half of the batch, its gradient summed over the ranks and divided by the world size (DDP)."""
    from transformers_internvl.training.collator import weighted_lm_loss

    logits, labels, weights = _all_gather_case()
    half = slice(2 * rank, 2 * rank + 2)
    mine = logits[half].clone().requires_grad_(True)
    weighted_lm_loss(mine, labels[half], weights[half], all_gather=all_gather).backward()
    grad = torch.zeros_like(logits)
    grad[half] = mine.grad
    torch.distributed.all_reduce(grad)
    return grad / world


def _all_gather_worker(rank, world, init_file, out_file):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        grads = {flag: _ddp_grad(rank, world, flag) for flag in (True, False)}
        if rank == 0:
            torch.save(grads, out_file)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("all_gather", [True, False])
def test_loss_reduction_all_gather_averages_the_weight_sum_over_processes(all_gather, monkeypatch):
    """The original's `--loss_reduction_all_gather` (InternVL 2.5 stage scripts): Σw averaged over the processes, so
    DDP trains on the weighted mean of the global batch; without it each process's own mean. Two ranks simulated in
    one process (`all_reduce` adds the other rank's tensor); the real gloo run is the slow test below."""
    from transformers_internvl.training.collator import weighted_lm_loss

    logits, labels, weights = _all_gather_case()
    other = {}

    def all_reduce(tensor, *args, **kwargs):
        tensor += other["sum"]

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    grad = torch.zeros_like(logits)
    for rank in (0, 1):
        half, rest = slice(2 * rank, 2 * rank + 2), slice(2 - 2 * rank, 4 - 2 * rank)
        other["sum"] = weights[rest][..., 1:].sum()
        mine = logits[half].clone().requires_grad_(True)
        weighted_lm_loss(mine, labels[half], weights[half], all_gather=all_gather).backward()
        grad[half] = mine.grad / 2
    monkeypatch.undo()
    torch.testing.assert_close(grad, _expected_grad(all_gather), atol=1e-7, rtol=1e-6)


@pytest.mark.slow
def test_loss_reduction_all_gather_in_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    # Forked where the platform allows: spawned workers re-import this module, torch and transformers (~6 s of CPU
    # each); the workers need nothing of a fresh interpreter.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    arguments = (2, str(tmp_path / "init"), str(tmp_path / "grads.pt"))
    mp.start_processes(_all_gather_worker, args=arguments, nprocs=2, join=True, start_method=method)
    grads = torch.load(tmp_path / "grads.pt")
    for flag in (True, False):
        torch.testing.assert_close(grads[flag], _expected_grad(flag), atol=1e-7, rtol=1e-6)
    assert (grads[True] - grads[False]).abs().max() > 1e-3  # the option matters on this batch


# ----------------------------------------------------------------------------------------------------------------
# Labels with a Llama sentencepiece tokenizer (Phi-3 / Yi checkpoints)

_LLAMA = {}


def _llama_tokenizer(legacy, tmp_path_factory):
    if legacy not in _LLAMA:
        from helpers import TOKENIZERS

        folder = tmp_path_factory.mktemp("llama-sp")
        INPUTS.write_llama_tokenizer(folder, TOKENIZERS / "internlm2-dummy-prefix" / "tokenizer.model")
        # The fixture passed `legacy=` to transformers 4's `from_pretrained`, where it overrides the file's value
        # exactly as a `legacy` key in tokenizer_config.json does. Written into the file here: transformers 5 keeps no
        # trace of an explicit `legacy=False` on a file without the key, which transformers 4 read as legacy.
        config_path = folder / "tokenizer_config.json"
        config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), legacy=legacy)))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert tokenizer.legacy is legacy
        tokenizer.add_tokens(INPUTS.LLAMA_ADDED_TOKENS, special_tokens=True)
        _LLAMA[legacy] = tokenizer
    return _LLAMA[legacy]


def _llama_case_param(case):
    # Until session 9 the 3 legacy `two_images` cases were strict xfails: transformers 5's `LlamaTokenizer(legacy=True)`
    # gave `</img>` + " and" -> "▁and" where the slow legacy class gives "▁▁", "a", "n", "d" (sentencepiece's dummy
    # prefix on each piece after an added token); `llama_slow_tokenization` now reproduces the legacy mode.
    name = f"{case['template']}-{case['case']}-{'legacy' if case['legacy'] else 'nonlegacy'}"
    return pytest.param(case, id=name)


@pytest.mark.parametrize("case", [_llama_case_param(case) for case in DATA["llama_sentencepiece_labels"]])
def test_labels_with_a_llama_sentencepiece_tokenizer_equal_the_original(case, tmp_path_factory):
    from transformers_internvl.training.labels import tokenize_conversation

    tokenizer = _llama_tokenizer(case["legacy"], tmp_path_factory)
    conversations, num_image_tokens = {name: (c, n) for name, c, n in INPUTS.LLAMA_LABEL_CASES}[case["case"]]
    sample = tokenize_conversation(conversations, tokenizer, case["template"], num_image_tokens=num_image_tokens)
    assert sample.input_ids == case["input_ids"]
    assert sample.labels == case["labels"]
