"""The `transformers-internvl` console script (also `python -m transformers_internvl`).

Subcommands:

- `tiles IMAGE`: show how an image is cut into 448 px tiles (grid, boxes, thumbnail), optionally as a PNG.
- `chat MODEL_DIR`: talk to a model, one-shot (`--prompt`) or interactively, with streamed output, optional
  chain-of-thought prompting and majority voting.
- `convert SRC DST --to hf|original`: convert checkpoints between the original and transformers' `-hf` layouts.
- `filter IN.jsonl -o OUT.jsonl`: drop training samples with repetitive answers (`training.filtering`).
- `bench ...`: `benchmarks/bench_model.py` (source checkouts only).

Adding a subcommand is one function: write `_add_<name>_command(subparsers)` that creates its parser and sets
`handler`, then list it in `_COMMANDS`. A handler takes the parsed arguments and returns the exit code; it reports
user errors by raising `CLIError` (or letting `OSError` / `ValueError` through), which `main` prints as one line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PROG = "transformers-internvl"

# Defaults of InternVL 2.5 (README / config): 448 px tiles of 14 px patches, pixel unshuffle by 0.5.
_PATCH_SIZE = 14
_DOWNSAMPLE_RATIO = 0.5


class CLIError(Exception):
    """A user-facing error: printed as `transformers-internvl: error: <message>`, exit code 1."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _existing_file(path: str, what: str) -> Path:
    file = Path(path)
    if not file.exists():
        raise CLIError(f"{what} not found: {path}")
    if not file.is_file():
        raise CLIError(f"{what} is not a file: {path}")
    return file


