"""Session-9 drop-in re-check against the ORIGINAL InternVL code, on field sets the earlier held-out sets did not
combine (`tests/fixtures/dropin_s9/`, made by its `make_dropin_s9.py`; see its README):

* InternVL3 (Qwen2.5): `rope_scaling` with both `type` and `rope_type` `dynamic` (NTK active here), a `sliding_window`
  value next to `use_sliding_window: false`, `image_fold: null`;
* InternVL-Chat-V1-5 / InternVL2-26B: InternLM2 without biases behind InternViT-6B, `ps_version` v1;
* Mini-InternVL-Chat-4B-V1-5: Phi-3-128k (`su`, long factors active) behind InternViT-300M, `ps_version` v1;

and the original's `pixel_shuffle` and `forward(output_hidden_states=True)`. Nothing expected here was computed by
this package.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel

import transformers_internvl  # noqa: F401

FIXTURES = Path(__file__).parent / "fixtures"
HERE = FIXTURES / "dropin_s9"
sys.path.insert(0, str(FIXTURES / "heldout_s6"))
sys.path.insert(0, str(HERE))
from dropin_s9_cases import CASES  # noqa: E402
from heldout_inputs import make_image, questions_for  # noqa: E402
from parity_helpers import load_heldout_case, spy_prompts  # noqa: E402

NAMES = [case["name"] for case in CASES]


@pytest.fixture(scope="module", params=NAMES)
def case(request):
    torch.set_num_threads(1)
    return load_heldout_case(HERE / request.param, make_image)


def _model(case, **kwargs):
    # The model cards' call (`AutoModel`, `torch_dtype`), without trust_remote_code.
    return AutoModel.from_pretrained(case["folder"], torch_dtype=torch.float32, **kwargs).eval()


def test_tiles_match_original(case):
    meta, pixel_values = case["meta"], torch.cat(case["pixel_list"])
    assert case["num_patches"] == meta["num_patches_list"]
    assert torch.equal(pixel_values[:, :, ::97, ::89], case["io"]["pixel_values_sample"])


@pytest.mark.parametrize("attn", ["eager", None])
def test_forward_logits_match_original(case, attn):
    io, pixel_values = case["io"], torch.cat(case["pixel_list"])
    model = _model(case, **({"attn_implementation": attn} if attn else {}))
    with torch.no_grad():
        logits = model(pixel_values=pixel_values, input_ids=io["forward_input_ids"]).logits[0].float()
        vit_embeds = model.extract_feature(pixel_values[:1])[0, :8]
    assert (vit_embeds - io["vit_embeds_tile0_row0"]).abs().max().item() <= 1e-5
    assert (logits[io["forward_positions"]] - io["forward_logits_at"]).abs().max().item() <= 1e-5
    assert (torch.logsumexp(logits, -1) - io["forward_logsumexp"]).abs().max().item() <= 1e-5
    assert torch.equal(logits.argmax(-1), io["forward_argmax"].long())


def test_two_turn_chat_matches_original(case, monkeypatch):
    meta, tokenizer = case["meta"], case["tokenizer"]
    questions = questions_for(meta["case"])
    model = _model(case, use_flash_attn=True, low_cpu_mem_usage=True)
    pixel_values = torch.cat(case["pixel_list"])
    config = dict(max_new_tokens=meta["case"]["max_new_tokens"], do_sample=False)
    prompts = spy_prompts(model, monkeypatch)
    answer1, history = model.chat(
        tokenizer,
        pixel_values,
        questions["turn1"],
        dict(config),
        num_patches_list=case["num_patches"],
        return_history=True,
    )
    answer2, history = model.chat(
        tokenizer,
        pixel_values,
        questions["turn2"],
        dict(config),
        num_patches_list=case["num_patches"],
        history=history,
        return_history=True,
    )
    assert (answer1, answer2) == (meta["chat"]["answer1"], meta["chat"]["answer2"])
    assert prompts == [[meta["chat"]["prompt1"]], [meta["chat"]["prompt2"]]]


def test_batch_chat_matches_original(case, monkeypatch):
    meta, tokenizer = case["meta"], case["tokenizer"]
    chosen = meta["case"]["batch_images"]
    model = _model(case)
    prompts = spy_prompts(model, monkeypatch)
    answers = model.batch_chat(
        tokenizer,
        torch.cat([case["pixel_list"][i] for i in chosen]),
        questions_for(meta["case"])["batch"],
        dict(max_new_tokens=meta["case"]["max_new_tokens"], do_sample=False),
        num_patches_list=[case["num_patches"][i] for i in chosen],
    )
    assert answers == meta["batch_chat"]["answers"]
    assert prompts == [meta["batch_chat"]["prompts"]]


def test_generate_left_padded_matches_original(case):
    io, meta = case["io"], case["meta"]
    chosen = meta["case"]["batch_images"]
    input_ids, mask = io["generate_input_ids"], io["generate_attention_mask"].long()
    with torch.no_grad():
        output = _model(case).generate(
            pixel_values=torch.cat([case["pixel_list"][i] for i in chosen]),
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=meta["case"]["max_new_tokens"],
            do_sample=False,
        )
    assert torch.equal(output[:, input_ids.shape[1] :], io["generate_ids"])


def test_save_reload_is_bit_exact_and_keeps_the_original_fields(case, tmp_path):
    model = _model(case)
    model.save_pretrained(tmp_path)
    source = json.loads((case["folder"] / "config.json").read_text())
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ("ps_version", "select_layer", "force_image_size", "downsample_ratio", "template"):
        assert saved[key] == source[key], key
    assert saved["llm_config"]["architectures"] == source["llm_config"]["architectures"]
    assert saved["llm_config"].get("rope_scaling") == source["llm_config"].get("rope_scaling")
    assert set(load_file(tmp_path / "model.safetensors")) == set(load_file(case["folder"] / "model.safetensors"))
    io, pixel_values = case["io"], torch.cat(case["pixel_list"])
    reloaded = AutoModel.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(
            reloaded(pixel_values=pixel_values, input_ids=io["forward_input_ids"]).logits,
            model(pixel_values=pixel_values, input_ids=io["forward_input_ids"]).logits,
        )


@pytest.fixture(scope="module")
def api():
    return load_file(HERE / "api.safetensors")


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("scale", [0.5, 0.25])
def test_pixel_shuffle_method_matches_original(api, version, scale):
    """The original's `model.pixel_shuffle(x, scale_factor)` on `(N, W, H, C)` features (it was missing)."""
    model = _model({"folder": HERE / NAMES[0]})
    model.config.ps_version = version
    result = model.pixel_shuffle(api["shuffle_input"], scale_factor=scale)
    assert torch.equal(result, api[f"shuffle_{version}_{scale}"])
    assert torch.equal(model.pixel_shuffle(api["shuffle_input_wide"]), api[f"shuffle_{version}_wide_0.5"])


def test_forward_hidden_states_match_original(api):
    """`forward(output_hidden_states=True)`: the LLM's hidden states (embeddings + every layer, the last one after
    the final norm), as the original returns its language model's."""
    folder = HERE / NAMES[0]
    meta = json.loads((folder / "outputs.json").read_text(encoding="utf-8"))
    processor = AutoImageProcessor.from_pretrained(folder)
    pixel_values = torch.cat(
        [
            processor(images=make_image(w, h, seed), max_dynamic_patch=max_num, return_tensors="pt")["pixel_values"]
            for w, h, seed, max_num in meta["case"]["images"]
        ]
    )
    model = _model({"folder": folder}, attn_implementation="eager")
    with torch.no_grad():
        output = model(pixel_values=pixel_values, input_ids=api["hidden_input_ids"], output_hidden_states=True)
    assert len(output.hidden_states) == int(api["hidden_count"])
    hidden = torch.stack([h[0, -8:] for h in output.hidden_states])
    assert (hidden - api["hidden_last8"]).abs().max().item() <= 1e-5
