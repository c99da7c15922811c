"""The chat API of the original InternLM2 causal LM: `build_inputs`, `chat` and `stream_chat`.

The remote code of the InternLM2 checkpoints (and the copy in the original InternVL code,
`internvl_chat/internvl/model/internlm2/modeling_internlm2.py`) gives `InternLM2ForCausalLM` these methods, and the
internlm2-chat model cards call them (`response, history = model.chat(tokenizer, "hello", history=[])`). Since
`import transformers_internvl` makes `AutoModelForCausalLM` load this package's `InternLM2ForCausalLM` for those
checkpoints (even with `trust_remote_code=True`), the methods are provided here with the same prompts, defaults,
stop tokens and returned values.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

__all__ = ["DEFAULT_META_INSTRUCTION", "END_OF_TURN", "InternLM2ChatMixin", "internlm2_chat_prompt"]

END_OF_TURN = "<|im_end|>"
"""The token that ends a turn of the InternLM2 chat format; `chat` stops at it as well as at the tokenizer's eos."""

DEFAULT_META_INSTRUCTION = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI Laboratory "
    "(上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by the user such as "
    "English and 中文."
)
"""The system message `chat` uses unless told otherwise (the original's `meta_instruction` default)."""


def internlm2_chat_prompt(
    tokenizer: Any, query: str, history: Sequence[Sequence[str]] = (), meta_instruction: str | None = ""
) -> str:
    """The prompt text of the original `InternLM2ForCausalLM.build_inputs`: the bos token unless the tokenizer adds
    it itself (`add_bos_token`), a `<|im_start|>system` block when `meta_instruction` is non-empty, one user /
    assistant block pair per `(question, answer)` of `history`, then the user's `query` and an open assistant block.

    Raises:
        TypeError: `query` or `meta_instruction` is not a str (`None` allowed for the latter: no system block), or a
            history entry is not a `(question, answer)` pair of str.
    """
    if not isinstance(query, str):
        raise TypeError(f"`query` must be a str, got {type(query).__name__}.")
    if meta_instruction is not None and not isinstance(meta_instruction, str):
        raise TypeError(f"`meta_instruction` must be a str or None, got {type(meta_instruction).__name__}.")
    prompt = "" if getattr(tokenizer, "add_bos_token", False) else (tokenizer.bos_token or "")
    if meta_instruction:
        prompt += f"<|im_start|>system\n{meta_instruction}{END_OF_TURN}\n"
    for index, turn in enumerate(history):
        if len(turn) != 2 or not all(isinstance(text, str) for text in turn):
            raise TypeError(f"`history[{index}]` must be a (question, answer) pair of str, got {turn!r}.")
        prompt += f"<|im_start|>user\n{turn[0]}{END_OF_TURN}\n<|im_start|>assistant\n{turn[1]}{END_OF_TURN}\n"
    return prompt + f"<|im_start|>user\n{query}{END_OF_TURN}\n<|im_start|>assistant\n"


class _TurnStreamer(BaseStreamer):
    """Puts `(response so far, history with this turn)` on `updates` for each generated token, as the original's
    `stream_chat` streamer: every token is decoded on its own (`skip_special_tokens=True`) and appended to the
    response; a token that decodes to `<|im_end|>` ends the stream. The first `put` (the prompt) is skipped."""

    def __init__(self, tokenizer: Any, query: str, history: list, updates: queue.Queue, done: object) -> None:
        super().__init__()
        self.tokenizer, self.query, self.history = tokenizer, query, history
        self.updates, self.done = updates, done
        self.response = ""
        self.prompt_seen = False
        self.updates.put((self.response, [*history, (query, self.response)]))

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1 and value.shape[0] > 1:
            raise ValueError(f"stream_chat streams one sequence, got a batch of {value.shape[0]}.")
        if value.dim() > 1:
            value = value[0]
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        text = self.tokenizer.decode(value.tolist(), skip_special_tokens=True)
        if text.strip() == END_OF_TURN:
            self.end()
            return
        self.response += text
        self.updates.put((self.response, [*self.history, (self.query, self.response)]))

    def end(self) -> None:
        self.updates.put(self.done)


