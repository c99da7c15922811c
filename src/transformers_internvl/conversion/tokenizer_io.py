"""Reading the source tokenizer for `--to hf`, and giving the original layout its tokenizer back for `--to original`.

`--to hf` loads the source tokenizer twice (the fast one it saves, with the InternVL image tokens named for
transformers' `InternVLProcessor`, and a reference to check its ids against): `load_source_tokenizers` does that
before any tensor is written, so a broken tokenizer file fails at once, naming the folder. transformers' processor
also needs a `<video>` token; when the source has none it is added, and the `-hf` config records it
(`ADDED_TOKENS_RECORD` in the record of `hf_layout.ORIGINAL_RECORD_KEY`).

`--to original` copies the `-hf` tokenizer files; `restore_original_tokenizer_files` then
- removes the tokens the record says `--to hf` added (in the original layout `<video>` is plain text; as an added
  token its id is past the source vocabulary, one the model may not be able to embed), and
- writes transformers 5's list form of `extra_special_tokens` as `additional_special_tokens`, the key the
  transformers 4.x releases that the original code and the tools serving OpenGVLab checkpoints run on read (they
  fail on the list: "'list' object has no attribute 'keys'", transformers 4.47.1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..chat_templates import IMAGE_CONTEXT_TOKEN, IMAGE_END_TOKEN, IMAGE_START_TOKEN, VIDEO_PLACEHOLDER
from .checkpoint_io import ConversionError, read_json, write_json, write_tokenizer_json

ADDED_TOKENS_RECORD = "tokenizer_added_tokens"
# transformers' names for the InternVL tokens (`extra_special_tokens` of the -hf tokenizer).
HF_NAMED_TOKENS = {
    "start_image_token": IMAGE_START_TOKEN,
    "end_image_token": IMAGE_END_TOKEN,
    "context_image_token": IMAGE_CONTEXT_TOKEN,
    "video_token": VIDEO_PLACEHOLDER,
}


def load_source_tokenizers(source: Path) -> tuple[Any, Any, list[str]]:
    """`(tokenizer, reference, added)` of the original-layout folder `source`: the tokenizer with
    `HF_NAMED_TOKENS` as named extra special tokens (fast; InternLM2's `InternLM2TokenizerFast`), the tokenizer the
    original uses to check it against (InternLM2's sentencepiece `InternLM2Tokenizer`, else the same class loaded
    plainly), and the named tokens the source did not have (added to `tokenizer`).

    Raises:
        ConversionError: the files do not load (naming `source` and the loader's message).
    """
    from transformers import AutoTokenizer

    from ..llama_slow_tokenizer import as_transformers_tokenizer
    from ..processing.tokenization_internlm2 import InternLM2Tokenizer
    from ..processing.tokenization_internlm2_fast import InternLM2TokenizerFast

    try:
        # transformers' own classes: the -hf folder is read by transformers' port (not the original's slow class,
        # which `AutoTokenizer` on an original folder reproduces for Phi-3 / Yi, `llama_slow_tokenizer`)
        tokenizer = as_transformers_tokenizer(
            AutoTokenizer.from_pretrained(source, extra_special_tokens=dict(HF_NAMED_TOKENS))
        )
        internlm2 = isinstance(tokenizer, InternLM2TokenizerFast)
        reference = (
            InternLM2Tokenizer.from_pretrained(source)
            if internlm2
            else as_transformers_tokenizer(AutoTokenizer.from_pretrained(source))
        )
    except Exception as error:  # noqa: BLE001  (tokenizers raises plain Exception for a malformed tokenizer.json)
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(f"cannot load the tokenizer files of {source}: {message}") from None
    vocabulary = reference.get_vocab()
    added = [token for token in HF_NAMED_TOKENS.values() if token not in vocabulary]
    return tokenizer, reference, added


def _token(value: Any) -> str | None:
    """The token string of a special-token entry (a string, or an `AddedToken` dict with `content`)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _without(values: list[Any], removed: set[str]) -> list[Any]:
    return [value for value in values if _token(value) not in removed]


def restore_original_tokenizer_files(folder: Path, added: list[str]) -> None:
    """Rewrite the tokenizer files copied into the original-layout `folder` (see the module docstring): drop the
    tokens in `added` (from `tokenizer.json`'s `added_tokens`, `added_tokens.json`, `special_tokens_map.json` and
    `tokenizer_config.json`) and turn a list-valued `extra_special_tokens` into `additional_special_tokens`."""
    removed = set(added)
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        config = read_json(config_path, "tokenizer config")
        extra = config.get("extra_special_tokens")
        if isinstance(extra, list):
            del config["extra_special_tokens"]
            known = list(config.get("additional_special_tokens") or [])
            config["additional_special_tokens"] = known + [token for token in extra if token not in known]
        if removed:
            if isinstance(config.get("added_tokens_decoder"), dict):  # absent from transformers 5's files
                config["added_tokens_decoder"] = {
                    token_id: entry
                    for token_id, entry in config["added_tokens_decoder"].items()
                    if _token(entry) not in removed
                }
            for key in ("additional_special_tokens", "extra_special_tokens"):
                if isinstance(config.get(key), list):
                    config[key] = _without(config[key], removed)
                elif isinstance(config.get(key), dict):
                    config[key] = {name: token for name, token in config[key].items() if _token(token) not in removed}
            specific = config.get("model_specific_special_tokens")
            if isinstance(specific, dict):
                config["model_specific_special_tokens"] = {
                    name: token for name, token in specific.items() if _token(token) not in removed
                }
            for name, token in HF_NAMED_TOKENS.items():
                if config.get(name) == token and token in removed:
                    del config[name]
        write_json(config_path, config)
    if not removed:
        return
    tokenizer_path = folder / "tokenizer.json"
    if tokenizer_path.is_file():
        tokenizer = read_json(tokenizer_path, "tokenizer file")
        tokenizer["added_tokens"] = [
            entry for entry in tokenizer.get("added_tokens") or [] if entry.get("content") not in removed
        ]
        write_tokenizer_json(tokenizer_path, tokenizer)
    for name in ("added_tokens.json", "special_tokens_map.json"):
        path = folder / name
        if not path.is_file():
            continue
        data = read_json(path, name)
        data = {key: value for key, value in data.items() if key not in removed and _token(value) not in removed}
        if isinstance(data.get("additional_special_tokens"), list):
            data["additional_special_tokens"] = _without(data["additional_special_tokens"], removed)
        write_json(path, data)


__all__ = ["ADDED_TOKENS_RECORD", "HF_NAMED_TOKENS", "load_source_tokenizers", "restore_original_tokenizer_files"]