def _open_image(path: str) -> Any:
    """The image at `path` as RGB PIL image, or a `CLIError` saying why it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    file = _existing_file(path, "image file")
    try:
        with Image.open(file) as image:
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise CLIError(f"cannot read image {path}: not an image format PIL can open") from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt files
        raise CLIError(f"cannot read image {path}: {error}") from None


def _new_file_mode(output: Path) -> int:
    """Permission bits for `output`: those of the file it replaces, else 0666 minus the user's umask."""
    try:
        return stat.S_IMODE(output.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _save_image_atomically(image: Any, output: Path) -> None:
    """Write `image` to `output` through a temporary file in the same folder, then rename."""
    from PIL import Image

    extension = output.suffix.lower()
    image_format = Image.registered_extensions().get(extension)
    if image_format is None:
        raise CLIError(f"cannot write {output}: unknown image file extension {extension or '(none)'!r}; use .png")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise CLIError(f"cannot write {output}: folder {folder} does not exist")
    mode = _new_file_mode(output)
    handle, temporary = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            image.save(file, format=image_format)
        # mkstemp creates the file 0600; give it the mode a plain `open(output, "wb")` would have.
        os.chmod(temporary, mode)
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------------------
# tiles
# ---------------------------------------------------------------------------------------------------------------


def _tokens_per_tile(image_size: int) -> int:
    return int((image_size // _PATCH_SIZE) ** 2 * _DOWNSAMPLE_RATIO**2)


def _plan_as_dict(plan: Any) -> dict[str, Any]:
    cols, rows = plan.grid
    return {
        "image_size": [plan.image_width, plan.image_height],
        "grid": [cols, rows],
        "resized_to": list(plan.target_size),
        "num_grid_tiles": cols * rows,
        "has_thumbnail": plan.has_thumbnail,
        "num_tiles": plan.num_tiles,
        "tile_boxes": [list(box) for box in plan.tile_boxes],
        "tile_size": plan.image_size,
        "num_image_tokens": plan.num_tiles * _tokens_per_tile(plan.image_size),
    }


def _format_plan(plan: Any) -> str:
    cols, rows = plan.grid
    thumbnail = " + thumbnail" if plan.has_thumbnail else ""
    lines = [
        f"image: {plan.image_width}x{plan.image_height}",
        f"grid: {cols}x{rows} (cols x rows), image resized to {plan.target_size[0]}x{plan.target_size[1]}",
        f"tiles: {plan.num_tiles} ({cols * rows} grid{thumbnail}), {plan.image_size}x{plan.image_size} each",
    ]
    for index, (left, top, right, bottom) in enumerate(plan.tile_boxes):
        lines.append(f"  tile {index}: box ({left}, {top}, {right}, {bottom})")
    if plan.has_thumbnail:
        lines.append(
            f"  tile {plan.num_tiles - 1}: thumbnail (whole image resized to {plan.image_size}x{plan.image_size})"
        )
    per_tile = _tokens_per_tile(plan.image_size)
    lines.append(f"image tokens: {plan.num_tiles} x {per_tile} = {plan.num_tiles * per_tile}")
    return "\n".join(lines)


def _run_tiles(args: argparse.Namespace) -> int:
    from .processing.tiling import draw_tile_plan, plan_tiles

    if args.min_tiles > args.max_tiles:
        raise CLIError(f"--min-tiles ({args.min_tiles}) must be <= --max-tiles ({args.max_tiles})")
    image = _open_image(args.image)
    plan = plan_tiles(
        image.width,
        image.height,
        max_tiles=args.max_tiles,
        min_tiles=args.min_tiles,
        image_size=args.image_size,
        use_thumbnail=not args.no_thumbnail,
    )
    if args.output is not None:
        drawing = draw_tile_plan(image, plan, max_side=args.max_side)
        _save_image_atomically(drawing, Path(args.output))
    if args.json:
        print(json.dumps(_plan_as_dict(plan)))
    else:
        print(_format_plan(plan))
        if args.output is not None:
            print(f"wrote {args.output}")
    return 0


def _add_tiles_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tiles",
        help="show how an image is cut into tiles",
        description=(
            "Plan the dynamic tiling of IMAGE exactly as InternVL 2.5 preprocesses it: print the grid, the tile "
            "boxes (in the resized image) and the thumbnail, and optionally draw them into a PNG."
        ),
    )
    parser.add_argument("image", metavar="IMAGE", help="path of the image")
    parser.add_argument("--max-tiles", type=_positive_int, default=12, help="most grid tiles (default: 12)")
    parser.add_argument("--min-tiles", type=_positive_int, default=1, help="fewest grid tiles (default: 1)")
    parser.add_argument("--image-size", type=_positive_int, default=448, help="tile side in pixels (default: 448)")
    parser.add_argument(
        "--no-thumbnail", action="store_true", help="do not add the whole-image thumbnail tile to multi-tile grids"
    )
    parser.add_argument("-o", "--output", metavar="OUT.png", help="write a picture of the grid and thumbnail")
    parser.add_argument(
        "--max-side", type=_positive_int, default=1024, help="longer side of the drawn image in pixels (default: 1024)"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    parser.set_defaults(handler=_run_tiles)


# ---------------------------------------------------------------------------------------------------------------
# chat
# ---------------------------------------------------------------------------------------------------------------

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_EXIT_WORDS = {"exit", "quit", ":q"}


def _check_model_dir(path: str) -> Path:
    model_dir = Path(path)
    if not model_dir.exists():
        raise CLIError(f"model directory not found: {path}")
    if not model_dir.is_dir():
        raise CLIError(f"not a model directory: {path} is a file")
    if not (model_dir / "config.json").is_file():
        raise CLIError(f"not a model directory: {path} has no config.json")
    return model_dir


def _load_model_and_processor(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .registration import register_all

    register_all()  # the console script skips registration at import (fast `tiles`); models need it

    model_kwargs: dict[str, Any] = {"dtype": args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)}
    if args.device_map is not None:
        model_kwargs["device_map"] = args.device_map
    if args.attn_implementation is not None:
        model_kwargs["attn_implementation"] = args.attn_implementation
    try:
        # The model first: a missing or broken weight file is the likelier problem, and its error the clearer one.
        model = AutoModelForImageTextToText.from_pretrained(args.model_dir, **model_kwargs)
        processor = AutoProcessor.from_pretrained(args.model_dir)
    except (OSError, ValueError, KeyError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CLIError(f"cannot load a model from {args.model_dir}: {message}") from None
    return model.eval(), processor


def _user_message(text: str, images: Sequence[str], video: str | None) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "image", "path": image} for image in images]
    if video is not None:
        content.append({"type": "video", "path": video})
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def _tokenizer_of(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


class _Chat:
    """One conversation: builds inputs with the processor's chat template, generates, keeps the history."""

    def __init__(self, model: Any, processor: Any, args: argparse.Namespace):
        self.model = model
        self.processor = processor
        self.args = args
        self.messages: list[dict[str, Any]] = []
        self.pending_images = list(args.image or [])
        self.pending_video = args.video

    def _inputs(self) -> Any:
        processor_kwargs: dict[str, Any] = {}
        if self.args.max_tiles is not None:
            processor_kwargs["max_dynamic_patch"] = self.args.max_tiles
        if self.args.video is not None and self.args.num_frames is not None:
            processor_kwargs["num_frames"] = self.args.num_frames
        inputs = self.processor.apply_chat_template(
            self.messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs=processor_kwargs,
            sanitize_control_tokens=True,  # typed text is text: `<|im_end|>` in a question cannot end the turn
        )
        return inputs.to(self.model.device)

    def _generation_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.args.max_new_tokens}
        if self.args.temperature is not None:
            kwargs["temperature"] = self.args.temperature
        if self.args.top_p is not None:
            kwargs["top_p"] = self.args.top_p
        if self.args.votes == 1 and (self.args.temperature is not None or self.args.top_p is not None):
            kwargs["do_sample"] = True  # a single answer is greedy (as in the original README) unless asked to sample
        if self.args.stop_repetition:
            from transformers import StoppingCriteriaList

            from .test_time_scaling import RepetitionStoppingCriteria

            kwargs["stopping_criteria"] = StoppingCriteriaList([RepetitionStoppingCriteria()])
        return kwargs

    def ask(self, text: str) -> str:
        """Answer `text` (streamed to stdout), record the turn, return the response.

        If answering fails or is interrupted (`KeyboardInterrupt`), the exception propagates and the conversation is
        left exactly as it was before the call.
        """
        from .test_time_scaling import build_cot_prompt

        if self.args.cot:
            text = build_cot_prompt(text, kind="open")
        # Images and video belong to the first user turn, as the original `chat()` puts them before the first question.
        saved = (len(self.messages), self.pending_images, self.pending_video)
        self.messages.append(_user_message(text, self.pending_images, self.pending_video))
        self.pending_images, self.pending_video = [], None
        try:
            return self._answer()
        except BaseException:
            # A failed or interrupted turn leaves no trace: the history and the pending media are as before it.
            del self.messages[saved[0] :]
            self.pending_images, self.pending_video = saved[1], saved[2]
            raise

    def _answer(self) -> str:
        from .test_time_scaling import generate_with_votes, parse_boxed_answer

        inputs = self._inputs()
        generation_kwargs = self._generation_kwargs()

        if self.args.votes > 1:
            result = generate_with_votes(
                self.model,
                self.processor,
                inputs,
                num_votes=self.args.votes,
                seed=self.args.seed if self.args.seed is not None else 0,
                **generation_kwargs,
            )
            for index, (response, answer) in enumerate(
                zip(result.responses, result.parsed_answers, strict=True), start=1
            ):
                print(f"--- sample {index}/{self.args.votes} (answer: {answer}) ---\n{response}")
            counts = ", ".join(f"{answer!r}: {count}" for answer, count in result.counts.items()) or "none"
            print(f"=== majority answer: {result.answer} (votes: {counts}) ===", flush=True)
            response = _response_for_answer(result)
        else:
            import torch
            from transformers import TextStreamer

            if self.args.seed is not None:
                torch.manual_seed(self.args.seed)
            tokenizer = _tokenizer_of(self.processor)
            streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
            with torch.inference_mode():
                sequences = self.model.generate(**inputs, streamer=streamer, **generation_kwargs)
            prompt_length = inputs["input_ids"].shape[1]
            response = tokenizer.decode(sequences[0, prompt_length:], skip_special_tokens=True).strip()
            sys.stdout.flush()
            if self.args.cot:
                answer = parse_boxed_answer(response)
                if answer is not None:
                    print(f"=== answer: {answer} ===", flush=True)
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": response}]})
        return response


def _response_for_answer(result: Any) -> str:
    """The first sampled response that voted for the majority answer (kept as the turn in the history)."""
    from .test_time_scaling import normalize_answer

    for response, answer in zip(result.responses, result.parsed_answers, strict=True):
        if answer is not None and normalize_answer(answer) == result.answer:
            return response
    return result.responses[0]


def _run_chat(args: argparse.Namespace) -> int:
    _check_model_dir(args.model_dir)
    for image in args.image or []:
        _open_image(image)  # fail early, before the model loads
    if args.video is not None:
        _existing_file(args.video, "video file")
    if args.votes > 1 and args.prompt is None:
        raise CLIError("--votes needs --prompt (voting is one-shot)")

    model, processor = _load_model_and_processor(args)
    chat = _Chat(model, processor, args)
    if args.prompt is not None:
        chat.ask(args.prompt)
        return 0

    return _interactive_loop(chat, args)


def _interactive_loop(chat: _Chat, args: argparse.Namespace) -> int:
    """Read messages from stdin until 'exit' / end of input (exit code 0) or Ctrl-C at the prompt (130).

    A turn that fails prints one error line and the conversation goes on (the failed turn is not kept); Ctrl-C while
    an answer is generated stops that answer only.
    """
    interactive = sys.stdin.isatty()
    if interactive:
        print("Type a message; 'exit' or Ctrl-D quits, Ctrl-C stops an answer (twice: quits).", file=sys.stderr)
    while True:
        if interactive:
            print(">>> ", end="", file=sys.stderr, flush=True)
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130
        if not line:  # EOF (Ctrl-D)
            return 0
        text = line.strip()
        if not text:
            continue
        if text.lower() in _EXIT_WORDS:
            return 0
        try:
            chat.ask(text)
        except KeyboardInterrupt:
            print(file=sys.stdout, flush=True)
            print("(answer interrupted; Ctrl-C again or Ctrl-D quits)", file=sys.stderr, flush=True)
        except Exception as error:  # noqa: BLE001 - any failed turn is reported and the conversation goes on
            sys.stdout.flush()
            if args.traceback:
                import traceback

                traceback.print_exc()
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            print(f"{PROG}: error: {type(error).__name__}: {message} (turn dropped)", file=sys.stderr, flush=True)


def _add_chat_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="chat with a model (one-shot or interactive)",
        description=(
            "Load MODEL_DIR (an original OpenGVLab InternVL 2.5 checkpoint or one saved by this package) with "
            "AutoModelForImageTextToText / AutoProcessor and answer --prompt, or, without --prompt, read messages "
            "from stdin one per line (history kept; 'exit' or end of input quits). Output is streamed to stdout."
        ),
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="directory with config.json, weights and tokenizer")
    parser.add_argument("--prompt", help="answer this message and exit (default: interactive session)")
    parser.add_argument(
        "--image", action="append", metavar="PATH", help="image for the first message (repeat for several images)"
    )
    parser.add_argument("--video", metavar="PATH", help="video for the first message")
    parser.add_argument("--num-frames", type=_positive_int, help="frames sampled from --video")
    parser.add_argument("--max-tiles", type=_positive_int, help="most tiles per image (default: the model's, 12)")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=1024, help="(default: 1024)")
    parser.add_argument(
        "--cot",
        action="store_true",
        help="ask for step-by-step reasoning with the InternVL 2.5 evaluation prompt and print the boxed answer",
    )
    parser.add_argument(
        "--votes",
        type=_positive_int,
        default=1,
        help="sample this many answers (printed when all are done) and the majority answer; needs --prompt",
    )
    parser.add_argument(
        "--temperature", type=float, help="sampling temperature (default: greedy decoding; --votes always samples)"
    )
    parser.add_argument("--top-p", type=float, help="nucleus sampling threshold (implies sampling)")
    parser.add_argument(
        "--stop-repetition", action="store_true", help="stop a response that falls into a repetition loop"
    )
    parser.add_argument("--dtype", choices=_DTYPES, default="auto", help="weight dtype (default: auto)")
    parser.add_argument("--device-map", help="e.g. auto, cpu, cuda:0 (default: not set, CPU)")
    parser.add_argument("--attn-implementation", help="eager, sdpa, flash_attention_2, ... (default: the model's)")
    parser.add_argument("--seed", type=int, help="random seed for sampling")
    parser.set_defaults(handler=_run_chat)


