"""A load that would leave weights randomly initialised fails, naming what is missing in the original layout.

transformers initialises parameters the checkpoint lacks and only logs a report; for InternVL that silently gives a
model with, say, a random LLM (e.g. an unmerged LoRA checkpoint read as plain keys). Every parameter of this model is a
core weight (vision tower, `mlp1` projector, LLM body, LM head), so any missing one is an error. Not missing: a head
tied to the input embeddings (transformers ties it and drops it from the missing keys), buffers (non-persistent
buffers are never in a checkpoint; persistent ones are recomputed at init), keys the class lists in
`_keys_to_ignore_on_load_missing`, and tensors skipped on purpose with `ignore_mismatched_sizes=True`.

Two deliberate requests are let through (transformers' generic tests use both): `output_loading_info=True`, whose
caller receives the `missing_keys` and takes charge of them (a warning is still logged), and an explicitly empty
`state_dict={}`, transformers' idiom for a freshly initialised model. `from_pretrained` states which applies with
`allow_missing_weights` (a context variable, so that nested and concurrent loads do not interfere).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from contextvars import ContextVar

from transformers.core_model_loading import apply_renamings

from .checkpoint_mapping import original_layout_renamings

# Whether the running `from_pretrained` call may leave weights missing (see the module docstring).
allow_missing_weights: ContextVar[bool] = ContextVar("allow_missing_weights", default=False)


def missing_weights_allowed(from_pretrained_kwargs: dict) -> bool:
    """`True` for `output_loading_info=True` and for an explicitly empty `state_dict={}` (see the module docstring)."""
    state_dict = from_pretrained_kwargs.get("state_dict")
    return bool(from_pretrained_kwargs.get("output_loading_info")) or (state_dict is not None and len(state_dict) == 0)


def original_key_namer(model) -> Callable[[str], str]:
    """`key of this model -> key in the original OpenGVLab layout` (e.g. `model.language_model.layers.0.` ->
    `language_model.model.layers.0.`), for messages. Works on full keys and on prefixes ending with a dot."""
    head = getattr(model, "_language_model_head", None)
    head_name = head.head_name if head is not None else None
    renamings = [renaming.reverse_transform() for renaming in original_layout_renamings(head_name=head_name)]
    # `InternVLChatBaseModel` is the base model itself: its keys lack the `model.` prefix of the full model's.
    is_base_model = not hasattr(model, model.base_model_prefix)
    prefix = f"{model.base_model_prefix}." if is_base_model else ""

    def name(key: str) -> str:
        return apply_renamings(prefix + key, renamings)

    return name


def group_under_prefixes(missing: Iterable[str], all_keys: Iterable[str]) -> list[tuple[str, int]]:
    """The largest dotted prefixes all of whose keys are missing, with how many keys each holds, in key order.

    A missing key with no such prefix is reported as itself (count 1). E.g. with every tensor of layer 3 missing:
    `[("language_model.model.layers.3.", 12)]`.
    """
    missing = set(missing)
    total, absent = Counter(), Counter()
    for counter, keys in ((total, all_keys), (absent, missing)):
        for key in keys:
            parts = key.split(".")
            for depth in range(1, len(parts)):
                counter[".".join(parts[:depth]) + "."] += 1
    groups: dict[str, int] = {}
    for key in sorted(missing):
        parts = key.split(".")
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth]) + "."
            if absent[prefix] == total[prefix]:
                groups[prefix] = absent[prefix]
                break
        else:
            groups[key] = 1
    return list(groups.items())


def check_no_missing_weights(model, loading_info, checkpoint: str | None = None) -> None:
    """Raise if the load left any parameter of `model` missing (to be randomly initialised).

    Args:
        model: the model being loaded, after tying (`InternVLPreTrainedModel`).
        loading_info: transformers' `LoadStateDictInfo` of the load (its `missing_keys` are this model's keys).
        checkpoint: where the weights came from, for the message.

    Raises:
        ValueError: naming the missing tensors by their original-layout prefixes, e.g.
            "missing 12 tensors under `language_model.model.layers.1.`".
    """
    parameter_names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    missing = {key for key in loading_info.missing_keys if key in parameter_names}
    if not missing or allow_missing_weights.get():
        return
    name = original_key_namer(model)
    groups = group_under_prefixes((name(key) for key in missing), (name(key) for key in parameter_names))
    lines = [
        f"missing {count} tensor{'s' if count != 1 else ''} under `{prefix}`" if prefix.endswith(".") else f"`{prefix}`"
        for prefix, count in groups
    ]
    source = f" at {checkpoint}" if checkpoint else ""
    raise ValueError(
        f"The checkpoint{source} lacks {len(missing)} of the model's {len(parameter_names)} weight tensors (names in "
        "the original layout); they would be left randomly initialised:\n  "
        + "\n  ".join(lines)
        + "\nCheck that the checkpoint is complete (all shards present, `config.json` matching the weights)."
    )


def check_no_dropped_weights(model, loading_info) -> None:
    """Raise if the checkpoint holds a `weight` / `bias` for a module of `model` that the config built without it.

    transformers drops such tensors with a report line ("UNEXPECTED ... can be ignored"): a `config.json` saying
    `vision_config.qkv_bias: false` or `norm_type: "rms_norm"` over weights that have those biases loads, and the
    model silently computes without them. Only tensors whose module exists and lacks that parameter are refused;
    other unexpected keys (buffers such as an old `rotary_emb.inv_freq`, modules the model does not have) are left
    to transformers' report. Skipped where missing weights are allowed (`allow_missing_weights`).

    Raises:
        ValueError: naming the dropped tensors in the original layout.
    """
    if allow_missing_weights.get():
        return
    modules = dict(model.named_modules(remove_duplicate=False))
    dropped = []
    for key in sorted(loading_info.unexpected_keys):
        owner, _, leaf = key.rpartition(".")
        module = modules.get(owner)
        if leaf in ("weight", "bias") and module is not None and getattr(module, leaf, None) is None:
            dropped.append(key)
    if dropped:
        name = original_key_namer(model)
        shown = ", ".join(f"`{name(key)}`" for key in dropped[:6]) + (" ..." if len(dropped) > 6 else "")
        raise ValueError(
            f"The checkpoint holds {len(dropped)} tensor(s) that the model built from `config.json` has no place "
            f"for ({shown}); they would be dropped and the model would compute without them. `config.json` does not "
            "match the weights (e.g. `vision_config.qkv_bias` or `norm_type`)."
        )


__all__ = [
    "allow_missing_weights",
    "check_no_dropped_weights",
    "check_no_missing_weights",
    "group_under_prefixes",
    "missing_weights_allowed",
    "original_key_namer",
]
