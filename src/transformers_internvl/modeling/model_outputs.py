"""Outputs of the InternVL chat models: transformers' multimodal outputs (`image_outputs.pooler_output` holds the
projected image features `(num_tiles, 256, hidden_size)`), plus the deprecated `image_hidden_states` accessor that
transformers' own InternVL port keeps on its outputs, so code written for that port (or for transformers 4) reads
the same tensor here."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import MultimodalBaseModelOutputWithPast, MultimodalCausalLMOutputWithPast
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["InternVLCausalLMOutputWithPast", "InternVLModelOutputWithPast"]


class _DeprecatedImageHiddenStates:
    """`image_hidden_states`, as transformers' port keeps it on its outputs (deprecated there)."""

    @property
    def image_hidden_states(self) -> torch.Tensor | None:
        """Deprecated: `image_outputs.pooler_output` `(num_tiles, 256, hidden_size)`, None without images."""
        logger.warning_once(
            "`image_hidden_states` is deprecated (transformers' InternVL port: it will hold the per-layer hidden "
            "states from transformers 5.30); use `out.image_outputs.pooler_output` for the projected image features."
        )
        return None if self.image_outputs is None else self.image_outputs.pooler_output


@dataclass
class InternVLModelOutputWithPast(_DeprecatedImageHiddenStates, MultimodalBaseModelOutputWithPast):
    __doc__ = MultimodalBaseModelOutputWithPast.__doc__  # the fields' docs, which `auto_docstring` reads


@dataclass
class InternVLCausalLMOutputWithPast(_DeprecatedImageHiddenStates, MultimodalCausalLMOutputWithPast):
    __doc__ = MultimodalCausalLMOutputWithPast.__doc__  # the fields' docs, which `auto_docstring` reads
