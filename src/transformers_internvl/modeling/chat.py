"""`model.chat()` / `model.batch_chat()` with the original remote-code signatures.

Code written for the original `InternVLChatModel` keeps working unchanged. Both methods render the prompt with the
Jinja chat template the processor uses too (`chat_prompts.py`), tokenize it and call the standard `generate`: there
is no second generation path.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig
from transformers.utils import logging

from ..chat_templates import (
    IMAGE_CONTEXT_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_START_TOKEN,
    template_data,
    template_eos_token,
)
from ..llama_slow_tokenization import decode_as_original, encode_as_original
from .chat_cache import clear_chat_cache, effective_generation_config, generate_turn
from .chat_processors import generated_only_penalties
from .chat_prompts import (
    build_batch_chat_prompts,
    build_chat_prompt,
    check_unicode,
    postprocess_response,
    prepare_chat_question,
    whole_tile_count_arguments,
)
from .checkpoint_loading import check_generation_token_ids
from .conversation import Conversation, get_conv_template
from .generation_file_checks import check_generation_fields
from .input_checks import check_chat_inputs, merge_tile_count_aliases, python_scalar, question_list
from .language_model_view import language_model_of
from .original_attributes import OriginalAttributesMixin

logger = logging.get_logger(__name__)


def _report_tiles(verbose: bool, pixel_values: torch.Tensor | None) -> None:
    """`verbose=True`: what the original prints, through transformers' logger (warning level, shown by default)."""
    if verbose and pixel_values is not None:
        logger.warning(f"dynamic ViT batch size: {pixel_values.shape[0]}")


def _generation_kwargs(generation_config: dict | GenerationConfig | None) -> dict[str, Any]:
    """A fresh kwargs dict (the caller's dict is never modified, unlike the original). Sampling / length fields of
    the wrong type or range (`max_new_tokens="3"`, `top_p=5`) raise `TypeError` / `ValueError` naming the field
    (`check_generation_fields`) instead of failing inside `generate` ("'<=' not supported between 'str' and 'int'"),
    and so do `pad_token_id` / `bos_token_id` that are not integer ids (`check_generation_token_ids`; the
    `eos_token_id` given is replaced by the template's stop token, as in the original).

    `return_dict_in_generate` is turned off: chat returns text, and the original fails on the output object."""
    if generation_config is None:
        return {"return_dict_in_generate": False}
    if isinstance(generation_config, GenerationConfig):
        fields = generation_config
        kwargs = {"generation_config": generation_config}
    elif isinstance(generation_config, dict):
        fields = SimpleNamespace(**{str(key): value for key, value in generation_config.items()})
        kwargs = dict(generation_config)
    else:
        raise TypeError(
            f"`generation_config` must be a dict or a GenerationConfig, got {type(generation_config).__name__}."
        )
    check_generation_fields(fields)
    ids = {name: getattr(fields, name, None) for name in ("pad_token_id", "bos_token_id")}
    # A 0-d tensor id is valid (`generate` moves it to the device as it is): checked by its value.
    ids = {name: python_scalar(value) for name, value in ids.items()}
    check_generation_token_ids(SimpleNamespace(**ids))
    return {**kwargs, "return_dict_in_generate": False}


def _check_image_token_strings(**tokens: Any) -> None:
    """`IMG_START_TOKEN` / `IMG_END_TOKEN` must be str (empty allowed, as in the original), `IMG_CONTEXT_TOKEN` a
    non-empty str: None or an id failed inside the prompt building ("unsupported operand type(s) for +")."""
    for name, value in tokens.items():
        if not isinstance(value, str):
            raise TypeError(f"`{name}` must be a str (a token of the tokenizer), got {type(value).__name__} {value!r}.")
        if name == "IMG_CONTEXT_TOKEN" and not value:
            raise ValueError("`IMG_CONTEXT_TOKEN` must be a non-empty str (the image token of the tokenizer), got ''.")


def _tile_counts(**given: Any) -> list[int] | None:
    """The tiles per image given under one of the names in `given` (`merge_tile_count_aliases`), each checked as
    whole numbers first (`whole_tile_counts`, naming the argument)."""
    return merge_tile_count_aliases(**whole_tile_count_arguments(**given))


