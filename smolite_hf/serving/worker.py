"""The generation worker of `smolite serve`: one thread owns the model and decodes every running request together.

Each step runs one forward pass for all running sequences (left-padded, one shared `DynamicCache`); the prompts of
the requests admitted in that step go through the same pass (`_decode_and_prefill`: one packed sequence against the
running rows' cache laid end to end, each token masked to its own row), or, with no batch running or past
`MERGED_PASS_MAX_SCORES`, through one of their own (left-padded together), and their caches join the batch; the output
head's product runs through oneDNN with the weight laid out for it once (`OutputHead`, faster on the CPU). Sequences
leave the batch as soon as they finish or their client goes away. The choice of each next token is the request's
own, made with the logits processors `generate()` builds from the request's `GenerationConfig`
(`model._get_logits_processor`, as transformers' continuous batching does): the repetition penalty, the `<end>` -5
bias, `<pad>` never generated, the minimum length, temperature and top-p — each called through an in-place twin
with the same result bit for bit (`_in_place`: no fresh copy of the `(B, V)` scores per processor), top-p as
`SortFreeTopPLogitsWarper` (the same result without `torch.sort` of the vocabulary). A request with a seed draws with
`torch.multinomial` and its own `torch.Generator`, so its reply is `generate()`'s for that seed whatever else runs;
the others filter with `CandidateTopPLogitsWarper` (the same kept tokens, sorting only the few that can be kept, to
rounding at the cut) and draw one uniform number each per token against the cumulative distribution
(`_draw_by_cdf`): the same distribution, without `torch.multinomial`'s one random number per vocabulary entry.
Requests whose configurations are equal share one call of each processor (their histories are left-padded with
their own first token, which no processor in `_ROW_WISE` can tell apart), seeded and unseeded ones apart; the others
are processed one by one. Stop strings are found in the decoded text, which is held back while it may still become
one.

Why not transformers' `ContinuousBatchingManager`: it drops the repetition penalty and the minimum length (their
processors are marked `supports_continuous_batching = False`), has no stop strings or stopping criteria, and takes one
seed for the whole manager — so it cannot decode the seed's chat settings per request (README, Serve).

    worker = BatchedGenerator(model, tokenizer, max_running=16)
    worker.start()
    prompt, config = worker.prepare([{"role": "user", "content": "안녕하세요"}], do_sample=False)
    print(worker.submit(prompt, config).result().text)
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import itertools
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from transformers import GenerationConfig
from transformers.cache_utils import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ..chat import prepare_generation

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# what a job reports


@dataclass(frozen=True)
class Delta:
    """New tokens of one step and the text they add (empty while it is held back)."""

    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class Finished:
    """The whole reply: `finish_reason` is `stop` (`<end>` or a stop string) or `length` (the token cap)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class Failed:
    message: str


class Overloaded(Exception):
    """Every running slot and every waiting place is taken (answered `429` with `Retry-After`)."""

    def __init__(self, running: int, waiting: int, retry_after: int = 1):
        super().__init__(f"the server is busy ({running} running, {waiting} waiting); try again in {retry_after} s.")
        self.retry_after = retry_after


class GenerationJob:
    """One submitted request: its events (async: `events()`, or blocking: `result()`) and `cancel()`."""

    _ids = itertools.count(1)

    def __init__(self, prompt_ids: list[int], config: GenerationConfig, seed: int | None, stop: tuple[str, ...],
                 loop: asyncio.AbstractEventLoop | None, on_cancel):
        self.id = next(self._ids)
        self.prompt_ids, self.config, self.seed, self.stop = prompt_ids, config, seed, stop
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.final: Finished | Failed | None = None
        self.cancelled = False
        self._loop = loop
        self._queue: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self._done = threading.Event()
        self._on_cancel = on_cancel

    def cancel(self) -> None:
        """Stop this request: it leaves the queue, or the batch before the next forward pass."""
        if self.final is None and not self.cancelled:
            self.cancelled = True
            self._on_cancel(self)

    async def events(self):
        """`Delta`s, then one `Finished` or `Failed` (needs the event loop the job was submitted from). Deltas that
        arrived while the reader was busy come as one."""
        pending = None
        while True:
            event, pending = (pending if pending is not None else await self._queue.get()), None
            while isinstance(event, Delta) and not self._queue.empty():
                following = self._queue.get_nowait()
                if not isinstance(following, Delta):
                    pending = following
                    break
                event = Delta(event.text + following.text, event.token_ids + following.token_ids)
            yield event
            if isinstance(event, (Finished, Failed)):
                return

    def result(self, timeout: float | None = None) -> Finished | Failed:
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} did not finish within {timeout} s")
        return self.final

    def _record(self, event) -> None:  # called by the worker thread
        if isinstance(event, Delta) and self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if isinstance(event, (Finished, Failed)):
            self.final = event
            self._done.set()


