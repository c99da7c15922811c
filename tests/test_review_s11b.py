"""Session 11 review: siblings of this session's fixes.

`InternLM2ForCausalLM` / `InternLM2Model` (this package's class, which replaces the checkpoints' remote code) took an
`attention_mask` that does not fit the prompt without a word: a shorter mask gave other logits (max difference ~1.2 on
the tiny fixture), a longer left-padded one too. The original InternLM2 (internvl_chat/internvl/model/internlm2/
modeling_internlm2.py, `_prepare_decoder_attention_mask`, transformers 4.47.1 in /tmp/origvenv) raises for every mask
below ("The size of tensor a (2) must match the size of tensor b (3)", "Attention mask should be of size (1, 1, 3,
3)"); the chat model refuses them since this session (`input_checks.check_attention_mask`), and now so does InternLM2.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import transformers_internvl  # noqa: F401  (registers the InternLM2 classes)

INTERNLM2 = Path(__file__).parent / "fixtures" / "dropin_s11" / "internlm2-llm"
IDS = torch.tensor([[5, 6, 7]])

BAD_MASKS = [
    pytest.param(torch.ones(1, 2, dtype=torch.long), id="shorter"),
    pytest.param(torch.ones(1, 5, dtype=torch.long), id="longer"),
    pytest.param(torch.tensor([[0, 0, 1, 1, 1]]), id="longer-left-padded"),
    pytest.param(torch.ones(2, 3, dtype=torch.long), id="other-batch"),
]


@pytest.fixture(scope="module")
def internlm2():
    return AutoModelForCausalLM.from_pretrained(INTERNLM2, dtype=torch.float32).eval()


@pytest.mark.parametrize("mask", BAD_MASKS)
def test_internlm2_forward_refuses_a_mask_that_does_not_fit_the_prompt(internlm2, mask):
    with pytest.raises(ValueError, match=r"`attention_mask` must have the shape \(batch, seq\) of the prompt, \(1, 3\)"):
        internlm2(input_ids=IDS, attention_mask=mask)
    embeds = internlm2.get_input_embeddings()(IDS)
    with pytest.raises(ValueError, match=r"`attention_mask` must have the shape"):
        internlm2.model(inputs_embeds=embeds, attention_mask=mask)


@pytest.mark.parametrize("mask", BAD_MASKS)
def test_internlm2_generate_refuses_a_mask_that_does_not_fit_the_prompt(internlm2, mask):
    with pytest.raises(ValueError, match=r"`attention_mask` must have the shape"):
        internlm2.generate(input_ids=IDS, attention_mask=mask, max_new_tokens=2, do_sample=False)


def test_internlm2_fitting_masks_still_work_and_decoding_steps_are_not_checked(internlm2):
    # A mask of ones is the same as none (first principles); a left-padded batch row equals the row alone.
    unmasked = internlm2(input_ids=IDS).logits
    for dtype in (torch.long, torch.bool, torch.float32):
        masked = internlm2(input_ids=IDS, attention_mask=torch.ones(1, 3, dtype=dtype)).logits
        torch.testing.assert_close(masked, unmasked, rtol=0, atol=0)
    alone = internlm2.generate(input_ids=IDS, max_new_tokens=3, do_sample=False)[:, 3:]
    ids = torch.tensor([[2, 2, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    batch = internlm2.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert torch.equal(batch[:1, 5:], alone)
    # a decoding step passes the mask of the prompt and the tokens so far with one new token: not refused
    out = internlm2(input_ids=IDS, attention_mask=torch.ones(1, 3, dtype=torch.long), use_cache=True)
    step = internlm2(
        input_ids=torch.tensor([[8]]), attention_mask=torch.ones(1, 4, dtype=torch.long), past_key_values=out.past_key_values
    )
    assert step.logits.shape == (1, 1, internlm2.config.vocab_size)
