"""`InternVLChatProcessor`: tokenizer + dynamic-tiling image processor + video processor, the original chat format.

Text conventions are those of the original InternVL chat code, applied through transformers' placeholder hooks
(`replace_image_token` / `replace_video_token`, `get_text_with_replacements`):

* `<image>` is one image: `<img>` + `<IMG_CONTEXT>` x (num_image_token * tiles) + `</img>` (`chat_templates`);
* `<video>` is one video: `Frame-1: <image>` ... `Frame-N: <image>`, one line and one tile per sampled frame;
* a sample with images (videos) but no `<image>` (`<video>`) placeholder gets the prefix of the official examples:
  `<image>\\n` for one image, `Image-1: <image>\\nImage-2: <image>\\n...` for several (`<video>\\n` per video);
* `pixel_values` holds the batch's image tiles in placeholder order (the order the model fills them), `num_tiles`
  the tiles per image; tiles of another side than `image_size` are refused (their token count would be wrong).
`apply_chat_template` renders the original `chat()` prompts byte for byte (`chat_templates.get_jinja_chat_template`).
"""

from typing import Any

import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, VideosKwargs
from transformers.utils import logging
from transformers.video_processing_utils import VideoProcessorMixin

from ..atomic_save import save_folder_atomically
from ..chat_templates import (
    DEFAULT_VIDEO_FRAME_TEMPLATE,
    IMAGE_PLACEHOLDER,
    VIDEO_PLACEHOLDER,
    get_jinja_chat_template,
    image_context_string,
    multi_image_prefix,
    template_data,
    template_eos_token,
    tokens_per_tile,
    video_frame_prompt,
)
from ..llama_slow_tokenization import encode_as_original
from .auto_processor_checks import checked_processor_dict
from .chat_messages import check_chat_messages, check_conversation_shape
from .control_tokens import (
    check_no_raw_image_tokens,
    escape_placeholders_in_messages,
    placeholder_pattern,
    special_tokens_around_text,
)
from .image_processing_options import InternVLImageProcessorKwargs
from .input_validation import check_bool, check_processor_args, check_text_options, check_texts
from .legacy_folders import legacy_processor_dict
from .loading_options import (
    HUB_KWARGS,
    chat_template_for_load_options,
    image_processor_class,
    load_processor_parts,
    processor_dict_from_model_config,
    video_processor_class,
)
from .pipeline_images import wrap_image_text_to_text_pipeline
from .port_attributes import PortAttributeNamesMixin, post_process_generated
from .processor_inputs import (
    add_missing_placeholders,
    check_tile_side,
    expansion_offsets,
    is_image,
    is_video,
    shift_for_inserted_prefix,
    split_per_sample,
)
from .tokenizer_loading import without_call_truncation_or_padding

logger = logging.get_logger(__name__)

# The class name written to processor_config.json / tokenizer_config.json. transformers resolves the name
# "InternVLProcessor" to its own processor (converted `-hf` layout) before looking at registered classes, so this
# package's processor is saved and registered under the original's naming (`InternVLChatModel`, `internvl_chat`).
_SAVED_CLASS_NAME = "InternVLChatProcessor"
_PROCESSOR_CLASS_NAMES = ("InternVLChatProcessor", "InternVLProcessor")


class InternVLImagesKwargs(InternVLImageProcessorKwargs, total=False):
    """Per-call image options: those of the image processor (`InternVLImageProcessorKwargs`)."""


class InternVLProcessingKwargs(ProcessingKwargs, total=False):
    images_kwargs: InternVLImagesKwargs
    videos_kwargs: VideosKwargs