def _deliver(events: list[tuple[GenerationJob, object]]) -> None:
    """Record each job's event, and hand them to their event loops with one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = collections.defaultdict(list)
    for job, event in events:
        job._record(event)
        if job._loop is not None:
            by_loop[job._loop].append((job._queue, event))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass


def _put_all(items: list) -> None:
    for queue, event in items:
        queue.put_nowait(event)


# ---------------------------------------------------------------------------------------------------------------
# top-p without the sort


class SortFreeTopPLogitsWarper(TopPLogitsWarper):
    """`TopPLogitsWarper` with the same result bit for bit, without its `torch.sort` of the whole vocabulary.

    `TopPLogitsWarper` sorts every row, sums the softmax of the sorted scores, drops the sorted positions whose
    cumulative probability is at most `1 - top_p` (a prefix, the cumulative sum never decreases) and puts the
    dropped scores back in place through the sort's indices. Only the sorted *values* decide how long that prefix is,
    and they are the same whichever correct sort makes them, so they come from NumPy's sort (on float32 rows of
    this CPU build, 20× faster than `torch.sort`, which costs about 5 ms a row at vocabulary 72000); the softmax and
    the cumulative sum are `TopPLogitsWarper`'s own calls on the same values. Without indices, the dropped tokens are
    those scoring below the smallest kept score — exactly the prefix, unless a tie straddles its end: a row with such
    a tie (and a score other than `filter_value`) goes through `TopPLogitsWarper` itself. Other devices and dtypes
    too.
    """

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """The filtered scores; with `in_place`, `scores` itself, filtered."""
        if scores.device.type != "cpu" or scores.dtype != torch.float32 or scores.dim() != 2:
            return super().__call__(input_ids, scores)
        values = torch.from_numpy(np.sort(scores.contiguous().numpy(), axis=-1))
        cumulative_probs = values.softmax(dim=-1).cumsum(dim=-1)
        # how many sorted positions satisfy `cumulative_probs <= 1 - top_p` (compared in float32, as that comparison
        # does), at most all but `min_tokens_to_keep`: the positions [0, removed) go
        threshold = torch.full((len(values), 1), 1 - self.top_p, dtype=values.dtype)
        removed = torch.searchsorted(cumulative_probs, threshold, right=True)
        removed.clamp_(max=max(values.shape[-1] - self.min_tokens_to_keep, 0))
        first_kept = values.gather(1, removed.clamp(max=values.shape[-1] - 1))
        last_removed = values.gather(1, (removed - 1).clamp(min=0))
        cutoff = torch.where(removed > 0, first_kept, torch.tensor(-float("inf")))
        tied = (removed > 0) & (last_removed == first_kept) & (first_kept != self.filter_value)
        tied |= cumulative_probs[:, -1:].isnan()  # NaN scores: let TopPLogitsWarper decide
        by_itself = {row: super(SortFreeTopPLogitsWarper, self).__call__(input_ids, scores[row : row + 1])[0]
                     for row in tied.nonzero()[:, 0].tolist()}  # ignores input_ids
        below = scores < cutoff
        processed = (scores.masked_fill_ if in_place else scores.masked_fill)(below, self.filter_value)
        for row, filtered in by_itself.items():
            processed[row] = filtered
        return processed


# Up to this many entries a row (the quickstart's 1500), top-p and the draw treat all rows at once, not row by row.
SMALL_VOCABULARY = 8192


class CandidateTopPLogitsWarper(SortFreeTopPLogitsWarper):
    """Top-p for requests without a seed: `TopPLogitsWarper`'s kept tokens, sorting only the candidates.

    `TopPLogitsWarper` drops the ascending prefix of the sorted probabilities that holds at most `1 - top_p` of the
    mass. Every token with a probability below `(1 - top_p) / V` is in that prefix (together they hold less than
    `V` times that), so only the others need sorting: at the seed's temperature 0.5 a few hundred of 72000. The
    prefix's end among them follows from their cumulative sum in float64 on top of the mass below; the tokens
    scoring below the first kept one are dropped, ties with it kept. The same rule in exact arithmetic; in floating
    point a token whose cumulative sum lies within rounding of `1 - top_p` may fall on the other side, and a tie at
    the cut is kept whole — which is why requests with a seed, whose replies equal `generate()`'s, keep
    `SortFreeTopPLogitsWarper`. A row whose cut would fall below the candidates (`min_tokens_to_keep`), or holds
    NaN, goes through `SortFreeTopPLogitsWarper` too, and so do rows of at most `SMALL_VOCABULARY` entries (sorted
    whole in one call, which costs less than one call per row).
    """

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        if not self._sparse(scores):
            return super().__call__(input_ids, scores, in_place)
        _, at, by_itself = self._kept(input_ids, scores)
        # every score but the kept ones becomes `filter_value`: the kept ones put back into a filled tensor, which
        # costs a few hundred writes where a mask over the whole (B, V) costs a comparison and a masked write each
        kept_scores = scores[at]
        processed = (scores if in_place else torch.empty_like(scores)).fill_(self.filter_value)
        processed[at] = kept_scores
        for i, filtered in by_itself.items():
            processed[i] = filtered
        return processed

    def draw(self, input_ids: torch.LongTensor, scores: torch.Tensor, generator: torch.Generator) -> list[int]:
        """Top-p and then one token per row, drawn as `_draw_by_cdf` draws from the softmax of the filtered scores,
        without making them: each kept token in proportion to its probability before the cut, which is the
        proportion the softmax of the filtered scores gives it (the same distribution; in floating point the
        probabilities differ by rounding). This spares a softmax over the whole `(B, V)` and a search for the few
        tokens it leaves (1-2 ms a step of 8 seed-size rows on the AMD EPYC kind). `scores` may be changed."""
        if not self._sparse(scores):
            return _draw_by_cdf(torch.softmax(self(input_ids, scores, in_place=True), dim=-1), generator)
        probs, (rows, columns), by_itself = self._kept(input_ids, scores)
        uniform = torch.rand((len(scores), 1), generator=generator, dtype=torch.float64)[:, 0].tolist()
        table, bounds = probs.numpy(), np.searchsorted(rows.numpy(), np.arange(len(scores) + 1))
        tokens = []
        for i, number in enumerate(uniform):
            if i in by_itself:  # filtered by `SortFreeTopPLogitsWarper`: the softmax of its scores
                row = torch.softmax(by_itself[i], dim=-1).numpy()
                support = np.flatnonzero(row != 0)
            else:
                support = columns[bounds[i] : bounds[i + 1]].numpy()
                row = table[i]
            tokens.append(_pick(row, support, number))
        return tokens

    @staticmethod
    def _sparse(scores: torch.Tensor) -> bool:
        return (scores.device.type == "cpu" and scores.dtype == torch.float32 and scores.dim() == 2
                and scores.shape[-1] > SMALL_VOCABULARY)

    def _kept(self, input_ids, scores: torch.Tensor):
        """`(probs, (rows, columns) of the kept tokens in row-major order, {row: filtered scores} for the rows
        `SortFreeTopPLogitsWarper` filters)`."""
        probs = scores.softmax(dim=-1)
        vocabulary, dropped_mass = scores.shape[-1], 1 - self.top_p
        floor = dropped_mass / vocabulary
        rows, columns, by_itself = [], [], {}
        for i, row in enumerate(probs.numpy()):  # NumPy's comparisons cost a tenth of torch's into a bool tensor here
            candidates = np.sort(row[row >= floor]).astype(np.float64)  # ascending; none if the row holds NaN
            below = float(row.sum(dtype=np.float64)) - float(candidates.sum())
            dropped = int(np.searchsorted(below + np.cumsum(candidates), dropped_mass, side="right"))
            kept = max(len(candidates) - dropped, self.min_tokens_to_keep)
            if kept > len(candidates):
                by_itself[i] = super().__call__(input_ids, scores[i : i + 1])[0]
            else:  # the tokens at or above the cut
                kept_columns = np.flatnonzero(row >= candidates[len(candidates) - kept])
                rows.append(np.full(len(kept_columns), i))
                columns.append(kept_columns)
        at = (torch.from_numpy(np.concatenate(rows or [np.zeros(0, np.int64)])),
              torch.from_numpy(np.concatenate(columns or [np.zeros(0, np.int64)])))
        return probs, at, by_itself


def _draw_by_cdf(probs: torch.Tensor, generator: torch.Generator) -> list[int]:
    """One token per row of `probs` `(n, V)` (non-negative, each row with a positive sum), token `t` with probability
    `probs[t] / sum`: one uniform number per row against the row's cumulative sum in float64. The same distribution
    as `torch.multinomial(probs, 1)`, which draws one exponential number per vocabulary entry — 72000 a row and
    token at the seed size, as long as the rest of a batched step. The cumulative sum runs over the row's non-zero
    entries only (after top-p a few of 72000): zeros add nothing to it, so the token drawn is the one the whole row's
    cumulative sum gives for the same number. Up to `SMALL_VOCABULARY` entries a row, it is the whole rows'."""
    uniform = torch.rand((len(probs), 1), generator=generator, dtype=torch.float64, device=probs.device)
    if probs.shape[-1] <= SMALL_VOCABULARY:  # the whole rows at once: fewer calls than row by row
        cdf = probs.double().cumsum(dim=-1)
        total = cdf[:, -1:]
        point = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
        return torch.searchsorted(cdf, point, right=True)[:, 0].tolist()
    if probs.device.type != "cpu":
        tokens = []
        for row, number in zip(probs, uniform):
            support = row.nonzero()[:, 0]
            cdf = row[support].double().cumsum(dim=-1)
            total = cdf[-1:]
            point = torch.minimum(number * total, torch.nextafter(total, torch.zeros_like(total)))  # below the sum
            tokens.append(int(support[torch.searchsorted(cdf, point, right=True)]))  # the first entry past it: p > 0
        return tokens
    # on the CPU the same steps in NumPy (the non-zero entries found over a comparison cost a sixth of torch's
    # `nonzero` here)
    return [_pick(row, np.flatnonzero(row != 0), number) for row, number in zip(probs.numpy(), uniform[:, 0].tolist())]


