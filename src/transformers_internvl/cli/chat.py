"""`transformers-internvl chat MODEL_DIR`: talk to a model, one-shot (`--prompt`) or interactively.

Output is streamed; `--cot` asks with the InternVL 2.5 chain-of-thought evaluation prompt and prints the boxed
answer, `--votes N` samples N answers and prints their majority (`reasoning`), `--stop-repetition` stops an answer
that falls into a loop. The model is loaded with `AutoModelForImageTextToText` / `AutoProcessor` (torch and
transformers are imported only when the command runs).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..reasoning.answers import parse_boxed_answer
from ..reasoning.prompts import build_cot_prompt
from .common import (
    PROG,
    CLIError,
    existing_file,
    first_line,
    open_image,
    positive_float,
    positive_int,
    probability,
    seed_int,
    votes_int,
)

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


def _import_model_code() -> None:
    """Import torch, transformers' Auto classes and this package's registration with SIGINT held back.

    A Ctrl-C that lands while torch's C++ extension initialises aborts the process (pybind11 cannot carry the
    `KeyboardInterrupt` through it: exit -6 and a core message instead of 130). Held back with `pthread_sigmask`, it is
    delivered as soon as the imports are done, as an ordinary `KeyboardInterrupt` that `main` turns into exit code 130.
    """
    hold = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    if hold:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        import torch  # noqa: F401
        from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: F401

        from ..registration import register_all

        register_all()  # the console script skips registration at import (fast `tiles`); models need it
    finally:
        if hold:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _load_model_and_processor(args: argparse.Namespace) -> tuple[Any, Any]:
    _import_model_code()
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

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
        message = first_line(str(error), type(error).__name__)
        raise CLIError(f"cannot load a model from {args.model_dir}: {message}") from None
    if args.compile:
        from ..static_decode import static_decode_config

        positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        if args.max_cache_len is not None and isinstance(positions, int) and args.max_cache_len > positions:
            # A static cache is allocated whole: --max-cache-len 10000000000 asked for terabytes at the first answer.
            raise CLIError(
                f"--max-cache-len {args.max_cache_len} is larger than the model's context "
                f"(max_position_embeddings {positions}); the static cache is allocated whole"
            )

        # transformers compiles on accelerators only; on a CPU this is a static cache without compilation.
        model.generation_config = static_decode_config(model.generation_config, max_cache_len=args.max_cache_len)
    return model.eval(), processor


def _user_message(text: str, images: Sequence[str], video: str | None) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "image", "path": image} for image in images]
    if video is not None:
        content.append({"type": "video", "path": video})
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def _tokenizer_of(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def _answer_streamer(tokenizer: Any, stop_ids: set[int], **kwargs: Any) -> Any:
    """transformers' `TextStreamer` that prints no stop token (`answer_decoding`)."""
    from transformers import TextStreamer

    class AnswerStreamer(TextStreamer):
        def put(self, value):
            if self.skip_prompt and self.next_tokens_are_prompt:
                return super().put(value)
            kept = [token for token in value.reshape(-1).tolist() if token not in stop_ids]
            if kept:
                super().put(value.new_tensor(kept))

    return AnswerStreamer(tokenizer, **kwargs)


class ChatSession:
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

            from ..reasoning.stopping import RepetitionStoppingCriteria

            kwargs["stopping_criteria"] = StoppingCriteriaList([RepetitionStoppingCriteria()])
        return kwargs

    def ask(self, text: str) -> str:
        """Answer `text` (streamed to stdout), record the turn, return the response.

        If answering fails or is interrupted (`KeyboardInterrupt`), the exception propagates and the conversation is
        left exactly as it was before the call.
        """
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

    def _generate(self, inputs: Any, **kwargs: Any) -> Any:
        """`model.generate`, reusing the key/value cache of the previous turn as `model.chat()` does
        (`modeling/chat_cache.py`): a later turn runs only the tokens after the prefix it shares with the cached
        prompt + answer, and the vision tower is skipped when the images are the cached ones."""
        from ..modeling.chat_cache import generate_turn

        inputs = dict(inputs)
        input_ids, attention_mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
        return generate_turn(
            self.model, input_ids, attention_mask, inputs.pop("pixel_values", None), {**inputs, **kwargs}
        )

    def _answer(self) -> str:
        from ..reasoning.voting import generate_with_votes

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

            if self.args.seed is not None:
                torch.manual_seed(self.args.seed)
            from ..answer_decoding import decode_answers, stop_token_ids

            # Phi-3 tokenizers decode as the original's slow class, which keeps `<|end|>`: stop tokens are left out
            stop_ids = stop_token_ids(self.model, self.processor)
            streamer = _answer_streamer(
                _tokenizer_of(self.processor), stop_ids, skip_prompt=True, skip_special_tokens=True
            )
            with torch.inference_mode():
                sequences = self._generate(inputs, streamer=streamer, **generation_kwargs)
            prompt_length = inputs["input_ids"].shape[1]
            response = decode_answers(self.processor, sequences[:1, prompt_length:], stop_ids)[0].strip()
            sys.stdout.flush()
            if self.args.cot:
                answer = parse_boxed_answer(response)
                if answer is not None:
                    print(f"=== answer: {answer} ===", flush=True)
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": response}]})
        return response


