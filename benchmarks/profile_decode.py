"""Where one decoding step's time goes: this package against transformers' own InternVL port (issue 13).

Both models are built as in `bench_model.py --against upstream` (random weights at a real InternVL 2.5 shape, the same
weights in both, same process, one torch thread) and decode the same text prompt (64 tokens, greedy, `--tokens` new
tokens). Per decoding step ((1 + N)-token `generate` minus 1-token `generate`, divided by N) it prints:

1. the aten operations (`torch.profiler`): count and self CPU time per step, for both models; operations whose count
   differs are marked;
2. the Python function calls (`cProfile`): total per step and every function whose count differs;
3. the step time (CPU time, interleaved rounds, min / median) next to the LM head's GEMM alone (the same
   `F.linear` on the model's head weight), i.e. how much of a step any wrapper or framework change can reach;
   A control copy of this package's model (built last) is timed with them: its ratio to ours is the noise floor;
4. with `--huge-pages`: the step time when this package's LLM weights are moved into transparent huge pages
   (`madvise(MADV_HUGEPAGE)`, Linux) while the port and the control keep ordinary pages. The computation and its
   logits are unchanged (checked); only the memory placement differs.

    PYTHONPATH=src python benchmarks/profile_decode.py --shape 1B --layers 2 --dtype float32 --attn sdpa --batch 1
"""

from __future__ import annotations

import argparse
import cProfile
import mmap
import os
import pstats
import statistics
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_model  # noqa: E402

PROMPT_TOKENS = 64


def _generate(model: Any, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    return bench_model.decode_call(model, input_ids, new_tokens)()


def aten_per_step(model: Any, input_ids: torch.Tensor, tokens: int) -> dict[str, tuple[float, float]]:
    """{aten op: (calls per step, self CPU microseconds per step)}."""
    from torch.profiler import ProfilerActivity, profile

    totals = {}
    for new_tokens in (1, tokens + 1):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            _generate(model, input_ids, new_tokens)
        totals[new_tokens] = {e.key: (e.count, e.self_cpu_time_total) for e in prof.key_averages()}
    one, many = totals[1], totals[tokens + 1]
    return {
        key: (
            (many.get(key, (0, 0))[0] - one.get(key, (0, 0))[0]) / tokens,
            (many.get(key, (0, 0))[1] - one.get(key, (0, 0))[1]) / tokens,
        )
        for key in set(one) | set(many)
    }


def python_calls_per_step(model: Any, input_ids: torch.Tensor, tokens: int) -> dict[str, float]:
    """{file:line:function: calls per step}."""
    counts = {}
    for new_tokens in (1, tokens + 1):
        profiler = cProfile.Profile()
        profiler.enable()
        _generate(model, input_ids, new_tokens)
        profiler.disable()
        counts[new_tokens] = {
            f"{os.path.basename(k[0])}:{k[1]}:{k[2]}": v[1] for k, v in pstats.Stats(profiler).stats.items()
        }
    one, many = counts[1], counts[tokens + 1]
    return {key: (many.get(key, 0) - one.get(key, 0)) / tokens for key in set(one) | set(many)}


def step_times(
    models: dict[str, Any], input_ids: torch.Tensor, tokens: int, repeats: int
) -> dict[str, tuple[list[float], list[float]]]:
    """{model: (prefill-only ms, full ms)} per round (CPU time); rounds interleaved, the order alternating, and each
    round's prefill-only and full `generate` back to back (as `bench_model.py` times decode)."""
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in models}
    for repeat in range(repeats):
        for name in list(models) if repeat % 2 == 0 else list(models)[::-1]:
            start = time.process_time()
            _generate(models[name], input_ids, 1)
            middle = time.process_time()
            _generate(models[name], input_ids, tokens + 1)
            end = time.process_time()
            times[name][0].append((middle - start) * 1000)
            times[name][1].append((end - middle) * 1000)
    return times


def head_gemm_ms(model: Any, batch: int, repeats: int = 7) -> float:
    weight = model.lm_head.weight
    hidden = torch.randn(batch, 1, weight.shape[1]).to(weight.dtype)
    torch.nn.functional.linear(hidden, weight)
    runs = []
    for _ in range(repeats):
        start = time.process_time()
        torch.nn.functional.linear(hidden, weight)
        runs.append(time.process_time() - start)
    return min(runs) * 1000


_HUGE_PAGE = 2 << 20
_keep_alive: list[mmap.mmap] = []


