"""Session 6 attack on the speed surfaces of issue 13: chat KV-cache reuse, `logits_to_keep` with labels, attention
backends switched after load, the static cache, the threaded resize, and the `tiles` / `bench` argument checks.

Each defect found has a test here that failed before its fix (named in its docstring); the rest pin behaviour that
held under attack (answers equal to a fresh run, pixels equal to the serial resize, no deadlock)."""

from __future__ import annotations

import multiprocessing
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import MODELS, load_model, small_tiles
from PIL import Image
from safetensors.torch import load_file
from test_chat_cache_reuse import conversation
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

import transformers_internvl  # noqa: F401 - registers the Auto classes
from transformers_internvl.cli import main
from transformers_internvl.modeling.chat_cache import ChatCacheState, reusable_prefix_length

GREEDY = {"max_new_tokens": 6, "do_sample": False}


@pytest.fixture(scope="module")
def model(small_tile_qwen2):
    """The shared small-tile Qwen2 model (112 px tiles, 16 image tokens each; the tile size does not matter to the chat
    checks): `conversation` restores its reuse setting and chat cache."""
    return small_tile_qwen2


def _chat_turns(model, tokenizer, turns, reuse: bool) -> list:
    """Answers (or the raised exception's type and message) of `turns`: dicts with `pixel_values`, `question` and
    optionally `config` (generation config), `num_patches_list`; one conversation, history carried over."""
    return conversation(model, tokenizer, turns, reuse, generation_config=GREEDY, catch=(ValueError, KeyboardInterrupt))


# --- chat KV-cache reuse ---------------------------------------------------------------------------------------------


def test_other_num_patches_list_over_the_same_tiles_raises_as_a_fresh_run(model, qwen2_tokenizer):
    """Defect (failed before): turn 2 with the same 3 tiles split as `num_patches_list=[1, 2]` (one `<image>`
    placeholder in the history: 256 image tokens for 768 features with 448 px tiles, 16 for 48 here) answered silently
    from the cache, because every image token lay in the cached prefix and the pixels were equal; a fresh run raises
    the token/feature mismatch."""
    tiles = small_tiles(3)
    turns = [
        {"pixel_values": tiles, "question": "Describe."},
        {"pixel_values": tiles, "question": "Describe.", "num_patches_list": [1, 2]},
    ]
    fresh = _chat_turns(model, qwen2_tokenizer, turns, reuse=False)
    assert fresh[1][0] == "ValueError" and "image tokens" in fresh[1][1]
    reused = _chat_turns(model, qwen2_tokenizer, turns, reuse=True)
    assert reused[1][0] == "ValueError" and "image tokens" in reused[1][1]


def test_reusable_prefix_length_counts_image_tokens_against_the_tiles():
    from transformers.cache_utils import DynamicCache

    pixels = torch.zeros(2, 3, 4, 4)
    state = ChatCacheState(torch.tensor([1, 9, 9, 9, 9, 2, 3]), DynamicCache(), pixels.clone())
    full = torch.tensor([[1, 9, 9, 9, 9, 2, 3, 4]])  # 4 image tokens = 2 tiles x 2
    assert reusable_prefix_length(state, full, pixels, 9, tokens_per_tile=2) == 7
    short = torch.tensor([[1, 9, 9, 5, 6]])  # 2 image tokens for 2 tiles x 2: a fresh run raises
    assert reusable_prefix_length(state, short, pixels, 9) == 3  # without the count, as before
    assert reusable_prefix_length(state, short, pixels, 9, tokens_per_tile=2) == 0


class _RaiseAt(StoppingCriteria):
    """A stopping criterion that raises `error` at its `at`-th call (a Ctrl-C in the middle of a turn)."""

    def __init__(self, at: int, error: BaseException):
        self.at, self.calls, self.error = at, 0, error

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise self.error
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


