"""`RepetitionStoppingCriteria`: stop a generated sequence that fell into a repetition loop.

It applies the original training-data filter's n-gram statistic (`reasoning.repetition`) to token ids during
`generate`, together with a cheap periodic-loop check.
"""

from __future__ import annotations

import torch
from transformers import StoppingCriteria

from .repetition import REPETITION_NGRAM_SIZE, REPETITION_THRESHOLD

# Two polynomial hashes modulo Mersenne-like primes: exact products stay below 2**62 in int64 (token ids < 2**31).
_HASH_MODULI = (2_147_483_647, 2_147_483_629)
_HASH_BASES = (1_000_003, 916_132_831)


class RepetitionStoppingCriteria(StoppingCriteria):
    """Stop a sequence whose generated tokens fell into a repetition loop.

    Two token-id checks, vectorised over the batch (no decoding), updated incrementally with each new token:

    - **periodic loop**: the last `max(min_repeats * p, min_loop_length)` generated tokens repeat with some period
      `p` in `1..max_period` (e.g. `5 6 7 5 6 7 ...`). Kept as one run-length counter per `(sequence, period)`:
      `O(batch_size * max_period)` work per token.
    - **n-gram ratio** (the original data filter applied to token ids): once `window_size` tokens were generated, over
      the last `window_size` of them, `(distinct ngram_size-grams occurring more than once) / (total n-grams) >
      threshold`. Each new n-gram is hashed once (two 31-bit polynomial hashes; a collision, probability ~2**-62 per
      pair, could only raise the ratio) and the window's keys are sorted per step (`O(window_size log window_size)`).
      Like the filter, this fires when a long block has been written about twice; loops with a short period keep the
      ratio low and are caught by the periodic check. `window_size=None` disables it.

    Only generated tokens are looked at: the prompt length is `prompt_length` if given, otherwise learned at the first
    call of a `generate` run (sequence length minus one). A new run is recognised when the batch size changes, the
    sequence does not grow, or the last tokens seen at the previous call changed; [`reset`] forces it. Sequences that
    were stopped are recorded in `stopped` (boolean, `(batch_size,)`). Finished sequences are only padded (and their
    stop visible in the output) when `generate` also has an EOS token, as for every stopping criterion.

    Args:
        max_period: longest loop period (in tokens) the periodic check looks for; 0 disables it.
        min_repeats: how many back-to-back copies of the period make a loop.
        min_loop_length: and how many tokens the looping span must cover at least (so short legitimate runs such as
            a line of `=` or a few repeated digits do not stop generation).
        ngram_size: n of the n-gram ratio (10 as in the original filter).
        window_size: trailing window of generated tokens for the n-gram ratio; `None` disables it.
        threshold: the n-gram ratio above which a sequence stops (0.4 as in the original filter).
        prompt_length: number of prompt tokens (columns) in `input_ids`; learned automatically when `None`.
    """

    def __init__(
        self,
        max_period: int = 128,
        min_repeats: int = 3,
        min_loop_length: int = 48,
        ngram_size: int = REPETITION_NGRAM_SIZE,
        window_size: int | None = 256,
        threshold: float = REPETITION_THRESHOLD,
        prompt_length: int | None = None,
    ):
        for name, value, minimum in (
            ("max_period", max_period, 0),
            ("min_repeats", min_repeats, 2),
            ("min_loop_length", min_loop_length, 1),
            ("ngram_size", ngram_size, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
        if window_size is not None and (not isinstance(window_size, int) or window_size < ngram_size):
            raise ValueError(f"`window_size` must be None or an int >= ngram_size ({ngram_size}), got {window_size!r}.")
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"`threshold` must be in [0, 1), got {threshold!r}.")
        if prompt_length is not None and (not isinstance(prompt_length, int) or prompt_length < 0):
            raise ValueError(f"`prompt_length` must be None or a non-negative int, got {prompt_length!r}.")
        self.max_period = max_period
        self.min_repeats = min_repeats
        self.min_loop_length = min_loop_length
        self.ngram_size = ngram_size
        self.window_size = window_size
        self.threshold = float(threshold)
        self.prompt_length = prompt_length
        # Period p is a loop once its run of "token equals the one p back" reaches span(p) - p.
        self._required_runs = [
            max(min_repeats * period, min_loop_length) - period for period in range(1, max_period + 1)
        ]
        self._device_constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the current `generate` run (learned prompt length, counters, `stopped`)."""
        self._run_prompt_length: int | None = None
        self._processed_length = 0
        self._last_tail: torch.Tensor | None = None
        self._period_runs: torch.Tensor | None = None  # (batch, max_period) run lengths
        self._ngram_ring: torch.Tensor | None = None  # (batch, window_size - ngram_size + 1) keys of the last n-grams
        self._num_ngrams = 0
        self.stopped: torch.Tensor | None = None

    # -- helpers ----------------------------------------------------------------------------------------------------

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-device `(required_runs (max_period,), hash_powers (2, ngram_size))`."""
        constants = self._device_constants.get(device)
        if constants is None:
            required_runs = torch.tensor(self._required_runs, dtype=torch.long, device=device)
            powers = [
                [pow(base, self.ngram_size - 1 - k, modulus) for k in range(self.ngram_size)]
                for modulus, base in zip(_HASH_MODULI, _HASH_BASES, strict=True)
            ]
            constants = (required_runs, torch.tensor(powers, dtype=torch.int64, device=device))
            self._device_constants[device] = constants
        return constants

    def _ngram_keys(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(batch, length - ngram_size + 1)` int64 keys of the n-grams of `tokens` `(batch, length)`."""
        _, powers = self._constants(tokens.device)
        ngrams = tokens.to(torch.int64).unfold(1, self.ngram_size, 1)  # (batch, num_ngrams, ngram_size)
        keys = []
        for index, modulus in enumerate(_HASH_MODULI):
            terms = (ngrams % modulus) * powers[index] % modulus  # factors < 2**31: products < 2**62 fit in int64
            keys.append(terms.sum(dim=-1) % modulus)
        return keys[0] * _HASH_MODULI[1] + keys[1]

    @staticmethod
    def _ratio_from_keys(keys: torch.Tensor) -> torch.Tensor:
        """`(batch,)` float: share of distinct keys occurring more than once, over the keys `(batch, num_ngrams)`."""
        keys, _ = torch.sort(keys, dim=-1)
        same_as_next = keys[:, 1:] == keys[:, :-1]  # (batch, num_ngrams - 1)
        # A distinct n-gram occurring more than once is a run of >= 2 equal sorted keys: count where such runs start.
        run_starts = same_as_next.clone()
        run_starts[:, 1:] &= ~same_as_next[:, :-1]
        return run_starts.sum(dim=-1).to(torch.float32) / keys.shape[1]

    def _ngram_ratio(self, window: torch.Tensor) -> torch.Tensor:
        """`(batch,)` float: the original filter's ratio over each row of `window` `(batch, length)`."""
        return self._ratio_from_keys(self._ngram_keys(window))

    def _is_new_run(self, input_ids: torch.LongTensor) -> bool:
        length = input_ids.shape[1]
        if self._last_tail is None or length <= self._processed_length:
            return True
        if input_ids.shape[0] != self._last_tail.shape[0]:
            return True
        previous = input_ids[:, self._processed_length - self._last_tail.shape[1] : self._processed_length]
        return not torch.equal(previous, self._last_tail)

    def _start_run(self, input_ids: torch.LongTensor) -> None:
        batch_size, length = input_ids.shape
        if self.prompt_length is not None:
            prompt_length = min(self.prompt_length, length)
        else:
            prompt_length = max(length - 1, 0)
        self._run_prompt_length = prompt_length
        self._processed_length = prompt_length
        self._period_runs = torch.zeros(batch_size, self.max_period, dtype=torch.long, device=input_ids.device)
        if self.window_size is not None:
            ring_size = self.window_size - self.ngram_size + 1
            self._ngram_ring = torch.zeros(batch_size, ring_size, dtype=torch.int64, device=input_ids.device)
        self._num_ngrams = 0
        self.stopped = None

    def _advance(self, input_ids: torch.LongTensor, position: int) -> None:
        """Update the counters with the token at `position` (a generated token)."""
        num_before = position - self._run_prompt_length  # generated tokens before this one
        if self.max_period:
            num_periods = min(self.max_period, num_before)  # only compare with generated tokens
            if num_periods:
                current = input_ids[:, position : position + 1]
                previous = input_ids[:, position - num_periods : position].flip(-1)  # [:, p - 1] is p tokens back
                runs = self._period_runs[:, :num_periods]
                self._period_runs[:, :num_periods] = (runs + 1) * (previous == current)
        if self._ngram_ring is not None and num_before + 1 >= self.ngram_size:
            key = self._ngram_keys(input_ids[:, position + 1 - self.ngram_size : position + 1])[:, 0]
            self._ngram_ring[:, self._num_ngrams % self._ngram_ring.shape[1]] = key
            self._num_ngrams += 1

    # -- StoppingCriteria -------------------------------------------------------------------------------------------

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs
    ) -> torch.BoolTensor:
        """`(batch_size,)` booleans: `True` for sequences that are looping."""
        length = input_ids.shape[1]
        if self._is_new_run(input_ids):
            self._start_run(input_ids)
        for position in range(self._processed_length, length):  # one new token per step in plain decoding
            self._advance(input_ids, position)
        self._processed_length = length
        self._last_tail = input_ids[:, -min(4, length) :].clone()

        required_runs, _ = self._constants(input_ids.device)
        is_done = (self._period_runs >= required_runs).any(dim=-1)
        if self._ngram_ring is not None and self._num_ngrams >= self._ngram_ring.shape[1]:
            is_done |= self._ratio_from_keys(self._ngram_ring) > self.threshold
        # No host read of `is_done` here (that would add a device sync per step); `stopped` keeps the record.
        self.stopped = is_done.clone() if self.stopped is None else (self.stopped | is_done)
        return is_done


__all__ = ["RepetitionStoppingCriteria"]
