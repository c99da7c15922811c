"""Session-10 held-out checks of fine-tuning (issue 11).

* `messages` rows (transformers' chat format) are rendered as the processor's chat template renders the same
  messages at inference: a model fine-tuned on them then sees the prompt layout it was trained on. Reference: the
  processor itself (`apply_chat_template(..., tokenize=True, return_assistant_tokens_mask=True)`), first principles.
* `group_by_length` (the original's `--group_by_length True`, passed by its InternVL 2.5 fine-tuning scripts):
  length estimates as the original's `LazySupervisedDataset` (`fixtures/finetune_s10/original.json`, made with the
  original code, see its README), handed to transformers' `LengthGroupedSampler` without building any sample.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from finetune_helpers import original_name
from helpers import QWEN2_TOKENIZER, TOKENIZERS
from PIL import Image
from transformers import AutoTokenizer

import transformers_internvl  # noqa: F401
from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
from transformers_internvl.processing.processing_internvl import InternVLProcessor
from transformers_internvl.training import length_grouping
from transformers_internvl.training.data import InternVLSupervisedDataset
from transformers_internvl.training.length_grouping import estimated_lengths

TILE = 56  # small tiles: 4 <IMG_CONTEXT> per tile with the processor's 14 px patches and ratio 0.5


def _image(seed: int, width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _processor(template: str, max_dynamic_patch: int) -> InternVLProcessor:
    return InternVLProcessor(
        image_processor=InternVLImageProcessor(image_size=TILE, max_dynamic_patch=max_dynamic_patch),
        tokenizer=AutoTokenizer.from_pretrained(QWEN2_TOKENIZER),
        template=template,
        image_size=TILE,
    )


def _user(*parts):
    return {"role": "user", "content": list(parts)}


def _text(text):
    return {"type": "text", "text": text}


def _img(seed, width=90, height=60):
    return {"type": "image", "image": _image(seed, width, height)}


# (name, messages, tile budget): the budget is 1 for several images so that training (max(1, budget // N) tiles per
# image) and inference (budget per image) tile alike and only the prompt layout is compared.
MESSAGE_CASES = [
    ("image_after_text", [_user(_text("What is this?"), _img(0)), {"role": "assistant", "content": "A cat."}], 4),
    (
        "text_around_image",
        [_user(_text("Look: "), _img(1, 40, 100), _text(" and say.")), {"role": "assistant", "content": "Tall."}],
        4,
    ),
    (
        "two_images_one_turn",
        [_user(_img(2), _img(3, 50, 50), _text("Differences?")), {"role": "assistant", "content": "Size."}],
        1,
    ),
    (
        "images_in_two_turns",
        [
            {"role": "system", "content": [_text("Be brief.")]},
            _user(_text("First:"), _img(4)),
            {"role": "assistant", "content": [_text("A dog.")]},
            _user(_img(5, 30, 80), _text("And this?")),
            {"role": "assistant", "content": "A tree."},
        ],
        1,
    ),
]


@pytest.mark.parametrize("template", ["internvl2_5", "Hermes-2"])
@pytest.mark.parametrize("name,messages,budget", MESSAGE_CASES, ids=[case[0] for case in MESSAGE_CASES])
def test_messages_rows_render_as_the_processor_chat_template(template, name, messages, budget):
    if template != "internvl2_5" and messages[0]["role"] == "system":
        messages = messages[1:]  # the original's pre-2.5 preprocess functions refuse a system turn (KeyError)
    processor = _processor(template, budget)
    expected = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt", return_assistant_tokens_mask=True
    )
    dataset = InternVLSupervisedDataset(
        [{"messages": messages}],
        processor.tokenizer,
        processor.image_processor,
        template,
        num_image_token=4,
        max_dynamic_patch=budget,
    )
    sample = dataset.build_sample(dataset.rows[0])
    assert sample["input_ids"].tolist() == expected["input_ids"][0].tolist()
    assert torch.equal(sample["pixel_values"], expected["pixel_values"])
    if template == "internvl2_5":  # the processor's generation mask is the internvl2_5 label rule
        trained = (sample["labels"] != -100).long().tolist()
        assert trained == expected["assistant_masks"][0].tolist()
        assert sum(trained) > 0


# ---------------------------------------------------------------------------------------------------------------
# group_by_length: the original's length estimate (fixtures/finetune_s10, made with the original dataset class),
# handed to transformers' LengthGroupedSampler without building any sample.

FIXTURE = Path(__file__).parent / "fixtures" / "finetune_s10"
sys.path.insert(0, str(FIXTURE))
from finetune_s10_inputs import LENGTH_ROWS  # noqa: E402

ORIGINAL = json.loads((FIXTURE / "original.json").read_text())


def _never_built(*args, **kwargs):
    raise AssertionError("a sample was built to measure its length")


def _length_dataset(tmp_path, setting, monkeypatch=None):
    annotation = tmp_path / "lengths.jsonl"
    annotation.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in LENGTH_ROWS))
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / setting["tokenizer"])
    processor = InternVLImageProcessor(use_thumbnail=setting["use_thumbnail"])
    return InternVLSupervisedDataset.from_jsonl(
        annotation,
        tokenizer,
        processor,
        "internvl2_5",
        root=str(tmp_path),  # the images do not exist: the estimate never opens them
        num_image_token=setting["num_image_token"],
        max_dynamic_patch=setting["max_dynamic_patch"],
    )


@pytest.mark.parametrize("setting", ORIGINAL["lengths"], ids=lambda s: f"{s['tokenizer']}-{s['num_image_token']}")
def test_length_estimates_follow_the_original(setting, tmp_path, monkeypatch):
    """Per row: its `length` field, else the original's token count of the joined turn texts plus
    `num_image_token * (max_dynamic_patch + use_thumbnail)` (the term the original adds on its cache hits)."""
    dataset = _length_dataset(tmp_path, setting)
    monkeypatch.setattr(InternVLSupervisedDataset, "build_sample", _never_built)
    monkeypatch.setattr(length_grouping, "_CHUNK", 2)  # several tokenizer calls
    term = setting["num_image_token"] * (setting["max_dynamic_patch"] + setting["use_thumbnail"])
    expected = [
        row["length"] if "length" in row else tokens + term for row, tokens in zip(LENGTH_ROWS, setting["text_tokens"])
    ]
    assert estimated_lengths(dataset) == expected
    # the fixture's own record of the original: a precomputed length is used as is; a row whose character count was
    # seen before gets the earlier row's count plus the term (the cache quirk this package does not copy)
    original = dict(zip(setting["ids"], setting["original_length"]))
    assert original["precomputed"] == 777 and original["precomputed_image"] == 5
    tokens = dict(zip(setting["ids"], setting["text_tokens"]))
    assert original["same_chars_as_text_short"] == tokens["text_short"] + term


def test_length_estimates_follow_meta_budgets_and_repeats(tmp_path):
    """A meta file's per-dataset `max_dynamic_patch` enters the estimate; `repeat_time` copies repeat it."""
    setting = ORIGINAL["lengths"][0]
    annotation = tmp_path / "a.jsonl"
    annotation.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in LENGTH_ROWS[:2]))
    meta = tmp_path / "meta.json"
    meta.write_text(
        json.dumps(
            {
                "small": {
                    "root": str(tmp_path),
                    "annotation": str(annotation),
                    "repeat_time": 2,
                    "max_dynamic_patch": 2,
                },
                "big": {"root": str(tmp_path), "annotation": str(annotation), "repeat_time": 1},
            }
        )
    )
    dataset = InternVLSupervisedDataset.from_meta(
        meta,
        AutoTokenizer.from_pretrained(QWEN2_TOKENIZER),
        InternVLImageProcessor(use_thumbnail=True),
        "internvl2_5",
        num_image_token=256,
        max_dynamic_patch=12,
    )
    small = [tokens + 256 * 3 for tokens in setting["text_tokens"][:2]]
    big = [tokens + 256 * 13 for tokens in setting["text_tokens"][:2]]
    assert estimated_lengths(dataset) == small + small + big


