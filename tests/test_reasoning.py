"""Tests of transformers_internvl.reasoning: CoT prompts, answer parsing, voting, repetition stopping."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    StoppingCriteriaList,
)

import transformers_internvl
from transformers_internvl.reasoning import answers, prompts, repetition, stopping, voting
from transformers_internvl.reasoning.answers import extract_choice_letter, parse_boxed_answer
from transformers_internvl.reasoning.prompts import (
    build_cot_prompt,
    build_internvl_cot_prompt,
    build_mmmu_pro_prompt,
    build_multiple_choice_prompt,
)
from transformers_internvl.reasoning.repetition import is_repetitive, repetition_ratio
from transformers_internvl.reasoning.stopping import RepetitionStoppingCriteria
from transformers_internvl.reasoning.voting import generate_with_votes, majority_vote

# ---------------------------------------------------------------------------------------------------------------
# Expected strings: copied from shared/design/original-behaviour.md §8 (the reference), not from the module.
# ---------------------------------------------------------------------------------------------------------------

SPEC_MCQ_COT = (
    r"Answer the preceding multiple choice question. The last line of your response should follow this format: "
    r"'Answer: \boxed{$LETTER}' (without quotes), where LETTER is one of the options. If you are uncertain or the "
    r"problem is too complex, make a reasoned guess based on the information provided. Avoid repeating steps "
    r"indefinitely—provide your best guess even if unsure. Think step by step logically, considering all relevant "
    r"information before answering."
)
SPEC_OPEN_COT = (
    r"Answer the preceding question. The last line of your response should follow this format: "
    r"'Answer: \boxed{$FINAL_ANSWER}' (without quotes), where 'FINAL_ANSWER' is your conclusion based on the "
    r"reasoning provided. If you are uncertain or the problem is too complex, make a reasoned guess based on the "
    r"information provided. Avoid repeating steps indefinitely—provide your best guess even if unsure. Think step "
    r"by step logically, considering all relevant information before answering."
)
SPEC_MMMU_PRO_COT_STANDARD = (
    "Answer the preceding multiple choice question. The last line of your response should be of the following "
    "format: 'Answer: $LETTER' (without quotes) where LETTER is one of options. Think step by step before answering."
)
SPEC_MMMU_PRO_COT_VISION = (
    "Write out the multiple-choice question in the image and then solve it. The last line of your response should "
    "be of the following format: 'Answer: $LETTER' (without quotes) where LETTER is one of options. Think step by "
    "step before answering."
)
SPEC_INTERNVL_COT = (
    "Your task is to answer the question below. Give step by step reasoning before you answer, and when you're "
    'ready to answer, please use the format "Final answer: .."\n\nQuestion:\n\n{question}'
)
SPEC_MCQ_DIRECT = "Answer with the option's letter from the given choices directly."
SPEC_OPEN_DIRECT = "Answer the question using a single word or phrase."


def test_prompt_constants_are_byte_identical_to_the_spec():
    assert prompts.MULTIPLE_CHOICE_COT_PROMPT == SPEC_MCQ_COT
    assert prompts.OPEN_QUESTION_COT_PROMPT == SPEC_OPEN_COT
    assert prompts.MMMU_PRO_COT_STANDARD_PROMPT == SPEC_MMMU_PRO_COT_STANDARD
    assert prompts.MMMU_PRO_COT_VISION_PROMPT == SPEC_MMMU_PRO_COT_VISION
    assert prompts.INTERNVL_COT_TEMPLATE == SPEC_INTERNVL_COT
    assert prompts.MULTIPLE_CHOICE_DIRECT_SUFFIX == SPEC_MCQ_DIRECT
    assert prompts.SHORT_ANSWER_DIRECT_SUFFIX == SPEC_OPEN_DIRECT
    # The em dash and the single backslash are real characters, not escapes.
    assert "\u2014" in prompts.MULTIPLE_CHOICE_COT_PROMPT and "\\boxed{$LETTER}" in prompts.MULTIPLE_CHOICE_COT_PROMPT
    assert prompts.MULTIPLE_CHOICE_COT_PROMPT.encode("utf-8") == SPEC_MCQ_COT.encode("utf-8")


def test_multiple_choice_direct_prompt():
    prompt = build_multiple_choice_prompt("What is shown?", ["a cat", "a dog"], hint="Look closely.")
    assert prompt == f"Look closely.\nWhat is shown?\nA. a cat\nB. a dog\n{SPEC_MCQ_DIRECT}"
    assert build_multiple_choice_prompt("Q?") == "Q?\nAnswer the question directly."
    # A mapping is read in letter order, None skipped (VLMEvalKit skips NaN option columns).
    assert build_multiple_choice_prompt("Q?", {"B": "y", "A": "x", "C": None}) == f"Q?\nA. x\nB. y\n{SPEC_MCQ_DIRECT}"
    # Chinese text switches the suffix.
    assert build_multiple_choice_prompt("这是什么？", ["猫", "狗"]) == "这是什么？\nA. 猫\nB. 狗\n请直接回答选项字母。"


def test_cot_prompt_multiple_choice():
    prompt = build_cot_prompt("What is shown?", ["a cat", "a dog"], hint="Look closely.")
    assert prompt == f"Look closely.\nWhat is shown?\nA. a cat\nB. a dog\n{SPEC_MCQ_COT}"
    assert build_cot_prompt("Q?", ["x"], kind="multiple_choice") == build_cot_prompt("Q?", ["x"])
    # Surrounding whitespace goes with the strip() that follows the removal of the direct-answer sentence.
    assert build_cot_prompt("  Q?", ["x "]) == f"Q?\nA. x\n{SPEC_MCQ_COT}"
    # As in VLMEvalKit only the English sentence is removed: a Chinese question keeps its direct-answer line.
    assert build_cot_prompt("这是什么？", ["猫"]) == f"这是什么？\nA. 猫\n请直接回答选项字母。\n{SPEC_MCQ_COT}"


def test_cot_prompt_open_question():
    assert build_cot_prompt("What is 2+3?") == f"What is 2+3?\n{SPEC_OPEN_COT}"
    assert build_cot_prompt("What is 2+3?", kind="open") == f"What is 2+3?\n{SPEC_OPEN_COT}"
    assert build_cot_prompt("Q", hint="H", kind="open") == f"H\nQ\n{SPEC_OPEN_COT}"
    with pytest.raises(ValueError, match="kind"):
        build_cot_prompt("Q", kind="essay")
    with pytest.raises(ValueError, match="options"):
        build_cot_prompt("Q", ["x"], kind="open")
    with pytest.raises(TypeError, match="options"):
        build_cot_prompt("Q", "AB")


def test_other_original_prompts():
    assert build_internvl_cot_prompt("2+2?") == SPEC_INTERNVL_COT.replace("{question}", "2+2?")
    prompt = build_mmmu_pro_prompt("Compare <image 1> and <image 2>.", ["left", "right"])
    assert prompt == f"Compare <image> and <image>.\nA. left\nB. right\n{SPEC_MMMU_PRO_COT_STANDARD}"
    assert build_mmmu_pro_prompt(None, setting="vision") == SPEC_MMMU_PRO_COT_VISION
    assert build_mmmu_pro_prompt("Q", ["x"], mode="direct").endswith(
        "\nAnswer with the option letter from the given choices directly."
    )


# ---------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"So the result is \boxed{42}.", "42"),
        (r"Answer: \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\left\{1, 2\right\}}", r"\left\{1, 2\right\}"),  # escaped braces do not count
        (r"\boxed{\text{a {b} c}}", r"\text{a {b} c}"),
        (r"First \boxed{A}, then on reflection \boxed{ C }", "C"),  # the last one wins
        (r"\boxed{B} but then cut off \boxed{\frac{1", "B"),  # an unclosed box is ignored
        ("Step 1 ...\nFinal answer: 12", "12"),
        ("Reasoning.\nAnswer: B", "B"),
        ("answer: first\n**Answer:** $7$.", "7"),
        ("Answer: x\nAnswer: y", "y"),
        (r"Answer: C" "\n" r"\boxed{D}", "D"),  # a box beats an Answer: line
        ("No conclusion at all.", None),
        (r"\boxed{}", None),
        ("Answer:", None),
        ("", None),
    ],
)
def test_parse_boxed_answer(text, expected):
    assert parse_boxed_answer(text) == expected


def test_parse_boxed_answer_rejects_non_strings():
    with pytest.raises(TypeError, match="text"):
        parse_boxed_answer(None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"... so Answer: \boxed{B}", "B"),
        (r"\boxed{(C)}", "C"),
        (r"\boxed{D. a bird}", "D"),
        ("Answer: A", "A"),
        ("The correct option is B because it is red.", "B"),
        (r"\boxed{a dog}", "B"),  # option text
        ("I think A or B.", None),  # ambiguous
        ("B. a dog", "B"),
        ("(D) since it flies", "D"),
        ("A fox is shown, so the answer is C", None),  # "A fox" is no answer; A and C both stand alone
        ("Answer: A dog", "A"),  # a parsed answer may continue after the letter
        (r"\boxed{E}", None),  # not an option
        ("no idea", None),
    ],
)
def test_extract_choice_letter(text, expected):
    assert extract_choice_letter(text, ["a cat", "a dog", "a fish", "a bird"]) == expected


def test_extract_choice_letter_with_count_and_errors():
    assert extract_choice_letter("Answer: C", 3) == "C"
    assert extract_choice_letter("Answer: D", 3) is None
    with pytest.raises(ValueError, match="options"):
        extract_choice_letter("A", [])


# ---------------------------------------------------------------------------------------------------------------
# Voting
# ---------------------------------------------------------------------------------------------------------------


def test_majority_vote_counts_and_normalization():
    answer, counts = majority_vote(["12", " 12 ", None, "7", "12", "7"])
    assert answer == "12"
    assert counts == {"12": 3, "7": 2}
    assert list(counts) == ["12", "7"]  # order of first appearance
    answer, counts = majority_vote(["a", "A", "A"], normalize=str.lower)
    assert (answer, counts) == ("a", {"a": 3})
    assert majority_vote(["x  y", "x y"], normalize=None) == ("x  y", {"x  y": 1, "x y": 1})


def test_majority_vote_ties_go_to_first_occurrence():
    assert majority_vote(["B", "A", "A", "B"])[0] == "B"
    assert majority_vote(["A", "B", "B", "A"])[0] == "A"
    assert majority_vote(["C", "A", "B"])[0] == "C"
    # Deterministic under reordering of the losers only.
    for _ in range(20):
        answers = ["B", "A", "A", "B", "C"]
        assert majority_vote(answers)[0] == "B"


def test_majority_vote_nothing_to_count():
    assert majority_vote([]) == (None, {})
    assert majority_vote([None, None]) == (None, {})
    with pytest.raises(TypeError, match="answers"):
        majority_vote([3])


WORDS = "the answer is A B C D 1 2 3 yes no so because"


@pytest.fixture(scope="module")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained here with `tokenizers` (no download)."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"])
    tokenizer.train_from_iterator([WORDS] * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


@pytest.fixture(scope="module")
def tiny_qwen2(tiny_tokenizer) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=len(tiny_tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        pad_token_id=tiny_tokenizer.pad_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


def _first_word(text: str) -> str | None:
    words = text.split()
    return words[0] if words else None


def test_generate_with_votes_is_deterministic_under_a_seed(tiny_qwen2, tiny_tokenizer):
    inputs = tiny_tokenizer("the answer is", return_tensors="pt")
    kwargs = dict(num_votes=6, max_new_tokens=6, answer_parser=_first_word)
    torch.manual_seed(1234)
    state_before = torch.get_rng_state()
    first = generate_with_votes(tiny_qwen2, tiny_tokenizer, inputs, seed=7, **kwargs)
    assert torch.equal(torch.get_rng_state(), state_before)  # the caller's RNG is left alone
    second = generate_with_votes(tiny_qwen2, tiny_tokenizer, inputs, seed=7, **kwargs)
    assert first == second
    assert len(first.responses) == 6 and len(first.parsed_answers) == 6
    assert first.answer == majority_vote(first.parsed_answers)[0]
    assert sum(first.counts.values()) == sum(answer is not None for answer in first.parsed_answers)
    # The responses are real samples: a different seed gives different ones.
    other = generate_with_votes(tiny_qwen2, tiny_tokenizer, inputs, seed=8, **kwargs)
    assert other.responses != first.responses


def test_generate_with_votes_matches_plain_generate(tiny_qwen2, tiny_tokenizer):
    """The votes are exactly `generate(do_sample=True, num_return_sequences=N)` under `torch.manual_seed(seed)`."""
    inputs = tiny_tokenizer("so the answer is", return_tensors="pt")
    result = generate_with_votes(tiny_qwen2, tiny_tokenizer, inputs, num_votes=4, seed=3, max_new_tokens=5)
    torch.manual_seed(3)
    sequences = tiny_qwen2.generate(**inputs, do_sample=True, num_return_sequences=4, max_new_tokens=5)
    decoded = tiny_tokenizer.batch_decode(sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert result.responses == [text.strip() for text in decoded]
    assert result.parsed_answers == [parse_boxed_answer(text) for text in result.responses]


def test_generate_with_votes_argument_errors(tiny_qwen2, tiny_tokenizer):
    inputs = tiny_tokenizer("the answer is", return_tensors="pt")
    with pytest.raises(ValueError, match="num_votes"):
        generate_with_votes(tiny_qwen2, tiny_tokenizer, inputs, num_votes=0)
    with pytest.raises(ValueError, match="do_sample"):
        generate_with_votes(tiny_qwen2, tiny_tokenizer, inputs, do_sample=False)
    batch = tiny_tokenizer(["the answer", "so the"], return_tensors="pt")
    with pytest.raises(ValueError, match="batch size"):
        generate_with_votes(tiny_qwen2, tiny_tokenizer, batch)


class _RecordingModel:
    """Stands in for a VLM with a flat tile batch; records what `generate` receives."""

    device = torch.device("cpu")

    def __init__(self):
        self.calls = []

    def generate(self, **kwargs):
        self.calls.append(kwargs)
        input_ids = kwargs["input_ids"]
        expanded = input_ids.repeat_interleave(kwargs["num_return_sequences"], dim=0)
        return torch.cat([expanded, torch.full((expanded.shape[0], 1), 5)], dim=1)


class _Decoder:
    def batch_decode(self, sequences, skip_special_tokens=True):
        return [" ".join(str(int(token)) for token in row) for row in sequences]


def test_generate_with_votes_keeps_flat_tile_batches_in_sequence_order():
    model = _RecordingModel()
    pixel_values = torch.arange(3.0).view(3, 1)  # three tiles of one image
    inputs = {"input_ids": torch.tensor([[1, 2]]), "pixel_values": pixel_values}
    result = generate_with_votes(model, _Decoder(), inputs, num_votes=2, answer_parser=str)
    sent = model.calls[0]
    # t0 t1 t2 t0 t1 t2 (each sequence gets the whole image), never t0 t0 t1 t1 t2 t2.
    assert sent["pixel_values"].flatten().tolist() == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]
    assert sent["input_ids"].tolist() == [[1, 2], [1, 2]]
    assert sent["num_return_sequences"] == 1 and sent["do_sample"] is True
    assert result.responses == ["5", "5"] and result.answer == "5"


def test_generate_with_votes_on_a_vision_language_model_with_several_tiles(qwen2_model_dir, monkeypatch):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = qwen2_model_dir
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    image = Image.effect_noise((1600, 400), 64).convert("RGB")  # 4x1 grid + thumbnail: 5 tiles
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert inputs["pixel_values"].shape[0] == 5
    greedy = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    expected = processor.batch_decode(greedy[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0].strip()
    # top_k=1 sampling is greedy: every vote must be the greedy answer, which fails if a sample saw the tiles of the
    # image in the wrong order.
    kwargs = dict(num_votes=3, seed=0, max_new_tokens=5, top_k=1, answer_parser=str)
    result = generate_with_votes(model, processor, inputs, **kwargs)
    assert result.responses == [expected] * 3
    # A text-only prompt: the processor returns zero-tile pixel_values, which the model treats as no image.
    text_only = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "What?"}]}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    text_votes = generate_with_votes(model, processor, text_only, **kwargs)
    plain = model.generate(
        input_ids=text_only["input_ids"], attention_mask=text_only["attention_mask"], max_new_tokens=5, do_sample=False
    )
    greedy_text = processor.batch_decode(plain[:, text_only["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    assert text_votes.responses == [greedy_text.strip()] * 3
    # Same through the manual sequence-major expansion used for models that do not pre-encode images.
    monkeypatch.setattr(type(model), "_supports_mm_encoder_outputs", lambda self: False)
    assert voting._needs_manual_expansion(model, inputs)
    assert generate_with_votes(model, processor, inputs, **kwargs).responses == [expected] * 3


# ---------------------------------------------------------------------------------------------------------------
# Repetition
# ---------------------------------------------------------------------------------------------------------------


def _reference_ratio(words, n):
    """Spelled-out version of the filter statistic, for checking."""
    ngrams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not ngrams:
        return 0.0
    return len({g for g in ngrams if ngrams.count(g) > 1}) / len(ngrams)


def test_repetition_ratio_is_the_original_filter():
    block = " ".join(f"w{i}" for i in range(20))
    text = f"{block} {block}"  # 40 words, 31 ten-grams, 11 distinct ones occur twice
    assert repetition_ratio(text) == pytest.approx(11 / 31)
    assert repetition_ratio(text) == _reference_ratio(text.split(), 10)
    assert repetition_ratio("a b c", n=10) == 0.0
    assert repetition_ratio("") == 0.0
    assert repetition_ratio(" ".join(["x"] * 12)) == pytest.approx(1 / 3)  # one distinct 10-gram, 3 in total
    assert repetition_ratio([1, 2, 1, 2, 1], n=2) == pytest.approx(2 / 4)
    assert repetition_ratio(torch.tensor([1, 2, 1, 2, 1]), n=2) == pytest.approx(2 / 4)
    rng = random.Random(0)
    for _ in range(50):
        words = [rng.choice("abc") for _ in range(rng.randint(0, 30))]
        n = rng.randint(1, 4)
        assert repetition_ratio(words, n) == _reference_ratio(words, n)


def test_is_repetitive_threshold_is_strict_and_0_4():
    words = [f"w{i}" for i in range(12)]
    # 12 + 12 words repeated: 15 ten-grams, 3 distinct repeated -> 0.2; a doubled 30-word block -> 21/51 ~ 0.41.
    assert not is_repetitive(" ".join(words * 2))
    long_block = [f"v{i}" for i in range(30)]
    assert repetition_ratio(long_block * 2) == pytest.approx(21 / 51)
    assert is_repetitive(long_block * 2)
    # ratio exactly 0.4 is kept (the filter rejects only ratio > 0.4)
    assert repetition_ratio([1, 2, 1, 2, 1, 9], n=2) == pytest.approx(0.4)  # 2 of 5 bigrams repeated
    assert not is_repetitive([1, 2, 1, 2, 1, 9], n=2)
    assert is_repetitive([1, 2, 1, 2, 1, 9], n=2, threshold=0.39)


def test_stopping_ngram_ratio_matches_the_filter_on_token_ids():
    criteria = RepetitionStoppingCriteria(window_size=40)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 6, (16, 40), generator=generator)
    rows[3] = torch.arange(40)
    rows[4] = torch.tensor(list(range(20)) * 2)
    rows[5] = 151_000 + torch.tensor(list(range(13)) * 4)[:40]  # large ids
    ratios = criteria._ngram_ratio(rows)
    for row, ratio in zip(rows, ratios, strict=True):
        assert ratio.item() == pytest.approx(repetition_ratio(row, n=10), abs=1e-6)


def _loop_rows(period_blocks, length):
    rows = []
    for block in period_blocks:
        rows.append((block * (length // len(block) + 1))[:length])
    return torch.tensor(rows)


def test_periodic_loop_check_on_token_rows():
    def check(rows, **kwargs):
        kwargs = {"max_period": 8, "min_repeats": 3, "min_loop_length": 12, "window_size": None, **kwargs}
        return RepetitionStoppingCriteria(prompt_length=0, **kwargs)(rows, None).tolist()

    prefix = list(range(100, 140))
    rows = torch.tensor(
        [
            prefix + [5, 6, 7] * 4,  # period 3, 12 tokens: loop
            prefix + [5, 6, 7] * 3 + [5, 6, 8],  # broken at the end
            prefix + [9] * 12,  # period 1
            prefix[:-11] + [9] * 11 + [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],  # no period
            prefix[:28] + list(range(8)) * 3,  # period 8, three copies (24 tokens)
            prefix[:28] + [9] * 13 + list(range(8)) + [9, 9, 9],  # no period
        ]
    )
    assert check(rows) == [True, False, True, False, True, False]
    # A period longer than max_period is not looked for.
    assert check(rows[4:5], max_period=7) == [False]
    # Too few tokens for any span: nothing.
    assert check(torch.tensor([[5, 6, 7] * 3])) == [False]
    # Only generated tokens count: the same loop, but partly inside the prompt.
    assert RepetitionStoppingCriteria(prompt_length=45, max_period=8, min_loop_length=12)(rows[:1], None).tolist() == [
        False
    ]


def test_incremental_ngram_ratio_matches_the_filter():
    """Fed one token per call (as in generate), the stopper's window ratio is the filter's ratio on the window."""
    generator = torch.Generator().manual_seed(1)
    block = torch.randint(0, 50, (1, 70), generator=generator)
    tokens = torch.cat([torch.randint(0, 50, (1, 30), generator=generator), block, block], dim=1)  # 170 tokens
    criteria = RepetitionStoppingCriteria(max_period=0, window_size=64, threshold=0.4, prompt_length=0)
    for length in range(1, tokens.shape[1] + 1):
        done = criteria(tokens[:, :length], None).item()
        window = tokens[0, max(0, length - 64) : length]
        assert done == (length >= 64 and repetition_ratio(window, n=10) > 0.4), length


class _ForceNextToken(LogitsProcessor):
    """Makes the next token a function of the last one, so a real model follows a chosen path under greedy search."""

    def __init__(self, next_token):
        self.next_token = next_token

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, -float("inf"))
        targets = torch.tensor([self.next_token(int(row[-1])) for row in input_ids])
        forced[torch.arange(scores.shape[0]), targets] = 0.0
        return forced


@pytest.fixture(scope="module")
def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        eos_token_id=None,
        pad_token_id=0,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _cycle_5_6_7(last):
    return {5: 6, 6: 7}.get(last, 5)


def _increasing(last):
    return last + 1


def _generate(model, prompt, next_token, criteria, max_new_tokens):
    return model.generate(
        input_ids=torch.tensor(prompt),
        attention_mask=torch.ones(len(prompt), len(prompt[0]), dtype=torch.long),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        logits_processor=LogitsProcessorList([_ForceNextToken(next_token)]),
        stopping_criteria=StoppingCriteriaList([criteria]),
    )


def test_repetition_stopper_stops_a_looping_model_early(tiny_llama):
    prompt = [[20, 21, 22]]
    criteria = RepetitionStoppingCriteria()  # defaults: loops spanning >= 48 tokens
    output = _generate(tiny_llama, prompt, _cycle_5_6_7, criteria, max_new_tokens=300)
    generated = output[0, 3:].tolist()
    assert generated[:6] == [5, 6, 7, 5, 6, 7]
    # Stops as soon as 48 generated tokens form the loop: the first token (5) starts it.
    assert len(generated) == 48
    assert criteria.stopped.tolist() == [True]


def test_repetition_stopper_never_stops_a_non_repeating_model(tiny_llama):
    criteria = RepetitionStoppingCriteria()
    output = _generate(tiny_llama, [[20, 21, 22]], _increasing, criteria, max_new_tokens=300)
    assert output[0, 3:].tolist() == list(range(23, 323))
    assert criteria.stopped.tolist() == [False]


def test_repetition_stopper_ignores_a_repetitive_prompt(tiny_llama):
    looping_prompt = [[5, 6, 7] * 40 + [100]]
    criteria = RepetitionStoppingCriteria()
    output = _generate(tiny_llama, looping_prompt, _increasing, criteria, max_new_tokens=60)
    assert output.shape[1] == 121 + 60
    assert criteria.stopped.tolist() == [False]


def test_repetition_stopper_ngram_ratio_catches_long_loops(tiny_llama):
    """A 30-token block repeated, periodic check disabled: caught by the n-gram ratio over a 64-token window."""

    def long_cycle(last):
        return 300 if last >= 329 or last < 300 else last + 1

    criteria = RepetitionStoppingCriteria(max_period=0, window_size=64)
    output = _generate(tiny_llama, [[1, 2]], long_cycle, criteria, max_new_tokens=200)
    # At 64 generated tokens the window holds 2.13 copies: 25 of 55 ten-grams repeat, 0.45 > 0.4.
    assert output.shape[1] - 2 == 64
    assert repetition_ratio(output[0, 2:], n=10) == pytest.approx(25 / 55)
    # Same model, increasing ids: never stopped by the ratio.
    criteria = RepetitionStoppingCriteria(max_period=0, window_size=64)
    output = _generate(tiny_llama, [[1, 2]], _increasing, criteria, max_new_tokens=150)
    assert output.shape[1] - 2 == 150


def test_repetition_stopper_is_per_sequence(tiny_llama):
    def mixed(last):  # the row starting at 200 keeps increasing, the other one loops
        return last + 1 if last >= 200 else _cycle_5_6_7(last)

    tiny_llama.generation_config.eos_token_id = 511  # never generated; makes generate pad finished rows
    try:
        criteria = RepetitionStoppingCriteria()
        output = _generate(tiny_llama, [[20, 21, 22], [200, 201, 202]], mixed, criteria, max_new_tokens=120)
    finally:
        tiny_llama.generation_config.eos_token_id = None
    assert output.shape[1] == 3 + 120  # the increasing row runs to max_new_tokens
    assert output[1, 3:].tolist() == list(range(203, 323))
    assert criteria.stopped.tolist() == [True, False]
    looping_row = output[0, 3:].tolist()
    assert looping_row[:48] == [5, 6, 7] * 16 and set(looping_row[48:]) == {0}  # padded once stopped


def test_repetition_stopper_relearns_the_prompt_in_a_new_run(tiny_llama):
    criteria = RepetitionStoppingCriteria()
    output = _generate(tiny_llama, [[20, 21, 22]], _cycle_5_6_7, criteria, max_new_tokens=100)
    assert output.shape[1] == 3 + 48 and criteria.stopped.tolist() == [True]
    # Same instance, same batch size, a longer prompt that is itself a run of 50 identical tokens: counted as generated
    # tokens it would stop the run at once; the new run is recognised and the prompt excluded.
    output = _generate(tiny_llama, [[30] * 50 + [300]], _increasing, criteria, max_new_tokens=80)
    assert output.shape[1] == 51 + 80
    assert criteria.stopped.tolist() == [False]
    criteria.reset()
    assert criteria.stopped is None


def test_repetition_stopper_direct_call_and_validation():
    criteria = RepetitionStoppingCriteria(prompt_length=2, min_loop_length=6, min_repeats=2)
    ids = torch.tensor([[5, 6, 7, 5, 6, 7, 5, 6], [1, 1, 1, 2, 3, 4, 5, 6]])
    done = criteria(ids, None)
    assert done.dtype == torch.bool and done.shape == (2,)
    assert done.tolist() == [True, False]
    with pytest.raises(ValueError, match="threshold"):
        RepetitionStoppingCriteria(threshold=1.5)
    with pytest.raises(ValueError, match="window_size"):
        RepetitionStoppingCriteria(window_size=5, ngram_size=10)
    with pytest.raises(ValueError, match="min_repeats"):
        RepetitionStoppingCriteria(min_repeats=1)


def test_package_exports():

    modules = (prompts, answers, voting, repetition, stopping)
    exported = [name for name, module in transformers_internvl._LAZY_ATTRIBUTES.items() if ".reasoning." in module]
    assert len(exported) == 12
    for name in exported:
        defining = [module for module in modules if name in module.__all__]
        assert len(defining) == 1 and getattr(transformers_internvl, name) is getattr(defining[0], name)
    assert not list(Path(transformers_internvl.__file__).parent.rglob("test_*.py"))  # no test-like module names


@pytest.mark.gpu
def test_repetition_stopper_and_votes_on_cuda(tiny_llama, tiny_qwen2, tiny_tokenizer):
    device = torch.device("cuda")
    model = tiny_llama.to(device)
    try:
        criteria = RepetitionStoppingCriteria()
        prompt = torch.tensor([[20, 21, 22], [200, 201, 202]], device=device)

        def mixed(last):
            return last + 1 if last >= 200 else _cycle_5_6_7(last)

        processor = _ForceNextToken(mixed)
        output = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=120,
            logits_processor=LogitsProcessorList([_CudaForce(processor)]),
            stopping_criteria=StoppingCriteriaList([criteria]),
        )
        assert output.shape[1] == 123
        assert criteria.stopped.tolist() == [True, False]
        assert output[1, 3:].tolist() == list(range(203, 323))
    finally:
        tiny_llama.to("cpu")
    qwen = tiny_qwen2.to(device)
    try:
        inputs = tiny_tokenizer("the answer is", return_tensors="pt").to(device)
        kwargs = dict(num_votes=6, max_new_tokens=6, answer_parser=_first_word, seed=11)
        assert generate_with_votes(qwen, tiny_tokenizer, inputs, **kwargs) == generate_with_votes(
            qwen, tiny_tokenizer, inputs, **kwargs
        )
    finally:
        tiny_qwen2.to("cpu")


class _CudaForce(LogitsProcessor):
    def __init__(self, inner):
        self.inner = inner

    def __call__(self, input_ids, scores):
        return self.inner(input_ids.cpu(), scores.cpu()).to(scores.device)
