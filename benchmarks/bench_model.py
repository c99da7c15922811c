"""Model benchmark (issue 13): random weights at real InternVL 2.5 shapes, optionally against transformers' own port.

Measures vision-tower time for 1/7/13 tiles, time to first token (one image of `--ttft-tiles` tiles, 13 by default),
decode tokens/s at batch 1 and 8 and peak memory of the time-to-first-token step (CUDA: `max_memory_allocated`;
CPU: peak RSS growth of a child process that runs only that step). With `--against upstream` it builds
`transformers.InternVLForConditionalGeneration` with the SAME weights (original-layout keys mapped to transformers'
names: vision `qkv` split into q/k/v, `mlp1` -> `multi_modal_projector`, ...; InternLM2 LLMs converted to Llama
with `conversion.internlm2_llama`, as transformers' port runs them), checks that both
give the same logits first, interleaves the runs (min of `--repeats`) and prints ratios (>1: this package faster /
smaller). Writes `--json` and, when matplotlib is installed, a PNG bar chart (`--png`).

    PYTHONPATH=src python benchmarks/bench_model.py --shape 1B --layers 4 --dtype float32 --attn sdpa --against upstream
    transformers-internvl bench --shape 1B --layers 4   # the same, through the console script
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

IMAGE_TOKEN_ID = 900  # any id inside the vocabulary; text tokens are drawn below it
TEXT_VOCAB = 800


def build_ours(shape: str, layers: int | None, dtype: torch.dtype, attn: str, device: str, vocab_size: int | None):
    from internvl_shapes import build_config

    from transformers_internvl.modeling.modeling_internvl import InternVLForConditionalGeneration

    config = build_config(shape, layers, vocab_size=vocab_size, attn_implementation=attn, image_token_id=IMAGE_TOKEN_ID)
    torch.manual_seed(0)
    with torch.device(device):
        model = InternVLForConditionalGeneration(config)
    return model.to(dtype).eval()


def upstream_state_dict(ours: Any) -> dict[str, torch.Tensor]:
    """Our (original-layout) weights under transformers' `InternVLForConditionalGeneration` names."""
    mapped = {}
    for key, value in ours.state_dict().items():
        if key.startswith("model.vision_model."):
            name = key.replace("model.vision_model.", "model.vision_tower.")
            name = name.replace("embeddings.class_embedding", "embeddings.cls_token")
            name = name.replace("embeddings.position_embedding", "embeddings.position_embeddings")
            name = name.replace("embeddings.patch_embedding.", "embeddings.patch_embeddings.projection.")
            name = name.replace("encoder.layers.", "encoder.layer.")
            name = name.replace(".ls1", ".lambda_1").replace(".ls2", ".lambda_2")
            name = name.replace(".norm1.", ".layernorm_before.").replace(".norm2.", ".layernorm_after.")
            name = name.replace(".attn.proj.", ".attention.projection_layer.")
            name = name.replace(".attn.q_norm.", ".attention.q_norm.").replace(".attn.k_norm.", ".attention.k_norm.")
            if ".attn.qkv." in name:
                for part, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                    mapped[name.replace(".attn.qkv.", f".attention.{part}.")] = chunk
                continue
            mapped[name] = value
        elif key.startswith("model.mlp1."):
            index, rest = key[len("model.mlp1.") :].split(".", 1)
            target = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}[index]
            mapped[f"model.multi_modal_projector.{target}.{rest}"] = value
        else:
            mapped[key] = value
    return mapped


