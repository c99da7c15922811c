"""Attributes and helpers that transformers' own `InternVLProcessor` and `ProcessorMixin` define, on this package's
processor.

Code written for transformers' port reads `processor.image_seq_length`, `start_image_token(_id)`,
`end_image_token(_id)` and `video_token(_id)`; this processor keeps the original's names (`num_image_token`,
`image_start_token`, `video_placeholder`, ...). The properties below give the same values under the port's names
(nothing is stored or saved twice). `_get_num_multimodal_tokens` is the count vLLM and TRL ask for
(`multimodal_tokens`).
"""

from __future__ import annotations

from .control_tokens import placeholder_pattern
from .multimodal_tokens import mm_token_type_ids, num_multimodal_tokens, placeholder_kinds


class PortAttributeNamesMixin:
    """`image_seq_length` (tokens per tile), `start_image_token` / `end_image_token` (`<img>` / `</img>`),
    `video_token` (`<video>`) and their ids, as transformers' `InternVLProcessor` names them, and
    `_get_num_multimodal_tokens`."""

    @property
    def image_seq_length(self) -> int:
        """`<IMG_CONTEXT>` tokens per tile (`num_image_token`, 256 at 448 px, patch 14, downsample 0.5)."""
        return self.num_image_token

    @property
    def start_image_token(self) -> str:
        return self.image_start_token

    @property
    def end_image_token(self) -> str:
        return self.image_end_token

    @property
    def start_image_token_id(self) -> int | None:
        return self.image_start_token_id

    @property
    def end_image_token_id(self) -> int | None:
        return self.image_end_token_id

    @property
    def video_token(self) -> str:
        """The video placeholder of the text (`<video>`, `video_placeholder`): one per video, expanded to one
        `Frame-i: <img>...</img>` line per sampled frame."""
        return self.video_placeholder

    @property
    def video_token_id(self) -> int | None:
        """Id of `video_token` when the tokenizer has it as one token (the original tokenizers do not: None)."""
        return self._token_id(self.video_placeholder)

    def _get_num_multimodal_tokens(self, image_sizes=None, video_sizes=None, **kwargs):
        """Tokens the processor inserts for images of the given sizes and for videos, without pixels.

        Args:
            image_sizes: `(height, width)` per image, each counted as the only image of its prompt; or one list of
                sizes per prompt, whose images share the prompt's tile budget (`max_total_tiles`) as in `__call__`.
            video_sizes: `(frames, height, width)` per decoded video given to the processor (all its frames are
                used unless the call samples: `num_segments` / `num_frames`, `bound` or `do_sample_frames=True`; for
                a video file the processor samples `num_segments`, so pass it here).
            kwargs: per-call options as `__call__` takes them (`max_dynamic_patch` / `max_num`, `use_thumbnail`,
                `dynamic_image_size`, `max_total_tiles`, `num_segments`, ..., flat or as `images_kwargs` /
                `videos_kwargs`).

        Returns:
            `MultiModalData`: `num_image_patches` (tiles per image, thumbnail included), `num_image_tokens`
            (`2 + num_image_token * tiles` per image: `<img>`, the context tokens, `</img>`), `num_video_tokens`
            (frames x `(2 + num_image_token)` per video; the `Frame-i: ` labels are text). Each equals what
            `__call__` inserts and marks in `mm_token_type_ids` (1 for images, 2 for video frames).

        Raises:
            ValueError, TypeError: a malformed size, or an option `__call__` refuses too.
        """
        merged = self._merge_kwargs(type(self).valid_processor_kwargs, tokenizer_init_kwargs={}, **kwargs)
        return num_multimodal_tokens(self, image_sizes, video_sizes, merged)

    def _mm_token_type_ids(self, text_inputs, texts: list[str], video_inputs: dict) -> list[list[int]]:
        """`mm_token_type_ids` of `text_inputs["input_ids"]`, tokenized from `texts` once expanded (`video_inputs`:
        `num_frames` per video): 1 on each image's tokens, 2 on each video frame's (transformers' types; its default
        marks by id, which cannot tell a frame from an image). With `return_overflowing_tokens` (text only) a row is
        a window of text `overflow_to_sample_mapping[row]`."""
        pattern = placeholder_pattern(self.image_placeholder, self.video_placeholder)
        kinds = placeholder_kinds(texts, pattern, self.image_placeholder, video_inputs["num_frames"])
        if "overflow_to_sample_mapping" in text_inputs:
            kinds = [kinds[int(sample)] for sample in text_inputs["overflow_to_sample_mapping"]]
        return mm_token_type_ids(text_inputs["input_ids"], kinds, self.image_start_token_id, self.image_end_token_id)


def post_process_generated(processor, generated_outputs, skip_special_tokens=True, **kwargs):
    """`InternVLChatProcessor.post_process_image_text_to_text` (the pipeline's decoding of `generate`'s ids and of the
    prompt, `(batch, length)` or `(length,)`): `ProcessorMixin`'s, with transformers' own decoding also for a Phi-3 /
    Yi tokenizer that otherwise decodes as the original's slow class (`llama_slow_tokenizer`). The pipeline removes the
    decoded prompt from the decoded sequence; the slow class's decoding puts a space between an added token and the
    text after it (`<|assistant|>` and the answer), and keeps Phi-3's `<|end|>` with `skip_special_tokens`, so the
    answers would start with a space and end with `<|end|>`."""
    tokenizer = processor.tokenizer
    if getattr(tokenizer, "encodes_as_original", False):
        return tokenizer.decode_as_transformers(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)
    return tokenizer.decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)