def _trainer(dataset, tmp_path, **kwargs):
    from transformers import TrainingArguments

    from transformers_internvl.training.collator import InternVLDataCollator
    from transformers_internvl.training.trainer import InternVLTrainer

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        report_to="none",
        remove_unused_columns=False,
        use_cpu=True,
        **kwargs,
    )
    return InternVLTrainer(
        model=torch.nn.Linear(1, 1), args=args, train_dataset=dataset, data_collator=InternVLDataCollator(0)
    )


def test_trainer_group_by_length_uses_the_estimates_without_building_samples(tmp_path, monkeypatch):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    setting = ORIGINAL["lengths"][0]
    dataset = _length_dataset(tmp_path, setting)
    monkeypatch.setattr(InternVLSupervisedDataset, "build_sample", _never_built)
    trainer = _trainer(dataset, tmp_path, train_sampling_strategy="group_by_length", gradient_accumulation_steps=2)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    assert sampler.lengths == estimated_lengths(dataset)
    assert sampler.batch_size == 4  # per-device batch x accumulation steps, as transformers' own rule
    order = list(sampler)
    assert sorted(order) == list(range(len(LENGTH_ROWS)))
    assert order[0] == max(range(len(LENGTH_ROWS)), key=sampler.lengths.__getitem__)  # longest first
    # a ConcatDataset of such datasets: the lengths concatenated, as the original's sampler patch does
    both = torch.utils.data.ConcatDataset([dataset, dataset])
    concat_sampler = _trainer(both, tmp_path, train_sampling_strategy="group_by_length")._get_train_sampler()
    assert concat_sampler.lengths == sampler.lengths * 2
    # other strategies are transformers' own
    random_sampler = _trainer(dataset, tmp_path)._get_train_sampler()
    assert type(random_sampler).__name__ == "RandomSampler"


