"""`model.chat()` / `model.batch_chat()` with the original remote-code signatures.

Code written for the original `InternVLChatModel` keeps working unchanged. Both methods build the prompt with the
processor's conversation code (`transformers_internvl.processing.conversation`), tokenize it and call the standard
`generate`: there is no second generation path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig

from ..processing.conversation import (
    IMAGE_CONTEXT_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_START_TOKEN,
    build_batch_chat_prompts,
    build_chat_prompt,
    get_conv_template,
    postprocess_response,
    prepare_chat_question,
)


def _generation_kwargs(generation_config: dict | GenerationConfig | None) -> dict[str, Any]:
    """A fresh kwargs dict (the caller's dict is never modified, unlike the original)."""
    if generation_config is None:
        return {}
    if isinstance(generation_config, GenerationConfig):
        return {"generation_config": generation_config}
    if not isinstance(generation_config, dict):
        raise TypeError(
            f"`generation_config` must be a dict or a GenerationConfig, got {type(generation_config).__name__}."
        )
    return dict(generation_config)


class InternVLChatMixin:
    """Adds the original remote-code API (`chat`, `batch_chat`, `extract_feature`) to
    `InternVLForConditionalGeneration`."""

    @property
    def template(self) -> str:
        """Conversation template name from the config (`internvl2_5`, `internlm2-chat`, ...)."""
        if not self.config.template:
            raise ValueError("`config.template` is not set: chat() needs a conversation template name.")
        return self.config.template

    @property
    def system_message(self) -> str:
        """The system message chat() uses: the template's default (as the original model's attribute)."""
        return getattr(self.config, "system_message", None) or get_conv_template(self.template).system_message

    @property
    def num_image_token(self) -> int:
        return self.config.num_image_token

    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The original `extract_feature`: projected image features `(num_tiles, 256, hidden_size)` as a tensor
        (the transformers-style `get_image_features` returns them as `pooler_output` of a model output)."""
        return self.get_image_features(pixel_values, return_dict=True).pooler_output

    def _image_token_id_from(self, tokenizer, image_context_token: str) -> int:
        token_id = tokenizer.convert_tokens_to_ids(image_context_token)
        if token_id is None or token_id == getattr(tokenizer, "unk_token_id", None):
            raise ValueError(f"The tokenizer has no {image_context_token!r} token.")
        if self.config.image_token_id is None:
            self.config.image_token_id = token_id
        elif self.config.image_token_id != token_id:
            raise ValueError(
                f"The tokenizer's {image_context_token!r} id ({token_id}) differs from `config.image_token_id` "
                f"({self.config.image_token_id})."
            )
        return token_id

    def _generate_text(self, tokenizer, prompts: list[str], pixel_values, generation_config) -> list[str]:
        kwargs = _generation_kwargs(generation_config)
        eos_token = get_conv_template(self.template).eos_token
        kwargs["eos_token_id"] = tokenizer.convert_tokens_to_ids(eos_token)
        if kwargs.get("pad_token_id") is None and tokenizer.pad_token_id is not None:
            kwargs["pad_token_id"] = tokenizer.pad_token_id
        model_inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
        input_ids = model_inputs["input_ids"].to(self.device)
        attention_mask = model_inputs["attention_mask"].to(self.device)
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.device, self.dtype)
        output_ids = self.generate(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, **kwargs
        )
        new_tokens = output_ids[:, input_ids.shape[1] :]
        responses = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [postprocess_response(response, self.template) for response in responses]

    @torch.no_grad()
    def chat(
        self,
        tokenizer,
        pixel_values: torch.Tensor | None,
        question: str,
        generation_config: dict | GenerationConfig | None = None,
        history: list[tuple[str, str]] | None = None,
        return_history: bool = False,
        num_patches_list: Sequence[int] | None = None,
        IMG_START_TOKEN: str = IMAGE_START_TOKEN,  # noqa: N803  (original keyword names)
        IMG_END_TOKEN: str = IMAGE_END_TOKEN,  # noqa: N803
        IMG_CONTEXT_TOKEN: str = IMAGE_CONTEXT_TOKEN,  # noqa: N803
        verbose: bool = False,
        num_tiles_list: Sequence[int] | None = None,
    ) -> str | tuple[str, list[tuple[str, str]]]:
        """One chat turn, as the original `InternVLChatModel.chat`.

        Args:
            tokenizer: The model's tokenizer.
            pixel_values: `(num_tiles, 3, 448, 448)` tiles of all images of this turn, or `None`.
            question: User message; `<image>` placeholders mark where images go (`"<image>\\n"` is prepended when
                pixel values are given, there is no history and the question has none).
            generation_config: `generate` keyword arguments (dict, as in the original) or a `GenerationConfig`.
            history: Earlier `(question, answer)` pairs.
            return_history: Also return the history with this turn appended.
            num_patches_list: Tiles per image (alias `num_tiles_list`); defaults to one image with all tiles.

        Returns:
            The answer (decoded, cut at the template's end token, stripped), and the history if asked.
        """
        if num_tiles_list is not None:
            num_patches_list = num_tiles_list
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        if pixel_values is not None and pixel_values.shape[0] != sum(num_patches_list):
            raise ValueError(
                f"`num_patches_list` sums to {sum(num_patches_list)} tiles but `pixel_values` holds "
                f"{pixel_values.shape[0]}."
            )
        self._image_token_id_from(tokenizer, IMG_CONTEXT_TOKEN)
        prompt = build_chat_prompt(
            self.template,
            question,
            history=history,
            system_message=self.system_message,
            num_tiles_list=num_patches_list,
            pixel_values_passed=pixel_values is not None,
            num_image_token=self.num_image_token,
            image_start_token=IMG_START_TOKEN,
            image_end_token=IMG_END_TOKEN,
            image_context_token=IMG_CONTEXT_TOKEN,
        )
        response = self._generate_text(tokenizer, [prompt], pixel_values, generation_config)[0]
        if not return_history:
            return response
        stored_question = prepare_chat_question(question, history, pixel_values is not None)
        return response, [*(history or []), (stored_question, response)]

    @torch.no_grad()
    def batch_chat(
        self,
        tokenizer,
        pixel_values: torch.Tensor | None,
        questions: Sequence[str],
        generation_config: dict | GenerationConfig | None = None,
        num_patches_list: Sequence[int] | None = None,
        history=None,
        return_history: bool = False,
        IMG_START_TOKEN: str = IMAGE_START_TOKEN,  # noqa: N803
        IMG_END_TOKEN: str = IMAGE_END_TOKEN,  # noqa: N803
        IMG_CONTEXT_TOKEN: str = IMAGE_CONTEXT_TOKEN,  # noqa: N803
        verbose: bool = False,
        image_counts: Sequence[int] | None = None,
        num_tiles_list: Sequence[int] | None = None,
    ) -> list[str]:
        """One turn for several questions (one image each), left-padded, as the original `batch_chat`.

        `num_patches_list[i]` (alias `num_tiles_list`, legacy `image_counts`) is the number of tiles of question
        i's image; `pixel_values` holds all of them in order.
        """
        if history is not None or return_history:
            raise ValueError("batch_chat does not support `history` or `return_history` (as in the original).")
        if image_counts is not None:
            num_patches_list = image_counts
        if num_tiles_list is not None:
            num_patches_list = num_tiles_list
        if pixel_values is not None and num_patches_list is not None and pixel_values.shape[0] != sum(num_patches_list):
            raise ValueError(
                f"`num_patches_list` sums to {sum(num_patches_list)} tiles but `pixel_values` holds "
                f"{pixel_values.shape[0]}."
            )
        self._image_token_id_from(tokenizer, IMG_CONTEXT_TOKEN)
        prompts = build_batch_chat_prompts(
            self.template,
            list(questions),
            num_tiles_list=num_patches_list,
            system_message=self.system_message,
            pixel_values_passed=pixel_values is not None,
            num_image_token=self.num_image_token,
            image_start_token=IMG_START_TOKEN,
            image_end_token=IMG_END_TOKEN,
            image_context_token=IMG_CONTEXT_TOKEN,
        )
        return self._generate_text(tokenizer, prompts, pixel_values, generation_config)


__all__ = ["InternVLChatMixin"]
