"""Review of session 6's changes: run-time `add_tokens` of the fast InternLM2 tokenizer, `logits_to_keep` masks with
`labels`, and `chat()` extending the caller's history list with the chat cache on.

Expected tokenizer values come from the original remote-code `InternLM2Tokenizer` under transformers 4.47.1 (the
environment of `fixtures/tokenizer_heldout_s6/make_expected.py`), run on the same calls: there a str that is already an
added token is skipped by `add_tokens` (its `special` flag stays), and a special token joins
`additional_special_tokens` once.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import QWEN2_DIR, TOKENIZERS, tiny_text_config
from transformers import AddedToken, AutoModelForImageTextToText, AutoTokenizer

import transformers_internvl  # noqa: F401 - registers the Auto classes
from transformers_internvl import InternLM2Config, InternLM2ForCausalLM, InternLM2Tokenizer

FOLDER = TOKENIZERS / "internlm2-dummy-prefix"
LOADERS = [AutoTokenizer, InternLM2Tokenizer]  # the fast class (what AutoTokenizer gives) and the sentencepiece one


# --- add_tokens after loading ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", LOADERS)
def test_a_special_token_added_twice_in_one_call_is_one_extra_special_token(loader, tmp_path):
    """Defect (failed before, fast class): `add_tokens(["<x>", "<x>"], special_tokens=True)` listed `<x>` twice in
    `extra_special_tokens`, and so twice in the saved `additional_special_tokens`; the original lists it once."""
    tokenizer = loader.from_pretrained(FOLDER)
    assert tokenizer.add_tokens(["<x>", "<x>"], special_tokens=True) == 1
    assert tokenizer.extra_special_tokens.count("<x>") == 1
    tokenizer.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert saved["additional_special_tokens"].count("<x>") == 1


@pytest.mark.parametrize("loader", LOADERS)
def test_a_str_already_added_is_not_made_special_by_a_second_add_tokens(loader):
    """Defect (failed before, fast class): `add_tokens(["<y>"])` then `add_tokens(["<y>"], special_tokens=True)` made
    `<y>` special (counted as 1 added, dropped by `skip_special_tokens`); the original skips a str that is already an
    added token: 0 added, `<y>` not special, decoded 'a  <y>  b'."""
    tokenizer = loader.from_pretrained(FOLDER)
    assert tokenizer.add_tokens(["<y>"]) == 1
    assert tokenizer.add_tokens(["<y>"], special_tokens=True) == 0
    assert "<y>" not in tokenizer.extra_special_tokens
    token_id = tokenizer.convert_tokens_to_ids("<y>")
    assert tokenizer.added_tokens_decoder[token_id].special is False
    ids = tokenizer("a <y> b").input_ids
    assert token_id in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a  <y>  b"


@pytest.mark.parametrize("loader", LOADERS)
def test_an_added_token_object_given_again_as_special_becomes_special(loader):
    """An `AddedToken` (not a str) is not skipped by the original: `<w>` added plain, then as
    `AddedToken("<w>", special=True)`, is special and dropped on decode ('a   b' in the original). Held for the fast
    class; failed before for the sentencepiece class (the second call gave `<w>` a new id past the vocabulary)."""
    tokenizer = loader.from_pretrained(FOLDER)
    tokenizer.add_tokens([AddedToken("<w>", special=False)])
    tokenizer.add_tokens([AddedToken("<w>", special=True)])
    assert tokenizer.extra_special_tokens.count("<w>") == 1
    assert tokenizer.decode(tokenizer("a <w> b").input_ids, skip_special_tokens=True) == "a   b"


@pytest.mark.parametrize("loader", LOADERS)
def test_an_added_token_object_for_an_existing_added_token_keeps_its_id(loader):
    """Defect (failed before): `add_tokens([AddedToken("<img>", lstrip=True)])` (a chat token, already added) gave
    `<img>` a second id 609 past the vocabulary in the sentencepiece class (transformers 5's `SentencePieceBackend`
    looks only among the pieces), and the fast class counted it as 1 added token. The original: 0 added, `<img>` stays
    600 and takes the new flag ("a <img> b" -> [1, 270, 600, 259, 427])."""
    tokenizer = loader.from_pretrained(FOLDER)
    size = len(tokenizer)
    assert tokenizer.add_tokens([AddedToken("<img>", lstrip=True)]) == 0
    assert len(tokenizer) == size
    assert tokenizer.convert_tokens_to_ids("<img>") == 600
    assert tokenizer("a <img> b").input_ids == [1, 270, 600, 259, 427]
    assert tokenizer.add_tokens([AddedToken("<new>")]) == 1
    assert tokenizer.add_tokens([AddedToken("<new>", special=True)]) == 0
    assert tokenizer.convert_tokens_to_ids("<new>") == size and len(tokenizer) == size + 1


def test_saved_tokenizer_config_is_the_same_after_a_second_save(tmp_path):
    """Held: save -> load -> save writes the same tokenizer_config.json (added tokens with lstrip/rstrip flags and
    special tokens added at run time included)."""
    tokenizer = AutoTokenizer.from_pretrained(FOLDER)
    tokenizer.add_tokens([AddedToken("<L>", lstrip=True, rstrip=True)])
    tokenizer.add_tokens(["<S>"], special_tokens=True)
    tokenizer.save_pretrained(tmp_path / "one")
    AutoTokenizer.from_pretrained(tmp_path / "one").save_pretrained(tmp_path / "two")
    first, second = (json.loads((tmp_path / name / "tokenizer_config.json").read_text()) for name in ("one", "two"))
    assert first == second
    assert first["additional_special_tokens"][-1] == "<S>"
    lstrip = [token for token in first["added_tokens_decoder"].values() if token["content"] == "<L>"]
    assert lstrip == [{**lstrip[0], "lstrip": True, "rstrip": True, "special": False}]


# --- logits_to_keep masks with labels --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def internlm2_lm():
    text = tiny_text_config("internlm2")
    text.pop("architectures")
    return InternLM2ForCausalLM(InternLM2Config(**text)).eval(), text["vocab_size"]


def test_labels_with_a_boolean_logits_to_keep_mask_that_drops_positions_name_the_argument(internlm2_lm):
    """Defect (failed before): a boolean `(batch, seq)` mask (transformers' packed-training form of `logits_to_keep`)
    that drops positions got past the check and failed in the loss with "Expected input batch_size (8) to match target
    batch_size (14)"; an all-True mask gives the full loss."""
    lm, vocab_size = internlm2_lm
    ids = torch.randint(0, vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 7, dtype=torch.bool)
    with torch.no_grad():
        full = lm(input_ids=ids, labels=ids).loss
        torch.testing.assert_close(lm(input_ids=ids, labels=ids, logits_to_keep=mask).loss, full)
        mask[:, :3] = False
        with pytest.raises(
            ValueError, match=r"`logits_to_keep` \(a bool tensor of shape \(2, 7\)\) keeps the logits of 4"
        ):
            lm(input_ids=ids, labels=ids, logits_to_keep=mask)


def test_labels_with_position_tensors_covering_every_position_are_accepted(internlm2_lm):
    """Held: `torch.arange(seq)` (1-D) and its `(batch, seq)` expansion keep every position: the full loss, also with
    `num_items_in_batch` (Trainer's gradient-accumulation argument)."""
    lm, vocab_size = internlm2_lm
    ids = torch.randint(0, vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = lm(input_ids=ids, labels=ids).loss
        for keep in (torch.arange(7), torch.arange(7).expand(2, 7)):
            torch.testing.assert_close(lm(input_ids=ids, labels=ids, logits_to_keep=keep).loss, full)
        summed = lm(input_ids=ids, labels=ids, num_items_in_batch=torch.tensor(3)).loss
        torch.testing.assert_close(summed, full * 12 / 3)  # 2 x 6 shifted targets, summed then / 3


# --- chat() with the caller's history list ---------------------------------------------------------------------------


def test_the_same_history_list_passed_again_reuses_the_cache_every_turn(qwen2_tokenizer):
    """Held: code written for the original (`history = []`-style: one list given to every turn, extended in place by
    chat()) still gets the cache: the image is encoded once and later turns prefill only the new tokens; the answers
    equal those of runs without reuse."""
    model = AutoModelForImageTextToText.from_pretrained(QWEN2_DIR).eval()
    greedy = {"max_new_tokens": 4, "do_sample": False}
    pixel_values = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    questions = ["Describe.", "More?", "Again?"]
    vision_calls, prefill_lengths = [], []
    hooks = [
        model.model.vision_model.register_forward_hook(lambda *_: vision_calls.append(1)),
        model.model.language_model.register_forward_pre_hook(
            lambda _module, _args, kwargs: prefill_lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
        ),
    ]

    def run(reuse: bool) -> tuple[list, list]:
        model.reuse_chat_cache = reuse
        model.clear_chat_cache()
        answer, history = model.chat(qwen2_tokenizer, pixel_values, questions[0], greedy, return_history=True)
        answers, firsts = [answer], []
        for question in questions[1:]:
            prefill_lengths.clear()
            answers.append(model.chat(qwen2_tokenizer, pixel_values, question, greedy, history=history))
            firsts.append(prefill_lengths[0])
        assert [turn[1] for turn in history] == answers  # the one list holds every turn
        return answers, firsts

    try:
        reused, reused_prefills = run(reuse=True)
        assert len(vision_calls) == 1
        fresh, fresh_prefills = run(reuse=False)
    finally:
        for hook in hooks:
            hook.remove()
        model.reuse_chat_cache = True
        model.clear_chat_cache()
    assert reused == fresh
    assert all(length < 40 for length in reused_prefills)
    assert all(length > model.num_image_token for length in fresh_prefills)


def test_a_negative_logits_to_keep_with_labels_is_refused_by_name():
    from transformers_internvl.modeling.causal_lm_loss import check_logits_for_labels

    labels = torch.zeros(1, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"`logits_to_keep` must be >= 0 .* got -1"):
        check_logits_for_labels(labels, -1)
    check_logits_for_labels(labels, 0)
    check_logits_for_labels(labels, 5)