def _response_for_answer(result: Any) -> str:
    """The first sampled response that voted for the majority answer (kept as the turn in the history)."""
    from ..reasoning.voting import normalize_answer

    for response, answer in zip(result.responses, result.parsed_answers, strict=True):
        if answer is not None and normalize_answer(answer) == result.answer:
            return response
    return result.responses[0]


def run_chat(args: argparse.Namespace) -> int:
    _check_model_dir(args.model_dir)
    for image in args.image or []:
        open_image(image)  # fail early, before the model loads
    if args.video is not None:
        existing_file(args.video, "video file")
    if args.votes > 1 and args.prompt is None:
        raise CLIError("--votes needs --prompt (voting is one-shot)")
    if args.max_cache_len is not None and not args.compile:
        raise CLIError("--max-cache-len needs --compile (it sizes the static cache that --compile turns on)")
    if args.num_frames is not None and args.video is None:
        raise CLIError("--num-frames needs --video (it sets how many frames are sampled from the video)")

    model, processor = _load_model_and_processor(args)
    chat = ChatSession(model, processor, args)
    if args.prompt is not None:
        chat.ask(args.prompt)
        return 0

    return _interactive_loop(chat, args)


def _interactive_loop(chat: ChatSession, args: argparse.Namespace) -> int:
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
            message = first_line(str(error))
            print(f"{PROG}: error: {type(error).__name__}: {message} (turn dropped)", file=sys.stderr, flush=True)


def add_chat_command(subparsers: Any) -> None:
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
    parser.add_argument(
        "--num-frames", type=positive_int, help="frames sampled from --video (default: the processor's, 8)"
    )
    parser.add_argument("--max-tiles", type=positive_int, help="most tiles per image (default: the model's, 12)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=1024, help="(default: 1024)")
    parser.add_argument(
        "--cot",
        action="store_true",
        help="ask for step-by-step reasoning with the InternVL 2.5 evaluation prompt and print the boxed answer",
    )
    parser.add_argument(
        "--votes",
        type=votes_int,
        default=1,
        help="sample this many answers (printed when all are done) and the majority answer; needs --prompt",
    )
    parser.add_argument(
        "--temperature",
        type=positive_float,
        help="sampling temperature (default: greedy decoding; --votes always samples)",
    )
    parser.add_argument("--top-p", type=probability, help="nucleus sampling threshold in (0, 1] (implies sampling)")
    parser.add_argument(
        "--stop-repetition", action="store_true", help="stop a response that falls into a repetition loop"
    )
    parser.add_argument("--dtype", choices=_DTYPES, default="auto", help="weight dtype (default: auto)")
    parser.add_argument("--device-map", help="e.g. auto, cpu, cuda:0 (default: not set, CPU)")
    parser.add_argument("--attn-implementation", help="eager, sdpa, flash_attention_2, ... (default: the model's)")
    parser.add_argument("--seed", type=seed_int, help="random seed for sampling")
    parser.add_argument(
        "--compile",
        action="store_true",
        help=(
            "decode with a static key/value cache and a torch.compile'd forward (GPU; on a CPU a static cache "
            "only). Cost: the first answer compiles the model (tens of seconds to minutes) and a longer prompt than "
            "--max-cache-len compiles again; a static cache turns off the cache reuse between turns"
        ),
    )
    parser.add_argument(
        "--max-cache-len", type=positive_int, help="static cache size in tokens with --compile (default: per call)"
    )
    parser.set_defaults(handler=run_chat)


__all__ = ["ChatSession", "add_chat_command", "run_chat"]
