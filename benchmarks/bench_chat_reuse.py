"""Time to first token of a second `model.chat()` turn with the kept KV cache vs the first turn (issue 13).

Random weights at InternVL2.5-1B widths with `--layers` layers per tower, the small test tokenizer (LLM vocab cut to
its size), one image of `--tiles` tiles; time to first token = `chat(..., max_new_tokens=1)`. Prints the first turn,
the second turn with reuse and the second turn without (the original's behaviour), min of `--repeats`.

    PYTHONPATH=src python benchmarks/bench_chat_reuse.py --layers 4 --tiles 7
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
ROOT = Path(__file__).resolve().parents[1]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def main() -> int:
    from internvl_shapes import SHAPES, build_config

    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--shape", default="1B", choices=sorted(SHAPES), help="InternVL 2.5 widths")
    parser.add_argument("--layers", type=_positive, default=4, help="layers per tower")
    parser.add_argument("--tiles", type=_positive, default=7, help="tiles of the image")
    parser.add_argument("--repeats", type=_positive, default=3, help="timed conversations per mode (min reported)")
    parser.add_argument("--attn", default="sdpa", choices=["eager", "sdpa", "flex_attention"])
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from transformers_internvl.modeling.modeling_internvl import InternVLForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "tests" / "fixtures" / "tokenizers" / "qwen2-tiny")
    config = build_config(args.shape, args.layers, vocab_size=len(tokenizer), attn_implementation=args.attn)
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config).eval()
    pixel_values = torch.randn(args.tiles, 3, 448, 448)
    one_token = {"max_new_tokens": 1, "do_sample": False}
    history = [("<image>\nPlease describe the image shortly.", "A random picture of noise in many colours.")]

    def turn(reuse: bool) -> tuple[float, float]:
        model.clear_chat_cache()
        model.reuse_chat_cache = reuse
        start = time.perf_counter()
        model.chat(tokenizer, pixel_values, history[0][0], one_token)
        first = time.perf_counter() - start
        start = time.perf_counter()
        model.chat(tokenizer, pixel_values, "What colours are in it?", one_token, history=tuple(history))
        return first, time.perf_counter() - start

    turn(True)  # warm-up
    results = {True: [], False: []}
    for _ in range(args.repeats):
        for reuse in (True, False):
            results[reuse].append(turn(reuse))
    first = min(r[0] for r in results[True] + results[False])
    second_reuse = min(r[1] for r in results[True])
    second_fresh = min(r[1] for r in results[False])
    print(
        f"InternVL2.5-{args.shape} widths, {args.layers}+{args.layers} layers, {args.tiles} tiles, {args.attn}, "
        f"fp32, {torch.get_num_threads()} threads"
    )
    print(f"first turn TTFT            {first * 1000:8.0f} ms")
    print(f"second turn, cache reused  {second_reuse * 1000:8.0f} ms  ({second_reuse / first:.3f}x first turn)")
    print(f"second turn, re-run (orig) {second_fresh * 1000:8.0f} ms  ({second_fresh / first:.3f}x first turn)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
