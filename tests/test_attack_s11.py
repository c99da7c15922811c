"""Session-11 attack (issue 12, hostile and malformed input) on what earlier attack files left open: attention masks
that do not fit their prompt, config.json values that cost unbounded work or fail deep inside transformers, and
writers interrupted mid-way.

Expected behaviour comes from first principles (a mask is one 0/1 entry per prompt token; the same prompt without a
mask is the reference) or from the original where it accepts the input.
"""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import pytest
import torch
from helpers import load_model, original_model_dir

import transformers_internvl  # noqa: F401
from transformers_internvl import InternVLChatConfig

IDS = torch.tensor([[5, 6, 7]])


@pytest.fixture(scope="module")
def model():
    return load_model().eval()


# ---------------------------------------------------------------------------------------------------------------------
# attention masks that do not fit the prompt
# ---------------------------------------------------------------------------------------------------------------------

BAD_SHAPES = [
    pytest.param(torch.ones(1, 2, dtype=torch.long), id="shorter"),
    pytest.param(torch.ones(1, 5, dtype=torch.long), id="longer"),
    pytest.param(torch.tensor([[0, 0, 1, 1, 1]]), id="longer-left-padded"),
    pytest.param(torch.ones(2, 3, dtype=torch.long), id="other-batch"),
]


@pytest.mark.parametrize("mask", BAD_SHAPES)
def test_forward_refuses_a_prompt_mask_of_another_shape(model, mask):
    # Before: other logits than without a mask (and eager and sdpa disagreeing on the all-ones longer mask), silently.
    expected = r"`attention_mask` must have the shape \(batch, seq\) of the prompt, \(1, 3\)"
    with pytest.raises(ValueError, match=expected):
        model(input_ids=IDS, attention_mask=mask)


def test_forward_refuses_a_mask_not_fitting_inputs_embeds(model):
    embeds = model.get_input_embeddings()(IDS)
    with pytest.raises(ValueError, match=r"\(1, 3\), got \(1, 2\)"):
        model(inputs_embeds=embeds, attention_mask=torch.ones(1, 2, dtype=torch.long))


@pytest.mark.parametrize("mask", BAD_SHAPES)
def test_generate_refuses_a_mask_of_another_shape(model, mask):
    # Before: other tokens than without a mask, or "The size of tensor a (3) must match ..." / "mat1 and mat2 shapes".
    with pytest.raises(ValueError, match=r"`attention_mask` must have the shape .*got \(" + str(mask.shape[0])):
        model.generate(input_ids=IDS, attention_mask=mask, max_new_tokens=2, do_sample=False)


@pytest.mark.parametrize(
    "mask",
    [
        pytest.param(torch.tensor([[2, 2, 2]]), id="two"),
        pytest.param(torch.tensor([[1, -1, 1]]), id="minus-one"),
        pytest.param(torch.tensor([[1.0, 0.5, 1.0]]), id="half"),
    ],
)
def test_generate_refuses_mask_values_other_than_0_and_1(model, mask):
    # Before: the positions generate derives from the mask (cumsum) shift, and the answer changes without a word.
    with pytest.raises(ValueError, match="`attention_mask` must hold only 1 .* and 0"):
        model.generate(input_ids=IDS, attention_mask=mask, max_new_tokens=2, do_sample=False)