def build_upstream(ours: Any, attn: str):
    """transformers' own port with `ours`' weights (Qwen2 / Llama-family LLMs)."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    vision = ours.config.vision_config
    text_config = ours.config.text_config
    internlm2 = text_config.model_type == "internlm2"
    if internlm2:  # transformers has no InternLM2: its port runs these checkpoints as Llama (converted weights)
        from transformers_internvl.conversion.internlm2_llama import internlm2_config_to_llama

        text_config = internlm2_config_to_llama(text_config)
        text_config.architectures = ["LlamaForCausalLM"]
    config = InternVLConfig(
        vision_config=dict(
            hidden_size=vision.hidden_size,
            num_hidden_layers=vision.num_hidden_layers,
            num_attention_heads=vision.num_attention_heads,
            intermediate_size=vision.intermediate_size,
            image_size=[vision.image_size] * 2,
            patch_size=[vision.patch_size] * 2,
            attention_bias=vision.qkv_bias,
            use_qk_norm=vision.qk_normalization,
            norm_type=vision.norm_type,
            layer_norm_eps=vision.layer_norm_eps,
            hidden_act=vision.hidden_act,
            use_mean_pooling=True,
        ),
        text_config=text_config.to_dict(),
        image_token_id=IMAGE_TOKEN_ID,
        image_seq_length=ours.config.num_image_token,
        downsample_ratio=ours.config.downsample_ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    config._attn_implementation = attn
    config.vision_config._attn_implementation = attn
    config.text_config._attn_implementation = attn
    # Built on the device (not "meta"): rotary `inv_freq` buffers are not in the state dict.
    parameter = next(ours.parameters())
    with torch.device(parameter.device):
        model = InternVLForConditionalGeneration(config).to(parameter.dtype)
    state = upstream_state_dict(ours)
    if internlm2:
        from transformers_internvl.conversion.internlm2_llama import internlm2_state_dict_to_llama

        state = internlm2_state_dict_to_llama(state, ours.config.text_config, prefix="model.language_model.")
    missing = set(model.state_dict()) - set(state)
    unexpected = set(state) - set(model.state_dict())
    if missing or unexpected:
        raise SystemExit(
            f"weight mapping incomplete: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def image_prompt(tiles: int, num_image_token: int, batch: int = 1, text: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(tiles)
    before = torch.randint(1, TEXT_VOCAB, (batch, 8), generator=generator)
    after = torch.randint(1, TEXT_VOCAB, (batch, text), generator=generator)
    image = torch.full((batch, tiles * num_image_token), IMAGE_TOKEN_ID)
    return torch.cat([before, image, after], dim=1)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# Least time one timed sample should span (seconds; `--min-sample-ms`): a call shorter than that (a 9 ms one-tile
# vision forward on a GPU) is repeated back to back within the sample and its mean taken, so that timer resolution,
# launch jitter and one stray interruption weigh little. 0: every sample is one call.
MIN_SAMPLE_SECONDS = 0.05
_MAX_INNER = 64


def _timed_rows(device: str, calls: dict[str, Callable[[], Any]]) -> Callable[[], dict[str, float]]:
    """A runner that runs `calls` in order and returns {name: ms per call}.

    Its first run is the warm-up (its values are not kept by `run`): a call that takes less than
    `MIN_SAMPLE_SECONDS` runs a second time, and that time fixes how many back-to-back calls (`inner`, 1 to 64) make
    one sample of at least `MIN_SAMPLE_SECONDS`; later runs time `inner` calls and report the mean. Each model is
    calibrated from its own warm-up; calls as long as a sample cost no extra warm-up.
    """
    inner: dict[str, int] = {}

    def run() -> dict[str, float]:
        out = {}
        for name, call in calls.items():
            if name not in inner:
                once = timed(call, device)
                if once < MIN_SAMPLE_SECONDS:
                    once = timed(call, device)
                inner[name] = max(1, min(_MAX_INNER, math.ceil(MIN_SAMPLE_SECONDS / max(once, 1e-9))))
                out[name] = once * 1000
                continue
            count = inner[name]
            out[name] = timed(lambda c=call, k=count: [c() for _ in range(k)], device) / count * 1000
        return out

    return run


def warm_up_device(device: str, seconds: float = 2.0) -> None:
    """Keep an accelerator busy for `seconds` (matrix products) so that its clocks are up before the first timed row;
    the models are built on the host meanwhile, and an idle GPU starts the first measurement at a lower clock."""
    if not device.startswith("cuda"):
        return
    a = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(8):
            a @ a
        torch.cuda.synchronize()


# The clock `timed` reads: wall time by default; `--timer cpu` reads the CPU time of this process instead, which does
# not advance while other processes hold the cores (a shared machine), only while this one computes. With
# `--threads 1` it is the compute time of the one thread that runs the kernels; with more threads it also counts the
# OpenMP workers' spinning, so use it with one thread.
CLOCK: Callable[[], float] = time.perf_counter


def timed(function: Callable[[], Any], device: str) -> float:
    _sync(device)
    start = CLOCK()
    function()
    _sync(device)
    return CLOCK() - start


def vision_call(model: Any, pixel_values: torch.Tensor, upstream: bool) -> Callable[[], Any]:
    if upstream:
        return lambda: model.model.get_image_features(pixel_values=pixel_values)
    return lambda: model.get_image_features(pixel_values)


def ttft_call(model: Any, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> Callable[[], Any]:
    mask = torch.ones_like(input_ids)
    return lambda: model.generate(
        input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values, max_new_tokens=1, do_sample=False
    )


def decode_call(model: Any, input_ids: torch.Tensor, new_tokens: int, static: bool = False) -> Callable[[], Any]:
    mask = torch.ones_like(input_ids)
    extra = {"cache_implementation": "static"} if static else {}
    return lambda: model.generate(
        input_ids=input_ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        **extra,
    )


def check_logits(ours: Any, upstream: Any, device: str) -> float:
    """Max |logits difference| of the two float32 models on one image prompt; stops the run past 1e-4 (relative)."""
    pixel_values = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(1)).to(device)
    input_ids = image_prompt(1, ours.config.num_image_token).to(device)
    with torch.inference_mode():
        a = ours(input_ids=input_ids, pixel_values=pixel_values).logits.float()
        b = upstream(input_ids=input_ids, pixel_values=pixel_values).logits.float()
    difference = (a - b).abs().max().item()
    scale = max(1.0, b.abs().max().item())
    tolerance = 1e-4 * scale
    if not difference <= tolerance:
        raise SystemExit(f"logits differ by {difference:.3g} (> {tolerance:.3g}): the weight mapping is wrong")
    return difference


MEMORY_CHILD = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import bench_model as b
args = json.loads(sys.argv[2])
dtype = getattr(torch, args["dtype"])
model = b.build_ours(args["shape"], args["layers"], dtype, args["attn"], "cpu", args["vocab_size"])
if args["which"] == "upstream":
    model = b.build_upstream(model, args["attn"])
import ctypes, gc
pixel_values = torch.randn(args["tiles"], 3, 448, 448).to(dtype)
input_ids = b.image_prompt(args["tiles"], 256)
with torch.inference_mode():  # a first run: one-time set-up (kernels' scratch, libraries) is not the step's memory
    b.ttft_call(model, input_ids, pixel_values)()
# Give freed memory (our model, for the upstream run; construction and warm-up temporaries) back to the OS, so that
# the step's allocations show as growth on both sides alike.
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
print(json.dumps({"peak_mib": b.peak_rss_growth(lambda: b.ttft_call(model, input_ids, pixel_values)())}))
"""