def test_sft_trainer_group_by_length_reads_the_length_column(tmp_path):
    pytest.importorskip("trl")
    from transformers_internvl.training.sft import index_dataset

    setting = ORIGINAL["lengths"][0]
    dataset = _length_dataset(tmp_path, setting)
    table = index_dataset(dataset, "length")
    assert table["length"] == estimated_lengths(dataset)
    assert table["index"] == list(range(len(LENGTH_ROWS)))
    assert index_dataset(dataset).column_names == ["index"]


# ---------------------------------------------------------------------------------------------------------------
# The original's full fine-tuning scripts (`--freeze_backbone True`, LLM and projector trained): stage "llm_mlp".

from finetune_s10_inputs import TRAINABLE_CASES  # noqa: E402


@pytest.mark.parametrize("case", ORIGINAL["trainable"], ids=lambda case: case["name"])
def test_llm_mlp_stage_trains_what_the_original_full_finetune_script_trains(case):
    from helpers import load_model

    from transformers_internvl.training.stages import set_trainable

    stage, kwargs = {name: call for name, _, _, call in TRAINABLE_CASES}[case["name"]]
    model = set_trainable(load_model(case["model"]), stage, **kwargs)
    head = "output" if "internlm2" in case["model"] else "lm_head"
    ours = {original_name(n, head): list(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    assert ours == case["trainable"]
    assert model.model.vision_model.training is case["vision_training"] is True  # drop path stays active
    assert model.model.language_model.training  # not put in eval mode: the LLM trains


# ---------------------------------------------------------------------------------------------------------------
# `messages` rows in the layout of TRL's vision datasets: `{"type": "image"}` parts, the images in an `images` column.


def _trl_rows(tmp_path):
    for seed, name in enumerate(("a.png", "b.png")):
        _image(seed, 70 + 30 * seed, 50).save(tmp_path / name)
    user = {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}]}
    answer = {"role": "assistant", "content": [{"type": "text", "text": "Same size."}]}
    with_paths = {
        "role": "user",
        "content": [{"type": "image", "path": "a.png"}, {"type": "image", "path": "b.png"}, _text("Compare.")],
    }
    return {"messages": [user, answer], "images": ["a.png", "b.png"]}, {"messages": [with_paths, answer]}


