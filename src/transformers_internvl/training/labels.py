"""Prompt rendering and label masking for supervised fine-tuning, as the original training code does it.

The original picks one preprocess function per conversation template (`internvl_chat_finetune.py`,
`LazySupervisedDataset.get_preprocess_function`) and each builds `input_ids` and `labels` (-100 = no loss) its own way
(`internvl_chat/internvl/train/dataset.py`):

* `internvl2_5` (`preprocess_internvl2_5`): every turn is rendered as `<|im_start|>{role}\\n{text}<|im_end|>\\n` and
  tokenised on its own; system and user turns are masked; in assistant turns the `<|im_start|>assistant\\n` tokens
  and the trailing `\\n` are masked, the answer and `<|im_end|>` are trained. Tokenisers that add a BOS
  (InternLM2) get the BOS text prepended to the first turn and the first token of every turn dropped.
* `internlm2-chat` (`preprocess_internlm`), `phi3-chat` (`preprocess_phi3`), `Hermes-2` (`preprocess_mpt`): the
  whole prompt is tokenised at once and the masks are placed by the lengths of separately tokenised pieces, with
  the per-template offsets of the original. When the lengths do not add up to the prompt's length, the original
  masks the whole sample (a "tokenization mismatch"); so does this module.

This module re-implements those rules; `tests/fixtures/finetune/labels.json` holds the original functions' outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..llama_slow_tokenization import encode_as_original
from ..modeling.causal_lm_loss import IGNORE_INDEX
from ..modeling.conversation import get_conv_template

IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"
IMAGE_PLACEHOLDER = "<image>"

SUPPORTED_TEMPLATES = ("internvl2_5", "internlm2-chat", "phi3-chat", "Hermes-2")


class SampleError(ValueError):
    """A training sample that the original code would reject (it resamples another one); the dataset skips it."""


@dataclass
class TokenizedSample:
    """`input_ids` and `labels` (same length, -100 = not trained) of one conversation."""

    input_ids: list[int]
    labels: list[int]


def _image_string(num_tokens: int) -> str:
    return f"{IMG_START_TOKEN}{IMG_CONTEXT_TOKEN * num_tokens}{IMG_END_TOKEN}"


def _ids(tokenizer, text: str) -> list[int]:
    # Phi-3 sentencepiece tokenizers: the ids of the slow class the original training script loads (`use_fast=False`).
    return list(encode_as_original(tokenizer, [text])["input_ids"][0])


def _check_turns(conversations: Sequence[dict]) -> None:
    if not conversations:
        raise SampleError("empty conversation")
    for index, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise SampleError(f"turn {index} must be a dict with 'from' and 'value', got {turn!r}")
        if turn["from"] not in ("system", "human", "gpt"):
            raise SampleError(f"turn {index} has role {turn['from']!r}; expected 'system', 'human' or 'gpt'")
        if not isinstance(turn["value"], str):
            raise SampleError(f"turn {index} value must be a string, got {type(turn['value']).__name__}")
    if not any(turn["from"] == "gpt" for turn in conversations):
        raise SampleError("no assistant ('gpt') turn, nothing to train on")


def _expand_images(conversations: list[dict], num_image_tokens: Sequence[int]) -> list[dict]:
    """Replace `<image>` tags in human turns by `<img><IMG_CONTEXT>*n</img>`, one tag per image, in order.

    Raises `SampleError` when the number of tags in human turns differs from the number of images (the original
    asserts for fewer tags, and would silently leave extra tags as text: both are rejected here).

    `<image>` text in system or assistant turns stays text, as in the original `preprocess_internvl2_5`. The
    original's pre-2.5 functions (`preprocess_mpt`, `preprocess_phi3`, `preprocess_internlm`) replace the first
    `<image>` of the whole rendered prompt instead, so a tag typed in an earlier answer received the image and its
    `<IMG_CONTEXT>` tokens were trained; here the image always goes to the human turn's tag (deliberate).
    """
    count = sum(turn["value"].count(IMAGE_PLACEHOLDER) for turn in conversations if turn["from"] == "human")
    if count != len(num_image_tokens):
        raise SampleError(f"{count} '<image>' tags in human turns but {len(num_image_tokens)} images")
    index = 0
    out = []
    for turn in conversations:
        value = turn["value"]
        if turn["from"] == "human":
            while IMAGE_PLACEHOLDER in value:
                value = value.replace(IMAGE_PLACEHOLDER, _image_string(num_image_tokens[index]), 1)
                index += 1
        out.append({"from": turn["from"], "value": value})
    return out


def _labels_internvl2_5(conversations: list[dict], tokenizer, system_message: str) -> TokenizedSample:
    if conversations[0]["from"] == "system":
        system_message, conversations = conversations[0]["value"], conversations[1:]
    names = {"system": "system", "human": "user", "gpt": "assistant"}
    turns = [("system", system_message)] if system_message is not None else []
    for turn in conversations:
        if turn["from"] == "system":
            raise SampleError("a system turn is only allowed first")
        turns.append((turn["from"], turn["value"]))
    texts = [f"<|im_start|>{names[role]}\n{value}<|im_end|>\n" for role, value in turns]
    add_bos = bool(getattr(tokenizer, "add_bos_token", False))
    if add_bos:
        texts[0] = tokenizer.bos_token + texts[0]
    # Masked head of an assistant turn: the tokens of "<|im_start|>assistant\n" (without the BOS when one is added).
    head = len(_ids(tokenizer, "<|im_start|>assistant\n")) - (1 if add_bos else 0)
    input_ids: list[int] = []
    labels: list[int] = []
    for (role, _), text in zip(turns, texts):
        ids = _ids(tokenizer, text)
        if add_bos:
            ids = ids[1:]
        input_ids += ids
        if role == "gpt":
            trained = [IGNORE_INDEX] * min(head, len(ids)) + ids[head:]
            trained[-1] = IGNORE_INDEX  # the trailing "\n"
            labels += trained
        else:
            labels += [IGNORE_INDEX] * len(ids)
    return TokenizedSample(input_ids, labels)


def _render_whole(template: str, conversations: list[dict], strip: bool) -> tuple[str, object]:
    conv = get_conv_template(template)
    if conversations[0]["from"] != "human":
        # The original drops a leading non-human turn; a leading system turn raises there (KeyError on 'system').
        if conversations[0]["from"] == "system":
            raise SampleError(f"template {template!r}: the original preprocess does not accept a system turn")
        conversations = conversations[1:]
    for index, turn in enumerate(conversations):
        expected = "human" if index % 2 == 0 else "gpt"
        if turn["from"] != expected:
            raise SampleError(f"template {template!r}: turn {index} is {turn['from']!r}, expected {expected!r}")
        conv.append_message(conv.roles[index % 2], turn["value"].strip() if strip else turn["value"])
    return conv.get_prompt(), conv


def _finish(input_ids: list[int], labels: list[int], end: int, total: int, max_length: int | None) -> TokenizedSample:
    labels[end:] = [IGNORE_INDEX] * max(0, len(labels) - end)
    if (max_length is None or end < max_length) and end != total:
        # The original's "tokenization mismatch": the whole sample is ignored.
        labels = [IGNORE_INDEX] * len(input_ids)
    return TokenizedSample(input_ids, labels)


def _labels_internlm(conversations, tokenizer, max_length) -> TokenizedSample:
    prompt, conv = _render_whole("internlm2-chat", conversations, strip=True)
    input_ids = _ids(tokenizer, prompt)[:max_length]
    labels = list(input_ids)
    user, assistant = conv.roles
    pieces = prompt.split(assistant)
    # Lengths below drop the BOS each separate tokenisation adds.
    position = 1 + len(_ids(tokenizer, pieces[0] + assistant)) - 1
    labels[:position] = [IGNORE_INDEX] * min(position, len(labels))
    for piece in pieces[1:-1]:
        answer, question = piece.split(user)
        position += len(_ids(tokenizer, answer)) - 1
        masked = len(_ids(tokenizer, user + question + assistant)) - 1
        labels[position : position + masked] = [IGNORE_INDEX] * len(labels[position : position + masked])
        position += masked
    position += len(_ids(tokenizer, pieces[-1])) - 1
    return _finish(input_ids, labels, position, _non_pad(input_ids, tokenizer), max_length)


def _rounds(prompt: str, sep: str) -> list[str]:
    """The original's regrouping: [system + user + answer], then [user + answer] pairs, joined by `sep`."""
    chunks = prompt.split(sep)
    rounds = [sep.join(chunks[:3])]
    rounds += [sep.join(chunks[i : i + 2]) for i in range(3, len(chunks), 2)]
    return rounds