def _rss_bytes() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def peak_rss_growth(function: Callable[[], Any]) -> float:
    """Peak resident-set growth (MiB) while `function` runs: Linux's own high-water mark (`VmHWM`), reset first by
    writing 5 to `/proc/self/clear_refs`, so that no short peak is missed (the sampler below may miss one between two
    samples). Falls back to `sampled_peak_rss_growth` where the reset is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
    except OSError:
        return sampled_peak_rss_growth(function)
    before = _status_mib("VmRSS")
    if _status_mib("VmHWM") > before + 1:  # the reset did not take
        return sampled_peak_rss_growth(function)
    with torch.inference_mode():
        function()
    return _status_mib("VmHWM") - before


def sampled_peak_rss_growth(function: Callable[[], Any], interval: float = 0.002) -> float:
    """Peak resident-set growth (MiB) while `function` runs, sampled every `interval` s (`ru_maxrss` is a
    high-water mark of the whole process, which model construction may already have set)."""
    import threading

    before, peak, done = _rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        with torch.inference_mode():
            function()
    finally:
        done.set()
        thread.join()
    return (max(peak[0], _rss_bytes()) - before) / 2**20


def cpu_peak_memory(args: argparse.Namespace, which: str) -> float:
    payload = json.dumps(
        {
            "shape": args.shape,
            "layers": args.layers,
            "dtype": args.dtype,
            "attn": args.attn,
            "vocab_size": args.vocab_size,
            "tiles": args.ttft_tiles,
            "which": which,
        }
    )
    # One torch thread (the timing runs' setting) and glibc's mmap threshold fixed at 128 KiB: every tensor-sized block
    # is mapped on allocation and unmapped when freed, so the resident set follows the live tensors rather than the
    # heap's history (glibc otherwise raises the threshold as blocks are freed, and the step's figure moves by tens of
    # MiB from one process to the next).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, os.path.dirname(os.path.abspath(__file__)), payload],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    dtype = getattr(torch, args.dtype)
    device = args.device
    # Built and compared in float32 (a deep bf16 stack of random weights drifts between two correct implementations
    # by more than any fixed tolerance), then cast to the benchmarked dtype.
    models = {"ours": build_ours(args.shape, args.layers, torch.float32, args.attn, device, args.vocab_size)}
    result: dict[str, Any] = {
        "config": vars(args).copy(),
        "device_name": _device_name(device),
        "rows": {},  # min over the repeats
        "rows_median": {},
        "times": {},  # every timed run (ms), in the order run
    }
    if args.against == "upstream":
        models["upstream"] = build_upstream(models["ours"], args.attn)
        result["logits_max_abs_diff_float32"] = check_logits(models["ours"], models["upstream"], device)
        print(
            f"logits check (float32, one image prompt): max |ours - port| = {result['logits_max_abs_diff_float32']:.3g}",
            flush=True,
        )
    models = {which: model.to(dtype) for which, model in models.items()}
    if args.control:  # a second, identical copy of this package's model: the ratio to it is the noise floor
        models["control"] = build_ours(args.shape, args.layers, dtype, args.attn, device, args.vocab_size)
    num_image_token = models["ours"].config.num_image_token
    # Each measurement gives, per model, a runner that returns {row name: ms}; a decode runner times its prefill-only
    # and its full generate back to back, so that the tokens/s of one round come from one moment of the machine.
    measurements: dict[str, Callable[[Any, bool], Callable[[], dict[str, float]]]] = {}
    for tiles in args.vision_tiles:
        pixels = torch.randn(tiles, 3, 448, 448).to(device, dtype)
        name = f"vision {tiles} tiles (ms)"
        measurements[name] = lambda m, up, p=pixels, n=name: _timed_rows(device, {n: vision_call(m, p, up)})
    ttft_pixels = torch.randn(args.ttft_tiles, 3, 448, 448).to(device, dtype)
    ttft_ids = image_prompt(args.ttft_tiles, num_image_token).to(device)
    if args.ttft_tiles > 0:
        name = f"TTFT {args.ttft_tiles} tiles (ms)"
        measurements[name] = lambda m, up, n=name: _timed_rows(device, {n: ttft_call(m, ttft_ids, ttft_pixels)})
    for batch in args.decode_batches:
        ids = torch.randint(1, TEXT_VOCAB, (batch, 64), generator=torch.Generator().manual_seed(batch)).to(device)
        for suffix in ("", " static") if args.static_compile else ("",):
            static = bool(suffix)
            measurements[f"decode b{batch}{suffix}"] = lambda m, up, i=ids, b=batch, x=suffix, st=static: _timed_rows(
                device,
                {
                    f"decode b{b}{x} prefill (ms)": decode_call(m, i, 1, static=st),
                    f"decode b{b}{x} total (ms)": decode_call(m, i, args.decode_tokens + 1, static=st),
                },
            )
    if args.memory_only:
        measurements = {}
    warm_up_device(device)
    with torch.inference_mode():
        for make in measurements.values():
            runners = {which: make(model, which == "upstream") for which, model in models.items()}
            for runner in runners.values():  # warm-up
                runner()
            times: dict[str, dict[str, list[float]]] = {}
            order = list(runners)
            for repeat in range(args.repeats):  # interleaved, who goes first alternating
                for which in order if repeat % 2 == 0 else order[::-1]:
                    for name, value in runners[which]().items():
                        times.setdefault(name, {w: [] for w in models})[which].append(value)
            for name, values in times.items():
                result["rows"][name] = {which: min(v) for which, v in values.items()}
                result["rows_median"][name] = {which: statistics.median(v) for which, v in values.items()}
                result["times"][name] = values
                print(
                    f"  {name}: "
                    + ", ".join(
                        f"{w} min {v:.1f} median {result['rows_median'][name][w]:.1f}"
                        for w, v in result["rows"][name].items()
                    ),
                    flush=True,
                )
    for rows in (result["rows"], result["rows_median"]):
        for batch in args.decode_batches:
            for suffix in ("", " static"):
                total = rows.get(f"decode b{batch}{suffix} total (ms)")
                if total is None:
                    continue
                prefill = rows[f"decode b{batch}{suffix} prefill (ms)"]
                rows[f"decode b{batch}{suffix} (tokens/s)"] = {
                    w: batch * args.decode_tokens / max(total[w] - prefill[w], 1e-9) * 1000 for w in models
                }
    rows = result["rows"]
    if device.startswith("cuda"):
        peaks = {}
        for which, model in models.items():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            with torch.inference_mode():
                ttft_call(model, ttft_ids, ttft_pixels)()
            peaks[which] = (torch.cuda.max_memory_allocated() - base) / 2**20
        rows[f"peak memory TTFT {args.ttft_tiles} tiles (MiB)"] = peaks
    elif not args.no_memory and args.ttft_tiles > 0:
        rows[f"peak memory TTFT {args.ttft_tiles} tiles (MiB)"] = {
            w: cpu_peak_memory(args, w) for w in models if w != "control"
        }
    for name, values in rows.items():  # memory is measured once per side: its "median" is that one value
        result["rows_median"].setdefault(name, values)
    if "upstream" in models:
        result["ratios"] = _ratios(rows)
        result["ratios_median"] = _ratios(result["rows_median"])
        result["ratios_paired"] = paired_ratios(result)
    if "control" in models:
        result["control_ratios"] = _ratios(result["rows"], "control")
        result["control_ratios_median"] = _ratios(result["rows_median"], "control")
        result["control_ratios_paired"] = paired_ratios(result, "control")
    return result


def paired_ratios(result: dict[str, Any], other: str = "upstream") -> dict[str, dict[str, float]]:
    """Per-round ratios (round i of this package against round i of `other`, run next to each other), summarised as
    min / median / max: robust to load that drifts over the minutes a row takes, which the ratio of the two
    minima is not. Decode tokens/s of round i come from that round's prefill-only and full runs."""
    times, config = result["times"], result["config"]
    paired: dict[str, list[float]] = {}
    for name, values in times.items():
        if other in values and "total" not in name and "prefill" not in name:
            paired[name] = [theirs / ours for ours, theirs in zip(values["ours"], values[other], strict=True)]
    for batch in config["decode_batches"]:
        for suffix in ("", " static"):
            total, prefill = (
                times.get(f"decode b{batch}{suffix} total (ms)"),
                times.get(f"decode b{batch}{suffix} prefill (ms)", times.get(f"decode b{batch} prefill (ms)")),
            )
            if total is None or prefill is None or other not in total:
                continue
            speed = {
                w: [batch * config["decode_tokens"] * 1000 / max(t - p, 1e-9) for t, p in zip(total[w], prefill[w])]
                for w in ("ours", other)
            }
            paired[f"decode b{batch}{suffix} (tokens/s)"] = [a / b for a, b in zip(speed["ours"], speed[other])]
    return {
        name: {"min": min(r), "median": statistics.median(r), "max": max(r), "rounds": len(r)}
        for name, r in paired.items()
    }


