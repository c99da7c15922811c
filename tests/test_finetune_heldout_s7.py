"""Session-7 held-out re-check of fine-tuning (issue 11) against the ORIGINAL training code.

Every expected value comes from `tests/fixtures/finetune_heldout_s7/original.json.gz`, made by running OpenGVLab's
`internvl_chat/internvl/train/` code (README in that folder): labels of the four preprocess functions on new
conversations and truncations, `LazySupervisedDataset.__getitem__` (tiles bit for bit), the training frame
selection of `read_frames_decord` / `read_frames_folder`, `packed_collate_fn` loss weights, and the repetition filter.
"""

import gzip
import hashlib
import json
import random
import types

import pytest
import torch
from finetune_helpers import load_inputs_module
from helpers import FIXTURES, TOKENIZERS
from transformers import AutoTokenizer

import transformers_internvl  # noqa: F401
from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
from transformers_internvl.reasoning.repetition import repetition_ratio
from transformers_internvl.training import data as data_module
from transformers_internvl.training.collator import InternVLPackingCollator, weighted_lm_loss
from transformers_internvl.training.data import InternVLSupervisedDataset
from transformers_internvl.training.filtering import repetition_reason
from transformers_internvl.training.frame_sampling import sort_frame_files, training_frame_indices
from transformers_internvl.training.labels import IGNORE_INDEX, SampleError, tokenize_conversation

HERE = FIXTURES / "finetune_heldout_s7"
INPUTS = load_inputs_module(HERE / "finetune_s7_inputs.py")
AUGMENT_QUALITY, NUM_IMAGE_TOKEN, TILE = INPUTS.AUGMENT_QUALITY, INPUTS.NUM_IMAGE_TOKEN, INPUTS.TILE

with gzip.open(HERE / "original.json.gz", "rt", encoding="utf-8") as _handle:
    DATA = json.load(_handle)
_TOKENIZERS = {}
# Accepted by the original, refused here on purpose (issue 11, acceptance 5: more `<image>` tags than images is bad
# data; the original leaves the extra tag as literal text and trains on it).
REFUSED_ON_PURPOSE = {"more_tags_than_images"}


def _tokenizer(name):
    if name not in _TOKENIZERS:
        tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / name.replace("+specials", ""))
        if name.endswith("+specials"):
            tokenizer.add_special_tokens({"additional_special_tokens": DATA["added_special_tokens_for_+specials"]})
        _TOKENIZERS[name] = tokenizer
    return _TOKENIZERS[name]


@pytest.mark.parametrize(
    "case", DATA["labels"], ids=lambda c: f"{c['template']}-{c['tokenizer']}-{c['case']}-{c['max_length']}"
)
def test_labels_equal_the_original(case):
    call = dict(
        tokenizer=_tokenizer(case["tokenizer"]),
        template=case["template"],
        num_image_tokens=case["num_image_tokens"],
        max_length=case["max_length"],
    )
    if "error" in case or case["case"] in REFUSED_ON_PURPOSE:
        with pytest.raises(SampleError):
            tokenize_conversation(case["conversations"], **call)
        return
    sample = tokenize_conversation(case["conversations"], **call)
    assert sample.input_ids == case["input_ids"]
    assert sample.labels == case["labels"]


def test_label_cases_are_not_trivial():
    """The set holds trained labels, the original's all-ignored mismatches and its rejections for every template."""
    for template in ("internvl2_5", "internlm2-chat", "phi3-chat", "Hermes-2"):
        cases = [c for c in DATA["labels"] if c["template"] == template]
        trained = [c for c in cases if "labels" in c and set(c["labels"]) != {IGNORE_INDEX}]
        assert len(trained) >= 10, template
        assert any("trunc_" in c["case"] for c in trained), template
    assert sum("error" in c for c in DATA["labels"]) >= 20
    assert sum("labels" in c and set(c["labels"]) == {IGNORE_INDEX} for c in DATA["labels"]) >= 40


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("s7_inputs")
    INPUTS.write_inputs(root)
    assert INPUTS.input_digests(root) == DATA["inputs_sha256"]  # the pixels the original saw
    return root


def _digest(pixel_values):
    return [hashlib.sha256(tile.numpy().tobytes()).hexdigest()[:24] for tile in pixel_values.contiguous()]


class _FixedQuality(random.Random):
    """The JPEG quality the original ran with (`augment_*` cases), instead of a random draw."""

    def randint(self, a, b):
        assert (a, b) == (75, 100)
        return AUGMENT_QUALITY