def test_messages_images_column_fills_the_image_parts(tmp_path):
    trl_row, path_row = _trl_rows(tmp_path)
    processor = _processor("internvl2_5", 4)
    dataset = InternVLSupervisedDataset(
        [trl_row, path_row],
        processor.tokenizer,
        processor.image_processor,
        "internvl2_5",
        num_image_token=4,
        root=str(tmp_path),
        max_dynamic_patch=4,
    )
    a, b = dataset.build_sample(dataset.rows[0]), dataset.build_sample(dataset.rows[1])
    assert a["pixel_values"].shape[0] > 2
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(
    "images,reason",
    [
        (["a.png"], "2 image parts of `messages` without an image but 1 `images`"),
        (None, "2 image parts of `messages` carry no image and the row has no `images` list"),
        ("a.png", "`images` must be a list of paths, got str"),
    ],
)
def test_messages_images_column_count_mismatch_skips_the_row(tmp_path, images, reason):
    trl_row, path_row = _trl_rows(tmp_path)
    bad = {"messages": trl_row["messages"]} if images is None else dict(trl_row, images=images)
    processor = _processor("internvl2_5", 4)
    dataset = InternVLSupervisedDataset(
        [bad, path_row], processor.tokenizer, processor.image_processor, "internvl2_5", num_image_token=4,
        root=str(tmp_path), max_dynamic_patch=4,
    )  # fmt: skip
    sample = dataset[0]  # the next good row
    assert torch.equal(sample["input_ids"], dataset.build_sample(dataset.rows[1])["input_ids"])
    assert dataset.skipped.reasons == {"records[0]": reason}


def test_padding_collator_masks_padding_only():
    """The original's `concat_pad_data_collator` builds `attention_mask = input_ids != 0` (its default `pad_id`), which
    with the Qwen2 vocabulary masks every `!` (id 0) out of attention (checked with the original code: "Hello! World!"
    -> mask 0 at both `!`); here only the padding is masked (first principles)."""
    from transformers_internvl.training.collator import InternVLDataCollator

    tokenizer = AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)
    ids = tokenizer("Hello! World!").input_ids
    assert ids.count(0) == 2  # `!` is id 0 in this vocabulary, as in Qwen2's
    sample = {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(ids),
        "pixel_values": torch.zeros(1, 3, 4, 4),
        "image_flags": torch.tensor([0]),
    }
    short = dict(sample, input_ids=torch.tensor(ids[:3]), labels=torch.tensor(ids[:3]))
    batch = InternVLDataCollator(tokenizer.pad_token_id)([sample, short])
    assert batch["attention_mask"].tolist() == [[1] * len(ids), [1] * 3 + [0] * (len(ids) - 3)]


def test_example_tiles_with_the_checkpoint_tiling_settings():
    """`examples/finetune_lora.py` builds its image processor from the checkpoint's tiling fields (it took only the
    tile size and `use_thumbnail`, so a checkpoint trained without dynamic tiling, or with a higher
    `min_dynamic_patch`, was fine-tuned on dynamic tiles from 1 up)."""
    pytest.importorskip("peft")
    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    import finetune_lora

    from transformers_internvl.modeling.configuration_internvl import InternVLChatConfig

    config = InternVLChatConfig.from_pretrained(Path(__file__).parent / "fixtures" / "models" / "tiny-qwen2")
    config.dynamic_image_size, config.use_thumbnail, config.min_dynamic_patch = False, False, 2
    config.force_image_size = None
    processor = finetune_lora.training_image_processor(config)
    assert processor.dynamic_image_size is False and processor.use_thumbnail is False
    assert processor.min_dynamic_patch == 2
    assert processor.image_size == config.vision_config.image_size