class InternLM2ChatMixin:
    """`build_inputs`, `chat` and `stream_chat` of the original InternLM2 causal LM (see the module docstring)."""

    def build_inputs(
        self, tokenizer: Any, query: str, history: Sequence[Sequence[str]] = (), meta_instruction: str | None = ""
    ) -> Any:
        """`tokenizer([prompt], return_tensors="pt")` for `internlm2_chat_prompt(tokenizer, query, history,
        meta_instruction)`: a batch of one, as the original returns it."""
        return tokenizer([internlm2_chat_prompt(tokenizer, query, history, meta_instruction)], return_tensors="pt")

    @torch.no_grad()
    def chat(
        self,
        tokenizer: Any,
        query: str,
        history: Sequence[Sequence[str]] = (),
        streamer: BaseStreamer | None = None,
        max_new_tokens: int = 1024,
        do_sample: bool = True,
        temperature: float = 0.8,
        top_p: float = 0.8,
        meta_instruction: str | None = DEFAULT_META_INSTRUCTION,
        **kwargs: Any,
    ) -> tuple[str, list[tuple[str, str]]]:
        """One chat turn, as the original InternLM2 `chat`: `generate` on `build_inputs(...)` with the original's
        defaults (sampling, temperature 0.8, top-p 0.8, 1024 new tokens), stopping at the tokenizer's eos or
        `<|im_end|>`; further keyword arguments go to `generate`.

        Returns:
            The answer (the new tokens decoded without special tokens, cut at `<|im_end|>`) and a new history list
            with `(query, answer)` appended (the caller's `history` is not changed).
        """
        inputs = self.build_inputs(tokenizer, query, history, meta_instruction)
        inputs = {name: inputs[name].to(self.device) for name in ("input_ids", "attention_mask") if name in inputs}
        eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TURN)]
        output_ids = self.generate(
            **inputs,
            streamer=streamer,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            eos_token_id=eos_token_id,
            **kwargs,
        )
        new_tokens = output_ids[0, inputs["input_ids"].shape[1] :].tolist()
        response = tokenizer.decode(new_tokens, skip_special_tokens=True).split(END_OF_TURN)[0]
        return response, [*history, (query, response)]

    def stream_chat(
        self,
        tokenizer: Any,
        query: str,
        history: Sequence[Sequence[str]] = (),
        max_new_tokens: int = 1024,
        do_sample: bool = True,
        temperature: float = 0.8,
        top_p: float = 0.8,
        **kwargs: Any,
    ) -> Iterator[tuple[str, list[tuple[str, str]]]]:
        """`chat` run in a thread, as the original `stream_chat`: yields `(response so far, history with this turn)`
        first with an empty response, then after each generated token. An error raised by the generation is raised
        again from the iterator (the original's iterator would wait forever)."""
        updates: queue.Queue = queue.Queue()
        done = object()
        failure: list[BaseException] = []

        def produce() -> None:
            try:
                streamer = _TurnStreamer(tokenizer, query, list(history), updates, done)
                self.chat(
                    tokenizer,
                    query,
                    history=history,
                    streamer=streamer,
                    max_new_tokens=max_new_tokens,
                    do_sample=do_sample,
                    temperature=temperature,
                    top_p=top_p,
                    **kwargs,
                )
            except Exception as error:  # handed to the consuming thread, which raises it
                failure.append(error)
                updates.put(done)

        def consume() -> Iterator[tuple[str, list[tuple[str, str]]]]:
            thread = threading.Thread(target=produce, daemon=True)
            thread.start()
            while (update := updates.get()) is not done:
                yield update
            if failure:
                thread.join()
                raise failure[0]

        return consume()