@pytest.mark.parametrize("at", [1, 3])
def test_a_turn_interrupted_mid_generation_leaves_the_next_turns_as_a_fresh_run(model, qwen2_tokenizer, at):
    tiles = small_tiles(2, seed=1)

    def turns():  # a new criterion per conversation (it counts its calls)
        interrupted = {**GREEDY, "stopping_criteria": StoppingCriteriaList([_RaiseAt(at, KeyboardInterrupt())])}
        return [
            {"pixel_values": tiles, "question": "Describe."},
            {"pixel_values": tiles, "question": "More.", "config": interrupted},
            {"pixel_values": tiles, "question": "More."},
        ]

    reused = _chat_turns(model, qwen2_tokenizer, turns(), reuse=True)
    assert reused[1] == ("KeyboardInterrupt", "")
    assert reused == _chat_turns(model, qwen2_tokenizer, turns(), reuse=False)


def test_generation_config_changes_between_turns_answer_as_a_fresh_run(model, qwen2_tokenizer):
    """max_new_tokens, repetition_penalty, beam search (no reuse), sampling with a seed, a GenerationConfig object,
    another image with the same text: every turn equals the non-reusing run in fp32."""
    first, second = small_tiles(1, seed=2), small_tiles(1, seed=3)
    turns = [
        {"pixel_values": first, "question": "Describe."},
        {"pixel_values": first, "question": "More.", "config": {"max_new_tokens": 10, "do_sample": False}},
        {"pixel_values": first, "question": "Rep.", "config": {**GREEDY, "repetition_penalty": 1.5}},
        {"pixel_values": first, "question": "Beam.", "config": {**GREEDY, "num_beams": 2}},
        {"pixel_values": first, "question": "Obj.", "config": GenerationConfig(max_new_tokens=4, do_sample=False)},
        {"pixel_values": second, "question": "Obj.", "config": GenerationConfig(max_new_tokens=4, do_sample=False)},
    ]
    assert _chat_turns(model, qwen2_tokenizer, turns, reuse=True) == _chat_turns(
        model, qwen2_tokenizer, turns, reuse=False
    )
    sampled = [*turns[:2], {"pixel_values": first, "question": "S.", "config": {**GREEDY, "do_sample": True}}]
    results = []
    for reuse in (True, False):
        torch.manual_seed(7)
        results.append(_chat_turns(model, qwen2_tokenizer, sampled, reuse=reuse))
    assert results[0] == results[1]


# --- logits_to_keep and labels ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-internlm2"])
def test_labels_with_a_cut_logits_to_keep_name_the_argument(name):
    """Defect (failed before): `labels` with `logits_to_keep=1` failed inside transformers' loss with "Expected input
    batch_size (1) to match target batch_size (290)", naming neither argument."""
    io = load_file(str(MODELS / name / "io.safetensors"))
    model = load_model(name).eval()
    inputs = {key: io[key] for key in ("input_ids", "attention_mask", "pixel_values")}
    labels = inputs["input_ids"].clone()
    with torch.no_grad():
        logits = model(**inputs).logits
        expected = F.cross_entropy(logits[0, :-1], labels[0, 1:])
        for keep in (0, labels.shape[1], labels.shape[1] + 5):  # every position kept: the loss over all of them
            output = model(**inputs, labels=labels, logits_to_keep=keep)
            torch.testing.assert_close(output.loss, expected)
        for keep in (1, 5, torch.tensor([0, 1])):
            with pytest.raises(ValueError, match="logits_to_keep"):
                model(**inputs, labels=labels, logits_to_keep=keep)


