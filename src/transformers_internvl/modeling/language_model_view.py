"""`model.language_model` as the original's whole causal LM, over this package's composite layout.

In the original remote code (internvl_chat/internvl/model/internvl_chat/modeling_internvl_chat.py)
`InternVLChatModel.language_model` is the LLM's causal-LM class (`Qwen2ForCausalLM`, `InternLM2ForCausalLM`,
`LlamaForCausalLM`, `Phi3ForCausalLM`): its decoder is `.model` and its head `.lm_head` (InternLM2: `.output`). The
original training script (`internvl/train/internvl_chat_finetune.py`) relies on that: `freeze_llm` runs
`model.language_model = model.language_model.eval()` and freezes every parameter of `model.language_model`, the head
included; the new-token path calls `model.language_model.resize_token_embeddings(n)` and
`model.language_model.get_output_embeddings()`.

Here the weights keep transformers' composite layout (`model.language_model.*` is the decoder, `lm_head` is the
top-level head), so the checkpoint layout, the state-dict keys and `get_decoder()` stay as transformers has them.
`InternVLChatForConditionalGeneration.language_model` returns a `CausalLanguageModelView` instead: an unregistered
`nn.Module` whose two children are the model's own decoder (`.model`) and head (`.lm_head` / `.output`), so that
`parameters()`, `named_parameters()` (the original's names: `model.layers.0...`, `lm_head.weight`), `state_dict()`,
`train()`, `eval()`, `requires_grad_()` and `to()` cover both, as on the original's causal LM. It holds no tensors of
its own. InternLM2's `chat` / `stream_chat` / `build_inputs` are those of `as_causal_lm()`. Any other attribute is the
decoder's (`.layers`, `.embed_tokens`, `.norm`, `.config`, `enable_input_require_grads()`,
`gradient_checkpointing_enable()`), so code written for transformers' layout keeps working. `generate` is the chat
model's text-only `generate`, and `resize_token_embeddings` resizes the embeddings and the head together, as the
original's causal LM does. `save_pretrained`, `copy.deepcopy` and `pickle` give the LLM's own
causal-LM class (`as_causal_lm()`: `Qwen2ForCausalLM`..., built around the same decoder and head), as the original's.

Assigning a view back (`model.language_model = model.language_model.eval()`) puts its decoder and head back in place.
While the LLM is wrapped with LoRA (`wrap_llm_lora`), `model.language_model` is the `peft.PeftModel` itself, as before.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from .causal_lm_loss import causal_lm_loss

__all__ = ["CausalLanguageModelView", "language_model_of", "unwrap_language_model"]

# One view per chat model, so that `model.language_model is model.language_model` and hooks registered on it stay.
_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

_OWN_NAMES = frozenset({"_owner", "_head_name", "_modules", "_parameters", "_buffers"})
# Methods of the LLM's causal-LM class itself (InternLM2's `chat`, `stream_chat`, `build_inputs`): run on
# `as_causal_lm()`, as the original's `language_model.chat(...)` runs on its InternLM2 causal LM.
_CAUSAL_LM_CHAT_METHODS = frozenset({"chat", "stream_chat", "build_inputs"})


class CausalLanguageModelView(nn.Module):
    """The original's `language_model` (the whole causal LM) over a chat model's decoder and head; see the module
    docstring. Children: `model` (the decoder, `chat_model.model.language_model`) and the head under the LLM class's
    own name (`lm_head`, InternLM2 `output`: `chat_model.lm_head`)."""

    def __init__(self, owner: nn.Module, head_name: str) -> None:
        super().__init__()
        object.__setattr__(self, "_owner", weakref.ref(owner))
        object.__setattr__(self, "_head_name", head_name)
        self.refresh()

    def _chat_model(self) -> nn.Module:
        owner = self._owner()
        if owner is None:
            raise RuntimeError("The InternVL chat model this `language_model` view belongs to no longer exists.")
        return owner

    def refresh(self) -> None:
        """Point the children at the chat model's current decoder and head (they may have been replaced)."""
        owner = self._chat_model()
        self._modules["model"] = owner.model.language_model
        self._modules[self._head_name] = owner.lm_head

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _OWN_NAMES or name.startswith("__"):
                raise
            decoder = self.__dict__["_modules"].get("model")
            if name in _CAUSAL_LM_CHAT_METHODS and decoder is not None:  # InternLM2's own chat API, on the causal LM
                try:
                    method = getattr(self.as_causal_lm(), name, None)
                except ValueError:  # a causal-LM class with tensors of its own: not one to run here
                    method = None
                if method is not None:
                    return method
            if decoder is None or not hasattr(decoder, name):
                raise AttributeError(
                    f"`language_model` ({self._head_name} + {type(decoder).__name__}) has no attribute {name!r}"
                ) from None
            return getattr(decoder, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # Replacing the decoder or the head replaces it in the chat model, whose forward uses them.
        if name == "model":
            self._chat_model().model.language_model = value
            self._modules["model"] = value
        elif name == self._head_name:
            self._chat_model().lm_head = value
            self._modules[name] = value
        else:
            super().__setattr__(name, value)

    # ---- the causal-LM methods of the original's `language_model` ---------------------------------------------

    def get_decoder(self) -> nn.Module:
        return self._modules["model"]

    def get_input_embeddings(self) -> nn.Module:
        return self._modules["model"].get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self._modules["model"].set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self._modules[self._head_name]

    def set_output_embeddings(self, value: nn.Module) -> None:
        setattr(self, self._head_name, value)

    def resize_token_embeddings(self, *args: Any, **kwargs: Any) -> nn.Embedding:
        """The chat model's `resize_token_embeddings` (input embeddings and head together, `text_config.vocab_size`
        updated), as the original's causal LM resizes both."""
        embeddings = self._chat_model().resize_token_embeddings(*args, **kwargs)
        self.refresh()
        return embeddings

    @property
    def generation_config(self) -> Any:
        """The chat model's generation config (what `generate` uses)."""
        return self._chat_model().generation_config

    @generation_config.setter
    def generation_config(self, value: Any) -> None:
        self._chat_model().generation_config = value

    def as_causal_lm(self) -> nn.Module:
        """The LLM's own causal-LM class (`AutoModelForCausalLM` for `text_config`, e.g. `Qwen2ForCausalLM`) built
        around this model's decoder and head: the same tensors, no copy.

        Raises:
            ValueError: the class holds tensors outside its decoder and head (they would be left uninitialised).
        """
        from transformers import AutoModelForCausalLM
        from transformers.initialization import no_init_weights

        config = self._chat_model().config.text_config
        with torch.device("meta"), no_init_weights():
            causal_lm = AutoModelForCausalLM.from_config(config)
        prefix = causal_lm.base_model_prefix
        causal_lm._modules[prefix] = self._modules["model"]
        causal_lm._modules[self._head_name] = self._modules[self._head_name]
        left = [name for name, tensor in causal_lm.state_dict().items() if tensor.is_meta]
        if left:
            raise ValueError(f"{type(causal_lm).__name__} holds tensors outside its decoder and head: {left[:5]}.")
        return causal_lm

    def __reduce_ex__(self, protocol: int) -> Any:
        # `copy.deepcopy` / `pickle` give the LLM's own causal-LM class, an independent copy (a view of another
        # model's modules would not be one).
        return _same_module, (self.as_causal_lm(),)

    def save_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        """Save the LLM alone as its own causal-LM class (`as_causal_lm().save_pretrained(...)`): the decoder and the
        head, as the original's `model.language_model.save_pretrained(...)` saves the whole causal LM."""
        return self.as_causal_lm().save_pretrained(*args, **kwargs)

    def can_generate(self) -> bool:
        return True

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The chat model's `generate` without images: the LLM alone, as the original's `language_model.generate`
        (with `inputs_embeds` and no `input_ids`, the output holds the new tokens only, as transformers')."""
        return self._chat_model().generate(*args, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """The causal LM's forward: decoder, head, and transformers' shifted cross-entropy when `labels` are given.

        Returns:
            `CausalLMOutputWithPast`: `logits` `(batch, kept positions, vocab_size)`, `loss` (with `labels`),
            the decoder's `cache`, hidden states and attentions; with `return_dict=False` (default: the LLM config's
            `return_dict`) the tuple of its set fields, `(loss, logits, cache, ...)`, as the original's causal LM.
        """
        return_dict = kwargs.pop("return_dict", None)
        outputs = self._modules["model"](
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        logits = self._modules[self._head_name](slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        owner = self._chat_model()
        loss = causal_lm_loss(owner, logits, labels, logits_to_keep, owner.config.text_config.vocab_size, **kwargs)
        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        if return_dict is None:
            return_dict = getattr(owner.config.text_config, "return_dict", True)
        return output if return_dict else output.to_tuple()


def _same_module(module: nn.Module) -> nn.Module:
    """Rebuilds a pickled or copied view: the causal LM it was saved as."""
    return module


def language_model_of(owner: nn.Module, head_name: str) -> nn.Module:
    """`owner.language_model`: the `CausalLanguageModelView` of `owner` (made once, its children refreshed on each
    access), or the decoder's `peft.PeftModel` while the LLM is wrapped with LoRA."""
    decoder = owner.model.language_model
    if hasattr(decoder, "peft_config"):
        return decoder
    view = _VIEWS.get(owner)
    if view is None or view._head_name != head_name:
        view = CausalLanguageModelView(owner, head_name)
        _VIEWS[owner] = view
    else:
        view.refresh()
    view.training = decoder.training
    return view


def unwrap_language_model(owner: nn.Module, value: Any) -> Any:
    """For `owner.language_model = value`: a view's decoder (its head put back as `owner.lm_head` when it is another
    module); any other value unchanged (a decoder, or a `peft.PeftModel` around it)."""
    if not isinstance(value, CausalLanguageModelView):
        return value
    head = value._modules[value._head_name]
    if head is not owner._modules.get("lm_head"):
        owner.lm_head = head
    return value._modules["model"]