def _non_pad(input_ids: list[int], tokenizer) -> int:
    return sum(1 for token in input_ids if token != tokenizer.pad_token_id)


def _labels_by_rounds(template, conversations, tokenizer, max_length) -> TokenizedSample:
    prompt, conv = _render_whole(template, conversations, strip=False)
    input_ids = _ids(tokenizer, prompt)[:max_length]
    labels = list(input_ids)
    question_end = conv.sep + conv.roles[1]
    phi3 = template == "phi3-chat"
    position = 1 if phi3 else 0
    labels[:position] = [IGNORE_INDEX] * position
    if phi3:
        end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        labels = [IGNORE_INDEX if token == end_of_text else token for token in labels]
    for index, round_text in enumerate(_rounds(prompt, conv.sep)):
        if round_text == "":
            break
        length = len(_ids(tokenizer, round_text))
        if phi3:
            length -= 0 if index == 0 else 1
        else:
            length += 1  # the separator that split() removed
        parts = round_text.split(question_end)
        if len(parts) != 2:
            break
        masked = len(_ids(tokenizer, parts[0] + question_end))
        if phi3:
            masked -= 1 if index == 0 else 2
        labels[position : position + masked] = [IGNORE_INDEX] * len(labels[position : position + masked])
        position += length
    return _finish(input_ids, labels, position, _non_pad(input_ids, tokenizer), max_length)