@pytest.mark.parametrize("case", DATA["dataset"], ids=lambda c: c["name"])
def test_dataset_sample_equals_the_original(case, inputs, monkeypatch):
    options = case["options"]
    augment = options.get("is_train", False)
    if augment:
        monkeypatch.setattr(data_module, "random", types.SimpleNamespace(Random=_FixedQuality))
    low = options.get("min_dynamic_patch", 1)
    processor = InternVLImageProcessor(
        image_size=TILE,
        dynamic_image_size=options["dynamic_image_size"],
        use_thumbnail=options["use_thumbnail"],
        min_dynamic_patch=low,
        max_dynamic_patch=max(low, options["max_dynamic_patch"]),  # the row budget comes from the dataset
    )
    video = {key: options[key] for key in ("min_num_frame", "max_num_frame", "sampling_method") if key in options}
    dataset = InternVLSupervisedDataset(
        [case["row"]],
        _tokenizer("qwen2-tiny"),
        processor,
        "internvl2_5",
        num_image_token=NUM_IMAGE_TOKEN,
        root=str(inputs),
        max_dynamic_patch=options["max_dynamic_patch"],
        max_length=4096,
        data_augment=augment,
        seed=0,  # the original ran with numpy / random seeded 0, the same generators' state as sample 0 here
        **video,
    )
    sample = dataset[0]
    assert not dataset.skipped
    assert list(sample["pixel_values"].shape) == case["shape"]
    assert _digest(sample["pixel_values"]) == case["tile_sha256"]
    assert sample["input_ids"].tolist() == case["input_ids"]
    assert sample["labels"].tolist() == case["labels"]
    assert sample["image_flags"].tolist() == case["image_flags"]


def test_training_frame_indices_equal_the_original():
    compared = 0
    for case in DATA["frames"]:
        for kind in ("file", "folder"):
            if case[kind] is None:
                continue
            indices = training_frame_indices(
                case["num_frames"],
                case["min_num_frame"],
                case["max_num_frame"],
                case["sampling_method"],
                case["seed"],
                is_folder=kind == "folder",
                fps=case["fps"],
            )
            assert indices == case[kind], (kind, case)
            compared += 1
    assert compared == 504


def test_frame_files_sort_by_their_number_as_the_original():
    names = ["f_10.jpg", "f_2.jpg", "f_1.jpg", "cover.jpg", "f_11.jpg"]
    assert sort_frame_files(names) == ["cover.jpg", "f_1.jpg", "f_2.jpg", "f_10.jpg", "f_11.jpg"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"min_num_frame": 9, "max_num_frame": 4}, ValueError, "min_num_frame"),
        ({"sampling_method": "uniform"}, ValueError, "sampling_method"),
        ({"sampling_method": "fps0"}, ValueError, "sampling_method"),
        ({"max_num_frame": "8"}, TypeError, "max_num_frame"),
        ({"num_video_frames": 0}, ValueError, "num_video_frames"),
    ],
)
def test_bad_frame_options_raise(kwargs, error, message):
    with pytest.raises(error, match=message):
        InternVLSupervisedDataset(
            [{"conversations": []}], _tokenizer("qwen2-tiny"), InternVLImageProcessor(), "internvl2_5", **kwargs
        )


def test_a_video_with_no_frame_selected_is_skipped(inputs):
    """`fps0.01` on a 12-frame folder (1 fps) selects nothing: the first frame would be at 50 s (the original then
    fails on an empty stack and resamples)."""
    rows = [
        {"video": "clip12/", "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]},
        {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]},
    ]
    dataset = InternVLSupervisedDataset(
        rows,
        _tokenizer("qwen2-tiny"),
        InternVLImageProcessor(image_size=TILE),
        "internvl2_5",
        root=str(inputs),
        sampling_method="fps0.01",
        num_video_frames=4,
    )
    sample = dataset[0]
    assert sample["image_flags"].tolist() == [0]
    assert "no frame" in next(iter(dataset.skipped.reasons.values()))


def _pool():
    return {
        c["case"]: c
        for c in DATA["labels"]
        if "labels" in c and c["template"] == "internvl2_5" and c["tokenizer"] == "qwen2-tiny"
    }


@pytest.mark.parametrize("row", DATA["packed"], ids=lambda r: f"{r['loss_reduction']}-{'+'.join(r['samples'])}")
def test_packed_row_equals_the_original(row):
    pool = _pool()
    samples = []
    for name in row["samples"]:
        tiles = max(1, len(pool[name]["num_image_tokens"]))
        samples.append(
            {
                "input_ids": torch.tensor(pool[name]["input_ids"]),
                "labels": torch.tensor(pool[name]["labels"]),
                "pixel_values": torch.zeros(tiles, 3, 2, 2),
                "image_flags": torch.ones(tiles, dtype=torch.long),
            }
        )
    length = len(row["input_ids"])  # the original padded the row to max_item_length
    collator = InternVLPackingCollator(0, max_tokens=length, loss_reduction=row["loss_reduction"])
    collator.pad_to_multiple_of = length
    batch = collator(samples)
    assert batch["input_ids"][0].tolist() == row["input_ids"]
    assert batch["labels"][0].tolist() == row["labels"]
    used = sum(len(s["input_ids"]) for s in samples)
    assert batch["position_ids"][0, :used].tolist() == row["position_ids"][:used]
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [length]
    assert starts == row["cu_seqlens"]  # sequence boundaries the original passes to flash-attn varlen
    weights = batch.get("loss_weight", torch.where(batch["labels"] == IGNORE_INDEX, 0.0, 1.0))
    assert torch.equal(weights[0], torch.tensor(row["loss_weight"], dtype=torch.float32))
    logits = torch.randn(1, length, 1000, generator=torch.Generator().manual_seed(7))
    assert float(weighted_lm_loss(logits, batch["labels"], weights)) == pytest.approx(
        row["loss_on_logits_seed7"], abs=1e-6
    )


