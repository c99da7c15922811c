"""The `convert` subcommand of `transformers-internvl` (also `python -m transformers_internvl.conversion`)."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from ..command_errors import run_handler

# Kept here (not imported from `.convert`, which imports torch and the model code) so that building the CLI parser
# stays cheap for commands that need no model (`tiles` starts in well under a second); `.convert` checks they agree.
DTYPE_NAMES = ("bf16", "fp16", "fp32")
DEFAULT_MAX_SHARD_SIZE = "5GB"

EXAMPLES = """\
examples:
  transformers-internvl convert InternVL2_5-8B InternVL2_5-8B-hf --to hf
  transformers-internvl convert InternVL2_5-8B-hf InternVL2_5-8B-back --to original --dtype bf16 --verify
"""


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_convert(args: argparse.Namespace) -> int:
    """Handler of `convert`: converts, prints where it wrote and, with --verify, the comparison; 1 on failure."""
    from ..registration import register_all
    from .convert import convert_checkpoint

    # The console script skips registration at import (fast `tiles`); reading InternLM2 checkpoints and the source's
    # tokenizer needs it (without it, InternLM2 sources were refused as an unsupported LLM).
    register_all()
    # A terminated run cleans up its temporary folder like Ctrl-C does (SIGKILL cannot be caught; it leaves only the
    # hidden temporary folder beside DST, never DST).
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        result = convert_checkpoint(
            args.src,
            args.dst,
            to=args.to,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            force=args.force,
            verify=args.verify,
            image_token_id=args.image_token_id,
            merge_lora=args.merge_lora,
            progress=not args.quiet,
            template=args.template,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    size_gb = result.total_bytes / 1e9
    print(f"wrote {result.path} ({result.num_tensors} tensors, {size_gb:.3f} GB in {len(result.shards)} shard(s))")
    if result.verification is not None:
        report = result.verification
        print(
            f"verify ({report['dtype']}): max|Δlogits| = {report['max_abs_logits_diff']:.3g} "
            f"(tolerance {report['tolerance']:g}), greedy tokens {'match' if report['greedy_tokens_match'] else 'differ'}"
        )
    sys.stdout.flush()
    return 0


DESCRIPTION = (
    "Convert an InternVL checkpoint between the original OpenGVLab layout (model_type internvl_chat) and the layout "
    "of transformers' built-in InternVL port (model_type internvl, '-hf' repositories). Tensors are streamed shard by "
    "shard; the output appears at DST only when complete."
)


def add_convert_command(subparsers: Any) -> None:
    """Add `convert` to the subcommands of `transformers-internvl` (the console script's parser)."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a checkpoint between the original layout and transformers' -hf layout",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="source checkpoint folder (or hub id, when online)")
    parser.add_argument("dst", metavar="DST", help="output folder (must not exist unless --force)")
    parser.add_argument("--to", required=True, choices=("hf", "original"), help="target layout")
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), help="cast floating tensors (default: keep)")
    parser.add_argument(
        "--max-shard-size",
        default=DEFAULT_MAX_SHARD_SIZE,
        help=f"largest output shard (default {DEFAULT_MAX_SHARD_SIZE})",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing DST")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="load source and result, compare logits and greedy tokens on a random image + prompt "
        "(exit 1 above tolerance: 1e-5 in fp32)",
    )
    parser.add_argument("--image-token-id", type=int, help="id of <IMG_CONTEXT> when SRC does not tell it")
    parser.add_argument(
        "--merge-lora", metavar="ADAPTER", help="PEFT LoRA adapter folder (trained on SRC's model) to merge in"
    )
    parser.add_argument(
        "--template",
        help="--to original: the conversation template config.json names (e.g. internvl2_5, Hermes-2, phi3-chat, "
        "internvl3_5_gpt_oss); default: the recorded one, else the one SRC's chat template renders as",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_convert)


def main(argv: list[str] | None = None) -> int:
    """`python -m transformers_internvl.conversion SRC DST --to hf|original [...]`: the `convert` command on its own
    (without the console script's other commands). Exit codes as `transformers-internvl convert`: 0 done, 1 on an
    error (printed as one line; `--traceback` shows it whole), 2 on a usage error, 130 on Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m transformers_internvl.conversion",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error instead of one line"
    )
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_request:  # --help and usage errors (argparse prints them)
            return exit_request.code if isinstance(exit_request.code, int) else 1
        return run_handler(run_convert, args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


__all__ = ["add_convert_command", "main", "run_convert"]