def _huge_page_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of `tensor` in a 2 MiB-aligned anonymous mapping advised for transparent huge pages."""
    size = tensor.numel() * tensor.element_size()
    mapping = mmap.mmap(-1, size + 2 * _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mapping.madvise(mmap.MADV_HUGEPAGE)
    raw = torch.frombuffer(mapping, dtype=torch.uint8)
    offset = (-raw.data_ptr()) % _HUGE_PAGE
    copy = raw[offset : offset + size].view(tensor.dtype).view(tensor.shape)
    copy.copy_(tensor)
    _keep_alive.append(mapping)
    return copy


def move_llm_weights_to_huge_pages(model: Any, min_bytes: int = 4 << 20) -> int:
    """Moves the LLM's and the head's parameters of at least `min_bytes` into huge pages; returns the bytes moved."""
    moved = 0
    with torch.no_grad():
        parameters = dict(model.model.language_model.named_parameters())
        parameters["lm_head.weight"] = model.lm_head.weight
        for parameter in {id(p): p for p in parameters.values()}.values():
            size = parameter.numel() * parameter.element_size()
            if size >= min_bytes:
                parameter.data = _huge_page_copy(parameter.data)
                moved += size
    return moved


def _anon_huge_mib() -> float:
    with open("/proc/self/smaps_rollup") as file:
        for line in file:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def print_profiles(models: dict[str, Any], input_ids: torch.Tensor, tokens: int) -> None:
    """Sections 1 and 2: aten operations and Python calls per decoding step, this package against the port."""
    aten = {name: aten_per_step(model, input_ids, tokens) for name, model in models.items()}
    keys = sorted(set(aten["ours"]) | set(aten["port"]), key=lambda k: -aten["port"].get(k, (0, 0))[1])
    print("\n1. aten operations per decoding step (self CPU time; the profiler's own cost included)")
    print(f"{'operation':48s} {'ours n':>7s} {'ours us':>9s} {'port n':>7s} {'port us':>9s}")
    for key in keys:
        (n_ours, t_ours), (n_port, t_port) = aten["ours"].get(key, (0, 0)), aten["port"].get(key, (0, 0))
        if n_ours or n_port:
            mark = "  <- count differs" if abs(n_ours - n_port) > 1e-9 else ""
            print(f"{key[:48]:48s} {n_ours:7.2f} {t_ours:9.1f} {n_port:7.2f} {t_port:9.1f}{mark}")
    for name in models:
        print(f"{name}: {sum(n for n, _ in aten[name].values()):.1f} operations per step")

    calls = {name: python_calls_per_step(model, input_ids, tokens) for name, model in models.items()}
    print("\n2. Python function calls per decoding step")
    for name in models:
        print(f"{name}: {sum(calls[name].values()):.1f}")
    for key in sorted(set(calls["ours"]) | set(calls["port"])):
        a, b = calls["ours"].get(key, 0), calls["port"].get(key, 0)
        if abs(a - b) > 1e-9:
            print(f"  {key[:80]:80s} ours {a:6.2f} port {b:6.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="1B")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per profiled / timed generate")
    parser.add_argument("--repeats", type=int, default=6, help="timed rounds for the step times")
    parser.add_argument("--huge-pages", action="store_true", help="also time this package with huge-page weights")
    parser.add_argument("--times-only", action="store_true", help="skip the operation and call profiles (1 and 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    ours = bench_model.build_ours(args.shape, args.layers, torch.float32, args.attn, "cpu", None)
    port = bench_model.build_upstream(ours, args.attn).to(dtype)
    ours = ours.to(dtype)
    models = {"ours": ours, "port": port}
    generator = torch.Generator().manual_seed(args.batch)
    input_ids = torch.randint(1, bench_model.TEXT_VOCAB, (args.batch, PROMPT_TOKENS), generator=generator)
    print(f"{args.shape}, {args.layers} layers, {args.dtype}, {args.attn}, batch {args.batch}, 1 thread")
    with torch.inference_mode():
        outputs = {name: _generate(model, input_ids, args.tokens + 1) for name, model in models.items()}
        print(f"same tokens: {torch.equal(outputs['ours'], outputs['port'])}")

        if not args.times_only:
            print_profiles(models, input_ids, args.tokens)

        # A second copy of this package's model, built last: its ratio to ours is the noise floor of section 3.
        models["control"] = bench_model.build_ours(args.shape, args.layers, dtype, args.attn, "cpu", None)
        if args.huge_pages:
            before = _anon_huge_mib()
            moved = move_llm_weights_to_huge_pages(ours)
            print(
                f"\n{moved / 2**20:.0f} MiB of this package's LLM weights moved; anonymous huge pages "
                f"{before:.0f} -> {_anon_huge_mib():.0f} MiB"
            )
            same = torch.equal(_generate(ours, input_ids, args.tokens + 1), outputs["port"])
            logits_equal = torch.equal(ours(input_ids=input_ids).logits, port(input_ids=input_ids).logits)
            print(f"after the move: same tokens {same}, logits bit-identical to the port {logits_equal}")
        for model in models.values():  # warm-up
            _generate(model, input_ids, args.tokens + 1)
        times = step_times(models, input_ids, args.tokens, args.repeats)
        # ms per step: (full - prefill-only) / tokens, from the minima (as bench_model.py's rows) and per round.
        per_round = {n: [(t - p) / args.tokens for p, t in zip(*v, strict=True)] for n, v in times.items()}
        step = {n: (min(v[1]) - min(v[0])) / args.tokens for n, v in times.items()}
        print(f"\n3. ms per decoding step (CPU time, {args.repeats} interleaved rounds)")
        for name in times:
            print(
                f"{name:8s} from the minima {step[name]:8.2f}  per-round median {statistics.median(per_round[name]):8.2f}"
            )
        for name in (n for n in times if n != "ours"):
            paired = statistics.median(t / o for o, t in zip(per_round["ours"], per_round[name], strict=True))
            print(f"{name} / ours: from the minima {step[name] / step['ours']:.3f}, per-round median {paired:.3f}")
        head = head_gemm_ms(port, args.batch)
        shape = tuple(port.lm_head.weight.shape)
        print(
            f"LM head GEMM alone ({shape}, batch {args.batch}): {head:.2f} ms, {head / step['port']:.0%} of the port's step"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