# ---------------------------------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------------------------------


def _benchmark_module() -> Any:
    """`benchmarks/bench_model.py` of the source checkout this package runs from (not part of an installed wheel)."""
    import importlib.util

    folder = Path(__file__).resolve().parents[2] / "benchmarks"
    path = folder / "bench_model.py"
    if not path.is_file():
        raise CLIError(f"the benchmark needs a source checkout of transformers-internvl: {path} not found")
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("bench_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_bench(args: argparse.Namespace) -> int:
    from .registration import register_all

    register_all()
    return _benchmark_module().main(args=args)


def _add_bench_command(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark random-weight models at InternVL 2.5 shapes (source checkout only)",
        description="Run benchmarks/bench_model.py: vision, time to first token, decode, memory; see its --help.",
        add_help=False,
    )
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of benchmarks/bench_model.py")
    parser.set_defaults(handler=_bench_handler)


def _bench_handler(args: argparse.Namespace) -> int:
    return _run_bench(_parse_bench_arguments(args.bench_args))


def _parse_bench_arguments(arguments: Sequence[str]) -> argparse.Namespace:
    benchmark_parser = argparse.ArgumentParser(prog=f"{PROG} bench", description="InternVL 2.5 model benchmark.")
    return _benchmark_module().build_parser(benchmark_parser).parse_args(list(arguments))


# ---------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------


def _add_convert_command(subparsers: Any) -> None:
    from .conversion.command import add_convert_command

    add_convert_command(subparsers)


def _add_filter_command(subparsers: Any) -> None:
    from .training.filtering import add_filter_command

    add_filter_command(subparsers)


_COMMANDS: list[Callable[[Any], None]] = [
    _add_tiles_command,
    _add_chat_command,
    _add_convert_command,
    _add_filter_command,
    _add_bench_command,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG, description="Tools for InternVL 2.5 models in Hugging Face Transformers."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error instead of one line"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in _COMMANDS:
        add_command(subparsers)
    return parser


def _error(message: str) -> int:
    first_line = message.strip().splitlines()[0] if message.strip() else "unknown error"
    print(f"{PROG}: error: {first_line}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script; returns the exit code (0 on success, 1 on errors, 2 on usage errors)."""
    from ._startup import _exit_quietly

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is _exit_quietly:
        # Ctrl-C raises KeyboardInterrupt from here on, caught below (start-up installed a quiet exit handler).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        parser = build_parser()
        arguments = sys.argv[1:] if argv is None else list(argv)
        if arguments[:1] == ["bench"]:  # every further argument (--help too) belongs to the benchmark's own parser
            return _run(
                argparse.Namespace(command="bench", traceback=False, bench_args=arguments[1:], handler=_bench_handler)
            )
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_request:  # --help, --version and usage errors (argparse prints them)
            return exit_request.code if isinstance(exit_request.code, int) else 1
        return _run(args)
    except KeyboardInterrupt:  # during start-up (imports, model loading) or a one-shot answer: no traceback
        print(file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    try:
        return args.handler(args)
    except CLIError as error:
        return _error(str(error))
    except (OSError, ValueError, TypeError) as error:
        if args.traceback:
            raise
        return _error(str(error) or type(error).__name__)
    except Exception as error:
        if args.traceback:
            raise
        return _error(f"{type(error).__name__}: {error} (run with --traceback for details)")


__all__ = ["CLIError", "build_parser", "main"]
