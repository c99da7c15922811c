"""`from_pretrained` / `save_pretrained` options of the original remote-code `InternVLChatModel`.

Code copied from OpenGVLab model cards, demos and training scripts passes options the original model understood:

* `use_flash_attn=True|False` (the original constructor's argument) -> an attention implementation
  (`resolve_attention_options`);
* `low_cpu_mem_usage=True` -> accepted and ignored (transformers 5 always loads without a full-size random init);
* device maps written with the original module names, as the model cards' `split_model()` builds them
  (`vision_model`, `mlp1`, `language_model.model.layers.N`, `language_model.lm_head`, ...) -> the same map in this
  package's module tree (`translate_device_map`);
* on save, the original remote-code files of the source folder are copied next to the weights
  (`copy_remote_code_files`), so servers that read the original layout with `trust_remote_code` (vLLM, LMDeploy)
  serve the saved model.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from transformers.utils import logging
from transformers.utils.import_utils import is_flash_attn_2_available

from .original_construction import positional_as_keywords

logger = logging.get_logger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# use_flash_attn / low_cpu_mem_usage
# ---------------------------------------------------------------------------------------------------------------------

FLASH_ATTN_FALLBACK = "eager"
"""What the original uses when `use_flash_attn=True` but flash-attn is missing, and for `use_flash_attn=False`.

