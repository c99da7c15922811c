"""Transformers-native InternVL 2.5.

``import transformers_internvl`` registers every class of this package with transformers' ``Auto*`` factories, so
plain transformers code (``AutoModelForImageTextToText.from_pretrained``, ``AutoProcessor``, ``pipeline``) works on
original OpenGVLab checkpoints without ``trust_remote_code``.
"""

__version__ = "0.1.0"

# Ctrl-C while the console script imports torch/transformers: exit 130 without a traceback (cli.main undoes it).
from ._startup import quiet_interrupt_during_startup as _quiet_interrupt_during_startup  # noqa: E402

_quiet_interrupt_during_startup()

# ---- core model (configs, vision tower, InternVL model) ----
from .modeling.configuration_intern_vit import InternVLVisionConfig  # noqa: E402
from .modeling.configuration_internvl import InternVLConfig  # noqa: E402
from .modeling.modeling_intern_vit import InternVLVisionModel  # noqa: E402
from .modeling.modeling_internvl import (  # noqa: E402
    InternVLForConditionalGeneration,
    InternVLModel,
    InternVLPreTrainedModel,
)

__all__ = [
    "__version__",
    "InternVLConfig",
    "InternVLVisionConfig",
    "InternVLVisionModel",
    "InternVLModel",
    "InternVLPreTrainedModel",
    "InternVLForConditionalGeneration",
]

# ---- InternLM2 language model ----
from .modeling.configuration_internlm2 import InternLM2Config  # noqa: E402
from .modeling.modeling_internlm2 import (  # noqa: E402
    InternLM2ForCausalLM,
    InternLM2Model,
    InternLM2PreTrainedModel,
)

__all__ += ["InternLM2Config", "InternLM2Model", "InternLM2ForCausalLM", "InternLM2PreTrainedModel"]

# ---- InternLM2 tokenizer ----
from .processing.tokenization_internlm2 import InternLM2Tokenizer  # noqa: E402
from .processing.tokenization_internlm2_fast import InternLM2TokenizerFast  # noqa: E402

__all__ += ["InternLM2Tokenizer", "InternLM2TokenizerFast"]

# ---- image / video processors, tiling helpers ----
from .processing.image_processing_internvl import InternVLImageProcessor  # noqa: E402
from .processing.tiling import TilePlan, draw_tile_plan, plan_tiles  # noqa: E402
from .processing.video_processing_internvl import InternVLVideoProcessor, sample_frame_indices  # noqa: E402

__all__ += [
    "InternVLImageProcessor",
    "InternVLVideoProcessor",
    "TilePlan",
    "draw_tile_plan",
    "plan_tiles",
    "sample_frame_indices",
]

# ---- conversation templates and InternVLProcessor ----
from .processing.conversation import (  # noqa: E402
    build_batch_chat_prompts,
    build_chat_prompt,
    get_conv_template,
)
from .processing.processing_internvl import InternVLChatProcessor, InternVLProcessor  # noqa: E402

__all__ += [
    "InternVLProcessor",
    "InternVLChatProcessor",
    "get_conv_template",
    "build_chat_prompt",
    "build_batch_chat_prompts",
]

# ---- test-time scaling (CoT prompts, voting, repetition stopping) ----
from .test_time_scaling import (  # noqa: E402
    INTERNVL_COT_TEMPLATE,
    MULTIPLE_CHOICE_COT_PROMPT,
    OPEN_QUESTION_COT_PROMPT,
    RepetitionStoppingCriteria,
    VoteResult,
    build_cot_prompt,
    extract_choice_letter,
    generate_with_votes,
    is_repetitive,
    majority_vote,
    parse_boxed_answer,
    repetition_ratio,
)

__all__ += [
    "INTERNVL_COT_TEMPLATE",
    "MULTIPLE_CHOICE_COT_PROMPT",
    "OPEN_QUESTION_COT_PROMPT",
    "RepetitionStoppingCriteria",
    "VoteResult",
    "build_cot_prompt",
    "extract_choice_letter",
    "generate_with_votes",
    "is_repetitive",
    "majority_vote",
    "parse_boxed_answer",
    "repetition_ratio",
]

from .registration import register_all  # noqa: E402

register_all()
