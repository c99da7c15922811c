"""Session-10 attack on the code paths added this session: `group_by_length` estimates, `messages` rows, the
video processor's `do_sample_frames`, and the original-exact sentencepiece `LlamaTokenizer` (`legacy` values, corrupt
tokenizer.model, decoding, lone surrogates).

Expected behaviour comes from the original (transformers 4.47.1's slow `LlamaTokenizer`, which the original code
loads; checked with /tmp/origvenv) or first principles: a clear error naming the argument, or the original's result.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import QWEN2_TOKENIZER
from PIL import Image
from transformers import AutoTokenizer, LlamaTokenizer

import transformers_internvl  # noqa: F401
from transformers_internvl.llama_slow_tokenizer import OriginalLlamaTokenizer, as_original_tokenizer
from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor
from transformers_internvl.processing.video_processing_internvl import InternVLChatVideoProcessor
from transformers_internvl.training.data import InternVLSupervisedDataset
from transformers_internvl.training.length_grouping import estimated_lengths
from transformers_internvl.training.sft import index_dataset

PHI3 = Path(__file__).parent / "fixtures" / "legacy_tokenizer_s9" / "phi3-rstrip-no-key"
CONVERSATION = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]


# ---------------------------------------------------------------------------------------------------------------------
# group_by_length estimates
# ---------------------------------------------------------------------------------------------------------------------


def _dataset(rows):
    return InternVLSupervisedDataset(
        rows,
        AutoTokenizer.from_pretrained(QWEN2_TOKENIZER),
        InternVLImageProcessor(image_size=56),
        "internvl2_5",
        num_image_token=4,
        max_dynamic_patch=2,
    )


@pytest.mark.parametrize(
    "messages", [{"role": "user", "content": "hi"}, {"0": {"role": "user"}}], ids=["object", "numbered-object"]
)
def test_length_estimate_of_a_messages_object_is_zero_like_any_unusable_row(messages):
    """`messages` that is a JSON object, not a list: the sample is skipped when read (SampleError), so its estimate is
    0 like every unusable row; before, `estimated_lengths` died with a bare KeyError 0 and no sampler was built."""
    dataset = _dataset([{"messages": messages}, {"conversations": CONVERSATION}])
    lengths = estimated_lengths(dataset)
    assert lengths[0] == 0 and lengths[1] > 0


def test_length_too_large_for_a_length_column_is_estimated_from_the_text():
    """A precomputed `length` above int64 (no token count is) is refused like a negative one (warned, estimated from
    the text): before, TRL's length column (`sft.index_dataset`) failed with a bare OverflowError."""
    huge = {"length": 2**63, "conversations": CONVERSATION}
    dataset = _dataset([huge, {"conversations": CONVERSATION}])
    lengths = estimated_lengths(dataset)
    assert lengths[0] == lengths[1]
    assert index_dataset(dataset, "length")["length"] == lengths
    assert estimated_lengths(_dataset([dict(huge, length=2**63 - 1)])) == [2**63 - 1]


@pytest.mark.parametrize("value", [12.0, 0.0, 1e3])
def test_integral_float_length_is_used_as_the_original_uses_it(value):
    """The original uses a row's `length` as it is (`token_length = data_item['length']`); a whole-number float (what
    pandas writes for an integer column with gaps) is that token count, not a reason to re-estimate."""
    dataset = _dataset([{"length": value, "conversations": CONVERSATION}])
    lengths = estimated_lengths(dataset)
    assert lengths == [int(value)] and isinstance(lengths[0], int)


@pytest.mark.parametrize("value", [12.5, float("nan"), float("inf"), -1.0, "12", True, None, [3]])
def test_bogus_length_is_estimated_from_the_text(value):
    dataset = _dataset([{"length": value, "conversations": CONVERSATION}, {"conversations": CONVERSATION}])
    lengths = estimated_lengths(dataset)
    assert lengths[0] == lengths[1] > 0


