"""Static key/value cache + `torch.compile` decoding through the generation config (issue 13).

transformers' `generate` compiles the model's forward when the generation config asks for a static cache
(`cache_implementation="static"`) and the model is on an accelerator (CUDA, XPU, ...); `compile_config` sets how.
This module builds such a generation config for InternVL models, so that `model.generate(...)`, `model.chat(...)`
and pipelines use it without further arguments::

    model.generation_config = static_decode_config(model.generation_config, max_cache_len=4096)

What it costs: the first `generate` call traces and compiles the forward (on a CPU here: ~15 s for the 2-layer test
model with a Qwen2 LLM, ~55 s with InternLM2; minutes for real model sizes on a GPU), and a new batch size or a longer
static cache compiles again; `max_cache_len` sizes the cache for the longest call up front so that calls of other
lengths reuse one graph. The tokens are those of the dynamic cache (greedy decoding; `tests/test_static_decode.py`).
`model.chat()` does not keep its key/value cache between turns with a static cache (`modeling/chat_cache.py`), so
each turn re-encodes its prompt.
"""

from __future__ import annotations

import copy

from transformers import CompileConfig, GenerationConfig

__all__ = ["static_decode_config"]


def static_decode_config(
    generation_config: GenerationConfig | None = None,
    *,
    compile: bool = True,
    fullgraph: bool = True,
    max_cache_len: int | None = None,
    compile_on_cpu: bool = False,
    compile_mode: str | None = None,
) -> GenerationConfig:
    """A copy of `generation_config` (default: a fresh `GenerationConfig()`) that decodes with a static cache and,
    with `compile=True`, a compiled forward.

    Args:
        generation_config: The config to start from (e.g. `model.generation_config`); it is not modified.
        compile: Compile the forward (`compile_config`); `False` sets `disable_compile=True` (static cache only).
        fullgraph: Passed to `torch.compile`: raise on any graph break instead of running the broken parts eagerly.
            InternVL's forward (vision tower, placeholder check, LLM) traces as one graph.
        max_cache_len: Size of the static cache in tokens (`None`: prompt + `max_new_tokens` of each call, which
            recompiles when that grows).
        compile_on_cpu: Compile on CPU too (transformers compiles on accelerators only; on CPU the compile cost is
            rarely won back, useful for tests).
        compile_mode: `torch.compile` mode (default transformers' `"reduce-overhead"`: CUDA graphs on GPU).

    Returns:
        The new `GenerationConfig`.

    Raises:
        TypeError: `generation_config` is not a `GenerationConfig`; `compile`, `fullgraph` or `compile_on_cpu` is not
            a bool.
        ValueError: `max_cache_len` is not a positive integer; `compile_mode` is not one of torch.compile's modes
            (without this check a misspelt mode is ignored on a CPU and fails only at the first GPU `generate`).
    """
    if generation_config is None:
        generation_config = GenerationConfig()
    if not isinstance(generation_config, GenerationConfig):
        raise TypeError(
            f"`generation_config` must be a transformers GenerationConfig, got {type(generation_config).__name__}."
        )
    if max_cache_len is not None and (
        isinstance(max_cache_len, bool) or not isinstance(max_cache_len, int) or max_cache_len <= 0
    ):
        raise ValueError(f"`max_cache_len` must be a positive integer or None, got {max_cache_len!r}.")
    for name, value in (("compile", compile), ("fullgraph", fullgraph), ("compile_on_cpu", compile_on_cpu)):
        if not isinstance(value, bool):
            raise TypeError(f"`{name}` must be True or False, got {value!r} ({type(value).__name__}).")
    if compile_mode is not None:
        from torch._inductor import list_mode_options

        modes = list(list_mode_options())
        if compile_mode not in modes:
            raise ValueError(f"`compile_mode` must be one of {modes} or None, got {compile_mode!r}.")
    config = copy.deepcopy(generation_config)
    config.cache_implementation = "static"
    config.max_cache_len = max_cache_len
    if compile:
        options = {"fullgraph": fullgraph}
        if compile_mode is not None:
            options["mode"] = compile_mode
        compile_config = CompileConfig(**options)
        if compile_on_cpu:
            compile_config._compile_all_devices = True  # transformers' switch for compiling off accelerators
        config.compile_config = compile_config
        config.disable_compile = None
    else:
        config.compile_config = None
        config.disable_compile = True
    return config