def test_repetition_filter_equals_the_original():
    rejected = 0
    for case in DATA["repetition"]:
        assert repetition_ratio(case["text"], case["n"]) == case["ratio"], case
        row = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": case["text"]}]}
        assert (repetition_reason(row, ngram=case["n"]) is not None) == case["rejected"], case
        rejected += case["rejected"]
    assert 5 <= rejected < len(DATA["repetition"]) - 50


def test_video_file_frames_follow_the_training_rule(tmp_path):
    """A video FILE goes through the original `read_frames_decord` rule: `middle` with 5 frames of 30 takes the
    middle of each of the intervals [0, 6), [6, 12), ... -> frames 2, 8, 14, 20, 26 (the index rule is checked
    against the original in `test_training_frame_indices_equal_the_original`; here the decoding of those frames)."""
    av = pytest.importorskip("av")
    import numpy as np

    path = tmp_path / "grey.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.options = {"preset": "ultrafast", "qp": "0"}
        for k in range(30):
            frame = np.full((64, 64, 3), 8 * k, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    row = {"video": "grey.mp4", "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]}
    dataset = InternVLSupervisedDataset(
        [row], _tokenizer("qwen2-tiny"), InternVLImageProcessor(image_size=TILE), "internvl2_5",
        root=str(tmp_path), num_video_frames=5, sampling_method="middle",
    )  # fmt: skip
    frames = dataset._load_video(str(tmp_path), "grey.mp4", 0)
    levels = [round(float(np.asarray(frame, dtype=np.float64).mean()) / 8) for frame in frames]
    assert levels == [2, 8, 14, 20, 26]
    assert dataset[0]["pixel_values"].shape[0] == 5


def test_internvl_zh_is_refused_because_the_original_trains_nothing_with_it():
    """The original sends `internvl_zh` to its generic (vicuna) `preprocess`, which trains 0 tokens or raises on
    every conversation of the set; this package refuses the template up front."""
    results = DATA["internvl_zh_generic_preprocess"]
    assert results and all(r["trained_tokens"] == 0 or isinstance(r["trained_tokens"], str) for r in results)
    with pytest.raises(ValueError, match="template"):
        tokenize_conversation(
            [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}], _tokenizer("qwen2-tiny"), "internvl_zh"
        )


@pytest.mark.parametrize("case", DATA["tag_in_answer"], ids=lambda c: f"{c['template']}-{c['tokenizer']}")
def test_an_image_tag_in_an_earlier_answer_stays_text(case):
    """`<image>` typed in an answer before the human turn's tag. internvl2_5: identical to the original. The pre-2.5
    templates of the original replace the first `<image>` of the whole prompt, so the image goes into the answer
    (Hermes-2 x qwen2-tiny trains its 2 <IMG_CONTEXT> tokens; the other pairs end as a tokenization mismatch). Here
    the image always goes to the human turn that holds its tag, and no image token is trained (deliberate)."""
    tokenizer = _tokenizer(case["tokenizer"])
    sample = tokenize_conversation(case["conversations"], tokenizer, case["template"], case["num_image_tokens"])
    if case["template"] == "internvl2_5":
        assert (sample.input_ids, sample.labels) == (case["input_ids"], case["labels"])
    context = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert not any(i == context and label != IGNORE_INDEX for i, label in zip(sample.input_ids, sample.labels))
    text = tokenizer.decode(sample.input_ids)
    assert "see <image> here" in text and text.index("<img>") > text.index("see <image> here")
    if (case["template"], case["tokenizer"]) == ("Hermes-2", "qwen2-tiny"):
        assert case["trained_image_tokens"] == 2  # what the original trains there


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [({}, (8, 8)), ({"max_num_frame": 32}, (8, 32)), ({"max_num_frame": 4}, (4, 4)), ({"min_num_frame": 12}, (12, 12))],
)
def test_one_frame_count_end_alone_follows_num_video_frames(kwargs, expected):
    dataset = InternVLSupervisedDataset(
        [{"conversations": []}], _tokenizer("qwen2-tiny"), InternVLImageProcessor(), "internvl2_5", **kwargs
    )
    assert (dataset.min_num_frame, dataset.max_num_frame) == expected
