"""Checks on the text given to `InternVLProcessor` (issue 12): refused early, with the index and position."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["check_texts"]


def check_texts(texts: Sequence[str]) -> None:
    """Raise a clear error for a batch the tokenizer cannot encode.

    Raises:
        ValueError: an empty batch (`text=[]`), or a string that is not valid Unicode text (a lone surrogate such as
            `"\\ud800"`, which cannot be encoded as UTF-8); the message gives the text's index and the position.
        TypeError: an element that is not a `str`.
    """
    if len(texts) == 0:
        raise ValueError("`text` is an empty list; expected at least one string (use [''] for an empty prompt).")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"`text[{index}]` must be a str, got {type(text).__name__}.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"`text[{index}]` is not valid Unicode: {error.object[error.start : error.end]!r} at position "
                f"{error.start} ({error.reason}; lone surrogates cannot be tokenized)."
            ) from None