def _ends_stream_on_error(method):
    """`chat` / `batch_chat` that fail end the `streamer` of their generation dict (the InternVL README streams `chat`
    from a thread through a `TextIteratorStreamer`: a failed call never ended the stream, so its reader waited for
    the streamer's timeout, or forever without one). The exception is raised as before."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except BaseException:
            try:
                config = signature.bind(*args, **kwargs).arguments.get("generation_config")
            except TypeError:
                config = None
            streamer = config.get("streamer") if isinstance(config, dict) else None
            if callable(getattr(streamer, "end", None)):
                streamer.end()
            raise

    return wrapper


class InternVLChatMixin(OriginalAttributesMixin):
    """Adds the original remote-code API (`chat`, `batch_chat`, `extract_feature`; the original's attributes and LoRA
    wrapping, `original_attributes.py`) to `InternVLChatForConditionalGeneration`."""

    #: `chat()` keeps the key/value cache of its last turn and reuses it for the next turn's common prefix (history,
    #: images), see `chat_cache`. Set to False to re-run everything each turn, as the original does.
    reuse_chat_cache: bool = True

    def clear_chat_cache(self) -> None:
        """Free the key/value cache `chat()` keeps between turns."""
        clear_chat_cache(self)

    # The original model's attributes. `template`, `system_message` and `conv_template` are plain attributes there,
    # set in the constructor from `config.template` and changeable afterwards; here an assignment is kept on the
    # instance, and the defaults come from the config (the template named at load time, as in the original).

    @property
    def template(self) -> str:
        """Conversation template name chat() uses: `config.template` until assigned (`model.template = "..."`)."""
        template = self.__dict__.get("_template_override")
        if template is not None:
            return template
        if not self.config.template:
            raise ValueError("`config.template` is not set: chat() needs a conversation template name.")
        return self.config.template

    @template.setter
    def template(self, value: str) -> None:
        template_data(value)  # raises for a non-str or unknown name
        self.__dict__["_template_override"] = value

    @property
    def system_message(self) -> str:
        """The system message chat() / batch_chat() render: `config.system_message` when it is a str (an empty one
        included, as the original's `hasattr(config, 'system_message')`), else the default of the config's template
        (the original sets it once from `config.template`; a `null` in config.json also gives the default here, where
        the original would render "None"). Assign a str to change it; an empty string renders an empty system block,
        as in the original. `del model.system_message` restores the default."""
        override = self.__dict__.get("_system_message_override")
        if override is not None:
            return override
        configured = getattr(self.config, "system_message", None)
        if isinstance(configured, str):
            return configured
        if not self.config.template:
            raise ValueError("`config.template` is not set: chat() needs a conversation template name.")
        return template_data(self.config.template)["system_message"]

    @system_message.setter
    def system_message(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"`system_message` must be a str, got {type(value).__name__}.")
        check_unicode("`system_message`", value)
        self.__dict__["_system_message_override"] = value

    @system_message.deleter
    def system_message(self) -> None:
        self.__dict__.pop("_system_message_override", None)

    @property
    def conv_template(self) -> Conversation:
        """A `Conversation` for the config's template (`.sep`, `.roles`, `.system_message`, `.append_message`,
        `.get_prompt()`), made once per model as the original's attribute; chat() does not read it (neither does
        the original's), it is for callers such as the README streaming recipe (`model.conv_template.sep`)."""
        conversation = self.__dict__.get("_conv_template")
        if conversation is None:
            if not self.config.template:
                raise ValueError("`config.template` is not set: there is no conversation template.")
            conversation = get_conv_template(self.config.template)
            self.__dict__["_conv_template"] = conversation
        return conversation

    @conv_template.setter
    def conv_template(self, value: Conversation) -> None:
        if not isinstance(value, Conversation):
            raise TypeError(f"`conv_template` must be a Conversation, got {type(value).__name__}.")
        self.__dict__["_conv_template"] = value

    @property
    def img_context_token_id(self) -> int | None:
        """Id of `<IMG_CONTEXT>`: the same value as `config.image_token_id`; assigning one assigns the other."""
        return self.config.image_token_id

    @img_context_token_id.setter
    def img_context_token_id(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"`img_context_token_id` must be an int token id or None, got {value!r}.")
        self.config.image_token_id = value

    @property
    def num_image_token(self) -> int:
        """LLM tokens per tile (256 for 448 px tiles): `config.num_image_token`, derived from `force_image_size`,
        `vision_config.patch_size` and `downsample_ratio`."""
        return self.config.num_image_token

    @num_image_token.setter
    def num_image_token(self, value: int) -> None:
        # The original fine-tuning scripts assign the value that follows from the config (`(force_image_size //
        # patch_size) ** 2 * down_sample_ratio ** 2`, an int): nothing to change then.
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value == self.config.num_image_token:
            return
        raise AttributeError(
            f"`num_image_token` ({self.config.num_image_token}) follows from the vision tower's shape and cannot be "
            f"set to {value!r}: change `config.force_image_size` / `config.downsample_ratio` instead."
        )

    @property
    def language_model(self) -> nn.Module:
        """The original's attribute: the whole causal LM, a view over the decoder (`.model`) and the head (`.lm_head`,
        InternLM2 `.output`) that holds no weights of its own (`language_model_view.py`); the `peft.PeftModel` while
        the LLM is wrapped with LoRA. The decoder itself is `model.model.language_model` (`get_decoder()`)."""
        return language_model_of(self, self._language_model_head.head_name)

    def get_decoder(self) -> nn.Module:
        """The LLM's decoder, `model.model.language_model` (transformers' `get_decoder` would return the
        `language_model` view)."""
        return self.model.language_model

    @property
    def vision_model(self) -> nn.Module:
        return self.model.vision_model

    @property
    def mlp1(self) -> nn.Module:
        return self.model.mlp1

    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The original `extract_feature`: projected image features `(num_tiles, 256, hidden_size)` as a tensor
        (the transformers-style `get_image_features` returns them as `pooler_output` of a model output)."""
        return self.get_image_features(pixel_values, return_dict=True).pooler_output

    def _image_token_id_from(self, tokenizer, image_context_token: str) -> int:
        token_id = tokenizer.convert_tokens_to_ids(image_context_token)
        if token_id is None or token_id == getattr(tokenizer, "unk_token_id", None):
            raise ValueError(f"The tokenizer has no {image_context_token!r} token.")
        if self.config.image_token_id not in (None, token_id):
            # The original sets `img_context_token_id` from the tokenizer on every chat() / batch_chat() call (so an
            # `IMG_CONTEXT_TOKEN` other than the checkpoint's is used as given); so does this one, and says so.
            logger.warning(
                f"chat: the image context token is {image_context_token!r} (id {token_id}) of the tokenizer; "
                f"`img_context_token_id` / `config.image_token_id` changes from {self.config.image_token_id}."
            )
        self.config.image_token_id = token_id
        return token_id

    def _generate_text(
        self, tokenizer, prompts: list[str], pixel_values, generation_config, reuse_cache: bool = False
    ) -> list[str]:
        kwargs = _generation_kwargs(generation_config)
        eos_token = template_eos_token(self.template)
        kwargs["eos_token_id"] = tokenizer.convert_tokens_to_ids(eos_token)
        if kwargs.get("pad_token_id") is None and tokenizer.pad_token_id is not None:
            kwargs["pad_token_id"] = tokenizer.pad_token_id
        # Phi-3 / Yi sentencepiece tokenizers: the ids of the slow class the original loads (`use_fast=False`).
        model_inputs = encode_as_original(tokenizer, prompts, return_tensors="pt", padding=True, padding_side="left")
        input_ids = model_inputs["input_ids"].to(self.device)
        attention_mask = model_inputs["attention_mask"].to(self.device)
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.device, self.dtype)
        # The original generates from embeddings: penalties, bans, the caller's processors / criteria and a streamer
        # see the generated tokens only (`chat_processors`).
        config = effective_generation_config(self, kwargs)
        kwargs = generated_only_penalties(kwargs, input_ids.shape[1], config)
        output_ids = generate_turn(self, input_ids, attention_mask, pixel_values, kwargs, reuse_cache)
        new_tokens = output_ids[:, input_ids.shape[1] :]
        # Phi-3 sentencepiece tokenizers: decoded as the original's slow class decodes (others: their own decode).
        responses = [decode_as_original(tokenizer, row, skip_special_tokens=True) for row in new_tokens.tolist()]
        return [postprocess_response(response, self.template) for response in responses]

    @_ends_stream_on_error
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
            history: Earlier `(question, answer)` pairs. A list is extended in place with this turn, as the
                original does (also without `return_history`); a tuple is left as it is.
            return_history: Also return the history with this turn appended (the same list object when a list
                was given).
            num_patches_list: Tiles per image (alias `num_tiles_list`; both with different values raise
                `ValueError`); defaults to one image with all tiles.
            verbose: Log what the original prints (the tile count; without `return_history`, the query with image
                tokens folded to `<image>` and the answer) as warnings of transformers' logger.

        Returns:
            The answer (decoded, cut at the template's end token, stripped), and the history if asked.

        Raises:
            TypeError / ValueError: naming the argument: tile counts that are not whole numbers >= 0 or do not sum to
                the tiles, image token strings that are not str, text that is not valid Unicode, generation settings
                of the wrong type or range. A failed call ends the `streamer` of `generation_config`.
        """
        check_chat_inputs(tokenizer, pixel_values)
        _check_image_token_strings(
            IMG_START_TOKEN=IMG_START_TOKEN, IMG_END_TOKEN=IMG_END_TOKEN, IMG_CONTEXT_TOKEN=IMG_CONTEXT_TOKEN
        )
        num_patches_list = _tile_counts(num_patches_list=num_patches_list, num_tiles_list=num_tiles_list)
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        if pixel_values is not None and pixel_values.shape[0] != sum(num_patches_list):
            raise ValueError(
                f"`num_patches_list` sums to {sum(num_patches_list)} tiles but `pixel_values` holds "
                f"{pixel_values.shape[0]}."
            )
        self._image_token_id_from(tokenizer, IMG_CONTEXT_TOKEN)
        _report_tiles(verbose, pixel_values)
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
        response = self._generate_text(tokenizer, [prompt], pixel_values, generation_config, reuse_cache=True)[0]
        turn = (prepare_chat_question(question, history, pixel_values is not None), response)
        if isinstance(history, list):  # the original appends to the caller's list, even without `return_history`
            history.append(turn)
        else:
            history = [*(history or []), turn]
        if verbose and not return_history:  # the original prints the query (image tokens folded) and the answer
            shown = prompt.replace(IMG_CONTEXT_TOKEN, "").replace(f"{IMG_START_TOKEN}{IMG_END_TOKEN}", "<image>")
            logger.warning(f"{shown} {response}")
        return (response, history) if return_history else response

    @_ends_stream_on_error
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
        i's image; `pixel_values` holds all of them in order. Two of these names with different values raise
        `ValueError` (the original lets `image_counts` win silently); `history` or `return_history` raise
        `NotImplementedError`, as in the original. Bad arguments raise `TypeError` / `ValueError` naming them, as in
        `chat`.
        """
        check_chat_inputs(tokenizer, pixel_values)
        if history is not None or return_history:
            raise NotImplementedError(
                "batch_chat does not support multi-turn chat (`history` / `return_history`), as in the original; "
                "use chat() for each conversation."
            )
        _check_image_token_strings(
            IMG_START_TOKEN=IMG_START_TOKEN, IMG_END_TOKEN=IMG_END_TOKEN, IMG_CONTEXT_TOKEN=IMG_CONTEXT_TOKEN
        )
        num_patches_list = _tile_counts(
            num_patches_list=num_patches_list, num_tiles_list=num_tiles_list, image_counts=image_counts
        )
        if pixel_values is not None and num_patches_list is not None and pixel_values.shape[0] != sum(num_patches_list):
            raise ValueError(
                f"`num_patches_list` sums to {sum(num_patches_list)} tiles but `pixel_values` holds "
                f"{pixel_values.shape[0]}."
            )
        self._image_token_id_from(tokenizer, IMG_CONTEXT_TOKEN)
        _report_tiles(verbose, pixel_values)
        prompts = build_batch_chat_prompts(
            self.template,
            question_list(questions),
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
