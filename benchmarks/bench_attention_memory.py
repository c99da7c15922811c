"""Peak memory of the eager attention path on CPU (issue 13): InternViT-300M widths (InternVL2.5-1B) on 7 tiles and an
InternLM2 block on a long prompt, each in a fresh process; peak RSS growth (`resource.ru_maxrss`) over the
process after model construction, in MiB.

    PYTHONPATH=src python benchmarks/bench_attention_memory.py [--layers 2] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import gc, json, resource, sys, torch
from transformers_internvl.modeling.configuration_intern_vit import InternVLVisionConfig
from transformers_internvl.modeling.modeling_intern_vit import InternVLVisionModel
from transformers_internvl.modeling.configuration_internlm2 import InternLM2Config
from transformers_internvl.modeling.modeling_internlm2 import InternLM2Model
which, layers, dtype, tiles, tokens = sys.argv[1], int(sys.argv[2]), getattr(torch, sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(0)
if which == "vision":
    config = InternVLVisionConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                  num_hidden_layers=layers, qkv_bias=True, norm_type="layer_norm")
    config._attn_implementation = "eager"
    model = InternVLVisionModel(config).to(dtype).eval()
    inputs = dict(pixel_values=torch.randn(tiles, 3, 448, 448, dtype=dtype))
else:
    config = InternLM2Config(hidden_size=2048, intermediate_size=8192, num_attention_heads=16, num_key_value_heads=8,
                             num_hidden_layers=layers, vocab_size=1000)
    config._attn_implementation = "eager"
    model = InternLM2Model(config).to(dtype).eval()
    inputs = dict(input_ids=torch.randint(0, 1000, (1, tokens)), use_cache=False)
gc.collect()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.inference_mode():
    model(**inputs)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_growth_mib": (after - before) / 1024}))
"""


def measure(src: str, which: str, layers: int, dtype: str, tiles: int, tokens: int) -> float:
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, which, str(layers), dtype, str(tiles), str(tokens)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_growth_mib"]


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--src", action="append", help="source tree(s) to compare (default: this tree's src)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tiles", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=2048)
    args = parser.parse_args()
    sources = args.src or [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")]
    for src in sources:
        vision = measure(src, "vision", args.layers, args.dtype, args.tiles, args.tokens)
        llm = measure(src, "llm", args.layers, args.dtype, args.tiles, args.tokens)
        print(
            f"{src}: vision {args.tiles} tiles {vision:.0f} MiB, InternLM2 {args.tokens} tokens {llm:.0f} MiB "
            f"({args.layers} layers, {args.dtype}, eager; peak RSS growth during one forward)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