def tokenize_conversation(
    conversations: Sequence[dict],
    tokenizer,
    template: str,
    num_image_tokens: Sequence[int] = (),
    max_length: int | None = None,
) -> TokenizedSample:
    """`input_ids` and `labels` of one conversation in the original InternVL training format.

    Args:
        conversations: turns `{"from": "system"|"human"|"gpt", "value": str}`; `<image>` tags in human turns mark
            where images go (video frames are images here, see `video_frame_tags`).
        tokenizer: the checkpoint's tokenizer (must know `<img>`, `</img>`, `<IMG_CONTEXT>`).
        template: the checkpoint's `template` (`config.template`): one of `SUPPORTED_TEMPLATES`.
        num_image_tokens: `<IMG_CONTEXT>` tokens per image, in order (`num_image_token * tiles`); empty = text-only.
        max_length: truncate to this many tokens (the original's `model_max_length`); `None` = no truncation.

    Returns:
        `TokenizedSample` with equal-length `input_ids` and `labels` (-100 where no loss is taken).

    Raises:
        SampleError: empty conversation, no assistant turn, unknown role, `<image>` tag count differing from the
            number of images, a turn order the template's original preprocess rejects, or a truncation that cuts
            an image.
        ValueError: `template` is not supported.

    Source: `preprocess_internvl2_5`, `preprocess_internlm`, `preprocess_phi3`, `preprocess_mpt` in
    `internvl_chat/internvl/train/dataset.py`.
    """
    if template not in SUPPORTED_TEMPLATES:
        raise ValueError(
            f"`template` must be one of {SUPPORTED_TEMPLATES} (the original's training templates), got {template!r}."
        )
    _check_turns(conversations)
    turns = [dict(turn) for turn in conversations]
    if num_image_tokens:
        turns = _expand_images(turns, num_image_tokens)
    if template == "internvl2_5":
        sample = _labels_internvl2_5(turns, tokenizer, get_conv_template(template).system_message)
        if max_length is not None:
            sample = TokenizedSample(sample.input_ids[:max_length], sample.labels[:max_length])
    elif template == "internlm2-chat":
        sample = _labels_internlm(turns, tokenizer, max_length)
    else:
        sample = _labels_by_rounds(template, turns, tokenizer, max_length)
    if max_length is not None and len(sample.input_ids) > max_length:
        sample = TokenizedSample(sample.input_ids[:max_length], sample.labels[:max_length])
    if num_image_tokens:
        end_id = tokenizer.convert_tokens_to_ids(IMG_END_TOKEN)
        if sample.input_ids.count(end_id) != len(num_image_tokens):
            raise SampleError(
                f"truncation to max_length={max_length} cut an image ({len(sample.input_ids)} tokens kept, "
                f"{sample.input_ids.count(end_id)} of {len(num_image_tokens)} images complete)"
            )
    return sample


def video_frame_tags(num_frames: int) -> str:
    """The original's video prompt: `Frame-1: <image>\\nFrame-2: <image>...` (`video_get_item`)."""
    return "\n".join(f"Frame-{index + 1}: {IMAGE_PLACEHOLDER}" for index in range(num_frames))
