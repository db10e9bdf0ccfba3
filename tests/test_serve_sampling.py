"""The serving worker's three shortcuts in computing and choosing tokens, each checked against what it replaces.

`SortFreeTopPLogitsWarper` must give exactly `TopPLogitsWarper`'s result (seeded replies equal `generate()`'s);
`_draw_by_cdf`, which draws the tokens of requests without a seed, must follow the probabilities it is given; and
`head_logits`, the output head's product for several rows, must equal the head's own (greedy replies unchanged).
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from smolite_hf.chat import generate_reply
from smolite_hf.serving import BatchedGenerator
from smolite_hf.serving import worker as serving_worker
from smolite_hf.serving.worker import SortFreeTopPLogitsWarper, _draw_by_cdf, head_logits

from .test_openai_api import CONVERSATIONS, GREEDY, loaded  # noqa: F401 (the fixture)


def scores_of(kind: str, rows: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(rows, vocab, generator=generator)
    if kind == "sharp":  # a few tokens hold nearly all the probability, as after a low temperature
        return torch.randn(rows, vocab, generator=generator) / 0.05
    if kind == "ties":  # few distinct values: ties at the cut, which the sort-free path hands to TopPLogitsWarper
        return torch.randint(-3, 3, (rows, vocab), generator=generator).float()
    if kind == "equal":
        return torch.ones(rows, vocab)
    if kind == "suppressed":  # -inf scores, as `<pad>` and the minimum length leave them
        scores = torch.randn(rows, vocab, generator=generator)
        scores[:, ::3] = -float("inf")
        return scores
    if kind == "nan":
        scores = torch.randn(rows, vocab, generator=generator)
        scores[0, 1] = float("nan")
        return scores
    raise ValueError(kind)


@pytest.mark.parametrize("vocab", [7, 1500, 72000])
@pytest.mark.parametrize("kind", ["normal", "sharp", "ties", "equal", "suppressed", "nan"])
def test_sort_free_top_p_equals_transformers_on_each_row_alone(vocab, kind):
    generator = torch.Generator().manual_seed(vocab)
    for rows, top_p, keep in [(1, 0.9, 1), (5, 0.9, 1), (3, 0.5, 2), (4, 0.0, 1), (2, 1.0, 1), (3, 0.95, 5),
                              (2, 0.999, 1)]:
        scores = scores_of(kind, rows, vocab, generator)
        expected = torch.cat([TopPLogitsWarper(top_p, min_tokens_to_keep=keep)(None, scores[i : i + 1])
                              for i in range(rows)])  # as generate() filters a request alone
        result = SortFreeTopPLogitsWarper(top_p, min_tokens_to_keep=keep)(None, scores)
        assert torch.equal(result.isnan(), expected.isnan()), (rows, top_p, keep)
        assert torch.equal(result.nan_to_num(0.0), expected.nan_to_num(0.0)), (rows, top_p, keep)
        kept = (result > -float("inf")).sum(-1)
        if kind in ("normal", "sharp") and top_p in (0.5, 0.9) and vocab > 7:
            assert (kept < vocab).all()  # the cut is really made, not a no-op equal to its input


def test_sort_free_top_p_leaves_other_dtypes_to_transformers():
    scores = torch.randn(3, 50, dtype=torch.float64)
    expected = TopPLogitsWarper(0.8)(None, scores)
    assert torch.equal(SortFreeTopPLogitsWarper(0.8)(None, scores), expected)


def test_draws_by_cdf_follow_the_probabilities():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.25, 0.25, 0.0],  # zeros between and after
                          [0.0, 0.0, 0.0, 0.0, 0.0, 3.0],  # one possible token, an unnormalised row
                          [1.0, 2.0, 3.0, 4.0, 0.0, 0.0]])
    generator = torch.Generator().manual_seed(0)
    draws = 40_000
    counts = torch.zeros_like(probs)
    for _ in range(draws // 100):  # 100 rows of each kind per call
        tokens = _draw_by_cdf(probs.repeat(100, 1), generator)
        for row, token in enumerate(tokens):
            counts[row % 3, token] += 1
    expected = probs / probs.sum(-1, keepdim=True)
    assert (counts[expected == 0] == 0).all()
    sigma = (draws * expected * (1 - expected)).sqrt()
    assert ((counts - draws * expected).abs() <= 5 * sigma + 1e-9).all(), counts / draws


def test_draws_by_cdf_are_those_of_the_whole_rows_cumulative_sum():
    """`_draw_by_cdf` sums only each row's non-zero entries: the tokens must be those that the cumulative sum of the
    whole row gives for the same uniform numbers (rows mostly zero, as after top-p, and rows without zeros)."""
    generator = torch.Generator().manual_seed(1)
    probs = torch.rand(64, 5000, generator=generator)
    probs[:48][torch.rand(48, 5000, generator=generator) < 0.995] = 0  # sparse rows, a few entries each
    probs[:48, 17] = 1e-3  # at least one entry per row
    for seed in range(5):
        uniform = torch.rand((len(probs), 1), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        cdf = probs.double().cumsum(dim=-1)
        point = torch.minimum(uniform * cdf[:, -1:], torch.nextafter(cdf[:, -1:], torch.zeros(1, dtype=torch.float64)))
        whole_row = torch.searchsorted(cdf, point, right=True)[:, 0].tolist()
        assert _draw_by_cdf(probs, torch.Generator().manual_seed(seed)) == whole_row


def test_a_draw_at_the_very_top_of_the_cdf_is_still_a_possible_token(monkeypatch):
    probs = torch.tensor([[0.3, 0.7, 0.0, 0.0]])  # the trailing zeros must never be drawn
    monkeypatch.setattr(torch, "rand", lambda shape, **kwargs: torch.full(shape, 1.0, dtype=torch.float64))
    assert _draw_by_cdf(probs, torch.Generator()) == [1]


def test_unseeded_sampled_requests_decoded_together_draw_from_their_filtered_scores(loaded):  # noqa: F811
    """With a top-p so small that one token survives, sampling must give the greedy reply of `generate()` alone —
    for eight requests without a seed, decoded together and drawn by `_draw_by_cdf`."""
    model, tokenizer = loaded
    expected = [generate_reply(model, tokenizer, messages, max_new_tokens=12, **GREEDY) for messages in CONVERSATIONS[:8]]
    worker = BatchedGenerator(model, tokenizer).start()
    try:
        jobs = [worker.submit(*worker.prepare(messages, max_new_tokens=12, do_sample=True, temperature=1.0, top_p=1e-9))
                for messages in CONVERSATIONS[:8]]
        assert [job.result(120).text for job in jobs] == expected
    finally:
        worker.close()


def test_the_head_product_for_several_rows_equals_the_heads_own(monkeypatch):
    """From `HEAD_TRANSPOSED_MIN_ROWS` rows of a large enough float32 head, `head_logits` multiplies `weight @
    hidden.T`; fewer rows, a small head or another dtype go through the head itself. Either way: the head's logits."""
    products = []
    mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: products.append(a.shape) or mm(a, b))
    big = torch.nn.Linear(256, 9000, bias=False)  # 9.2 MB of float32 weight
    assert big.weight.nbytes >= serving_worker.HEAD_TRANSPOSED_MIN_BYTES
    generator = torch.Generator().manual_seed(0)
    for rows, head, dtype, transposed in [(8, big, torch.float32, True), (16, big, torch.float32, True),
                                          (serving_worker.HEAD_TRANSPOSED_MIN_ROWS - 1, big, torch.float32, False),
                                          (8, torch.nn.Linear(256, 100, bias=False), torch.float32, False),
                                          (8, copy.deepcopy(big).to(torch.bfloat16), torch.bfloat16, False)]:
        products.clear()
        hidden = torch.randn(rows, 256, generator=generator).to(dtype)
        with torch.no_grad():
            logits, expected = head_logits(head, hidden), head(hidden)
        assert products == ([tuple(head.weight.shape)] if transposed else []), (rows, dtype)
        assert logits.shape == expected.shape and logits.is_contiguous()
        torch.testing.assert_close(logits, expected)  # float32 rounding: the same sums in another order


def test_greedy_replies_decoded_together_with_the_transposed_head_product_equal_generate_alone(loaded, monkeypatch):  # noqa: F811
    model, tokenizer = loaded
    monkeypatch.setattr(serving_worker, "HEAD_TRANSPOSED_MIN_BYTES", 0)  # the tiny model's head takes that path too
    products = []
    mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: products.append(len(b.T)) or mm(a, b))
    expected = [generate_reply(model, tokenizer, messages, max_new_tokens=15, **GREEDY) for messages in CONVERSATIONS[:8]]
    worker = BatchedGenerator(model, tokenizer).start()
    try:
        jobs = [worker.submit(*worker.prepare(messages, max_new_tokens=15, **GREEDY)) for messages in CONVERSATIONS[:8]]
        assert [job.result(120).text for job in jobs] == expected
    finally:
        worker.close()
    assert products and max(products) >= serving_worker.HEAD_TRANSPOSED_MIN_ROWS  # rows decoded together took it