class InternVLChatProcessor(ProcessorMixin, PortAttributeNamesMixin):
    r"""Processor of InternVL 2.5 (alias `InternVLProcessor`): image processor (dynamic tiling), tokenizer and video
    processor, producing the inputs of the original chat format.

    Args:
        image_processor: `InternVLChatImageProcessor` (default settings when `None`).
        tokenizer: The checkpoint's tokenizer; it must know `<img>`, `</img>` and `<IMG_CONTEXT>`.
        video_processor: `InternVLChatVideoProcessor` (default settings when `None`).
        chat_template: Jinja chat template; `None` builds the one of `template` (with `system_message`).
        template: Conversation template name of the model config (`"internvl2_5"`, `"internlm2-chat"`, ...).
        system_message: Default system message; `None` uses the template's own.
        image_size, patch_size, downsample_ratio: Tile size, ViT patch size and pixel-unshuffle ratio; they give
            `num_image_token` (tokens per tile).
        video_frame_template: Label before each video frame, formatted with `i` (1-based).
        image_placeholder, video_placeholder: Placeholders in the text.
        image_start_token, image_end_token, image_context_token: Image token strings; `None` reads the tokenizer's
            `start_image_token` / `end_image_token` / `context_image_token`, else `<img>`, `</img>`, `<IMG_CONTEXT>`.
    """

    text_kwargs = {"padding_side": "left"}
    valid_processor_kwargs = InternVLProcessingKwargs

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        video_processor=None,
        chat_template: str | None = None,
        template: str = "internvl2_5",
        system_message: str | None = None,
        image_size: int = 448,
        patch_size: int = 14,
        downsample_ratio: float = 0.5,
        video_frame_template: str = DEFAULT_VIDEO_FRAME_TEMPLATE,
        image_placeholder: str = IMAGE_PLACEHOLDER,
        video_placeholder: str = VIDEO_PLACEHOLDER,
        image_start_token: str | None = None,
        image_end_token: str | None = None,
        image_context_token: str | None = None,
        **kwargs,
    ):
        template_data(template)  # validates the name
        strings = check_processor_args(  # and the tokenizer, sizes, ratio, frame template, system message, strings
            tokenizer,
            image_size,
            patch_size,
            downsample_ratio,
            video_frame_template,
            system_message,
            image_placeholder=image_placeholder,
            video_placeholder=video_placeholder,
            image_start_token=image_start_token,
            image_end_token=image_end_token,
            image_context_token=image_context_token,
        )
        if image_processor is None:  # the default sub-processors cut tiles of this processor's `image_size`
            image_processor = image_processor_class()(image_size=image_size)
        if video_processor is None:
            video_processor = video_processor_class()(image_size=image_size)
        if chat_template is None:
            chat_template = get_jinja_chat_template(
                template, system_message, image_placeholder=image_placeholder, video_placeholder=video_placeholder
            )

        self.template = template
        self.system_message = system_message
        self.image_size = int(image_size)
        self.patch_size = int(patch_size)
        self.downsample_ratio = float(downsample_ratio)
        self.video_frame_template = video_frame_template
        for name, value in strings.items():  # the placeholders and the image token strings
            setattr(self, name, value)
        super().__init__(image_processor, tokenizer, video_processor, chat_template=chat_template, **kwargs)

        # ProcessorMixin: `image_token` fills the sequence (checked after tokenizing); frames use image tokens too.
        self.image_token = self.image_context_token
        self.image_token_id = self._token_id(self.image_context_token)
        self.image_start_token_id = self._token_id(self.image_start_token)
        self.image_end_token_id = self._token_id(self.image_end_token)
        missing = [
            token
            for token, token_id in (
                (self.image_start_token, self.image_start_token_id),
                (self.image_end_token, self.image_end_token_id),
                (self.image_context_token, self.image_token_id),
            )
            if token_id is None
        ]
        if missing:
            logger.warning(f"The tokenizer has no single token for {missing}; images cannot be processed with it.")

    def check_argument_for_proper_class(self, argument_name, argument):
        """As ProcessorMixin, but the video processor is checked against the classes themselves: transformers only
        exposes `VideoProcessorMixin` at top level when torchvision is installed, and this package does not need it."""
        if argument_name != "video_processor":
            return super().check_argument_for_proper_class(argument_name, argument)
        proper_classes = (VideoProcessorMixin, video_processor_class())
        if not isinstance(argument, proper_classes):
            raise TypeError(
                f"Received a {type(argument).__name__} for argument video_processor, but an InternVLChatVideoProcessor "
                f"(or another VideoProcessorMixin) was expected."
            )
        return proper_classes

    def _token_id(self, token: str) -> int | None:
        """The id of `token` if the tokenizer has it as one token (not the unknown token), else None."""
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or (self.tokenizer.unk_token_id is not None and token_id == self.tokenizer.unk_token_id):
            return None
        return int(token_id)

    @property
    def num_image_token(self) -> int:
        """Tokens per tile: `(image_size // patch_size) ** 2 * downsample_ratio ** 2` (256 for 448 / 14 / 0.5)."""
        return tokens_per_tile(self.image_size, self.patch_size, self.downsample_ratio)

    @property
    def image_token_ids(self) -> list[int | None]:
        return [self.image_token_id, self.image_start_token_id, self.image_end_token_id]

    @property
    def chat_eos_token(self) -> str:
        """The string the original chat() stops generation at: the template's `sep.strip()` (`<|im_end|>` for
        InternVL 2.5; not necessarily the tokenizer's `eos_token`, which is `</s>` for InternLM2)."""
        return template_eos_token(self.template)

    @property
    def chat_eos_token_id(self) -> int | None:
        """Id of `chat_eos_token` (pass it as `eos_token_id` to `generate`, as the original chat() does)."""
        return self._token_id(self.chat_eos_token)

    post_process_image_text_to_text = post_process_generated  # the pipeline's decoding (`port_attributes`)

    @property
    def model_input_names(self) -> list[str]:
        return list(self.tokenizer.model_input_names) + ["pixel_values", "num_tiles"]

    # ---- text expansion ------------------------------------------------------------------------------------------
    def image_tokens(self, num_tiles: int) -> str:
        """The text that stands for one image of `num_tiles` tiles."""
        return image_context_string(
            num_tiles, self.num_image_token, self.image_start_token, self.image_end_token, self.image_context_token
        )

    def video_prompt(self, num_frames: int) -> str:
        """The frame lines a `<video>` placeholder becomes, before image expansion (`Frame-1: <image>\\n...`)."""
        return video_frame_prompt(num_frames, self.video_frame_template, self.image_placeholder)

    def image_prefix(self, num_images: int) -> str:
        """Placeholders prepended to a text that has images but no placeholder, as in the official examples."""
        return multi_image_prefix(num_images, self.image_placeholder)

    # ---- __call__ ------------------------------------------------------------------------------------------------

    def __call__(self, images=None, text: str | list[str] | None = None, videos=None, **kwargs) -> BatchFeature:
        """Expand placeholders, tile images, sample video frames and tokenize.

        Args:
            images: One image, a list (one sample, or distributed over the texts by their `<image>` counts), or one
                list per text. Images are PIL images, paths, URLs or arrays.
            text: One string or a list (the batch).
            videos: Like `images`, with videos (paths, URLs, frame lists or (T, H, W, C) arrays).
            kwargs: Tokenizer options (`padding`, `padding_side` (default "left"), `return_tensors`, ...), image
                options under the original names (`dynamic_image_size`, `max_dynamic_patch` / `max_num`,
                `min_dynamic_patch` / `min_num`, `use_thumbnail`, `max_total_tiles`) and video options
                (`num_frames`, ...), flat or as `text_kwargs` / `images_kwargs` / `videos_kwargs`. An unknown flat
                option is ignored with a warning (transformers' `_merge_kwargs`); an unknown key in `images_kwargs`
                raises `TypeError`. `is_split_into_words`, `text_pair`, `text_target` and `text_pair_target` raise
                `ValueError` (their text would not be expanded), as does `return_overflowing_tokens` with images or
                videos (windows would cut image token runs; text-only batches are windowed as by the tokenizer).

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` and, when there are images or videos, `pixel_values`
            `(total_tiles, 3, image_size, image_size)` in placeholder order and `num_tiles` (per image; 1 per frame).
        """
        if text is None:
            raise ValueError("`text` is required: InternVLChatProcessor builds token ids around the images.")
        if isinstance(text, bytes | dict) or not hasattr(text, "__iter__"):
            raise TypeError(f"`text` must be a str or a list of str, got {type(text).__name__}.")
        texts = [text] if isinstance(text, str) else list(text)
        tokenizer_init_kwargs = {k: v for k, v in self.tokenizer.init_kwargs.items() if k != "padding_side"}
        output_kwargs = self._merge_kwargs(
            InternVLProcessingKwargs, tokenizer_init_kwargs=tokenizer_init_kwargs, **kwargs
        )
        text_kwargs = output_kwargs["text_kwargs"]
        check_text_options(text_kwargs)  # no `is_split_into_words`, `text_pair`, ... (ValueError naming it)
        check_texts(texts)  # each a str (TypeError naming its index), valid Unicode
        return_tensors = text_kwargs.pop("return_tensors", None)
        offsets_asked = text_kwargs.pop("return_text_replacement_offsets", None)
        return_text_replacement_offsets = bool(offsets_asked or output_kwargs.get("return_text_replacement_offsets"))
        sanitize = text_kwargs.pop("sanitize_control_tokens", None) or output_kwargs.get("sanitize_control_tokens")
        sanitize_control_tokens = check_bool("sanitize_control_tokens", sanitize or False)
        types_asked = text_kwargs.pop("return_mm_token_type_ids", None) or output_kwargs.get("return_mm_token_type_ids")
        if sanitize_control_tokens:
            # Marked by `apply_chat_template(..., sanitize_control_tokens=True)`: the tokenizer encodes the marked
            # control tokens as plain text (transformers' `encode_marked_chat`).
            text_kwargs["sanitize_control_tokens"] = True
        check_no_raw_image_tokens(texts, (self.image_start_token, self.image_end_token, self.image_context_token))

        images_per_sample = split_per_sample(images, texts, self.image_placeholder, is_image, "images")
        videos_per_sample = split_per_sample(videos, texts, self.video_placeholder, is_video, "videos")

        prefix_lengths = add_missing_placeholders(
            texts, images_per_sample, videos_per_sample, self.image_placeholder, self.video_placeholder, self.template
        )

        has_images = any(images_per_sample)
        has_videos = any(videos_per_sample)
        check_text_options(text_kwargs, has_images or has_videos)  # overflowing windows: text only
        if (has_images or has_videos) and None in self.image_token_ids:
            raise ValueError(
                f"The tokenizer has no single token for {self.image_start_token!r}, {self.image_end_token!r} or "
                f"{self.image_context_token!r}; it cannot encode images for InternVL."
            )

        image_inputs = self._process_sample_images(images_per_sample, output_kwargs["images_kwargs"])
        video_inputs = self._process_sample_videos(videos_per_sample, output_kwargs["videos_kwargs"])
        expanded_texts, replacement_offsets = self.get_text_with_replacements(
            texts,
            [self.replace_image_token(image_inputs, index) for index in range(len(image_inputs["num_tiles"]))],
            [self.replace_video_token(video_inputs, index) for index in range(len(video_inputs["num_frames"]))],
            prefix_lengths=prefix_lengths,
        )
        # Pixels in the order of the placeholders over the batch: the order the model fills `<IMG_CONTEXT>` positions.
        image_chunks = iter(torch.split(image_inputs["pixel_values"], image_inputs["num_tiles"]))
        video_chunks = iter(torch.split(video_inputs["pixel_values_videos"], video_inputs["num_frames"]))
        pattern = placeholder_pattern(self.image_placeholder, self.video_placeholder)
        pixel_chunks: list[torch.Tensor] = []
        num_tiles: list[int] = []
        for placeholder in (found for sample_text in texts for found in pattern.findall(sample_text)):
            is_image_placeholder = placeholder == self.image_placeholder
            pixel_chunks.append(next(image_chunks if is_image_placeholder else video_chunks))
            num_tiles.extend([len(pixel_chunks[-1])] if is_image_placeholder else [1] * len(pixel_chunks[-1]))

        if sanitize_control_tokens and text_kwargs.get("add_special_tokens", True):
            before, after = special_tokens_around_text(self.tokenizer)
            expanded_texts = [before + sample + after for sample in expanded_texts]
            replacement_offsets = [shift_for_inserted_prefix(offsets, before) for offsets in replacement_offsets]
            text_kwargs["add_special_tokens"] = False
        text_inputs = encode_as_original(self.tokenizer, expanded_texts, **text_kwargs)  # Phi-3 / Yi: slow ids
        if not text_kwargs.get("return_overflowing_tokens"):  # (refused with images and videos)
            self._check_special_mm_tokens(expanded_texts, text_inputs, modalities=["image"])
        data = dict(text_inputs)
        if return_text_replacement_offsets:
            data["text_replacement_offsets"] = replacement_offsets
        if types_asked:  # 1 on image tokens, 2 on video frames' (`port_attributes`)
            data["mm_token_type_ids"] = self._mm_token_type_ids(text_inputs, texts, video_inputs)
        if pixel_chunks:
            data["pixel_values"] = torch.cat(pixel_chunks, dim=0)
            data["num_tiles"] = num_tiles
        elif return_tensors == "pt":
            # Same keys with or without images (pipelines collate them); the model treats zero tiles as no image.
            size = self.image_size
            data["pixel_values"] = torch.zeros((0, 3, size, size))
            data["num_tiles"] = torch.zeros((0,), dtype=torch.long)
        return BatchFeature(data=data, tensor_type=return_tensors, skip_tensor_conversion=["text_replacement_offsets"])

    def _process_sample_images(self, images_per_sample: list[list[Any]], images_kwargs: dict[str, Any]) -> dict:
        """All images in one image-processor call (per-sample tile budgets): `pixel_values`, `num_tiles`."""
        images_kwargs = {key: value for key, value in images_kwargs.items() if key != "return_tensors"}
        samples = [sample_images for sample_images in images_per_sample if sample_images]
        if not samples:
            return {"pixel_values": torch.zeros((0, 3, self.image_size, self.image_size)), "num_tiles": []}
        outputs = self.image_processor(images=samples, return_tensors="pt", **images_kwargs)
        pixel_values = torch.as_tensor(outputs["pixel_values"])
        check_tile_side(pixel_values.shape[-1], self.image_size, self.num_image_token, "image tiles")
        tiles_per_image = [int(n) for n in torch.as_tensor(outputs["num_tiles"]).reshape(-1).tolist()]
        num_images = sum(len(sample_images) for sample_images in samples)
        if len(tiles_per_image) != num_images or sum(tiles_per_image) != pixel_values.shape[0]:
            raise ValueError(
                f"The image processor returned num_tiles={tiles_per_image} and {pixel_values.shape[0]} tiles for "
                f"{num_images} images."
            )
        return {"pixel_values": pixel_values, "num_tiles": tiles_per_image}

    def _process_sample_videos(self, videos_per_sample: list[list[Any]], videos_kwargs: dict[str, Any]) -> dict:
        """All videos in one video-processor call: `pixel_values_videos` (one tile per frame), `num_frames`."""
        flat_videos = [video for sample_videos in videos_per_sample for video in sample_videos]
        if not flat_videos:
            return {"pixel_values_videos": torch.zeros((0, 3, self.image_size, self.image_size)), "num_frames": []}
        videos_kwargs = {key: value for key, value in videos_kwargs.items() if key != "return_tensors"}
        outputs = self.video_processor(videos=flat_videos, return_tensors="pt", **videos_kwargs)
        frames = torch.as_tensor(outputs["pixel_values_videos"])
        check_tile_side(frames.shape[-1], self.image_size, self.num_image_token, "video frames")
        frames_per_video = [int(n) for n in torch.as_tensor(outputs["num_frames"]).reshape(-1).tolist()]
        if len(frames_per_video) != len(flat_videos) or sum(frames_per_video) != frames.shape[0]:
            raise ValueError(
                f"The video processor returned num_frames={frames_per_video} and {frames.shape[0]} frames for "
                f"{len(flat_videos)} videos."
            )
        return {"pixel_values_videos": frames, "num_frames": frames_per_video}

    # ---- transformers' placeholder hooks ----------------------------------------------------------------------------

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """The text of image `image_idx` (batch order): `<img>` + `<IMG_CONTEXT>` x (num_image_token x its tiles) +
        `</img>` (`chat_templates.image_context_string`, as the original chat())."""
        return self.image_tokens(int(image_inputs["num_tiles"][image_idx]))

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        """The text of video `video_idx`: one `Frame-i: <img>...</img>` line per frame, each frame one tile."""
        frame_lines = self.video_prompt(int(video_inputs["num_frames"][video_idx]))
        return frame_lines.replace(self.image_placeholder, self.image_tokens(1))

    def get_text_with_replacements(
        self,
        text: list[str],
        images_replacements: list[str] = (),
        videos_replacements: list[str] = (),
        audio_replacements: list[str] = (),
        prefix_lengths: list[int] | None = None,
    ) -> tuple[list[str], list[list[dict[str, Any]]]]:
        """`ProcessorMixin.get_text_with_replacements` for InternVL's placeholders: the i-th `<image>` (`<video>`)
        over the batch becomes `images_replacements[i]` (`videos_replacements[i]`). Unlike transformers' default the
        placeholders differ from `image_token` (`<IMG_CONTEXT>`, which fills the sequence), escaped placeholders
        (`control_tokens.PLACEHOLDER_ESCAPE`) stay text and lose their escape, and the first `prefix_lengths[i]`
        characters of text `i` (the added `Image-1: <image>\n...` prefix) are one insertion at 0 per item.

        Returns:
            The expanded texts, and per text its changes as transformers gives them: `{"type", "span" (in the text as
            given), "new_span" (in the expanded text), "text", "replacement"}` (`processor_inputs.expansion_offsets`).
        """
        replacements = {
            self.image_placeholder: ("image", iter(images_replacements)),
            self.video_placeholder: ("video", iter(videos_replacements)),
        }
        pattern = placeholder_pattern(self.image_placeholder, self.video_placeholder)
        expanded_texts, batch_offsets = [], []
        for index, sample_text in enumerate(text):
            segments = []
            for piece in pattern.split(sample_text):
                kind, values = replacements.get(piece, (None, None))
                segments.append((piece, next(values) if kind else piece, kind))
            expanded, offsets = expansion_offsets(segments, prefix_lengths[index] if prefix_lengths else 0)
            expanded_texts.append(expanded)
            batch_offsets.append(offsets)
        return expanded_texts, batch_offsets

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """transformers' `apply_chat_template`, where a literal `<image>` / `<video>` inside a typed text item
        (`{"type": "text", "text": ...}`) is text, not a placeholder: only `{"type": "image"}` / `{"type": "video"}`
        items are images and videos (see `control_tokens`). With `tokenize=False` the rendered string keeps the
        escape character (U+F0002) before such text, so that passing it to the processor keeps it text.

        `sanitize_control_tokens=True` (needs `tokenize=True`) encodes the control tokens in the messages
        (`<|im_start|>`, `<|im_end|>`, `<img>`, `<IMG_CONTEXT>`, ...) as plain text; the default (`False`, as in
        transformers and the original `chat()`) lets message text write them, except the image tokens, which the
        processor refuses (`ValueError`). Malformed content items raise (`chat_messages.check_chat_messages`)."""
        check_conversation_shape(conversation)
        conversation = escape_placeholders_in_messages(conversation, (self.image_placeholder, self.video_placeholder))
        check_chat_messages(*self._normalize_conversations(conversation), kwargs)
        return super().apply_chat_template(conversation, chat_template, **kwargs)

    # ---- saving / loading ----------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """`ProcessorMixin.save_pretrained`, atomic (`atomic_save.atomic_save_directory`): written to a temporary
        folder beside `save_directory` and swapped in; the folder's other files (the model's weights and config
        included) are kept, a call's truncation and padding are not (`without_call_truncation_or_padding`). Returns
        the saved files' paths under `save_directory`."""
        with without_call_truncation_or_padding(self.tokenizer):
            return save_folder_atomically(super().save_pretrained, save_directory, push_to_hub=push_to_hub, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["processor_class"] = _SAVED_CLASS_NAME
        return output

    @classmethod
    def get_processor_dict(cls, pretrained_model_name_or_path, **kwargs) -> tuple[dict[str, Any], dict[str, Any]]:
        """The saved processor config, or, for an original OpenGVLab directory (no processor_config.json), one built
        from its `config.json` (template, system message, tile size, tiling settings). A load-time `template`,
        `system_message` or placeholder rebuilds a saved chat template (`chat_template_for_load_options`)."""
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        processor_dict, kwargs = checked_processor_dict(super(), pretrained_model_name_or_path, kwargs)
        if processor_dict.get("processor_class") in _PROCESSOR_CLASS_NAMES:  # (load-time template: new chat template)
            return chat_template_for_load_options(processor_dict, kwargs), kwargs
        legacy = legacy_processor_dict(pretrained_model_name_or_path, hub_kwargs)
        if legacy is not None:  # saved before the rename with per-file sub-processor configs
            return chat_template_for_load_options(legacy, kwargs), kwargs
        return processor_dict_from_model_config(pretrained_model_name_or_path, processor_dict, hub_kwargs), kwargs

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """Tokenizer with AutoTokenizer; image and video processors from the processor config (our own classes, so
        that class names shared with transformers' InternVL port cannot pick the wrong class).

        Keyword arguments of `from_pretrained` are routed by name (see `split_from_pretrained_kwargs`): tiling
        options under their original names set the image processor's defaults, `num_segments` the video
        processor's, processor init arguments the processor's; the rest must be loading or tokenizer options.

        Raises:
            TypeError: a keyword argument is none of these (it is never stored in the tokenizer).
            ValueError, OSError: the tokenizer is not the class tokenizer_config.json names, or has no vocabulary
                file (see `tokenizer_loading.check_tokenizer`).
        """
        return load_processor_parts(cls, pretrained_model_name_or_path, processor_dict or {}, kwargs)


InternVLProcessor = InternVLChatProcessor
__all__ = ["InternVLChatProcessor", "InternVLProcessor"]
wrap_image_text_to_text_pipeline()  # `pipeline(images=...)` loads images by this package's rule (pipeline_images)
