"""Session-10 held-out checks of the chat API: unusual valid arguments against the ORIGINAL, hostile ones refused.

Valid: `num_patches_list` as a numpy array, a tensor or bools, empty `IMG_START_TOKEN` / `IMG_END_TOKEN`,
`output_scores` / `output_logits` and `return_dict_in_generate` in the generation dict, on a Qwen2 and an InternLM2
held-out checkpoint; the expected answers were recorded by the original code (`fixtures/generation_s10/`, see its
README; the cases are in `generation_s10_cases.py`, shared by the generator and this test).
`return_dict_in_generate=True` makes the original's decode fail (it decodes the output object); here `chat` and
`batch_chat` answer as without it.

Hostile: arguments that failed deep inside with unrelated messages ("TextEncodeInput must be Union[...]",
"unsupported operand type(s) for +: 'int' and 'str'", "'<' not supported between instances of 'str' and 'int'",
"tuple indices must be integers or slices, not tuple") or whose tile counts were silently truncated
(`num_patches_list=[1.5, 1.5]` became `[1, 1]`): each is now a `TypeError` / `ValueError` naming the argument.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy
from parity_helpers import load_chat_checkpoint
import pytest
import torch

import transformers_internvl  # noqa: F401
from transformers_internvl.modeling.chat_prompts import build_batch_chat_prompts, build_chat_prompt

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "generation_s10"))
from generation_s10_cases import CASES, CHECKPOINTS, FIXTURES, load_expected, run_case, tile_size  # noqa: E402

EXPECTED = load_expected()
GREEDY = {"max_new_tokens": 4, "do_sample": False}


@functools.cache
def _checkpoint(name: str):
    """(model, tokenizer, tile size) of a held-out checkpoint, loaded once per module."""
    # reuse_chat_cache=False: every case as a fresh original model computes it
    return load_chat_checkpoint(FIXTURES / CHECKPOINTS[name][0], tile_size, reuse_chat_cache=False)


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_chat_answers_match_the_original(name, case):
    model, tokenizer, size = _checkpoint(name)
    expected = EXPECTED[name][case.get("same_as", case["name"])]
    assert "answer" in expected  # the recorded original call succeeded
    assert run_case(torch, numpy, model, tokenizer, case, size) == expected


@pytest.fixture(scope="module")
def qwen2():
    model, tokenizer, size = _checkpoint("qwen2-train")
    return model, tokenizer, torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))


LONE = "\ud800"


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda m, t, p: m.chat(t, p[:1], f"Describe {LONE}.", GREEDY), "`question`"),
        (lambda m, t, p: m.chat(t, None, "Hi", GREEDY, history=[(LONE, "a")]), r"`history\[0\]`"),
        (lambda m, t, p: m.chat(t, None, "Hi", GREEDY, history=[("q", "a"), ("q", f"x{LONE}")]), r"`history\[1\]`"),
        (lambda m, t, p: m.batch_chat(t, None, ["Hi", LONE], GREEDY, num_patches_list=[0, 0]), r"`questions\[1\]`"),
    ],
    ids=["question", "history-question", "history-answer", "batch-question"],
)
def test_lone_surrogates_are_named(qwen2, call, named):
    """The tokenizer failed with "TextEncodeInput must be Union[TextInputSequence, ...]" (the original too)."""
    model, tokenizer, pixel_values = qwen2
    with pytest.raises(ValueError, match=rf"{named}.*not valid Unicode.*'\\ud800'"):
        call(model, tokenizer, pixel_values)


def test_a_lone_surrogate_system_message_is_named(qwen2):
    model, tokenizer, pixel_values = qwen2
    try:
        with pytest.raises(ValueError, match=r"`system_message`.*not valid Unicode"):
            model.system_message = f"Be brief {LONE}"
        assert "\ud800" not in model.system_message  # the refused value is not kept
    finally:
        del model.system_message


@pytest.mark.parametrize(
    ("tile_counts", "error", "match"),
    [
        ([1.5, 1.5], ValueError, r"`num_patches_list` must hold whole tile counts.*1\.5"),
        ([0.5, 2.5], ValueError, r"`num_patches_list` must hold whole tile counts.*0\.5"),
        (["1", "2"], TypeError, r"`num_patches_list` must hold integer tile counts.*'1'"),
        ([[1, 2]], TypeError, r"`num_patches_list` must hold integer tile counts.*\[1, 2\]"),
        (torch.tensor([[1, 2]]), TypeError, r"`num_patches_list` must hold integer tile counts.*\[1, 2\]"),
        ([None, 3], TypeError, r"`num_patches_list` must hold integer tile counts.*None"),
        ([float("nan"), 3], ValueError, r"`num_patches_list` must hold whole tile counts.*nan"),
    ],
)
def test_tile_counts_that_are_not_whole_numbers_are_named(qwen2, tile_counts, error, match):
    """[1.5, 1.5] was truncated to [1, 1] and failed as an image-token count mismatch; strings and nested lists
    failed inside `sum` ("unsupported operand type(s)", "Boolean value of Tensor ... is ambiguous")."""
    model, tokenizer, pixel_values = qwen2
    with pytest.raises(error, match=match):
        model.chat(tokenizer, pixel_values, "<image> <image>", GREEDY, num_patches_list=tile_counts)
    with pytest.raises(error, match=match):
        model.batch_chat(tokenizer, pixel_values, ["a", "b"], GREEDY, num_patches_list=tile_counts)
    name_match = match.replace("num_patches_list", "num_tiles_list")
    with pytest.raises(error, match=name_match):
        model.chat(tokenizer, pixel_values, "<image> <image>", GREEDY, num_tiles_list=tile_counts)
    with pytest.raises(error, match=match.replace("num_patches_list", "image_counts")):
        model.batch_chat(tokenizer, pixel_values, ["a", "b"], GREEDY, image_counts=tile_counts)


@pytest.mark.parametrize("tile_counts", [[1.5], ["1"], [[1]]])
def test_prompt_builders_do_not_truncate_tile_counts(tile_counts):
    """The public prompt builders took `int(1.5)` = 1 tile silently."""
    with pytest.raises((TypeError, ValueError), match="`num_tiles_list` must hold"):
        build_chat_prompt("internvl2_5", "<image>", num_tiles_list=tile_counts)
    with pytest.raises((TypeError, ValueError), match="`num_patches_list` must hold"):
        build_batch_chat_prompts("internvl2_5", ["q"], num_patches_list=tile_counts)


def test_whole_float_and_numpy_tile_counts_still_work():
    """The original multiplies the counts into strings, so only ints (and bools) work there; integral floats and
    numpy integers are accepted here and give the integer prompt."""
    expected = build_chat_prompt("internvl2_5", "<image> <image>", num_tiles_list=[1, 2], num_image_token=2)
    for counts in ([1.0, 2.0], numpy.array([1, 2]), numpy.array([1.0, 2.0]), torch.tensor([1, 2]), [True, 2]):
        assert build_chat_prompt("internvl2_5", "<image> <image>", num_tiles_list=counts, num_image_token=2) == (
            expected
        )


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("IMG_START_TOKEN", None), ("IMG_END_TOKEN", 7), ("IMG_CONTEXT_TOKEN", 995), ("IMG_CONTEXT_TOKEN", "")],
)
def test_image_token_strings_of_the_wrong_type_are_named(qwen2, keyword, value):
    """None / an id failed as "unsupported operand type(s) for +" or "'int' object is not iterable"."""
    model, tokenizer, pixel_values = qwen2
    error = ValueError if value == "" else TypeError
    with pytest.raises(error, match=rf"`{keyword}` must be a"):
        model.chat(tokenizer, pixel_values[:1], "Hi", GREEDY, **{keyword: value})
    with pytest.raises(error, match=rf"`{keyword}` must be a"):
        model.batch_chat(tokenizer, pixel_values[:1], ["Hi"], GREEDY, num_patches_list=[1], **{keyword: value})


@pytest.mark.parametrize(("field", "value"), [("pad_token_id", "x"), ("bos_token_id", 1.5), ("pad_token_id", [1])])
def test_generation_token_ids_of_the_wrong_type_are_named(qwen2, field, value):
    """`pad_token_id="x"` failed inside `generate` with "'<' not supported between instances of 'str' and 'int'"."""
    model, tokenizer, pixel_values = qwen2
    with pytest.raises(TypeError, match=rf"`generation_config.{field}`.*{value!r}".replace("[", r"\[")):
        model.chat(tokenizer, pixel_values[:1], "Hi", {**GREEDY, field: value})


def test_an_eos_token_id_in_the_generation_dict_is_still_replaced(qwen2):
    """The original overwrites the dict's `eos_token_id` with the template's stop token, whatever it holds."""
    model, tokenizer, pixel_values = qwen2
    expected = EXPECTED["qwen2-train"]["chat_greedy"]["answer"]
    config = {"max_new_tokens": 6, "do_sample": False, "eos_token_id": [5, 6]}
    assert model.chat(tokenizer, pixel_values[:1], "Describe.", config) == expected


@pytest.mark.parametrize(
    ("seed", "error"),
    [
        (1.5, TypeError),
        ("1", TypeError),
        (None, TypeError),
        (True, TypeError),
        (2**64, ValueError),
        (-(2**63) - 1, ValueError),
    ],
)
def test_vote_seeds_torch_cannot_take_exactly_are_named(qwen2, seed, error):
    """`seed=1.5` voted as seed 1 and `"1"` as seed 1 (silently); None and 2**64 failed inside torch ("int() argument
    must be ...", "Overflow when unpacking long long"). The CLI's `--seed` already had this range."""
    from transformers_internvl import generate_with_votes

    model, tokenizer, _ = qwen2
    inputs = tokenizer(["Hello"], return_tensors="pt")
    with pytest.raises(error, match=r"`seed` must be an int in -2\*\*63\.\.2\*\*64 - 1"):
        generate_with_votes(model, tokenizer, inputs, 2, seed=seed, max_new_tokens=2)


def test_vote_seeds_at_the_ends_of_torchs_range_still_sample(qwen2):
    from transformers_internvl import generate_with_votes

    model, tokenizer, _ = qwen2
    inputs = tokenizer(["Hello"], return_tensors="pt")
    for seed in (-(2**63), 2**64 - 1, numpy.int64(3)):
        result = generate_with_votes(model, tokenizer, inputs, 2, seed=seed, max_new_tokens=2)
        assert len(result.responses) == 2


@pytest.mark.parametrize(
    ("question", "config"),
    [
        (f"Describe {LONE}.", {}),  # refused before generation
        ("Describe.", {"max_new_tokens": 2, "num_beams": 2}),  # transformers refuses a streamer with beam search
    ],
    ids=["bad-question", "streamer-with-beams"],
)
def test_a_failed_streaming_chat_ends_the_stream(qwen2, question, config):
    """The InternVL README streams `chat` from a thread through a `TextIteratorStreamer`; a call that failed never
    ended the stream, so the reader waited for its timeout (forever without one). The stream now ends and the error
    is raised in the chat thread as before."""
    from threading import Thread

    from transformers import TextIteratorStreamer

    model, tokenizer, pixel_values = qwen2
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=10)
    errors = []

    def target():
        try:
            model.chat(tokenizer, pixel_values[:1], question, {**config, "streamer": streamer})
        except Exception as error:  # noqa: BLE001 - recorded for the assertion
            errors.append(error)

    thread = Thread(target=target)
    thread.start()
    assert "".join(streamer) == ""  # ends at once (queue.Empty after the timeout before)
    thread.join(timeout=10)
    assert len(errors) == 1 and isinstance(errors[0], ValueError)


def test_a_streaming_chat_still_streams_its_answer(qwen2):
    from threading import Thread

    from transformers import TextIteratorStreamer

    model, tokenizer, pixel_values = qwen2
    expected = EXPECTED["qwen2-train"]["chat_greedy"]["answer"]
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=10)
    config = {"max_new_tokens": 6, "do_sample": False, "streamer": streamer}
    thread = Thread(target=model.chat, args=(tokenizer, pixel_values[:1], "Describe.", config))
    thread.start()
    assert "".join(streamer).strip() == expected
    thread.join(timeout=10)
