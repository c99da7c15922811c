"""Registration of this package's classes with transformers' ``Auto*`` factories and checkpoint-conversion tables.

Called once by ``import transformers_internvl``; calling it again is a no-op. Config, tokenizer, image- and
video-processor classes are registered as classes (their modules hold no model code); model and processor classes as
`LazyValue`s (see `_lazy_registry`), imported the first time a factory reads them, so registering imports no
``modeling_*`` module.
"""

from __future__ import annotations

_REGISTERED = False


def _register_core() -> None:
    """Configs and models of the core InternVL model."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
    )

    from ._lazy_registry import lazy_attribute, make_lazy
    from .modeling.checkpoint_mapping import register_checkpoint_mappings
    from .modeling.configuration_intern_vit import InternVisionConfig
    from .modeling.configuration_internvl import InternVLChatConfig

    AutoConfig.register(InternVLChatConfig.model_type, InternVLChatConfig, exist_ok=True)
    AutoConfig.register(InternVisionConfig.model_type, InternVisionConfig, exist_ok=True)
    chat_model = lazy_attribute(".modeling.modeling_internvl", "InternVLChatForConditionalGeneration")
    vision_model = lazy_attribute(".modeling.modeling_intern_vit", "InternVisionModel")
    # The original's `auto_map` makes `AutoModel` the chat model (model cards call `AutoModel.from_pretrained(...).chat()`);
    # `InternVLChatBaseModel` stays the base model (`base_model_prefix = "model"`) and loads
    # the same checkpoints.
    # Written to the mappings directly: `AutoModel.register` reads `model_class.config_class`, which would import it.
    for factory, config_class, model_class in (
        (AutoModel, InternVLChatConfig, chat_model),
        (AutoModel, InternVisionConfig, vision_model),
        (AutoModelForImageTextToText, InternVLChatConfig, chat_model),
        (AutoModelForCausalLM, InternVLChatConfig, chat_model),
    ):
        make_lazy(factory._model_mapping)
        factory._model_mapping.register(config_class, model_class, exist_ok=True)
    register_checkpoint_mappings()


def _register_internlm2() -> None:
    """InternLM2 config and language model."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from ._lazy_registry import lazy_attribute, make_lazy
    from .modeling.configuration_internlm2 import InternLM2Config

    AutoConfig.register(InternLM2Config.model_type, InternLM2Config, exist_ok=True)
    for factory, name in ((AutoModel, "InternLM2Model"), (AutoModelForCausalLM, "InternLM2ForCausalLM")):
        make_lazy(factory._model_mapping)
        factory._model_mapping.register(
            InternLM2Config, lazy_attribute(".modeling.modeling_internlm2", name), exist_ok=True
        )


def _register_tokenizers() -> None:
    """InternLM2 tokenizer classes."""
    # `AutoTokenizer.from_pretrained` resolves `tokenizer_class` ("InternLM2Tokenizer" / "InternLM2TokenizerFast" in
    # original tokenizer_config.json files) by name through these two tables, before any `auto_map` remote code: with
    # a local class found it neither prompts nor imports remote code. The fast alias makes both names load
    # InternLM2TokenizerFast (AutoTokenizer ignores `use_fast` in transformers 5); InternLM2Tokenizer (sentencepiece)
    # stays available directly. Not registered for InternVLChatConfig: InternVL checkpoints with a Qwen2 or Llama
    # language model name their own tokenizer class.
    from transformers.models.auto.tokenization_auto import (
        REGISTERED_FAST_ALIASES,
        REGISTERED_TOKENIZER_CLASSES,
        TOKENIZER_MAPPING,
    )

    from ._lazy_registry import make_lazy
    from .modeling.configuration_internlm2 import InternLM2Config
    from .processing.tokenization_internlm2 import InternLM2Tokenizer
    from .processing.tokenization_internlm2_fast import InternLM2TokenizerFast

    REGISTERED_TOKENIZER_CLASSES[InternLM2Tokenizer.__name__] = InternLM2Tokenizer
    REGISTERED_TOKENIZER_CLASSES[InternLM2TokenizerFast.__name__] = InternLM2TokenizerFast
    REGISTERED_FAST_ALIASES[InternLM2Tokenizer.__name__] = InternLM2TokenizerFast
    # An InternLM2 language-model folder whose tokenizer_config.json names no class still gets the right tokenizer
    # (what `AutoTokenizer.register(InternLM2Config, slow_tokenizer_class=..., fast_tokenizer_class=...)` writes).
    make_lazy(TOKENIZER_MAPPING)
    TOKENIZER_MAPPING.register(InternLM2Config, InternLM2TokenizerFast, exist_ok=True)


def _register_image_video_processors() -> None:
    """InternVLChatImageProcessor and InternVLChatVideoProcessor, through transformers' ordinary `register`."""
    # `AutoImageProcessor.register` checks that the class is an image processor, so both processor classes are
    # imported here: their modules are light (torch, PIL and transformers are already loaded by then; no model code).
    # Since the classes are named InternVLChat*, the factories' look-up no longer meets transformers' own InternVL /
    # GotOcr2 processors. `transformers.AutoVideoProcessor` is only a placeholder without torchvision; the real class is
    # `transformers.models.auto.video_processing_auto.AutoVideoProcessor`.
    from transformers.models.auto.image_processing_auto import AutoImageProcessor
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    from .modeling.configuration_internvl import InternVLChatConfig
    from .processing.image_processing_internvl import InternVLChatImageProcessor
    from .processing.video_processing_internvl import InternVLChatVideoProcessor

    # One class serves both backend names (it does not use torchvision), so the default backend resolves to it, and a
    # saved `image_processor_type` / `video_processor_type` resolves by class name.
    backends = ("torchvision", "pil")
    AutoImageProcessor.register(
        InternVLChatConfig, image_processor_classes=dict.fromkeys(backends, InternVLChatImageProcessor), exist_ok=True
    )
    AutoVideoProcessor.register(
        InternVLChatConfig, video_processor_classes=dict.fromkeys(backends, InternVLChatVideoProcessor), exist_ok=True
    )
    # Original OpenGVLab folders ship a CLIP preprocessor_config.json the original never used for tiling; the
    # factories resolve that class by name before any mapping, so their `from_pretrained` is wrapped instead.
    from .processing.auto_loading import wrap_auto_processor_loaders

    wrap_auto_processor_loaders()


def _register_processor() -> None:
    """InternVLChatProcessor (tokenizer + image + video processors)."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    from ._lazy_registry import lazy_attribute, make_lazy
    from .modeling.configuration_internvl import InternVLChatConfig

    # Registered (and saved) under the class name "InternVLChatProcessor": transformers maps the name
    # "InternVLProcessor" to its own processor when it reads `processor_class` from a saved config.
    make_lazy(PROCESSOR_MAPPING)
    PROCESSOR_MAPPING.register(
        InternVLChatConfig, lazy_attribute(".processing.processing_internvl", "InternVLChatProcessor"), exist_ok=True
    )


def register_all() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    _register_core()
    _register_internlm2()
    _register_tokenizers()
    _register_image_video_processors()
    _register_processor()
    _REGISTERED = True