def _pick(row: np.ndarray, support: np.ndarray, number: float) -> int:
    """The column of `row` that the uniform `number` in [0, 1) falls on, over the cumulative sum (float64, from left
    to right as torch's) of the entries at `support`, increasing columns of every non-zero entry."""
    cdf = np.cumsum(row[support], dtype=np.float64)
    point = min(number * cdf[-1], np.nextafter(cdf[-1], 0.0))  # below the sum
    return int(support[np.searchsorted(cdf, point, side="right")])  # the first entry past it: p > 0


def _in_place(processor, exact: bool = True):
    """`processor` as a function of `(input_ids, scores)` that may change `scores` in place, for the processors of
    the seed's chat settings — the same result bit for bit as the processor's own call, without its copies of the
    `(B, V)` scores (the index tensors `torch.isin` builds over the whole vocabulary, the zeros `SequenceBias` adds,
    a fresh tensor per processor: at 8 seed-size rows each is 2.3 MB, a few of them a step); `None` for any other
    processor, which is called as it is.

    - repetition penalty: gather, penalise, `scatter_` back (its own steps, without the padding column for ids past
      the vocabulary, which only arise if the prompt holds them: then its own call);
    - minimum length, and minimum new tokens: `index_fill_` of the end tokens with -inf while the history is short,
      else nothing (their own calls return an unchanged copy);
    - sequence bias of single tokens only: `add_` of its prepared bias row (its own call adds `zeros + that row`,
      the same numbers);
    - suppressed tokens: `index_fill_` with -inf; temperature: `div_`; top-p: `SortFreeTopPLogitsWarper` filling in
      place — or, unless `exact`, `CandidateTopPLogitsWarper` (for requests without a seed: the same rule, sorting
      a few hundred candidates instead of the whole vocabulary).
    """
    kind = type(processor)
    if kind is RepetitionPenaltyLogitsProcessor and processor.prompt_ignore_length is None:
        penalty = processor.penalty

        def repetition_penalty(input_ids, scores):
            if scores.dim() != 2 or input_ids.dim() != 2 or int(input_ids.max()) >= scores.shape[-1]:
                return processor(input_ids, scores)
            score = scores.gather(1, input_ids)
            score = torch.where(score < 0, score * penalty, score / penalty)
            return scores.scatter_(1, input_ids, score)

        return repetition_penalty
    if kind is MinLengthLogitsProcessor:
        def min_length(input_ids, scores):
            if input_ids.shape[-1] < processor.min_length:
                scores.index_fill_(-1, _columns(processor.eos_token_id, scores), -math.inf)
            return scores

        return min_length
    if kind is MinNewTokensLengthLogitsProcessor:
        def min_new_tokens(input_ids, scores):
            if input_ids.shape[-1] - processor.prompt_length_to_skip < processor.min_new_tokens:
                scores.index_fill_(-1, _columns(processor.eos_token_id, scores), -math.inf)
            return scores

        return min_new_tokens
    if kind is SequenceBiasLogitsProcessor and all(len(sequence) == 1 for sequence in processor.sequence_bias):
        def sequence_bias(input_ids, scores):
            if scores.dtype != torch.float32:  # its zeros would be of the scores' dtype, its sum rounded there
                return processor(input_ids, scores)
            if not processor.prepared_bias_variables:
                processor._prepare_bias_variables(scores)
            return scores.add_(processor.length_1_bias)

        return sequence_bias
    if kind is SuppressTokensLogitsProcessor:
        return lambda input_ids, scores: scores.index_fill_(-1, _columns(processor.suppress_tokens, scores), -math.inf)
    if kind is TemperatureLogitsWarper:
        return lambda input_ids, scores: scores.div_(processor.temperature)
    if kind is TopPLogitsWarper:
        warper = SortFreeTopPLogitsWarper if exact else CandidateTopPLogitsWarper
        top_p = warper(processor.top_p, processor.filter_value, processor.min_tokens_to_keep)
        return functools.partial(top_p.__call__, in_place=True)
    return None


