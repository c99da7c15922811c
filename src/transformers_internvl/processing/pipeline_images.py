"""`pipeline("image-text-to-text")(images=..., text=...)` with `InternVLChatProcessor`: the images are loaded by
this package's rule (`image_loading`: no EXIF orientation applied, URLs fetched in bounded time), as images named in
chat messages already are.

transformers' `ImageTextToTextPipeline.preprocess` loads `images=` itself with `transformers.image_utils.load_images`,
which applies the EXIF orientation (`PIL.ImageOps.exif_transpose`) to paths, URLs and PIL images alike, and fetches
URLs with no timeout unless the call gives one. The original code never rotates (`Image.open(f).convert('RGB')`), so a
photo with an EXIF orientation got other pixels, often another tile grid, through `images=` than through the original,
and than through a chat message of the same pipeline. `wrap_image_text_to_text_pipeline` wraps that `preprocess`:
when the pipeline's processor is an `InternVLChatProcessor`, `images=` is first loaded with `load_image_source` (the
pipeline's `timeout`, default `DEFAULT_URL_TIMEOUT`, 10 s), and each image is handed on as an RGB copy without its metadata,
so that the pipeline's loader has no orientation left to apply. Pipelines of other processors are not touched.
"""

from __future__ import annotations

import functools
from typing import Any

from PIL import Image

from .image_loading import check_timeout, load_image_source, to_rgb_image

__all__ = ["load_pipeline_images", "wrap_image_text_to_text_pipeline"]


def load_pipeline_images(images: Any, timeout: float | None = None) -> Any:
    """`images` (one, a list, or a list of lists; paths, URLs, base64 strings or PIL images) as RGB PIL images
    decoded by `load_image_source` without EXIF rotation, each a copy with no metadata (`info` empty).

    Raises what `load_image_source` raises (`FileNotFoundError`, `ValueError` naming the source, `TimeoutError`);
    anything else in `images` is handed back unchanged, for the pipeline to refuse."""
    if isinstance(images, list | tuple):
        return [load_pipeline_images(item, timeout) for item in images]
    if isinstance(images, str):
        images = load_image_source(images, "images", timeout)
    if not isinstance(images, Image.Image):
        return images
    image = to_rgb_image(images, "images")
    image = image.copy() if image is images else image
    image.info = {}  # no EXIF / XMP orientation left for transformers' load_image to apply
    return image


def wrap_image_text_to_text_pipeline() -> None:
    """Wrap `ImageTextToTextPipeline.preprocess` as the module docstring says; idempotent."""
    from transformers.pipelines.image_text_to_text import ImageTextToTextPipeline

    original = ImageTextToTextPipeline.preprocess
    if getattr(original, "_internvl_images", False):
        return

    @functools.wraps(original)
    def preprocess(self, inputs=None, timeout=None, continue_final_message=None, **processing_kwargs):
        from .processing_internvl import InternVLChatProcessor

        if (
            isinstance(self.processor, InternVLChatProcessor)
            and isinstance(inputs, dict)
            and inputs.get("images") is not None
        ):
            seconds = check_timeout(timeout)  # None -> DEFAULT_URL_TIMEOUT
            inputs = {**inputs, "images": load_pipeline_images(inputs["images"], seconds)}
        return original(
            self, inputs, timeout=timeout, continue_final_message=continue_final_message, **processing_kwargs
        )

    preprocess._internvl_images = True
    ImageTextToTextPipeline.preprocess = preprocess