The original constructor does `use_flash_attn = use_flash_attn if has_flash_attn else False`, then sets
`vision_config.use_flash_attn = False` (InternViT's plain `softmax(q k^T * scale) v`) and
`llm_config.attn_implementation = "eager"`. This package's `eager` is that computation (the LLM's eager attention
with the fp32 softmax of transformers' Qwen2 / Llama / InternLM2 code), so the numbers match the original's fallback;
`sdpa` would differ in the last bits.
"""


def resolve_attention_options(kwargs: dict[str, Any]) -> bool | None:
    """Turn the original's loading options in `kwargs` (modified in place) into transformers ones.

    * `use_flash_attn=True` -> `attn_implementation="flash_attention_2"` when flash-attn is usable
      (`transformers.utils.is_flash_attn_2_available()`: the package installed and a CUDA device), else a one-time
      warning and `"eager"`, the original's fallback (see `FLASH_ATTN_FALLBACK`).
    * `use_flash_attn=False` -> `attn_implementation="eager"`, as the original.
    * `low_cpu_mem_usage` is removed (a no-op in transformers 5).

    Returns:
        Whether flash attention is used (the original stores this as `vision_config.use_flash_attn`), or `None` when
        `use_flash_attn` was not given.

    Raises:
        TypeError: `use_flash_attn` is not a bool.
        ValueError: both `use_flash_attn` and `attn_implementation` are given.
    """
    kwargs.pop("low_cpu_mem_usage", None)
    if "use_flash_attn" not in kwargs:
        return None
    use_flash_attn = kwargs.pop("use_flash_attn")
    if not isinstance(use_flash_attn, bool):
        raise TypeError(f"`use_flash_attn` must be True or False, got {use_flash_attn!r}.")
    requested = kwargs.get("attn_implementation")
    if requested is None:
        # The Auto classes hand `attn_implementation` to the config they load and pass on.
        requested = getattr(kwargs.get("config"), "_attn_implementation_internal", None)
    if requested is not None:
        raise ValueError(
            f"Pass either `use_flash_attn` (the original's option) or `attn_implementation`, not both: got "
            f"use_flash_attn={use_flash_attn} and attn_implementation={requested!r}."
        )
    if use_flash_attn and is_flash_attn_2_available():
        kwargs["attn_implementation"] = "flash_attention_2"
        return True
    if use_flash_attn:
        logger.warning_once(
            f"`use_flash_attn=True` but flash-attn is not usable here (the `flash_attn` package with a CUDA device); "
            f"falling back to `attn_implementation={FLASH_ATTN_FALLBACK!r}`, as the original InternVL code does."
        )
    kwargs["attn_implementation"] = FLASH_ATTN_FALLBACK
    return False


# ---------------------------------------------------------------------------------------------------------------------
# Device maps with the original module names
# ---------------------------------------------------------------------------------------------------------------------

# Original module roots; this package's tree puts them under `model.` (the LM head at the top as `lm_head`).
ORIGINAL_ROOTS = ("vision_model", "mlp1", "language_model")
# Spellings of one module across the original LLMs: InternLM2 says `tok_embeddings` / `output`, the others
# `embed_tokens` / `lm_head`. The model cards' split_model() lists both, whatever the LLM.
_EMBEDDING_ALIASES = ("embed_tokens", "tok_embeddings")
_HEAD_ALIASES = ("lm_head", "output")
# Original names that may hold no weights in a given LLM (model cards list them for every LLM): dropped when the
# module does not exist here (InternLM2 keeps its rotary embedding per layer, in the original too).
_WEIGHTLESS_OPTIONAL = ("rotary_emb",)


def module_names(model_class: type[nn.Module], config) -> set[str]:
    """Qualified names of all modules and parameters of `model_class(config)`, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = model_class._from_config(copy.deepcopy(config))
    names = {name for name, _ in model.named_modules()}
    names.update(name for name, _ in model.named_parameters())
    names.update(name for name, _ in model.named_buffers())
    names.discard("")
    return names


def translate_device_map(device_map: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """A device map written with the original module names, in this package's module tree.

    Original -> here (`P` is `model.` for `InternVLChatForConditionalGeneration`, empty for `InternVLChatBaseModel`):
    `vision_model[.x]` -> `P vision_model[.x]`; `mlp1[.x]` -> `P mlp1[.x]`; `language_model.model[.x]` ->
    `P language_model[.x]`; `language_model.lm_head|output[.x]` -> `lm_head[.x]`; bare `language_model` -> the LLM
    body and the head. `embed_tokens` / `tok_embeddings` and `lm_head` / `output` name the same module (the
    model cards write both spellings); `language_model.model.rotary_emb` is dropped where the LLM has none. Keys
    that already name a module here are kept.

    Args:
        device_map: `{module name: device}` as passed to `from_pretrained`.
        names: Module and parameter names of the model being loaded (`module_names`).

    Returns:
        `{module name here: device}`.

    Raises:
        ValueError: a key names no module (original or here), or two keys naming the same module ask for different
            devices.
        TypeError: a key that is not a string.
    """
    names = set(names)
    prefix = "model." if any(name.startswith("model.language_model") for name in names) else ""
    head = "lm_head" if "lm_head" in names else None
    translated: dict[str, Any] = {}
    sources: dict[str, str] = {}
    unknown: list[str] = []

    def place(target: str, device: Any, source: str) -> None:
        if target in translated and translated[target] != device:
            raise ValueError(
                f"The device map puts {sources[target]!r} on {translated[target]!r} but {source!r} on {device!r}; "
                f"both name the module {target!r}."
            )
        translated[target] = device
        sources[target] = source

    for key, device in device_map.items():
        if not isinstance(key, str):
            raise TypeError(f"`device_map` keys must be module names (str), got {key!r} ({type(key).__name__}).")
        if key == "" or key in names:
            place(key, device, key)
            continue
        targets = _original_targets(key, names, prefix, head)
        if targets is None:
            unknown.append(key)
            continue
        for target in targets:
            place(target, device, key)
    if unknown:
        roots = sorted({name.split(".")[0] for name in names})
        raise ValueError(
            f"The device map names modules this model does not have: {unknown}. Use the original names "
            f"(`vision_model`, `mlp1`, `language_model.model.layers.N`, `language_model.model.embed_tokens` / "
            f"`tok_embeddings`, `language_model.model.norm`, `language_model.lm_head` / `output`) or this package's "
            f"(top level: {roots})."
        )
    return translated


def _original_targets(key: str, names: set[str], prefix: str, head: str | None) -> list[str] | None:
    """This package's names for the original module name `key` ([] = drop it, None = unknown)."""
    if key == "language_model":
        return [f"{prefix}language_model"] + ([head] if head else [])
    match = re.fullmatch(r"(vision_model|mlp1)(\..+)?", key)
    if match:
        target = f"{prefix}{match.group(1)}{match.group(2) or ''}"
        return [target] if target in names else None
    match = re.fullmatch(r"language_model\.(lm_head|output)(\..+)?", key)
    if match:
        if head is None:
            return []  # the base model has no head; the checkpoint's head is not loaded
        target = f"{head}{match.group(2) or ''}"
        return [target] if target in names else None
    match = re.fullmatch(r"language_model\.model(?:\.([^.]+)(\..+)?)?", key)
    if match is None:
        return None
    body = f"{prefix}language_model"
    child, rest = match.group(1), match.group(2) or ""
    if child is None:
        return [body]
    if child in _EMBEDDING_ALIASES:
        for alias in (child, *_EMBEDDING_ALIASES):
            if f"{body}.{alias}{rest}" in names:
                return [f"{body}.{alias}{rest}"]
        return None
    target = f"{body}.{child}{rest}"
    if target in names:
        return [target]
    if child in _WEIGHTLESS_OPTIONAL and not rest:
        return []
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Remote-code files
# ---------------------------------------------------------------------------------------------------------------------

REMOTE_CODE_FILE_PATTERNS = ("configuration_*.py", "modeling_*.py", "tokenization_*.py", "conversation.py")
"""Files of an original checkpoint folder that its `config.json` / `tokenizer_config.json` `auto_map` point to
(directly or by import): `configuration_internvl_chat.py`, `modeling_internvl_chat.py`, `modeling_intern_vit.py`,
`modeling_internlm2.py`, `conversation.py`, `tokenization_internlm2*.py`, ..."""


def remote_code_files(directory: str | os.PathLike) -> list[str]:
    """Names of the original remote-code files in `directory` (top level only), sorted."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    return sorted(
        name
        for name in os.listdir(directory)
        if os.path.isfile(os.path.join(directory, name))
        and any(fnmatch.fnmatch(name, pattern) for pattern in REMOTE_CODE_FILE_PATTERNS)
    )


def copy_remote_code_files(source: str | os.PathLike, target: str | os.PathLike) -> list[str]:
    """Copy the original remote-code files of `source` into `target` (each through a temporary file and a rename).

    Files already present in `target` are overwritten; copying a folder onto itself does nothing.

    Returns:
        The names copied.
    """
    source, target = os.fspath(source), os.fspath(target)
    if os.path.realpath(source) == os.path.realpath(target):
        return []
    copied = []
    for name in remote_code_files(source):
        handle, temporary = tempfile.mkstemp(dir=target, prefix=f".{name}.", suffix=".tmp")
        os.close(handle)
        try:
            shutil.copyfile(os.path.join(source, name), temporary)
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(temporary, 0o666 & ~mask)  # mkstemp creates 0600; a saved file gets the umask's mode
            os.replace(temporary, os.path.join(target, name))
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
        copied.append(name)
    return copied


__all__ = [
    "FLASH_ATTN_FALLBACK",
    "ORIGINAL_ROOTS",
    "REMOTE_CODE_FILE_PATTERNS",
    "copy_remote_code_files",
    "module_names",
    "remote_code_files",
    "resolve_attention_options",
    "translate_device_map",
]


# ---------------------------------------------------------------------------------------------------------------------
# generate(pixel_values, input_ids, attention_mask, ...) called positionally
# ---------------------------------------------------------------------------------------------------------------------

ORIGINAL_GENERATE_PARAMETERS = (
    "pixel_values",
    "input_ids",
    "attention_mask",
    "visual_features",
    "generation_config",
    "output_hidden_states",
)
"""The positional parameters of the original `InternVLChatModel.generate`
(internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py), in order."""


def original_generate_arguments(args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """`generate(*args, **kwargs)` with positional arguments in the original's order moved into `kwargs`.

    transformers' `generate` takes the prompt ids first (`inputs`); the original took `pixel_values` first, then
    `input_ids`, `attention_mask`, `visual_features`, `generation_config`, `output_hidden_states`. A first positional
    argument that is a floating-point tensor (tiles; prompt ids are integers), or `None` followed by a tensor, is read
    in the original's order; anything else is left to transformers.

    Raises:
        TypeError: more positional arguments than the original takes, or one also given by keyword.
    """
    if not args:
        return args, kwargs
    first = args[0]
    original_order = (isinstance(first, torch.Tensor) and first.is_floating_point()) or (
        first is None and len(args) > 1 and isinstance(args[1], torch.Tensor)
    )
    if not original_order:
        return args, kwargs
    return (), positional_as_keywords("generate", ORIGINAL_GENERATE_PARAMETERS, args, kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# model(pixel_values, input_ids, attention_mask, ...) called positionally
# ---------------------------------------------------------------------------------------------------------------------

ORIGINAL_FORWARD_PARAMETERS = (
    "pixel_values",
    "input_ids",
    "attention_mask",
    "position_ids",
    "image_flags",
    "cache",  # the original's `past_key_values`
    "labels",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
)
"""The positional parameters of the original `InternVLChatModel.forward` that `forward` here takes, in the original's
order (internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py); its further `statistics`, `loss_weight`,
`loss_reduction_all_gather` are taken by keyword (`causal_lm_loss.pop_original_loss_options`)."""


def _is_tiles(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() == 4


def original_forward_order(forward):
    """Decorate `forward(self, input_ids, pixel_values, ...)` to also take the original's positional order,
    `forward(pixel_values, input_ids, attention_mask, position_ids, image_flags, past_key_values, labels, ...)`.

    The original order is recognised only where transformers' order cannot apply: a first positional argument that
    is a floating 4-D tensor (tiles; `input_ids` are integers of shape `(batch, seq)`), or `None` followed by an
    integer tensor (`pixel_values=None`, then the ids). Every other call is passed on unchanged. The signature seen
    by `inspect.signature` (and so by `generate` and the Trainer) stays transformers'.

    Raises:
        TypeError: in the original order, more positional arguments than `ORIGINAL_FORWARD_PARAMETERS`, or one also
            given by keyword.
    """

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        if not args:
            return forward(self, **kwargs)
        first = args[0]
        original_order = _is_tiles(first) or (
            first is None
            and len(args) > 1
            and isinstance(args[1], torch.Tensor)
            and not args[1].is_floating_point()
            and not args[1].is_complex()
        )
        if not original_order:
            return forward(self, *args, **kwargs)
        hint = " Pass the original's `statistics`, `loss_weight` and `loss_reduction_all_gather` by keyword."
        aliases = {"cache": "past_key_values"}
        kwargs = positional_as_keywords("forward", ORIGINAL_FORWARD_PARAMETERS, args, kwargs, aliases, hint)
        return forward(self, **kwargs)

    return wrapper
