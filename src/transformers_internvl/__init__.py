"""Transformers-native InternVL 2.5.

``import transformers_internvl`` registers every class of this package with transformers' ``Auto*`` factories, so
plain transformers code (``AutoModelForImageTextToText.from_pretrained``, ``AutoProcessor``, ``pipeline``) works on
original OpenGVLab checkpoints without ``trust_remote_code``.

The package is lazy: its public names are imported on first access (``transformers_internvl.InternVLChatBaseModel``
imports the modeling code then). Registration (`registration.register_all`) imports the config, tokenizer, image- and
video-processor classes, whose modules hold no model code, and registers the model and processor classes lazily, so
importing the package imports no ``modeling_*`` module. The console script
(`transformers-internvl`) does not register at import; its commands that load a model call `register_all` themselves,
so `transformers-internvl tiles` imports neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Ctrl-C while the console script imports torch/transformers: exit 130 without a traceback (cli.main undoes it).
from ._startup import _is_console_script  # noqa: E402
from ._startup import quiet_interrupt_during_startup as _quiet_interrupt_during_startup  # noqa: E402

_quiet_interrupt_during_startup()

# Public name -> module (relative to this package) that defines it.
_LAZY_ATTRIBUTES: dict[str, str] = {
    # core model (configs, vision tower, InternVL model)
    "InternVLConfig": ".modeling.configuration_internvl",
    "InternVLVisionConfig": ".modeling.configuration_intern_vit",
    "InternVLVisionModel": ".modeling.modeling_intern_vit",
    "InternVLModel": ".modeling.modeling_internvl",
    "InternVLPreTrainedModel": ".modeling.modeling_internvl",
    "InternVLForConditionalGeneration": ".modeling.modeling_internvl",
    # the same classes under their InternVLChat* / InternVision* names (see README, "Class names")
    "InternVLChatConfig": ".modeling.configuration_internvl",
    "InternVisionConfig": ".modeling.configuration_intern_vit",
    "InternVisionModel": ".modeling.modeling_intern_vit",
    "InternVLChatPreTrainedModel": ".modeling.modeling_internvl",
    "InternVLChatBaseModel": ".modeling.modeling_internvl",
    "InternVLChatForConditionalGeneration": ".modeling.modeling_internvl",
    "InternVLChatModel": ".modeling.modeling_internvl",
    # InternLM2 language model
    "InternLM2Config": ".modeling.configuration_internlm2",
    "InternLM2Model": ".modeling.modeling_internlm2",
    "InternLM2ForCausalLM": ".modeling.modeling_internlm2",
    "InternLM2PreTrainedModel": ".modeling.modeling_internlm2",
    # InternLM2 tokenizer
    "InternLM2Tokenizer": ".processing.tokenization_internlm2",
    "InternLM2TokenizerFast": ".processing.tokenization_internlm2_fast",
    # image / video processors, tiling helpers
    "InternVLChatImageProcessor": ".processing.image_processing_internvl",
    "InternVLChatVideoProcessor": ".processing.video_processing_internvl",
    "InternVLImageProcessor": ".processing.image_processing_internvl",  # alias of InternVLChatImageProcessor
    "InternVLVideoProcessor": ".processing.video_processing_internvl",  # alias of InternVLChatVideoProcessor
    "TilePlan": ".processing.tiling",
    "draw_tile_plan": ".cli.tiles",
    "plan_tiles": ".processing.tiling",
    "sample_frame_indices": ".processing.video_processing_internvl",
    # conversation templates and InternVLChatProcessor
    "InternVLChatProcessor": ".processing.processing_internvl",
    "InternVLProcessor": ".processing.processing_internvl",  # alias of InternVLChatProcessor
    "get_conv_template": ".modeling.conversation",
    "build_chat_prompt": ".modeling.chat_prompts",
    "build_batch_chat_prompts": ".modeling.chat_prompts",
    # reasoning at inference time (CoT prompts, answer parsing, voting, repetition stopping)
    "INTERNVL_COT_TEMPLATE": ".reasoning.prompts",
    "MULTIPLE_CHOICE_COT_PROMPT": ".reasoning.prompts",
    "OPEN_QUESTION_COT_PROMPT": ".reasoning.prompts",
    "RepetitionStoppingCriteria": ".reasoning.stopping",
    "VoteResult": ".reasoning.voting",
    "build_cot_prompt": ".reasoning.prompts",
    "extract_choice_letter": ".reasoning.answers",
    "generate_with_votes": ".reasoning.voting",
    "is_repetitive": ".reasoning.repetition",
    "majority_vote": ".reasoning.voting",
    "parse_boxed_answer": ".reasoning.answers",
    "repetition_ratio": ".reasoning.repetition",
}

__all__ = ["__version__", *_LAZY_ATTRIBUTES]


def __getattr__(name: str) -> Any:
    module = _LAZY_ATTRIBUTES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES))


if not _is_console_script():
    from .registration import register_all

    register_all()
