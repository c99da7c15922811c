"""Which package a flash-attention kernel needs, and one clear error when it is missing (issue 13).

transformers' own message ("the package for FlashAttention2 doesn't seem to be installed") names neither the pip
package nor the reason (not installed, or installed without a CUDA device). `check_attention_kernels` runs before
transformers' check (`InternVLChatPreTrainedModel._check_and_adjust_attn_implementation`), on what the user asked
for: at build time every tower's choice (`from_pretrained(attn_implementation=...)`, a per-tower dict
`{"vision_config": ..., "text_config": ...}` included, or a config built by hand), and `set_attn_implementation`'s
argument. Flash values stored in original `config.json` files never reach it: they fall back when the config is read,
as the original does (`original_api.py`, `configuration_internlm2.py`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from transformers.modeling_flash_attention_utils import FLASH_ATTN_KERNEL_FALLBACK
from transformers.utils import (
    is_flash_attn_2_available,
    is_flash_attn_3_available,
    is_flash_attn_4_available,
    is_kernels_available,
    is_torch_npu_available,
)

from .config_validation import check_attn_implementation_argument

__all__ = ["FLASH_KERNELS", "check_attention_kernels", "configured_attention", "contiguous_heads_on_cpu"]


class FlashKernel(NamedTuple):
    package: str  # the distribution transformers looks for
    module: str  # what it imports
    available: Callable[[], bool]  # transformers' own check (package + CUDA)
    install: str


FLASH_KERNELS: dict[str, FlashKernel] = {
    "flash_attention_2": FlashKernel(
        "flash-attn", "flash_attn", is_flash_attn_2_available, '`pip install "transformers-internvl[flash]"`'
    ),
    "flash_attention_3": FlashKernel(
        "flash-attn-3",
        "flash_attn_interface",
        is_flash_attn_3_available,
        "a `flash-attn-3` build (the `hopper/` folder of Dao-AILab/flash-attention; Hopper GPUs)",
    ),
    "flash_attention_4": FlashKernel(
        "flash-attn-4",
        "flash_attn.cute",
        is_flash_attn_4_available,
        "a `flash-attn-4` build (`flash_attn.cute` of Dao-AILab/flash-attention; Hopper/Blackwell GPUs)",
    ),
}


def _module_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False


def _requests(attn_implementation: Any) -> list[tuple[str, str]]:
    """`[(where, implementation)]` for a string (both towers) or a per-tower mapping."""
    if isinstance(attn_implementation, str):
        return [("both towers", attn_implementation)]
    if isinstance(attn_implementation, Mapping):
        return [
            (key or "the model (both towers)", value)
            for key, value in attn_implementation.items()
            if isinstance(value, str)
        ]
    return []


def configured_attention(config: Any) -> dict[str, Any]:
    """The implementations a composite config asks for: `{"": the model's, "vision_config": ..., "text_config": ...}`
    (from `attn_implementation=` of `from_pretrained`, a string or a per-tower dict, once transformers has applied
    it to the configs)."""
    chosen = {"": getattr(config, "_attn_implementation_internal", None)}
    for key in ("vision_config", "text_config"):
        chosen[key] = getattr(getattr(config, key, None), "_attn_implementation_internal", None)
    return chosen


def check_attention_kernels(attn_implementation: Any) -> None:
    """Raise if a requested flash-attention kernel cannot run here.

    Args:
        attn_implementation: what the user asked for: `None`, a name (`"flash_attention_2"`, `"sdpa"`, ...) or a
            per-tower mapping (`{"vision_config": "flash_attention_2", "text_config": "sdpa"}`). Names other than
            `flash_attention_2/3/4` are left to transformers.

    Raises:
        ImportError: a `flash_attention_N` is requested and transformers cannot use it, nor fall back to its Hub
            kernel (the `kernels` package is not installed); the message names the tower,
            the package, what is missing (the package, or a CUDA device) and how to install it.
        TypeError, ValueError: not a str, None or a per-tower mapping, or a mapping key other than `""`,
            `"vision_config"` and `"text_config"` (`config_validation.check_attn_implementation_argument`).
    """
    check_attn_implementation_argument(attn_implementation)
    for where, name in _requests(attn_implementation):
        kernel = FLASH_KERNELS.get(name)
        if kernel is None or kernel.available():
            continue
        if name in FLASH_ATTN_KERNEL_FALLBACK and is_kernels_available() and not is_torch_npu_available():
            # transformers then loads the Hub build (`kernels-community/flash-attn2`, ...) instead, and raises its own
            # error if that fails (`PreTrainedModel._check_and_adjust_attn_implementation`).
            continue
        if not _module_installed(kernel.module):
            reason = f"the `{kernel.package}` package is not installed (no `{kernel.module}` module)"
        elif not torch.cuda.is_available():
            reason = f"`{kernel.module}` is installed but no CUDA device is visible (flash kernels run on NVIDIA GPUs)"
        else:
            reason = (
                f"`{kernel.module}` is installed but is not the `{kernel.package}` distribution transformers expects"
            )
        raise ImportError(
            f"attn_implementation={name!r} ({where}) needs the `{kernel.package}` package and a CUDA GPU: {reason}. "
            f"Install it with {kernel.install}, or choose 'sdpa' (PyTorch's kernels, with its own flash backend on "
            "GPUs), 'flex_attention' or 'eager'."
        )


SAME_BYTES_WHEN_CONTIGUOUS = (torch.float32, torch.bfloat16)
"""dtypes whose CPU matmul / SDPA results do not depend on the memory layout of the heads. float16 is not one: its CPU
kernels round differently on the contiguous copies (1 float16 step per InternViT layer), so float16 keeps the original's
strided views, and the original's numbers."""


def contiguous_heads_on_cpu(implementation: str | None, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`(batch, heads, seq, head_dim)` query/key/value views of a fused projection, copied to contiguous memory when
    the CPU SDPA or eager kernels will read them (otherwise returned as they are).

    Those kernels read each head's rows faster from contiguous memory than from views whose rows lie `3 * hidden`
    elements apart (InternViT's fused `qkv`), and compute the same bytes (`tests/test_attention_layout_cpu.py`).
    Measured at 1 thread, InternViT-300M attention module, 7 tiles: 4-5 % faster in fp32 and bf16 SDPA and fp32
    eager, 1 % in bf16 eager (`benchmarks/RESULTS.md`). Not used for InternLM2's `wqkv` views: there the copies cost
    about what the kernel saves (LLM prefill of 3,400 tokens: +1.5 % in bf16, -1 to -2 % in fp32). CUDA kernels
    prefer the `(batch, seq, heads, head_dim)` memory of the views, and flash kernels transpose back: both are left
    alone.
    """
    if implementation not in ("sdpa", "eager") or states[0].device.type != "cpu":
        return states
    if states[0].dtype not in SAME_BYTES_WHEN_CONTIGUOUS:
        return states
    return tuple(state.contiguous() for state in states)
