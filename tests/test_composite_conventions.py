"""What transformers' generic model / config tests expect of a composite vision-language model, checked without
transformers' test files: `inputs_embeds` + `pixel_values` without `input_ids`, and the config's sub-configs under
the names `sub_configs` declares while `config.json` keeps the original layout."""

import json

import pytest
import torch
from helpers import tiny_text_config, tiny_vision_config
from transformers import AutoConfig, Qwen2Config

import transformers_internvl  # noqa: F401  (registers the classes)
from transformers_internvl import InternVLConfig, InternVLForConditionalGeneration, InternVLModel
from transformers_internvl.modeling.configuration_intern_vit import InternVLVisionConfig

IMAGE_TOKEN_ID = 1


def tiny_config(llm: str = "qwen2") -> InternVLConfig:
    """56 px tiles of 14 px patches: 4x4 patches, pixel-unshuffled 0.5 -> 4 LLM tokens per tile."""
    return InternVLConfig(
        vision_config=tiny_vision_config(image_size=56),
        llm_config=tiny_text_config(llm, rope_theta=1e6),
        image_token_id=IMAGE_TOKEN_ID,
        ps_version="v2",
        template="internvl2_5",
    )


def tiny_inputs(config: InternVLConfig, tiles_per_sample: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    num_image_tokens = config.num_image_token * tiles_per_sample
    input_ids = torch.randint(2, config.text_config.vocab_size, (2, 6 + num_image_tokens), generator=generator)
    input_ids[:, 2 : 2 + num_image_tokens] = IMAGE_TOKEN_ID
    size = config.vision_image_size
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(2 * tiles_per_sample, 3, size, size, generator=generator),
    }


@pytest.mark.parametrize("llm", ["qwen2", "internlm2"])
@pytest.mark.parametrize("model_class", [InternVLForConditionalGeneration, InternVLModel])
def test_inputs_embeds_with_pixel_values_equal_input_ids(model_class, llm):
    """Image positions are found by the `<IMG_CONTEXT>` embedding when only `inputs_embeds` is given."""
    torch.manual_seed(0)
    model = model_class(tiny_config(llm)).eval()
    inputs = tiny_inputs(model.config, tiles_per_sample=2)
    input_ids = inputs.pop("input_ids")
    with torch.no_grad():
        from_ids = model(input_ids=input_ids, **inputs)[0]
        from_embeds = model(inputs_embeds=model.get_input_embeddings()(input_ids), **inputs)[0]
        text_only = model(
            inputs_embeds=model.get_input_embeddings()(input_ids), attention_mask=inputs["attention_mask"]
        )
    torch.testing.assert_close(from_embeds, from_ids, rtol=0, atol=0)
    # The image features were placed: without them the outputs differ.
    assert not torch.allclose(text_only[0], from_ids)


def test_inputs_embeds_with_too_few_image_embeddings_raises():
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(tiny_config()).eval()
    inputs = tiny_inputs(model.config)
    input_ids = inputs.pop("input_ids")
    input_ids[0, 2] = 5  # one `<IMG_CONTEXT>` fewer than 2 tiles x 4 features
    with pytest.raises(ValueError, match=r"input has 7 image tokens .* 2 tiles x 4 = 8 features"):
        model(inputs_embeds=model.get_input_embeddings()(input_ids), **inputs)


def test_to_dict_names_the_sub_configs_as_sub_configs_declares():
    config = tiny_config()
    assert set(InternVLConfig.sub_configs) == {"vision_config", "text_config"}
    output = config.to_dict()
    assert "llm_config" not in output
    expected_text_config = config.text_config.to_dict()
    expected_text_config.pop("transformers_version")
    assert output["text_config"] == expected_text_config
    assert output["text_config"]["model_type"] == "qwen2"
    assert output["vision_config"]["model_type"] == "intern_vit_6b"
    assert InternVLConfig(**output).to_dict() == output


def test_config_json_keeps_the_original_layout(tmp_path):
    config = tiny_config()
    config.save_pretrained(tmp_path)
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert "text_config" not in on_disk
    assert on_disk["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    assert on_disk["llm_config"]["rope_theta"] == 1e6  # the key the original remote code reads
    assert on_disk["architectures"] == ["InternVLChatModel"]
    assert on_disk["hidden_size"] == 32
    assert json.loads(config.to_json_string()) == on_disk

    reloaded = InternVLConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    # Each sub-config loads alone from the composite folder, as transformers' ConfigTester checks.
    text_config = Qwen2Config.from_pretrained(tmp_path)
    assert text_config.to_dict() == config.text_config.to_dict()
    vision_config = InternVLVisionConfig.from_pretrained(tmp_path)
    assert vision_config.to_dict() == config.vision_config.to_dict()


def test_a_fresh_config_names_the_original_architecture():
    assert InternVLConfig().architectures == ["InternVLChatModel"]
    assert AutoConfig.for_model("internvl_chat").architectures == ["InternVLChatModel"]