# ---------------------------------------------------------------------------------------------------------------------
# video processor: do_sample_frames
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["yes", "False", 1, 0.0, [True]])
def test_do_sample_frames_must_be_a_bool(value):
    """`do_sample_frames="False"` (a string) silently used every frame (only `True` sampled): a TypeError naming it."""
    frames = [Image.fromarray(np.full((20, 30, 3), 10 * i, np.uint8)) for i in range(10)]
    processor = InternVLChatVideoProcessor(image_size=28)
    with pytest.raises(TypeError, match="`do_sample_frames` must be a bool"):
        processor(videos=[frames], do_sample_frames=value, return_tensors="pt")


def test_do_sample_frames_numpy_bool_is_a_bool():
    frames = [Image.fromarray(np.full((20, 30, 3), 10 * i, np.uint8)) for i in range(10)]
    processor = InternVLChatVideoProcessor(image_size=28)
    out = processor(videos=[frames], do_sample_frames=np.bool_(True), num_segments=4, return_tensors="pt")
    assert out["pixel_values_videos"].shape[0] == 4


# ---------------------------------------------------------------------------------------------------------------------
# OriginalLlamaTokenizer / slow_llama_mode
# ---------------------------------------------------------------------------------------------------------------------


def _phi3_folder(tmp_path: Path, legacy) -> Path:
    folder = tmp_path / f"phi3-{json.dumps(legacy)}"
    shutil.copytree(PHI3, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["legacy"] = legacy
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _original(folder: Path) -> OriginalLlamaTokenizer:
    tokenizer = as_original_tokenizer(LlamaTokenizer.from_pretrained(folder))
    assert isinstance(tokenizer, OriginalLlamaTokenizer)
    return tokenizer


TEXTS = ["<|user|>\n hi there<|end|>\n<|assistant|>\n", "a<|end|>b", " spaced"]


@pytest.mark.parametrize("legacy", [0, "", []])
def test_falsy_legacy_values_run_the_non_legacy_mode_as_the_original(legacy, tmp_path):
    """transformers 4's slow class tests `self.legacy` for truth (`if self.legacy or ...`): `"legacy": 0` / `""` /
    `[]` run its non-legacy mode (checked with transformers 4.47.1). They were read as legacy here: other ids on
    every text with text after an added token (e.g. 'a<|end|>b': [1, 259, 507, 270] instead of [1, 259, 507, 436])."""
    expected = _original(_phi3_folder(tmp_path, False))
    got = _original(_phi3_folder(tmp_path, legacy))
    assert [got(text)["input_ids"] for text in TEXTS] == [expected(text)["input_ids"] for text in TEXTS]


@pytest.mark.parametrize("legacy", [1, "false", None])
def test_truthy_or_null_legacy_values_run_the_legacy_mode_as_the_original(legacy, tmp_path):
    expected = _original(_phi3_folder(tmp_path, True))
    got = _original(_phi3_folder(tmp_path, legacy))
    assert [got(text)["input_ids"] for text in TEXTS] == [expected(text)["input_ids"] for text in TEXTS]


def test_unreadable_sentencepiece_model_beside_a_tokenizer_json_is_not_a_protobuf_crash(tmp_path):
    """A folder whose tokenizer.json loads but whose tokenizer.model is corrupt: `as_original_tokenizer` raised
    protobuf's bare DecodeError (not a ValueError, so the "no model file to read" fallback missed it)."""
    folder = tmp_path / "phi3"
    shutil.copytree(PHI3, folder)
    LlamaTokenizer.from_pretrained(PHI3).save_pretrained(folder)  # writes tokenizer.json
    (folder / "tokenizer.model").write_bytes(b"\x00\xffnot a sentencepiece model")
    tokenizer = LlamaTokenizer.from_pretrained(folder)
    ids = as_original_tokenizer(tokenizer)("a<|end|>b")["input_ids"]
    assert ids == _original(PHI3)("a<|end|>b")["input_ids"]


@pytest.mark.parametrize("token_id", [-1, 520, 10**6])
def test_decode_of_an_id_outside_the_vocabulary_names_it(token_id):
    """The original's slow class raises IndexError ("piece id is out of range"); here decode died with
    AttributeError "'NoneType' object has no attribute 'startswith'" (ids >= len) or OverflowError (negative)."""
    tokenizer = _original(PHI3)
    assert len(tokenizer) == 520
    with pytest.raises(IndexError, match=rf"token id {token_id} .*0\.\.519"):
        tokenizer.decode([1, token_id])
    with pytest.raises(IndexError, match=rf"token id {token_id}"):
        tokenizer.batch_decode([[token_id]])


def test_decode_of_the_last_added_token_still_works():
    tokenizer = _original(PHI3)
    assert tokenizer.decode([len(tokenizer) - 1]) == tokenizer.convert_ids_to_tokens(len(tokenizer) - 1)


@pytest.mark.parametrize("text", ["a\ud800b", ["ok", "\udfff"]])
def test_lone_surrogate_is_named(text):
    """transformers' backend refused it with "TextEncodeInput must be Union[...]" (the original: a pybind11 cast
    RuntimeError): a ValueError giving the text and position, as the processor's `check_texts` does."""
    tokenizer = _original(PHI3)
    with pytest.raises(ValueError, match="not valid Unicode.*position"):
        tokenizer(text)
    with pytest.raises(ValueError, match="not valid Unicode"):
        tokenizer.encode("\ud800")


# ---------------------------------------------------------------------------------------------------------------------
# messages rows: TRL's single-image column
# ---------------------------------------------------------------------------------------------------------------------


def _messages_dataset(rows, root):
    return InternVLSupervisedDataset(
        rows,
        AutoTokenizer.from_pretrained(QWEN2_TOKENIZER),
        InternVLImageProcessor(image_size=56, max_dynamic_patch=4),
        "internvl2_5",
        num_image_token=4,
        max_dynamic_patch=4,
        root=str(root),
    )


def test_messages_with_trl_single_image_column(tmp_path):
    """TRL's vision collator reads a row's `image` (no `images`) as `[image]`: `{"messages": [... {"type": "image"}
    ...], "image": "a.png"}` was refused ("carry no image and the row has no `images` list"); it is the row with the
    image named in its part (or in an `images` list)."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 90, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    answer = {"role": "assistant", "content": [{"type": "text", "text": "A square."}]}

    def user(part):
        return {"role": "user", "content": [part, {"type": "text", "text": "What is it?"}]}

    rows = [
        {"messages": [user({"type": "image"}), answer], "image": "a.png"},
        {"messages": [user({"type": "image"}), answer], "images": ["a.png"]},
        {"messages": [user({"type": "image", "path": "a.png"}), answer]},
    ]
    dataset = _messages_dataset(rows, tmp_path)
    samples = [dataset.build_sample(row) for row in dataset.rows]
    for sample in samples[1:]:
        for key in sample:
            assert torch.equal(sample[key], samples[0][key]), key


def test_messages_image_column_is_not_used_when_the_parts_carry_their_images(tmp_path):
    """A row whose parts name their images keeps them; a stray `image` field is not an extra image (as before)."""
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    part = {"type": "image", "path": "a.png"}
    row = {"messages": [{"role": "user", "content": [part]}, {"role": "assistant", "content": "x"}], "image": "b.png"}
    dataset = _messages_dataset([row], tmp_path)
    assert dataset.build_sample(dataset.rows[0])["pixel_values"].shape[0] >= 1


# Ids of transformers 4.47.1's slow LlamaTokenizer (the original's) on legacy_tokenizer_s9/phi3-rstrip-no-key, read
# with /tmp/origvenv: a pair is two texts each encoded on its own, each with its BOS.
PAIR_IDS = {("a<|end|>b", "c d"): [1, 259, 507, 270, 1, 323, 271]}


@pytest.mark.parametrize("folder", ["phi3-rstrip-no-key", "phi3-rstrip-legacy-true"])
def test_text_pairs_get_the_original_ids(folder):
    """Pairs went to transformers unchanged: a file without `legacy` (legacy for the original, non-legacy for
    transformers 5) gave 'b' after '<|end|>' where the original gives '▁b' (436 instead of 270)."""
    tokenizer = _original(PHI3.parent / folder)
    (text, pair), expected = next(iter(PAIR_IDS.items()))
    assert tokenizer(text, pair)["input_ids"] == expected
    assert tokenizer([text], [pair])["input_ids"] == [expected]
    assert tokenizer(text, text_pair=pair, return_tensors="pt")["input_ids"].tolist() == [expected]
    with pytest.raises(ValueError, match="`text_pair` is not valid Unicode"):
        tokenizer(text, "\ud800")