def _ratios(rows: dict[str, dict[str, float]], other: str = "upstream") -> dict[str, float]:
    """other / ours for times and memory, ours / other for tokens/s: > 1 means this package is better."""
    ratios = {}
    for name, values in rows.items():
        if other not in values:
            continue
        higher_is_better = "tokens/s" in name
        numerator, denominator = (
            (values["ours"], values[other]) if higher_is_better else (values[other], values["ours"])
        )
        ratios[name] = numerator / denominator if denominator > 0 else float("nan")
    return ratios


def _llm_parameter_bytes(args: argparse.Namespace) -> int:
    """Bytes of LLM weights one decode step reads (for the HBM roofline), from the config alone."""
    from internvl_shapes import build_config

    text = build_config(args.shape, args.layers, vocab_size=args.vocab_size).text_config
    hidden, layers, inter = text.hidden_size, text.num_hidden_layers, text.intermediate_size
    head_dim = hidden // text.num_attention_heads
    attention = hidden * head_dim * (2 * text.num_attention_heads + 2 * text.num_key_value_heads)
    per_layer = attention + 3 * hidden * inter + 2 * hidden
    size = torch.finfo(getattr(torch, args.dtype)).bits // 8
    return (layers * per_layer + text.vocab_size * hidden) * size


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores visible, {torch.get_num_threads()} torch threads)"