def test_internlm2_causal_lm_labels_with_logits_to_keep_are_refused():
    from helpers import tiny_text_config

    from transformers_internvl import InternLM2Config, InternLM2ForCausalLM

    text = tiny_text_config("internlm2")
    text.pop("architectures")
    lm = InternLM2ForCausalLM(InternLM2Config(**text)).eval()
    ids = torch.randint(0, text["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.isfinite(lm(input_ids=ids, labels=ids).loss)
        with pytest.raises(ValueError, match="logits_to_keep"):
            lm(input_ids=ids, labels=ids, logits_to_keep=1)


def test_generate_first_scores_equal_the_full_forward_last_position(qwen2_model, qwen2_io):
    inputs = {key: qwen2_io[key] for key in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        last = qwen2_model(**inputs).logits[:, -1]
        out = qwen2_model.generate(
            **inputs, max_new_tokens=2, do_sample=False, output_logits=True, output_scores=True,
            return_dict_in_generate=True,
        )  # fmt: skip
    assert (out.logits[0] - last).abs().max() <= 1e-5 and (out.scores[0] - last).abs().max() <= 1e-5


# --- attention backends switched after load ---------------------------------------------------------------------------


def test_switching_attention_backends_after_load_keeps_eager_logits_and_tokens(qwen2_io):
    model = load_model("tiny-qwen2", attn_implementation="eager").eval()
    inputs = {key: qwen2_io[key] for key in ("input_ids", "attention_mask", "pixel_values")}

    def run():
        with torch.no_grad():
            logits = model(**inputs).logits
            out = model.generate(
                **inputs, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
        return logits, out

    reference, reference_out = run()
    for choice in ("sdpa", {"vision_config": "eager"}, {"text_config": "eager", "vision_config": "sdpa"}, "eager"):
        model.set_attn_implementation(choice)
        logits, out = run()
        assert (logits - reference).abs().max() <= 1e-5, choice
        assert torch.equal(out.sequences, reference_out.sequences), choice
        assert max((a - b).abs().max() for a, b in zip(out.logits, reference_out.logits)) <= 1e-5, choice


# --- static cache ----------------------------------------------------------------------------------------------------


def test_static_cache_across_batch_sizes_lengths_and_back_to_dynamic(qwen2_io):
    from transformers_internvl.static_decode import static_decode_config

    model = load_model("tiny-qwen2").eval()
    ids, pixels = qwen2_io["input_ids"], qwen2_io["pixel_values"]

    def greedy(input_ids, pixel_values, **kwargs):
        with torch.no_grad():
            return model.generate(
                input_ids=input_ids, pixel_values=pixel_values, do_sample=False, eos_token_id=None,
                pad_token_id=990, **kwargs,
            )  # fmt: skip

    dynamic = greedy(ids, pixels, max_new_tokens=6)
    saved = model.generation_config
    # A cache smaller than the prompt is grown by transformers, never cut: same tokens.
    model.generation_config = static_decode_config(saved, compile=False, max_cache_len=8)
    try:
        assert torch.equal(greedy(ids, pixels, max_new_tokens=6), dynamic)
        batch = greedy(ids.repeat(2, 1), pixels.repeat(2, 1, 1, 1), max_new_tokens=6)
        assert torch.equal(batch, dynamic.repeat(2, 1))
        longer = greedy(ids, pixels, max_new_tokens=12)
        assert torch.equal(longer[:, : dynamic.shape[1]], dynamic)
        assert torch.equal(greedy(ids, pixels, max_new_tokens=6, cache_implementation="dynamic"), dynamic)
    finally:
        model.generation_config = saved
    assert torch.equal(greedy(ids, pixels, max_new_tokens=6), dynamic)


# --- threaded resize -------------------------------------------------------------------------------------------------


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    rgb = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ((900, 700), (1, 5000))]
    return [
        *rgb,
        Image.fromarray(rng.integers(0, 256, (1, 1, 3), dtype=np.uint8)),
        rgb[0].convert("L"),
        rgb[0].convert("RGBA"),
        rgb[0].convert("P"),
        rgb[0].convert("CMYK"),
        Image.fromarray(rng.integers(0, 65535, (300, 500)).astype(np.uint16)),  # I;16
    ]


def _pixels(image, workers):
    from transformers_internvl.processing.image_processing_internvl import InternVLImageProcessor

    return InternVLImageProcessor()(image, num_workers=workers, return_tensors="np")["pixel_values"]


def test_threaded_resize_of_odd_modes_and_shapes_equals_the_serial_pixels():
    for image in _images():
        serial = _pixels(image, 1)
        for workers in (2, 64):
            assert np.array_equal(_pixels(image, workers), serial), (image.mode, image.size, workers)


@pytest.mark.parametrize("workers", [0, -1, 2.0, True, "2"])
def test_bad_num_workers_are_refused_by_name(workers):
    with pytest.raises((TypeError, ValueError), match="num_workers"):
        _pixels(_images()[0], workers)


def test_concurrent_calls_from_python_threads_equal_the_serial_pixels():
    images = _images()[:2]
    serial = [_pixels(image, 1) for image in images]
    failures: list = []

    def work(index):
        for _ in range(2):
            if not np.array_equal(_pixels(images[index % 2], 3), serial[index % 2]):
                failures.append(index)

    threads = [threading.Thread(target=work, args=(index,), daemon=True) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "deadlock"
    assert not failures


def _child(queue, expected):  # compares with NumPy: torch's OpenMP pool is not usable after fork
    queue.put(bool(np.array_equal(_pixels(_images()[0], 4), expected)))


def test_forked_children_resize_with_their_own_pool():
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork here")
    expected = _pixels(_images()[0], 4)  # the parent's pool has run
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_child, args=(queue, expected)) for _ in range(2)]
    for child in children:
        child.start()
    try:
        assert [queue.get(timeout=60) for _ in children] == [True, True]
    finally:
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()


# --- tiles and bench arguments ---------------------------------------------------------------------------------------


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "image.png"
    Image.new("RGB", (800, 600)).save(path)
    return str(path)


@pytest.mark.parametrize(("size", "match"), [(13, "multiple of the 14"), (30, "multiple of the 14"), (14, "token")])
def test_tiles_refuses_a_tile_size_the_processor_refuses(image_file, capsys, size, match):
    """Defect (failed before): `tiles --image-size 13` printed "image tokens: 13 x 0 = 0" and `--image-size 30`
    "13 x 1", sizes the processor refuses (no whole patches, no token per tile)."""
    assert main(["tiles", image_file, "--image-size", str(size)]) == 1
    assert match in capsys.readouterr().err


def test_tiles_still_accepts_whole_patch_sizes(image_file, capsys):
    assert main(["tiles", image_file, "--image-size", "28", "--json"]) == 0
    assert '"num_image_tokens": 13' in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments",
    [
        ["--repeats", "0"],  # ran nothing and exited 0
        ["--layers", "0"],  # benchmarked a model without layers
        ["--layers", "-1"],
        ["--vision-tiles", "0"],
        ["--ttft-tiles", "-1"],
        ["--decode-batches", "0"],
        ["--decode-tokens", "0"],  # 0 tokens/s
        ["--threads", "0"],  # silently torch's default
        ["--vocab-size", "10"],  # IndexError after the vision rows
        ["--min-sample-ms", "nan"],
    ],
)
def test_bench_refuses_values_that_time_nothing_before_running(arguments, capsys):
    """Defect (failed before): these ran (or crashed minutes later with an unrelated error). (The leading options
    keep a run that gets past the parser short: a one-layer model on a device that does not exist.)"""
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--layers", "1", "--vocab-size", "1000", "--device", "bogus", *arguments])
    assert exited.value.code == 2
    assert arguments[0] in capsys.readouterr().err


def test_bench_checks_the_output_folders_before_running(tmp_path):
    """Defect (failed before): `--json` into a missing folder failed after the whole benchmark had run. (`--device
    bogus` makes a run that gets past the check fail fast, with another message.)"""
    missing = tmp_path / "missing" / "out.json"
    with pytest.raises(SystemExit, match="does not exist"):
        main(["bench", "--layers", "1", "--vocab-size", "1000", "--device", "bogus", "--json", str(missing)])
