"""Model-side reliability (issue 12): no generation from unfilled `<IMG_CONTEXT>` slots, `num_tiles` / `image_flags`
checked in `forward` and `generate`, config values validated at load, `batch_chat` argument types."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from helpers import QWEN2_DIR, QWEN2_IMAGE_TOKEN_ID, QWEN2_PAD_ID, QWEN2_TOKENIZER
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoConfig, AutoModelForImageTextToText

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl import InternVLConfig


@pytest.fixture(scope="module")
def model(qwen2_model):
    return qwen2_model


@pytest.fixture(scope="module")
def io(qwen2_io):
    return qwen2_io


def _num_image_tokens(io) -> int:
    return int((io["input_ids"] == QWEN2_IMAGE_TOKEN_ID).sum())


# ---- unfilled image slots ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pixels", ["none", "empty"])
def test_forward_refuses_image_tokens_without_tiles(model, io, pixels):
    pixel_values = None if pixels == "none" else io["pixel_values"][:0]
    count = _num_image_tokens(io)
    expected = "no pixel_values" if pixels == "none" else "pixel_values with zero tiles"
    with pytest.raises(
        ValueError, match=rf"holds {count} image tokens .*id {QWEN2_IMAGE_TOKEN_ID}.*{expected}.*0 tiles"
    ):
        with torch.no_grad():
            model(input_ids=io["input_ids"], pixel_values=pixel_values, attention_mask=io["attention_mask"])
    with pytest.raises(ValueError, match=rf"holds {count} image tokens"):
        with torch.no_grad():
            model.model(input_ids=io["input_ids"], pixel_values=pixel_values)


@pytest.mark.parametrize("pixels", ["none", "empty", "absent"])
def test_generate_refuses_image_tokens_without_tiles(model, io, pixels):
    kwargs = {} if pixels == "absent" else {"pixel_values": None if pixels == "none" else io["pixel_values"][:0]}
    count = _num_image_tokens(io)
    with pytest.raises(ValueError, match=rf"holds {count} image tokens"):
        model.generate(
            input_ids=io["input_ids"],
            attention_mask=io["attention_mask"],
            max_new_tokens=2,
            pad_token_id=QWEN2_PAD_ID,
            **kwargs,
        )
    with pytest.raises(ValueError, match=rf"holds {count} image tokens"):  # positional input_ids
        model.generate(io["input_ids"], max_new_tokens=2, pad_token_id=QWEN2_PAD_ID, **kwargs)


def test_text_only_prompts_still_generate(model, io):
    text_ids = io["input_ids"][:, :4].clone()
    text_ids[text_ids == QWEN2_IMAGE_TOKEN_ID] = 5
    for kwargs in ({}, {"pixel_values": None}, {"pixel_values": io["pixel_values"][:0], "num_tiles": []}):
        out = model.generate(input_ids=text_ids, max_new_tokens=2, do_sample=False, pad_token_id=QWEN2_PAD_ID, **kwargs)
        assert out.shape == (text_ids.shape[0], 6)


def test_a_generated_image_token_id_does_not_stop_decoding(model):
    # Decoding steps see only the new token; a generated <IMG_CONTEXT> id is not an unfilled prompt slot.
    with torch.no_grad():
        first = model(input_ids=torch.tensor([[5, 6]]), use_cache=True)
        step = model(input_ids=torch.tensor([[QWEN2_IMAGE_TOKEN_ID]]), cache=first.cache, use_cache=True)
    assert torch.isfinite(step.logits).all()


# ---- num_tiles and image_flags -------------------------------------------------------------------------------------


def test_generate_checks_num_tiles_like_forward(model, io):
    tiles = io["pixel_values"].shape[0]
    for wrong in ([tiles + 1], [tiles, 1], torch.tensor([tiles - 1])):
        with pytest.raises(ValueError, match=rf"`num_tiles` sums to \d+ but `pixel_values` holds {tiles} tiles"):
            model.generate(
                input_ids=io["input_ids"],
                pixel_values=io["pixel_values"],
                num_tiles=wrong,
                max_new_tokens=1,
                pad_token_id=QWEN2_PAD_ID,
            )
        with pytest.raises(ValueError, match=r"`num_tiles` sums to"):
            with torch.no_grad():
                model(input_ids=io["input_ids"], pixel_values=io["pixel_values"], num_tiles=wrong)
    for bad, error in (([-1, tiles + 1], ValueError), ([1.5], TypeError), ("3", TypeError), ([True], TypeError)):
        with pytest.raises(error, match=r"`num_tiles`"):
            model.generate(input_ids=io["input_ids"], pixel_values=io["pixel_values"], num_tiles=bad, max_new_tokens=1)


def test_image_flags_of_the_wrong_length(model, io):
    tiles = io["pixel_values"].shape[0]
    for flags in (torch.ones(tiles + 1, dtype=torch.long), torch.ones(max(tiles - 1, 0), dtype=torch.long)):
        with pytest.raises(ValueError, match=rf"one flag per tile: got {flags.numel()} flags .* for {tiles} tiles"):
            with torch.no_grad():
                model(input_ids=io["input_ids"], pixel_values=io["pixel_values"], image_flags=flags)
    with pytest.raises(TypeError, match=r"`image_flags` must be a tensor"):
        with torch.no_grad():
            model(input_ids=io["input_ids"], pixel_values=io["pixel_values"], image_flags=[1] * tiles)
    with torch.no_grad():  # the right length works, as a (tiles, 1) column too (the original's shape)
        out = model(
            input_ids=io["input_ids"],
            pixel_values=io["pixel_values"],
            image_flags=torch.ones(tiles, 1, dtype=torch.long),
        )
    assert torch.isfinite(out.logits).all()


# ---- config validation ---------------------------------------------------------------------------------------------


def _config_dict() -> dict:
    return json.loads((QWEN2_DIR / "config.json").read_text())


@pytest.mark.parametrize("field", ["llm_config", "vision_config"])
@pytest.mark.parametrize("how", ["missing", "null"])
def test_config_without_a_sub_config_is_refused(tmp_path, field, how):
    config = _config_dict()
    if how == "missing":
        del config[field]
    else:
        config[field] = None
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(QWEN2_DIR / "model.safetensors", tmp_path)
    message = rf"missing `{field}` \({how}\)"
    with pytest.raises(ValueError, match=message):
        InternVLConfig.from_dict(config)
    with pytest.raises(ValueError, match=message):
        AutoConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):  # before any weights are allocated
        AutoModelForImageTextToText.from_pretrained(tmp_path)


def test_config_without_arguments_still_builds_defaults():
    # transformers' own machinery (ConfigTester, `to_diff_dict`) builds `InternVLConfig()`.
    config = InternVLConfig()
    assert config.text_config.model_type == "qwen2" and config.vision_config.patch_size == 14


BAD_VALUES = [
    ("downsample_ratio", 0, ValueError, "a finite number in \\(0, 1\\]"),
    ("downsample_ratio", -0.5, ValueError, "a finite number in \\(0, 1\\]"),
    ("downsample_ratio", "0.5", TypeError, "a number in \\(0, 1\\]"),
    ("downsample_ratio", math.nan, ValueError, "finite"),
    ("downsample_ratio", math.inf, ValueError, "finite"),
    ("downsample_ratio", True, TypeError, "a number"),
    ("select_layer", 1.5, TypeError, "an integer vision layer index"),
    ("select_layer", "-1", TypeError, "an integer vision layer index"),
    ("force_image_size", -448, ValueError, "a positive integer tile size"),
    ("force_image_size", 0, ValueError, "a positive integer tile size"),
    ("force_image_size", 448.0, TypeError, "a positive integer tile size"),
    ("force_image_size", 450, ValueError, "multiple of the vision patch size \\(14\\)"),
    ("vision_batch_size", -3, ValueError, "a positive integer"),
    ("vision_batch_size", "3", TypeError, "a positive integer"),
    ("image_token_id", "92546", TypeError, "a non-negative integer token id"),
    ("image_token_id", -1, ValueError, "a non-negative integer token id"),
    ("max_dynamic_patch", 0, ValueError, "a positive integer number of tiles"),
    ("min_dynamic_patch", 1.5, TypeError, "a positive integer number of tiles"),
    ("use_thumbnail", "yes", TypeError, "a boolean"),
    ("llm_config", [], TypeError, "`llm_config` \\(`text_config`\\) must be a dict"),
    ("llm_config", "qwen2", TypeError, "`llm_config` \\(`text_config`\\) must be a dict"),
    ("vision_config", [], TypeError, "`vision_config` must be"),
]


@pytest.mark.parametrize(("field", "value", "error", "allowed"), BAD_VALUES)
def test_bad_config_values_name_field_value_and_allowed(field, value, error, allowed):
    config = _config_dict()
    config[field] = value
    with pytest.raises(error, match=rf"`{field}`.*{allowed}" if "`" not in allowed else allowed) as info:
        InternVLConfig.from_dict(config)
    if field not in ("llm_config", "vision_config"):
        assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("vision_config", "layer_norm_eps"), math.nan),
        (("llm_config", "rms_norm_eps"), math.nan),
        (("llm_config", "rope_theta"), math.inf),
    ],
)
def test_nan_anywhere_is_refused(path, value):
    config = _config_dict()
    config[path[0]][path[1]] = value
    with pytest.raises(ValueError, match=r"is NaN or infinite|must be finite"):
        InternVLConfig.from_dict(config)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"vision_batch_size": -3}, ValueError, r"`vision_batch_size` must be a positive integer.*got -3"),
        ({"downsample_ratio": 0}, ValueError, r"`downsample_ratio`.*got 0"),
        ({"select_layer": 1.5}, TypeError, r"`select_layer`.*got 1.5"),
        ({"image_token_id": "5"}, TypeError, r"`image_token_id`.*got '5'"),
    ],
)
def test_from_pretrained_overrides_are_validated(overrides, error, match):
    with pytest.raises(error, match=match):
        AutoConfig.from_pretrained(QWEN2_DIR, **overrides)
    with pytest.raises(error, match=match):
        AutoModelForImageTextToText.from_pretrained(QWEN2_DIR, **overrides)


def test_valid_overrides_still_apply():
    config = AutoConfig.from_pretrained(QWEN2_DIR, vision_batch_size=2, image_token_id=QWEN2_IMAGE_TOKEN_ID)
    assert config.vision_batch_size == 2 and config.image_token_id == QWEN2_IMAGE_TOKEN_ID


# ---- batch_chat arguments ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN2_TOKENIZER)


@pytest.mark.parametrize(
    ("questions", "error", "match"),
    [
        ("abc", TypeError, r"`questions` must be a list of str .*got str 'abc'; use \['abc'\]"),
        (b"abc", TypeError, r"`questions` must be a list of str"),
        (7, TypeError, r"`questions` must be a list of str"),
        (["ok", 3], TypeError, r"`questions\[1\]` must be a str, got int"),
        ([], ValueError, r"`questions` is empty"),
    ],
)
def test_batch_chat_refuses_questions_that_are_not_a_list_of_str(model, tokenizer, questions, error, match):
    with pytest.raises(error, match=match):
        model.batch_chat(tokenizer, None, questions, generation_config={"max_new_tokens": 1})


def test_batch_chat_accepts_a_tuple(model, tokenizer):
    answers = model.batch_chat(tokenizer, None, ("a", "b"), generation_config={"max_new_tokens": 1, "do_sample": False})
    assert isinstance(answers, list) and len(answers) == 2


# ---- config fuzz -----------------------------------------------------------------------------------------------------

FIELDS = [
    "downsample_ratio",
    "select_layer",
    "force_image_size",
    "vision_batch_size",
    "image_token_id",
    "min_dynamic_patch",
    "max_dynamic_patch",
    "use_thumbnail",
    "dynamic_image_size",
    "ps_version",
    "template",
    "llm_config",
    "vision_config",
]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.sampled_from([0, 1, -1, 14, 448, 0.5, 0.25, 1.0, -0.5, 1.5, math.nan, math.inf, -math.inf]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "0.5", "448", "v2", "internvl2_5", "x"]),
    st.sampled_from([[], {}, [1], {"a": 1}]),
)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(changes=st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=3))
def test_config_fuzz_valid_or_documented_error(changes):
    """Random values for the checked fields: a config whose values are all in range, or TypeError / ValueError."""
    config = _config_dict()
    config.update(changes)
    try:
        loaded = InternVLConfig.from_dict(config)
    except (TypeError, ValueError):
        return
    assert 0 < loaded.downsample_ratio <= 1 and math.isfinite(loaded.downsample_ratio)
    assert isinstance(loaded.select_layer, int) and not isinstance(loaded.select_layer, bool)
    assert loaded.force_image_size is None or loaded.force_image_size > 0
    assert loaded.vision_batch_size is None or loaded.vision_batch_size >= 1
    assert loaded.image_token_id is None or loaded.image_token_id >= 0
    assert loaded.num_image_token > 0


@pytest.mark.parametrize(
    ("tokenizer_ok", "pixel_values", "error", "message"),
    [
        (False, None, TypeError, "`tokenizer` must be the model's tokenizer"),
        (True, [1, 2], TypeError, "`pixel_values` must be a torch.Tensor"),
        (True, torch.zeros(1, 3, 448, 448, dtype=torch.long), TypeError, "must be a floating tensor"),
        (True, torch.full((1, 3, 448, 448), float("nan")), ValueError, "NaN or infinite"),
    ],
)
def test_chat_refuses_bad_tokenizer_and_pixel_values(tokenizer_ok, pixel_values, error, message):
    from transformers_internvl.modeling.input_checks import check_chat_inputs

    class Tokenizer:
        def convert_tokens_to_ids(self, token):
            return 0

    with pytest.raises(error, match=message):
        check_chat_inputs(Tokenizer() if tokenizer_ok else None, pixel_values)


def test_unfilled_image_tokens_check_is_skipped_only_in_compiled_static_cache_steps(monkeypatch):
    """Compiled static-cache calls are decoding steps (exempt): no data-dependent check there; eager calls and
    int-length caches are still checked."""
    import pytest
    import torch

    from transformers_internvl.modeling.input_checks import check_no_unfilled_image_tokens

    ids = torch.tensor([[1, 7, 7, 2]])
    with pytest.raises(ValueError, match="holds 2 image tokens"):
        check_no_unfilled_image_tokens(ids, 7, 0, "no pixel_values", torch.tensor(0))
    with pytest.raises(ValueError, match="holds 2 image tokens"):
        check_no_unfilled_image_tokens(ids, 7, 0, "no pixel_values", 0)
    check_no_unfilled_image_tokens(ids, 7, 0, "no pixel_values", torch.tensor(5))  # decoding step: exempt
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    check_no_unfilled_image_tokens(ids, 7, 0, "no pixel_values", torch.tensor(0))  # compiled static step: skipped
    monkeypatch.setattr("transformers.utils.import_utils.is_tracing", lambda *a, **k: False, raising=False)
    with pytest.raises(ValueError, match="holds 2 image tokens"):  # an int past length is still checked
        check_no_unfilled_image_tokens(ids, 7, 0, "no pixel_values", 0)
