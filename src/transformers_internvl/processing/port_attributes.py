"""Read-only attribute names of transformers' own `InternVLProcessor` on this package's processor.

Code written for transformers' port reads `processor.image_seq_length`, `start_image_token(_id)` and
`end_image_token(_id)`; this processor keeps the original's names (`num_image_token`, `image_start_token`, ...). The
properties below give the same values under the port's names (nothing is stored or saved twice).
"""

from __future__ import annotations


class PortAttributeNamesMixin:
    """`image_seq_length` (tokens per tile), `start_image_token` / `end_image_token` (`<img>` / `</img>`) and their
    ids, as transformers' `InternVLProcessor` names them."""

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
