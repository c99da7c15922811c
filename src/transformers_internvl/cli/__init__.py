"""The `transformers-internvl` console script (also `python -m transformers_internvl`).

Subcommands, one module each:

- `tiles IMAGE` (`cli.tiles`): show how an image is cut into 448 px tiles (grid, boxes, thumbnail), optionally as a
  PNG (`draw_tile_plan`). Imports neither torch nor transformers.
- `chat MODEL_DIR` (`cli.chat`): talk to a model, one-shot (`--prompt`) or interactively, with streamed output,
  optional chain-of-thought prompting and majority voting.
- `convert SRC DST --to hf|original` (`conversion.command`): convert checkpoints between the original and
  transformers' `-hf` layouts.
- `filter IN.jsonl -o OUT.jsonl` (`training.filtering`): drop training samples with repetitive answers.
- `bench ...` (`cli.bench`): `benchmarks/bench_model.py` (source checkouts only).

`cli.app` builds the parser and runs a command (`main`); `cli.common` holds what the commands share (`CLIError`).
"""

from __future__ import annotations

from .app import build_parser, main
from .common import CLIError

__all__ = ["CLIError", "build_parser", "main"]
