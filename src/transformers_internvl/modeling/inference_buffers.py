"""When the eager attention and InternViT's MLP may write results over their inputs (issue 13).

In plain inference a softmax or GELU written over the buffer it reads gives the out-of-place bits with one large
tensor fewer. That is only allowed when nothing differentiates or transforms the computation: autograd is off, no
autocast would run the op in another dtype, and neither forward-mode AD (`torch.autograd.forward_ad`,
`torch.func.jvp`) nor a `torch.func` transform (`vmap`, `grad`) is active; `out=` softmax supports neither
(`Batching rule not implemented for aten::softmax.int_out`, `Trying to use forward AD with aten::softmax`).
`hooked` says whether a module hook could see an output that would be overwritten.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd import forward_ad
from torch.nn.modules import module as module_hooks

__all__ = ["hooked", "in_place_inference"]


def _transformed() -> bool:
    """A `torch.func` transform or a forward-AD dual level is active (private torch state, read defensively)."""
    functorch = getattr(torch._C, "_functorch", None)
    maybe_current_level = getattr(functorch, "maybe_current_level", None)
    if maybe_current_level is not None and maybe_current_level() is not None:
        return True
    return getattr(forward_ad, "_current_level", -1) >= 0


def in_place_inference(device_type: str) -> bool:
    """Whether an op on `device_type` tensors may overwrite its input with the same values: autograd off, no autocast
    for that device (none exists for `meta`), no `torch.func` transform or forward AD (checked outside
    `torch.compile`, which traces the transforms itself)."""
    if torch.is_grad_enabled():
        return False
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return False
    return torch.compiler.is_compiling() or not _transformed()


def hooked(*modules: nn.Module) -> bool:
    """Whether a forward or backward hook (on one of `modules`, or a global one) could see their outputs: the in-place
    inference buffers are then not used, so that a hook sees what the out-of-place computation gives."""
    hooks = [
        module_hooks._global_forward_hooks,
        module_hooks._global_forward_pre_hooks,
        module_hooks._global_backward_hooks,
        module_hooks._global_backward_pre_hooks,
    ]
    for module in modules:
        hooks += [module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks]
    return any(hooks)