def _columns(token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The ids of `token_ids` that are columns of `scores` (what `torch.isin(arange(V), token_ids)` marks)."""
    token_ids = torch.as_tensor(token_ids, device=scores.device).reshape(-1)
    return token_ids[(token_ids >= 0) & (token_ids < scores.shape[-1])]


def _rows_of(tensor: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """`tensor[rows]` for increasing `rows`: `tensor` itself when they are all of its rows, else `index_select` (5x
    faster on the CPU than indexing with a list, which copies 2.3 MB of logits at 8 seed-size rows in 0.7 ms)."""
    if len(rows) == len(tensor):
        return tensor
    return tensor.index_select(0, torch.tensor(rows, device=tensor.device))


@functools.lru_cache(maxsize=None)
def _call_takes_extra_arguments(kind: type) -> bool:
    return len(inspect.signature(kind.__call__).parameters) > 3  # self, input_ids, scores


def _takes_extra_arguments(processor) -> bool:
    """Whether `processor` is called with more than `(input_ids, scores)`, as `LogitsProcessorList` tells: the
    signature of its class's `__call__`, read once per class (`inspect.signature` costs 10-20 us a processor, and a
    request builds seven)."""
    own = "__call__" in getattr(processor, "__dict__", {})
    if own or not inspect.isfunction(getattr(type(processor), "__call__", None)):  # not a plain method of the class
        return len(inspect.signature(processor.__call__).parameters) > 2
    return _call_takes_extra_arguments(type(processor))


def _fast_processors(processors, exact: bool = True):
    """`processors` as one function of `(input_ids, scores)`, which may change `scores` in place: each processor's
    in-place twin (`_in_place(processor, exact)`) where it has one, else the processor itself, called one by one without
    `LogitsProcessorList`'s signature inspection on every call — or the `LogitsProcessorList` itself when one takes
    extra arguments."""
    if any(_takes_extra_arguments(p) for p in processors):
        return LogitsProcessorList(processors)
    calls = [_in_place(p, exact) or p for p in processors]

    def apply(input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        for call in calls:
            scores = call(input_ids, scores)
        return scores

    last = getattr(getattr(calls[-1], "func", None), "__self__", None) if calls else None

    def draw(input_ids: torch.LongTensor, scores: torch.Tensor, generator: torch.Generator) -> list[int]:
        """The next tokens of requests without a seed: the processors, then `_draw_by_cdf` of the softmax — or,
        where the last is a `CandidateTopPLogitsWarper`, its `draw` after the others."""
        if isinstance(last, CandidateTopPLogitsWarper):
            for call in calls[:-1]:
                scores = call(input_ids, scores)
            return last.draw(input_ids, scores, generator)
        return _draw_by_cdf(torch.softmax(apply(input_ids, scores), dim=-1), generator)

    apply.calls = calls  # what it calls, in order
    apply.draw = draw
    return apply


# ---------------------------------------------------------------------------------------------------------------
# the output head's product

# A float32 head weight of this size or more is multiplied through oneDNN with a weight laid out for it once
# (`OutputHead`), laid out for products of `HEAD_PACK_ROWS` rows (the layout serves any row count).
HEAD_PACKED_MIN_BYTES = 8 * 2**20
HEAD_PACK_ROWS = 8
# Without oneDNN, from this many rows the product is taken `weight @ hidden.T`, the large operand first.
HEAD_TRANSPOSED_MIN_ROWS = 4


class OutputHead:
    """`head(hidden)` for a decoding step's hidden states `(B, d)`: the logits `(B, V)`, read from the weight once.

    A decoding step's head product reads the whole `(V, d)` weight (73.7 MB at the seed size) for a few rows, and
    MKL's float32 `hidden @ weight.T` (what `nn.Linear` runs) does that badly: on the AMD EPYC kind, one thread, at
    vocabulary 72000, about 7.5 ms at 1 row and 19 ms at 8, and `weight @ hidden.T`, the large operand first,
    still 13-15 ms at 8 (on the Intel Xeon kind 8.4 ms at 1 row, 28.9 and 12.6-14.4 at 8). For a float32 head of
    `HEAD_PACKED_MIN_BYTES` or more on the CPU it multiplies through oneDNN instead, with the weight reordered once
    into the blocked layout oneDNN's kernels read (`torch.ops.mkldnn._reorder_linear_weight`, the op torch's
    inductor compiles linear layers to): 5.0 ms at 1 row and 8.4 at 8 on the AMD kind
    (`benchmarks/bench_head_product.py` measures the three on a machine). The reordered copy costs the weight's size
    in memory once (70 MiB at the seed size) and follows the weight: it is made again when the weight is changed in
    place (but for an inference tensor, which keeps no version count) or replaced. It is checked against `nn.Linear` on a probe when made; if oneDNN is missing or that check
    fails, products of `HEAD_TRANSPOSED_MIN_ROWS` rows or more are taken `weight @ hidden.T`, fewer through the head
    itself. A small head (the quickstart's 0.7 MiB, in the cache), another dtype or device, or any other module:
    the head itself. All of these are the same sums of products in other orders: equal to float32 rounding.
    """

    def __init__(self, head: torch.nn.Module):
        self.head = head
        self._packed: tuple[tuple[int, int], torch.Tensor] | None = None  # ((data_ptr, _version), reordered weight)
        self._onednn = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")

    def prepare(self) -> None:
        """Reorder the weight now (else the first product does)."""
        if self._large_float32_head() and self._onednn:
            self._reordered()

    def path(self, hidden: torch.Tensor) -> str:
        """How `hidden` is multiplied: `onednn`, `transposed` or `module`."""
        if not (self._large_float32_head() and hidden.dim() == 2 and hidden.device.type == "cpu"
                and hidden.dtype == torch.float32):
            return "module"
        if self._onednn and self._reordered() is not None:
            return "onednn"
        return "transposed" if len(hidden) >= HEAD_TRANSPOSED_MIN_ROWS and self.head.bias is None else "module"

    def _large_float32_head(self) -> bool:
        weight = getattr(self.head, "weight", None)
        return (type(self.head) is torch.nn.Linear and weight.dtype == torch.float32 and weight.device.type == "cpu"
                and weight.nbytes >= HEAD_PACKED_MIN_BYTES)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        path = self.path(hidden)
        if path == "onednn":
            return torch.ops.mkldnn._linear_pointwise(hidden.contiguous(), self._packed[1], self.head.bias, "none",
                                                      [], "")
        if path == "transposed":
            return torch.mm(self.head.weight, hidden.t()).t().contiguous()
        return self.head(hidden)

    def _reordered(self) -> torch.Tensor | None:
        """The weight in oneDNN's layout, made again if the weight changed; `None` (and no more tries) if oneDNN
        cannot take it."""
        weight = self.head.weight
        # an inference tensor has no version counter: only its replacement is seen
        key = (weight.data_ptr(), -1 if weight.is_inference() else weight._version)
        if self._packed is not None and self._packed[0] == key:
            return self._packed[1]
        try:
            with torch.inference_mode():
                reordered = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), HEAD_PACK_ROWS)
                probe = torch.randn(2, weight.shape[1], generator=torch.Generator().manual_seed(0))
                got = torch.ops.mkldnn._linear_pointwise(probe, reordered, None, "none", [], "")
                expected = torch.nn.functional.linear(probe, weight.detach())
                torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()) + 1e-6)
        except Exception as error:  # an unusual build or layout: the MKL paths
            logger.warning("the output head's product goes without oneDNN: %s", error)
            self._onednn, self._packed = False, None
            return None
        self._packed = (key, reordered)
        return reordered


# ---------------------------------------------------------------------------------------------------------------
# the cache of a merged pass

# The newcomers' prompts share the running rows' decoding pass (`BatchedGenerator._decode_and_prefill`) while its
# attention, dense over every row's cached positions, has at most this many scores a head (8 quickstart rows with
# 100 positions each and two prompts of 40: 88 x 888); beyond, the prompts take a pass of their own.
MERGED_PASS_MAX_SCORES = 2**17


def _flatten_rows(states: torch.Tensor) -> torch.Tensor:
    """`(B, heads, W, head_dim)` as one sequence of the rows one after the other: `(1, heads, B * W, head_dim)`."""
    rows, heads, width, head_dim = states.shape
    return states.transpose(0, 1).reshape(1, heads, rows * width, head_dim)


def _unflatten_rows(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `(B, heads, W, head_dim)` of the one sequence `states` `(1, heads, T, head_dim)`: row `b` holds the
    positions `index[b]` `(B, W)`. (A strided view: the next step's `torch.cat` onto it makes it contiguous.)"""
    rows, width = index.shape
    picked = states[0].index_select(1, index.reshape(-1))  # (heads, B * W, head_dim)
    return picked.view(states.shape[1], rows, width, states.shape[-1]).transpose(0, 1)


def _merged_layout(real: np.ndarray, lengths: list[int]):
    """The bookkeeping of a merged pass (`BatchedGenerator._decode_and_prefill`) for running rows whose cache
    positions are `real` `(B, W)` (True: a token, False: left padding) and prompts of `lengths`:

    - `attention` `(N, B * W + N)`, the pass's mask: its `N = B + sum(lengths)` tokens (each running row's last,
      then each prompt's) against the flattened cache and themselves — each token sees its own row's tokens, a
      prompt's only up to itself;
    - `index` `(B + n, W2)` and `real` `(B + n, W2)`: which positions of the flattened cache after the pass make
      each row of the batch's cache, `W2 = max(W + 1, max(lengths))` wide and left-padded, and which of them are
      tokens;
    - `last`: where each row's last token is among the pass's `N`.
    """
    running, width = real.shape
    old, new = running * width, running + sum(lengths)
    token_row = np.concatenate([np.arange(running), np.repeat(np.arange(running, running + len(lengths)), lengths)])
    key_row = np.concatenate([np.repeat(np.arange(running), width), token_row])
    key_real = np.concatenate([real.reshape(-1), np.ones(new, dtype=bool)])
    key_at = np.arange(old + new)
    attention = (token_row[:, None] == key_row) & key_real & (key_at <= key_at[old:, None])
    new_width = max(width + 1, max(lengths))
    index = np.zeros((running + len(lengths), new_width), dtype=np.int64)  # padding: position 0, never attended
    kept = np.zeros(index.shape, dtype=bool)
    pad = new_width - width - 1
    index[:running, pad:-1], kept[:running, pad:-1] = np.arange(old).reshape(running, width), real
    index[:running, -1], kept[:running, -1] = old + np.arange(running), True
    starts = old + running + np.cumsum([0] + lengths[:-1])
    for j, (start, n) in enumerate(zip(starts.tolist(), lengths)):
        index[running + j, new_width - n :], kept[running + j, new_width - n :] = np.arange(start, start + n), True
    last = np.concatenate([np.arange(running), starts - old + np.asarray(lengths) - 1])
    return attention, index, kept, last


# ---------------------------------------------------------------------------------------------------------------
# one running sequence

# Processors that treat each row on its own whatever the other rows hold, so that requests with equal configurations
# share one call (histories left-padded with each row's own first token, which changes nothing for them). The two
# minimum lengths read the history's length: the rows of one call are all below the minimum or all past it
# (`_Sequence.batch_key`), and share it and, with `min_new_tokens`, the prompt's length (`min_length` is the two's
# sum, and part of the group).
_ROW_WISE = (MinLengthLogitsProcessor, MinNewTokensLengthLogitsProcessor, SuppressTokensLogitsProcessor,
             TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper)


def _row_wise(processor) -> bool:
    if isinstance(processor, SequenceBiasLogitsProcessor):  # only single-token biases ignore the history
        return all(len(sequence) == 1 for sequence in processor.sequence_bias)
    if isinstance(processor, RepetitionPenaltyLogitsProcessor):
        return processor.prompt_ignore_length is None
    return isinstance(processor, _ROW_WISE)


@dataclass(eq=False)
class _Sequence:
    job: GenerationJob
    ids: list[int]  # prompt and generated tokens; the last one is not in the cache yet
    processors: object
    group: str | None  # requests in one group share processor calls; None: alone
    min_length: int
    do_sample: bool
    generator: torch.Generator | None  # a seeded request's own; None: drawn with the worker's (`_draw_by_cdf`)
    eos: frozenset[int]
    max_new_tokens: int
    generated: list[int] = field(default_factory=list)
    emitted: str = ""

    def batch_key(self):
        return None if self.group is None else (self.group, self.generator is None, len(self.ids) < self.min_length)


# ---------------------------------------------------------------------------------------------------------------
# the worker


class BatchedGenerator:
    """Decodes up to `max_running` requests together; `max_waiting` more wait in order; more are `Overloaded`.
    `merge_prompts=False`: newcomers' prompts always take a pass of their own (`_can_merge`)."""

    def __init__(self, model, tokenizer, max_running: int = 16, max_waiting: int = 32, merge_prompts: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.max_running, self.max_waiting = max_running, max_waiting
        self.merge_prompts = merge_prompts
        self.stats = {"served": 0, "cancelled": 0, "failed": 0, "generated_tokens": 0}
        self._lock = threading.Condition()
        self._tokenizer_lock = threading.Lock()  # the tokenizer is used by the server's thread and this one
        self._waiting: collections.deque[GenerationJob] = collections.deque()
        self._active: set[GenerationJob] = set()  # taken from the queue, not finished yet
        self._rows: list[_Sequence] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # (B, W): 1 for real tokens, 0 for left padding
        self._closing = False
        self._thread: threading.Thread | None = None
        # the draws of requests without a seed (seeded from torch's global generator, so `torch.manual_seed` first
        # makes a whole run repeatable)
        self._generator = torch.Generator(device=model.device).manual_seed(int(torch.randint(0, 2**62, ())))
        self._head = OutputHead(model.get_output_embeddings())

    # -- the server's side ---------------------------------------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "BatchedGenerator":
        if not self.alive:
            self._closing = False
            self._thread = threading.Thread(target=self._run, name="smolite-generate", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread; requests still queued or running end with `Failed`."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def prepare(self, messages: list[dict], **overrides) -> tuple[list[int], GenerationConfig]:
        """`(prompt ids, generation config)` for `messages` under the window rule (`chat.prepare_generation`)."""
        with self._tokenizer_lock:
            input_ids, config = prepare_generation(self.model, self.tokenizer, messages, **overrides)
        return input_ids[0].tolist(), config

    def submit(self, prompt_ids: list[int], config: GenerationConfig, seed: int | None = None,
               stop: Sequence[str] = (), loop: asyncio.AbstractEventLoop | None = None) -> GenerationJob:
        """Queue a request (`config` is the job's own; it is changed in place). Raises `Overloaded` when full."""
        if (config.num_beams or 1) > 1 or (config.num_return_sequences or 1) > 1:
            raise ValueError("the server decodes one sequence per request: num_beams and num_return_sequences must be 1.")
        job = GenerationJob(list(prompt_ids), config, seed, tuple(stop), loop, self._cancel)
        with self._lock:
            if self._closing:
                raise RuntimeError("the generation worker is shut down")
            if len(self._active) + len(self._waiting) >= self.max_running + self.max_waiting:
                raise Overloaded(len(self._active), len(self._waiting))
            self._waiting.append(job)
            self._lock.notify_all()
        return job

    def _cancel(self, job: GenerationJob) -> None:
        with self._lock:
            if job in self._waiting:  # not started: its place in the queue is free at once
                self._waiting.remove(job)
                self.stats["cancelled"] += 1
            self._lock.notify_all()

    # -- the thread ----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            self._head.prepare()
            while True:
                with self._lock:
                    while not self._closing and not self._waiting and not self._rows:
                        self._lock.wait()
                    if self._closing:
                        break
                    room = self.max_running - len(self._active)
                    admitted = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
                    self._active.update(admitted)
                self._drop_cancelled()
                try:
                    self._step(admitted)
                except Exception as error:  # reported to the requests of this step; the worker goes on
                    logger.exception("generation failed")
                    self._fail(f"{type(error).__name__}: {error}")
        self._fail("the server is shutting down", waiting_too=True)

    def _step(self, admitted: list[GenerationJob]) -> None:
        """One token for every running sequence and every newcomer: the decoder on each of the two batches, then
        one head product for all their rows (the head is read once) and one choice of tokens."""
        newcomers = [self._start(job) for job in admitted if not self._finished_before_start(job)]
        if self._rows and newcomers and self._can_merge(newcomers):
            logits = self._head(self._decode_and_prefill(newcomers)).float()
            self._choose(self._rows, logits)  # the newcomers joined the batch: they are its last rows
            self._publish_and_retire()
            return
        hidden = []
        if self._rows:
            hidden.append(self._decode())
        if newcomers:
            prompt_hidden, cache, mask = self._prefill(newcomers)
            hidden.append(prompt_hidden)
        if hidden:
            logits = self._head(torch.cat(hidden)).float()
            self._choose(self._rows + newcomers, logits)
        if newcomers:
            self._join(newcomers, cache, mask)
        self._publish_and_retire()

    def _finished_before_start(self, job: GenerationJob) -> bool:
        if job.cancelled:
            with self._lock:
                self._active.discard(job)
                self.stats["cancelled"] += 1
        return job.cancelled

    def _start(self, job: GenerationJob) -> _Sequence:
        config, device = job.config, self.model.device
        if config.min_new_tokens is not None:  # as `generate()` does in `_prepare_generated_length`
            config.min_length = config.min_new_tokens + len(job.prompt_ids)
        # after min_length: one minimum length per group, the one its shared MinLengthLogitsProcessor holds
        group = json.dumps({k: v for k, v in config.to_dict().items() if k not in ("max_new_tokens", "max_length")},
                           sort_keys=True, default=str)
        self.model._prepare_special_tokens(config, True, device=device, batch_size=1)
        prompt = torch.tensor([job.prompt_ids], device=device)
        processors = self.model._get_logits_processor(generation_config=config, input_ids_seq_length=prompt.shape[1],
                                                      encoder_input_ids=prompt, device=device, model_kwargs={})
        generator = None
        if job.seed is not None:
            generator = torch.Generator(device=device).manual_seed(job.seed)
        eos = config._eos_token_tensor
        return _Sequence(
            job=job, ids=list(job.prompt_ids), processors=_fast_processors(processors, exact=generator is not None),
            group=group if all(_row_wise(p) for p in processors) else None, min_length=config.min_length or 0,
            do_sample=bool(config.do_sample), generator=generator,
            eos=frozenset(eos.tolist()) if eos is not None else frozenset(),
            max_new_tokens=config.max_new_tokens or self.model.config.max_position_embeddings - len(job.prompt_ids),
        )

    # -- forward passes --------------------------------------------------------------------------------------------

    def _decode(self) -> torch.Tensor:
        """One step of every running sequence: the decoder's hidden state `(B, d)` at its last token."""
        device = self.model.device
        rows = self._rows
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(rows), 1)], dim=1)
        hidden, self._cache = self._forward(
            input_ids=torch.tensor([[row.ids[-1]] for row in rows], device=device),
            attention_mask=None if bool(self._mask.all()) else self._decoding_mask(),  # generate() drops all-ones
            position_ids=torch.tensor([[len(row.ids) - 1] for row in rows], device=device),
            cache=self._cache,
        )
        return hidden

    def _decoding_mask(self) -> torch.Tensor:
        """The attention mask of a decoding step. For sdpa, the 4-D boolean mask `(B, 1, 1, T)` that
        `create_causal_mask` would build from the 2-D one (one query at the last position sees every real key), which
        the decoder takes as it is: the same attention, without building it in Python at every step (0.5-0.8 ms of a
        quickstart step of 8 rows on the AMD kind); for other attention implementations the 2-D mask."""
        if self.model.config._attn_implementation != "sdpa":
            return self._mask
        return self._mask.bool()[:, None, None, :]

    def _prefill(self, rows: list[_Sequence]):
        """The prompts of `rows`, left-padded together: `(hidden state (n, d) at the last token, cache, mask)`."""
        device = self.model.device
        width = max(len(row.ids) for row in rows)
        pad = self.model.config.pad_token_id or 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row.ids):] = torch.tensor(row.ids, device=device)
            mask[i, width - len(row.ids):] = 1
        hidden, cache = self._forward(
            input_ids=input_ids,
            attention_mask=None if bool(mask.all()) else self._prompt_mask(mask),
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            cache=DynamicCache(config=self.model.config),
        )
        return hidden, cache, mask

    def _can_merge(self, newcomers: list[_Sequence]) -> bool:
        """Whether the newcomers' prompts go through the running rows' decoding pass (`_decode_and_prefill`): with
        sdpa, while its attention scores number at most `MERGED_PASS_MAX_SCORES` a head."""
        if not self.merge_prompts or self.model.config._attn_implementation != "sdpa":
            return False
        queries = len(self._rows) + sum(len(row.ids) for row in newcomers)
        return queries * (self._mask.numel() + queries) <= MERGED_PASS_MAX_SCORES

    def _decode_and_prefill(self, newcomers: list[_Sequence]) -> torch.Tensor:
        """One decoder pass for a step of the running rows and the newcomers' prompts, which then join the batch:
        the hidden states `(B + n, d)` at each row's last token.

        The pass is one packed sequence: the running rows' last tokens, then each prompt. The cache is the running
        rows' one after the other, `(1, heads, B * W, head_dim)`, and a 4-D boolean mask lets each token see only
        its own row's real tokens (and, in a prompt, those up to itself), so each row is attended as in a pass of
        its own. Afterwards the cache is laid out as rows again, one width, left-padded: the running rows' keys and
        their new one, then the prompts'. On the quickstart model (3 layers, hidden 128) a decoder pass is mostly
        Python, and this spares a second one (the prompts' own) about one step in eight at 8 clients.
        """
        device, rows = self.model.device, self._rows
        lengths = [len(row.ids) for row in newcomers]
        attention, index, real, last = _merged_layout(self._mask.bool().cpu().numpy(), lengths)
        tokens = [row.ids[-1] for row in rows] + [t for row in newcomers for t in row.ids]
        positions = [len(row.ids) - 1 for row in rows] + [t for n in lengths for t in range(n)]
        for layer in self._cache.layers:  # (B, heads, W, head_dim) -> (1, heads, B * W, head_dim)
            layer.keys, layer.values = _flatten_rows(layer.keys), _flatten_rows(layer.values)
        outputs = self.model.get_decoder()(
            input_ids=torch.tensor([tokens], device=device), position_ids=torch.tensor([positions], device=device),
            attention_mask=torch.from_numpy(attention).to(device)[None, None], cache=self._cache, use_cache=True)
        index = torch.from_numpy(index).to(device)
        for layer in self._cache.layers:
            layer.keys, layer.values = _unflatten_rows(layer.keys, index), _unflatten_rows(layer.values, index)
        self._mask = torch.from_numpy(real).to(device=device, dtype=self._mask.dtype)
        self._rows = rows + newcomers
        return outputs.last_hidden_state[0].index_select(0, torch.from_numpy(last).to(device))

    def _prompt_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The attention mask of left-padded prompts `mask` `(n, W)`. For sdpa, the 4-D boolean mask `(n, 1, W, W)`
        that `create_causal_mask` builds from it — each position sees the real tokens up to itself; a padding
        position sees none, which sdpa answers as it does for the library's own mask — taken as it is (0.2-0.3 ms
        less Python a quickstart prefill on the AMD EPYC Zen 5); for other attention implementations the 2-D mask."""
        if self.model.config._attn_implementation != "sdpa":
            return mask
        width = mask.shape[1]
        causal = torch.ones((width, width), dtype=torch.bool, device=mask.device).tril_()
        return causal[None, None] & mask.bool()[:, None, None, :]

    def _forward(self, **inputs) -> tuple[torch.Tensor, DynamicCache]:
        """The decoder on `inputs`: `(hidden state (B, d) at each row's last position, cache)`. With the output head
        on it (`OutputHead`) it is what `model(**inputs, logits_to_keep=1)` computes."""
        outputs = self.model.get_decoder()(**inputs, use_cache=True)
        return outputs.last_hidden_state[:, -1], outputs.cache

    def _join(self, rows: list[_Sequence], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Add prefilled `rows` to the batch: both caches padded on the left to one width, then stacked."""
        if not self._rows:
            self._rows, self._cache, self._mask = list(rows), cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])

        def widen(tensor: torch.Tensor) -> torch.Tensor:  # (B, ..., T, [D]) padded to `width` on the left of T
            missing = width - tensor.shape[2 if tensor.dim() == 4 else 1]
            if not missing:
                return tensor
            return torch.nn.functional.pad(tensor, (0, 0, missing, 0) if tensor.dim() == 4 else (missing, 0))

        for old, new in zip(self._cache.layers, cache.layers):
            old.keys = torch.cat([widen(old.keys), widen(new.keys)])  # (B, heads, T, head_dim)
            old.values = torch.cat([widen(old.values), widen(new.values)])
        self._mask = torch.cat([widen(self._mask), widen(mask)])
        self._rows += rows

    def _keep(self, keep: list[int]) -> None:
        """Keep only the rows at `keep` (and drop the padding columns no row needs any more)."""
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        first = int(mask.any(0).long().argmax())  # the first column some row still uses
        self._mask = mask[:, first:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]
        self._rows = [self._rows[i] for i in keep]

    # -- choosing tokens ---------------------------------------------------------------------------------------------

    def _choose(self, rows: list[_Sequence], logits: torch.Tensor) -> None:
        """Each row's next token: its own processors, then argmax, a draw from its own generator (seeded requests,
        as `generate()` draws for a request alone), or one draw by the cumulative distribution (the others). Rows
        of one group share each call; the usual batch is one group, taken without copies."""
        groups: dict[object, list[int]] = collections.defaultdict(list)
        for i, row in enumerate(rows):
            key = row.batch_key()
            groups[key if key is not None else ("alone", i)].append(i)
        tokens: dict[int, int] = {}
        for index in groups.values():
            members = [rows[i] for i in index]
            scores = _rows_of(logits, index)
            tokens.update(zip(index, self._tokens(members, self._histories(members, logits.device), scores)))
        for i, row in enumerate(rows):
            row.ids.append(tokens[i])
            row.generated.append(tokens[i])

    def _tokens(self, members: list[_Sequence], histories: torch.Tensor, scores: torch.Tensor) -> list[int]:
        """The next token of each of `members`, rows of one group (equal settings, all seeded or none)."""
        processors, first = members[0].processors, members[0]
        if not first.do_sample:
            return processors(histories, scores).argmax(-1).tolist()
        if first.generator is None:
            if hasattr(processors, "draw"):
                return processors.draw(histories, scores, self._generator)
            return _draw_by_cdf(torch.softmax(processors(histories, scores), dim=-1), self._generator)
        probs = torch.softmax(processors(histories, scores), dim=-1)
        return [int(torch.multinomial(probs[k][None], num_samples=1, generator=row.generator))
                for k, row in enumerate(members)]

    @staticmethod
    def _histories(rows: list[_Sequence], device) -> torch.Tensor:
        """The rows' ids, left-padded with each row's own first token (which no row-wise processor can tell apart)."""
        width = max(len(row.ids) for row in rows)
        return torch.tensor([[row.ids[0]] * (width - len(row.ids)) + row.ids for row in rows], device=device)

    # -- reporting ---------------------------------------------------------------------------------------------------

    def _publish_and_retire(self) -> None:
        keep, done, events = [], [], []
        for i, row in enumerate(self._rows):
            token = row.generated[-1]
            reason = "stop" if token in row.eos else "length" if len(row.generated) >= row.max_new_tokens else None
            text, reason = self._text(row, reason)
            delta = text[len(row.emitted):] if text.startswith(row.emitted) else ""
            row.emitted += delta
            events.append((row.job, Delta(delta, (token,))))
            if reason is None:
                keep.append(i)
            else:
                done.append(row)
                events.append((row.job, Finished(text, reason, len(row.job.prompt_ids), len(row.generated),
                                                 tuple(row.generated))))
        _deliver(events)
        with self._lock:
            self._active.difference_update(row.job for row in done)
            self.stats["served"] += len(done)
            self.stats["generated_tokens"] += len(self._rows)
        if len(keep) < len(self._rows):
            self._keep(keep)

    def _text(self, row: _Sequence, reason: str | None) -> tuple[str, str | None]:
        """The reply so far as it may be shown, and the finish reason: `reason`, or `stop` at a stop string."""
        with self._tokenizer_lock:
            text = self.tokenizer.decode(row.generated, skip_special_tokens=True).lstrip()
        hits = [at for at in (text.find(stop) for stop in row.job.stop) if at >= 0]
        if hits:
            return text[: min(hits)].strip(), "stop"
        if reason is not None:
            return text.strip(), reason
        # while generating, hold back what may still become a stop string, and trailing whitespace
        hold = max((k for stop in row.job.stop for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)
        return text[: len(text) - hold].rstrip(), None

    def _drop_cancelled(self) -> None:
        gone = [row for row in self._rows if row.job.cancelled]
        if gone:
            with self._lock:
                self._active.difference_update(row.job for row in gone)
                self.stats["cancelled"] += len(gone)
            self._keep([i for i, row in enumerate(self._rows) if not row.job.cancelled])

    def _fail(self, message: str, waiting_too: bool = False) -> None:
        """End every running request (and with `waiting_too` every queued one) with `Failed(message)`."""
        self._rows, self._cache, self._mask = [], None, None
        with self._lock:
            jobs = list(self._active) + (list(self._waiting) if waiting_too else [])
            self._active.clear()
            if waiting_too:
                self._waiting.clear()
            _deliver([(job, Failed(message)) for job in jobs])
            self.stats["failed"] += len(jobs)


__all__ = ["BatchedGenerator", "Delta", "Failed", "Finished", "GenerationJob", "OutputHead", "Overloaded"]