def plot(result: dict[str, Any], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ratios = result.get("ratios")
    if not ratios:
        return False
    names = list(ratios)
    figure, axis = plt.subplots(figsize=(8, 0.4 * len(names) + 1.5))
    axis.barh(names, [ratios[n] for n in names], color=["tab:green" if ratios[n] >= 1 else "tab:red" for n in names])
    axis.axvline(1.0, color="black", linewidth=1)
    config = result["config"]
    axis.set_title(
        f"InternVL2.5-{config['shape']} ({config['layers']} layers), {config['dtype']}, {config['attn']}: "
        "speed-up over transformers' port",
        fontsize=9,
    )
    axis.set_xlabel("ratio (>1: transformers-internvl better)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return True


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an int >= `minimum` (a 0-layer model, 0 tiles or 0 repeats would time nothing, silently)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of milliseconds >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of milliseconds >= 0, got {text!r}")
    return value


def check_output_folders(args: argparse.Namespace) -> None:
    """Fail before the (minutes-long) run, not after it, when `--json` / `--png` point into a missing folder."""
    for option, path in (("--json", args.json), ("--png", args.png)):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise SystemExit(f"{option} {path}: folder {os.path.dirname(os.path.abspath(path))} does not exist")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="On a shared CPU machine add `--timer cpu --threads 1 --control` (benchmarks/README.md).",
    )
    parser.add_argument(
        "--shape", default="1B", choices=["1B", "2B", "4B", "8B", "26B", "38B", "78B"], help="default: 1B"
    )
    parser.add_argument(
        "--layers", type=_int_at_least(1), help="truncate both towers to this many layers (default: all)"
    )
    parser.add_argument(
        "--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"], help="default: bfloat16"
    )
    parser.add_argument(
        "--attn",
        default="sdpa",
        choices=["eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4"],
        help="attention implementation for both towers (default: sdpa)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--against", choices=["upstream"], help="compare with transformers' own InternVL port")
    parser.add_argument("--vision-tiles", type=_int_at_least(1), nargs="+", default=[1, 7, 13], help="default: 1 7 13")
    parser.add_argument(
        "--ttft-tiles",
        type=_int_at_least(0),
        default=13,
        help="tiles of the time-to-first-token image (default: 13); 0: skip the TTFT and memory rows",
    )
    parser.add_argument(
        "--decode-batches",
        type=_int_at_least(1),
        nargs="*",
        default=[1, 8],
        help="decode batch sizes (default: 1 8); the flag with no value skips the decode rows",
    )
    parser.add_argument("--decode-tokens", type=_int_at_least(1), default=32, help="default: 32")
    parser.add_argument("--static-compile", action="store_true", help="also time decode with a static cache")
    parser.add_argument(
        "--vocab-size",
        type=_int_at_least(IMAGE_TOKEN_ID + 1),
        help=f"override the LLM vocabulary (smaller: faster set-up; > {IMAGE_TOKEN_ID}, the image token id)",
    )
    parser.add_argument("--repeats", type=_int_at_least(1), default=3, help="timed rounds per row (default: 3)")
    parser.add_argument(
        "--min-sample-ms",
        type=_milliseconds,
        default=50.0,
        help="repeat calls shorter than this back to back within one timed sample (mean per call); 0: one call",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="also time a second identical copy of this package's model (ratio to it: the noise floor of the run)",
    )
    parser.add_argument(
        "--timer",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time; cpu: CPU time of this process (CPU only; robust to other load, use with --threads 1)",
    )
    parser.add_argument("--threads", type=_int_at_least(1), help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the CPU peak-memory child processes")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory rows (no timing)")
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    parser.add_argument("--png", metavar="PATH", help="bar chart of the ratios (needs matplotlib)")
    return parser


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    args = args or build_parser().parse_args(argv)
    check_output_folders(args)
    global CLOCK
    if args.timer == "cpu":
        if args.device != "cpu":
            raise SystemExit("--timer cpu: CPU time only measures CPU work; use the wall timer on an accelerator")
        CLOCK = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    global MIN_SAMPLE_SECONDS
    MIN_SAMPLE_SECONDS = max(args.min_sample_ms, 0.0) / 1000
    print(
        f"InternVL2.5-{args.shape}, layers={args.layers}, {args.dtype}, {args.attn}, {args.device}, "
        f"{torch.get_num_threads()} threads, {args.timer} timer",
        flush=True,
    )
    result = run(args)
    result["command"] = " ".join(["python", *sys.argv])
    result["llm_parameter_bytes"] = _llm_parameter_bytes(args)
    for name, values in result["rows"].items():
        if "(ms)" not in name:  # the timed rows were printed as they ran; these are derived or measured once
            print(f"  {name}: " + ", ".join(f"{which} {value:.1f}" for which, value in values.items()))
    for name, ratio in result.get("ratios", {}).items():
        print(f"ratio {name}: min {ratio:.3f}, median {result['ratios_median'][name]:.3f}")
    for name, summary in result.get("ratios_paired", {}).items():
        print(
            f"paired per-round ratio {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items() if k != "rounds")
        )
    for name, ratio in result.get("control_ratios", {}).items():
        print(f"control (noise floor) {name}: min {ratio:.3f}, median {result['control_ratios_median'][name]:.3f}")
    if args.json:
        with open(args.json + ".tmp", "w") as file:
            json.dump(result, file, indent=1)
        os.replace(args.json + ".tmp", args.json)
    if args.png and not plot(result, args.png):
        print("no PNG written (matplotlib missing or no comparison)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