@pytest.mark.parametrize(
    "mask",
    [
        torch.ones(1, 3, dtype=torch.long),
        torch.ones(1, 3, dtype=torch.bool),
        torch.ones(1, 3, dtype=torch.float32),
        torch.ones(1, 3, dtype=torch.int32),
    ],
    ids=["long", "bool", "float", "int32"],
)
def test_masks_of_ones_of_any_dtype_still_give_the_unmasked_answer(model, mask):
    expected = model.generate(input_ids=IDS, max_new_tokens=3, do_sample=False)
    got = model.generate(input_ids=IDS, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert torch.equal(got, expected)
    assert torch.allclose(model(input_ids=IDS, attention_mask=mask).logits, model(input_ids=IDS).logits)


def test_a_left_padded_batch_still_generates_each_row_as_alone(model):
    alone = model.generate(input_ids=IDS, max_new_tokens=3, do_sample=False)[:, 3:]
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    batch = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert torch.equal(batch[:1, 5:], alone)


def test_chat_and_batch_chat_masks_still_pass(qwen2_model_dir):
    from transformers import AutoModel, AutoTokenizer

    chat_model = AutoModel.from_pretrained(qwen2_model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(qwen2_model_dir)
    generation = {"max_new_tokens": 2, "do_sample": False}
    pixel_values = torch.randn(3, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    assert isinstance(chat_model.chat(tokenizer, pixel_values[:1], "<image>\nhi", generation), str)
    answers = chat_model.batch_chat(
        tokenizer, pixel_values, ["a", "a longer question"], generation, num_patches_list=[1, 2]
    )
    assert len(answers) == 2


# ---------------------------------------------------------------------------------------------------------------------
# config.json values that cost unbounded work or fail deep inside transformers
# ---------------------------------------------------------------------------------------------------------------------


def _folder_with(tmp_path, edit):
    folder = original_model_dir(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("sub_config", ["llm_config", "vision_config"])
def test_an_absurd_layer_count_is_refused_before_the_config_is_built(tmp_path, sub_config):
    # Before (llm_config): Qwen2Config builds a `layer_types` list of 10**9 entries (minutes, gigabytes) first.
    folder = _folder_with(tmp_path, lambda config: config[sub_config].__setitem__("num_hidden_layers", 10**9))
    from transformers import AutoConfig, AutoModel

    start = time.monotonic()
    for load in (AutoConfig.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(ValueError, match=rf"`{sub_config}.num_hidden_layers` must be at most 100000.*1000000000"):
            load(folder)
    assert time.monotonic() - start < 10


def test_the_layer_cap_leaves_large_real_counts(tmp_path):
    from helpers import tiny_text_config, tiny_vision_config

    from transformers_internvl.modeling.config_validation import MAX_NUM_HIDDEN_LAYERS

    config = InternVLChatConfig(
        vision_config=tiny_vision_config(448, num_hidden_layers=45),
        llm_config=tiny_text_config(num_hidden_layers=MAX_NUM_HIDDEN_LAYERS),
    )
    assert config.text_config.num_hidden_layers == MAX_NUM_HIDDEN_LAYERS
    with pytest.raises(ValueError, match="num_hidden_layers"):
        InternVLChatConfig(
            vision_config=tiny_vision_config(448), llm_config=tiny_text_config(num_hidden_layers=10**5 + 1)
        )


@pytest.mark.parametrize("value", [7, 1.5, ["bfloat16"], True])
@pytest.mark.parametrize("where", ["top", "llm_config"])
def test_a_config_dtype_of_the_wrong_type_is_named(tmp_path, value, where):
    # Before: AttributeError: 'int' object has no attribute 'is_floating_point' (from inside transformers).
    def edit(config):
        (config if where == "top" else config[where])["torch_dtype"] = value

    folder = _folder_with(tmp_path, edit)
    from transformers import AutoModel

    expected = r"`torch_dtype` (in|of) config.json.* must be a torch.dtype, 'auto' or the name"
    with pytest.raises(TypeError, match=expected):
        AutoModel.from_pretrained(folder)


def test_auto_in_config_json_is_named(tmp_path):
    # Before: AttributeError: module 'torch' has no attribute 'auto' ('auto' is a from_pretrained argument only).
    folder = _folder_with(tmp_path, lambda config: config.__setitem__("torch_dtype", "auto"))
    from transformers import AutoModel

    with pytest.raises(ValueError, match=r"`torch_dtype` in config.json must name a torch dtype .*got 'auto'"):
        AutoModel.from_pretrained(folder)
    AutoModel.from_pretrained(original_model_dir(tmp_path / "plain"), dtype="auto")


@pytest.mark.parametrize("value", [7, object()])
def test_a_dtype_argument_of_the_wrong_type_is_named(qwen2_model_dir, value):
    from transformers import AutoModel

    with pytest.raises(TypeError, match=r"`dtype` must be a torch.dtype"):
        AutoModel.from_pretrained(qwen2_model_dir, dtype=value)


@pytest.mark.parametrize("value", ["bfloat16", "float32", None])
def test_valid_config_dtypes_still_load(tmp_path, value):
    folder = _folder_with(tmp_path, lambda config: config.__setitem__("torch_dtype", value))
    from transformers import AutoModel

    AutoModel.from_pretrained(folder)
    AutoModel.from_pretrained(folder, dtype=torch.float32)
    AutoModel.from_pretrained(folder, dtype={"": torch.float32})


# ---------------------------------------------------------------------------------------------------------------------
# tokenizer saves interrupted by a full disk
# ---------------------------------------------------------------------------------------------------------------------

INTERNLM2_TOKENIZER = Path(__file__).parent / "fixtures" / "tokenizers" / "internlm2-dummy-prefix"
PHI3_TOKENIZER = Path(__file__).parent / "fixtures" / "legacy_tokenizer_s9" / "phi3-rstrip-no-key"


def _internlm2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(INTERNLM2_TOKENIZER)


def _phi3_tokenizer():
    from transformers import LlamaTokenizer

    from transformers_internvl.llama_slow_tokenizer import OriginalLlamaTokenizer, as_original_tokenizer

    tokenizer = as_original_tokenizer(LlamaTokenizer.from_pretrained(PHI3_TOKENIZER))
    assert isinstance(tokenizer, OriginalLlamaTokenizer)
    return tokenizer


def _disk_full_after_writing(monkeypatch, tokenizer):
    """Make the tokenizer's file writer (`_save_pretrained` of the class that saves it: transformers'
    `LlamaTokenizer` for the slow-Llama wrapper, which saves as that class) fail as a full disk does (seen on a 1 MB
    tmpfs: `tokenizer.json` cut off mid-JSON, then "No space left on device"): it writes its files, cuts the largest
    one in half and raises."""
    from transformers import LlamaTokenizer

    from transformers_internvl.llama_slow_tokenizer import OriginalLlamaTokenizer

    cls = LlamaTokenizer if isinstance(tokenizer, OriginalLlamaTokenizer) else type(tokenizer)
    real = cls._save_pretrained

    def failing(self, save_directory, *args, **kwargs):
        files = real(self, save_directory, *args, **kwargs)
        largest = max(Path(save_directory).iterdir(), key=lambda path: path.stat().st_size)
        largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cls, "_save_pretrained", failing)


@pytest.mark.parametrize("make", [_internlm2_tokenizer, _phi3_tokenizer], ids=["internlm2", "phi3-slow-llama"])
def test_a_tokenizer_save_failing_mid_way_leaves_the_old_folder(tmp_path, monkeypatch, make):
    # Before: the old folder was overwritten in place and left with a cut-off file beside the new config.
    tokenizer = make()
    folder = tmp_path / "tokenizer"
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text("mine")
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    tokenizer.add_tokens([f"<new{i}>" for i in range(50)])
    _disk_full_after_writing(monkeypatch, tokenizer)
    with pytest.raises(OSError, match="No space left"):
        tokenizer.save_pretrained(folder)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tokenizer"]  # no temporary folder left


@pytest.mark.parametrize("make", [_internlm2_tokenizer, _phi3_tokenizer], ids=["internlm2", "phi3-slow-llama"])
def test_tokenizer_saves_still_round_trip_and_keep_other_files(tmp_path, make):
    from transformers import AutoTokenizer

    tokenizer = make()
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    files = tokenizer.save_pretrained(str(folder))
    assert all(Path(name).parent == folder for name in files if isinstance(name, str))
    assert (folder / "config.json").read_text() == "{}"
    if make is _internlm2_tokenizer:
        again = AutoTokenizer.from_pretrained(folder)
    else:
        from transformers import LlamaTokenizer

        from transformers_internvl.llama_slow_tokenizer import as_original_tokenizer

        again = as_original_tokenizer(LlamaTokenizer.from_pretrained(folder))
    text = "Hello <|im_start|> world"
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    tokenizer.save_pretrained(save_directory=folder)  # by keyword too
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tokenizer"]


def test_a_processor_save_inside_still_writes_its_tokenizer_atomically(tmp_path, monkeypatch):
    from transformers import AutoProcessor

    source = original_model_dir(tmp_path / "source", model="tiny-internlm2", tokenizer="internlm2-dummy-prefix")
    processor = AutoProcessor.from_pretrained(source)
    folder = tmp_path / "saved"
    files = processor.save_pretrained(folder)
    assert all(str(name).startswith(str(folder)) for name in files)
    again = AutoProcessor.from_pretrained(folder)
    assert again.tokenizer("a b")["input_ids"] == processor.tokenizer("a b")["input_ids"]
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    _disk_full_after_writing(monkeypatch, processor.tokenizer)
    with pytest.raises(OSError, match="No space left"):
        processor.save_pretrained(folder)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["saved", "source"]


# ---------------------------------------------------------------------------------------------------------------------
# `convert --force`: replacing an existing output
# ---------------------------------------------------------------------------------------------------------------------


def test_convert_force_never_leaves_the_destination_missing(tmp_path, monkeypatch):
    """Before: the old output was renamed aside and then the new one renamed in; a failure (or kill) between the two
    left no destination at all and the old output hidden as `.out.old-*`. Now one atomic exchange (Linux), or the
    old folder put back."""
    import os

    from transformers_internvl.conversion.convert import convert_checkpoint

    source = original_model_dir(tmp_path / "source")
    destination = tmp_path / "out"
    destination.mkdir()
    (destination / "old.txt").write_text("old")
    real_replace, real_rename = os.replace, os.rename

    def failing(src, dst, *args, **kwargs):  # the move of a finished temporary folder onto the destination
        if ".tmp-" in os.fspath(src) and Path(dst) == destination:
            raise OSError(errno.EIO, "simulated failure")
        return (real_replace if failing.kind == "replace" else real_rename)(src, dst, *args, **kwargs)

    for kind in ("replace", "rename"):
        failing.kind = kind
        monkeypatch.setattr(os, kind, failing)
        try:
            convert_checkpoint(source, destination, to="hf", force=True, progress=False)
        except OSError:
            pass
        monkeypatch.setattr(os, kind, real_replace if kind == "replace" else real_rename)
        assert destination.is_dir()
        names = sorted(path.name for path in destination.iterdir())
        assert names == ["old.txt"] or "config.json" in names
        assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "source"]


def test_convert_force_still_replaces_a_folder_and_refuses_a_file_or_a_link(tmp_path):
    from transformers_internvl.conversion.checkpoint_io import ConversionError
    from transformers_internvl.conversion.convert import convert_checkpoint

    source = original_model_dir(tmp_path / "source")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "old.txt").write_text("old")
    convert_checkpoint(source, tmp_path / "folder", to="hf", force=True, progress=False)
    assert (tmp_path / "folder" / "config.json").is_file() and not (tmp_path / "folder" / "old.txt").exists()
    (tmp_path / "file").write_text("a file")
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    for name in ("file", "link"):
        with pytest.raises(ConversionError, match="is not a folder"):
            convert_checkpoint(source, tmp_path / name, to="hf", force=True, progress=False)
    assert (tmp_path / "file").read_text() == "a file" and (tmp_path / "link").is_symlink()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file", "folder", "link", "source", "target"]


# ---------------------------------------------------------------------------------------------------------------------
# vision_config flags that change the architecture
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("qk_normalization", "false", TypeError),  # truthy: built q/k norms the checkpoint lacks
        ("qkv_bias", "false", TypeError),
        ("qkv_bias", 2, TypeError),
        ("layer_norm_eps", "1e-6", TypeError),
        ("layer_norm_eps", -1e-6, ValueError),
    ],
)
def test_vision_flags_and_eps_of_the_wrong_type_are_named(tmp_path, field, value, error):
    # Before: "The checkpoint lacks 4 of the model's weight tensors (... q_norm ...)" for the string "false", or an
    # error from inside torch's LayerNorm for the string eps; a negative eps loaded silently.
    folder = _folder_with(tmp_path, lambda config: config["vision_config"].__setitem__(field, value))
    from transformers import AutoModel

    with pytest.raises(error, match=rf"`vision_config.{field}` must be .*got {value!r}"):
        AutoModel.from_pretrained(folder)


@pytest.mark.parametrize(
    ("field", "value"),
    [("qkv_bias", True), ("qk_normalization", False), ("layer_norm_eps", 1e-5), ("layer_norm_eps", 1.0)],
)
def test_valid_vision_flags_still_load(tmp_path, field, value):
    folder = _folder_with(tmp_path, lambda config: config["vision_config"].__setitem__(field, value))
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder)
    assert getattr(model.config.vision_config, field) == value
