"""The serving worker's shortcuts in computing and choosing tokens, each checked against what it replaces.

The in-place twins of the seed's logits processors (`_fast_processors`) and `SortFreeTopPLogitsWarper` must give
exactly transformers' results (seeded replies equal `generate()`'s); `CandidateTopPLogitsWarper`, the top-p of requests
without a seed, must keep the tokens `TopPLogitsWarper` keeps; `_draw_by_cdf`, which draws their tokens, must follow
the probabilities it is given; and `OutputHead`, the output head's product (through oneDNN with a reordered weight, or
the large operand first), must equal the head's own and follow the weight (greedy replies unchanged).
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.generation.logits_process import LogitsProcessorList, TopPLogitsWarper

from smolite_hf.chat import generate_reply
from smolite_hf.serving import BatchedGenerator
from smolite_hf.serving import worker as serving_worker
from smolite_hf.generation import smolite_generation_config
from smolite_hf.serving.worker import (
    CandidateTopPLogitsWarper,
    SortFreeTopPLogitsWarper,
    _draw_by_cdf,
    _fast_processors,
    _in_place,
    OutputHead,
)

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


def library_processors(model, prompt_length: int, **overrides) -> LogitsProcessorList:
    """The processors `generate()` builds for the seed's chat settings (with `overrides`), as the worker gets them."""
    config = smolite_generation_config(model.config, **overrides)
    model._prepare_special_tokens(config, True, device=model.device, batch_size=1)
    return model._get_logits_processor(generation_config=config, input_ids_seq_length=prompt_length,
                                       encoder_input_ids=torch.zeros((1, prompt_length), dtype=torch.long),
                                       device=model.device, model_kwargs={})


@pytest.mark.parametrize("vocab", [1500, 72000])
@pytest.mark.parametrize("overrides", [{}, {"suppress_tokens": [0, 3, 10**6]}, {"temperature": 1.3, "top_p": 0.5},
                                       {"sequence_bias": [[[4], -5.0], [[7], 2.5]], "repetition_penalty": 1.5},
                                       {"min_length": 0, "min_new_tokens": 8}])
def test_the_in_place_processors_equal_transformers_own(loaded, vocab, overrides):  # noqa: F811
    """The seed's processors in place give `LogitsProcessorList`'s scores bit for bit: below and past the minimum
    length, histories of repeated tokens, `-inf` and ties in the scores."""
    model, _ = loaded
    generator = torch.Generator().manual_seed(vocab)
    for length in (3, 9, 10, 40):  # the minimum length is 10 (or 2 + 8 new tokens): <end> is forbidden below it
        processors = library_processors(model, prompt_length=2, **overrides)
        twins = [_in_place(p) for p in processors]
        assert all(twin is not None for twin in twins), [type(p).__name__ for p in processors]  # none left out
        history = torch.randint(0, 60, (6, length), generator=generator)  # repeats: the penalty applies twice
        for scores in (torch.randn(6, vocab, generator=generator) * 4,
                       torch.randint(-3, 3, (6, vocab), generator=generator).float()):
            scores[:, 5::11] = -float("inf")
            expected = LogitsProcessorList(processors)(history, scores.clone())
            result = _fast_processors(processors)(history, scores.clone())
            assert torch.equal(result, expected), (length, overrides)


def test_processors_without_an_in_place_twin_are_called_as_they_are(loaded):  # noqa: F811
    """Multi-token biases, a history holding ids past the head's width, and bfloat16 scores take the library's path:
    the same scores as `LogitsProcessorList`."""
    model, _ = loaded
    processors = library_processors(model, prompt_length=2, sequence_bias=[[[4], -5.0], [[5, 6], -1.0]], top_k=20)
    assert [_in_place(p) is None for p in processors if type(p).__name__ in ("SequenceBiasLogitsProcessor",
                                                                            "TopKLogitsWarper")] == [True, True]
    generator = torch.Generator().manual_seed(0)
    history = torch.cat([torch.randint(0, 60, (3, 12), generator=generator), torch.tensor([[5, 6], [1, 5], [5, 6]])], 1)
    scores = torch.randn(3, 300, generator=generator)
    assert torch.equal(_fast_processors(processors)(history, scores.clone()),
                       LogitsProcessorList(processors)(history, scores.clone()))
    seed_processors = library_processors(model, prompt_length=2)
    wide = history.clone()
    wide[0, 0] = 400  # an id the 300-wide scores have no column for
    for history_, scores_ in ((wide, scores), (history, scores.to(torch.bfloat16))):
        assert torch.equal(_fast_processors(seed_processors)(history_, scores_.clone()),
                           LogitsProcessorList(seed_processors)(history_, scores_.clone()))


def test_processors_taking_more_arguments_keep_the_library_list(loaded):  # noqa: F811
    """A processor whose `__call__` takes more than `(input_ids, scores)` gets them from `LogitsProcessorList`, so the
    worker then uses the list itself — told by the class's signature (read once per class), by an instance's own
    `__call__`, or by a callable class attribute."""
    from transformers import LogitsProcessor

    model, _ = loaded

    class WithKeywords(LogitsProcessor):
        def __call__(self, input_ids, scores, **kwargs):
            return scores

    class Plain(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores

    own = Plain()
    own.__call__ = lambda input_ids, scores, cur_len=0: scores
    seed = list(library_processors(model, prompt_length=2))
    assert not isinstance(_fast_processors(seed + [Plain()]), LogitsProcessorList)
    for extra in (WithKeywords(), WithKeywords(), own):  # twice: the class's answer read from the cache
        assert isinstance(_fast_processors(seed + [extra]), LogitsProcessorList), extra


@pytest.mark.parametrize("kind", ["normal", "sharp", "suppressed", "nan"])
def test_the_candidate_top_p_keeps_the_tokens_transformers_keeps(kind):
    """The same kept tokens as `TopPLogitsWarper`, but for one whose ascending cumulative probability (in float64)
    lies within rounding of `1 - top_p`, where float32 sums may fall either side; the kept scores unchanged."""
    generator = torch.Generator().manual_seed(3)
    borderline = 0
    for vocab in (50, 1500, 72000):
        for top_p, keep in [(0.9, 1), (0.5, 1), (0.95, 5), (0.0, 1), (1e-9, 1), (0.9, 40), (0.999, 1)]:
            scores = scores_of(kind, 8, vocab, generator) * (4 if kind == "normal" else 1)
            expected = TopPLogitsWarper(top_p, min_tokens_to_keep=keep)(None, scores.clone())
            result = CandidateTopPLogitsWarper(top_p, min_tokens_to_keep=keep)(None, scores.clone())
            assert torch.equal(result.isnan(), expected.isnan())
            kept, kept_expected = result > -float("inf"), expected > -float("inf")
            assert torch.equal(result[kept & kept_expected], scores[kept & kept_expected])
            for row in (kept != kept_expected).any(-1).nonzero()[:, 0].tolist():
                differing = (kept[row] != kept_expected[row]).nonzero()[:, 0]
                probs = scores[row].double().softmax(-1)
                cumulative = torch.stack([probs[probs <= probs[t]].sum() for t in differing])
                assert len(differing) == 1 and (cumulative - (1 - top_p)).abs().max() < 1e-6, (vocab, top_p, keep)
                borderline += 1
            if kind == "normal" and top_p == 0.9 and keep == 1:
                assert (kept.sum(-1) < vocab).all()  # a real cut
    assert borderline <= 8  # of 168 rows


def test_the_candidate_top_p_keeps_a_tie_at_the_cut_whole():
    """Where equal scores straddle the cut `TopPLogitsWarper` keeps some of them (as its sort left them); the
    candidate top-p keeps them all, and nothing else more."""
    generator = torch.Generator().manual_seed(4)
    scores = torch.randint(-3, 3, (6, 20000), generator=generator).float()  # above SMALL_VOCABULARY
    expected = TopPLogitsWarper(0.7)(None, scores.clone()) > -float("inf")
    result = CandidateTopPLogitsWarper(0.7)(None, scores.clone()) > -float("inf")
    assert (result | ~expected).all()  # every token transformers keeps is kept
    cut = torch.where(expected, scores, float("inf")).min(-1, keepdim=True).values
    assert torch.equal(result, scores >= cut)  # and the others kept are the ties with its lowest kept score


def test_only_requests_with_a_seed_keep_the_exact_top_p(loaded):  # noqa: F811
    model, tokenizer = loaded
    worker = BatchedGenerator(model, tokenizer)
    messages = CONVERSATIONS[0]
    seeded = worker._start(serving_worker.GenerationJob(*worker.prepare(messages), seed=7, stop=(), loop=None,
                                                        on_cancel=None))
    unseeded = worker._start(serving_worker.GenerationJob(*worker.prepare(messages), seed=None, stop=(), loop=None,
                                                          on_cancel=None))
    warpers = [[getattr(call, "func", None) for call in row.processors.calls] for row in (seeded, unseeded)]
    assert any(isinstance(getattr(f, "__self__", None), SortFreeTopPLogitsWarper) and
               not isinstance(f.__self__, CandidateTopPLogitsWarper) for f in warpers[0])
    assert any(isinstance(getattr(f, "__self__", None), CandidateTopPLogitsWarper) for f in warpers[1])
    assert seeded.batch_key() != unseeded.batch_key()  # never one processor call for both


@pytest.mark.parametrize("small_vocabulary", [0, 8192])  # the sparse path, row by row; the whole rows at once
def test_draws_by_cdf_follow_the_probabilities(monkeypatch, small_vocabulary):
    monkeypatch.setattr(serving_worker, "SMALL_VOCABULARY", small_vocabulary)
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


@pytest.mark.parametrize("small_vocabulary", [0, 8192])  # the sparse path, row by row; the whole rows at once
def test_draws_by_cdf_are_those_of_the_whole_rows_cumulative_sum(monkeypatch, small_vocabulary):
    """`_draw_by_cdf` sums only each row's non-zero entries (or, up to `SMALL_VOCABULARY` entries, the whole rows):
    the tokens must be those that the cumulative sum of the whole row gives for the same uniform numbers (rows mostly
    zero, as after top-p, and rows without zeros)."""
    monkeypatch.setattr(serving_worker, "SMALL_VOCABULARY", small_vocabulary)
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


@pytest.mark.parametrize("small_vocabulary", [0, 8192])
def test_a_draw_at_the_very_top_of_the_cdf_is_still_a_possible_token(monkeypatch, small_vocabulary):
    monkeypatch.setattr(serving_worker, "SMALL_VOCABULARY", small_vocabulary)
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


def test_requests_with_a_minimum_of_new_tokens_share_processor_calls_and_decode_as_alone(loaded):  # noqa: F811
    """`min_new_tokens` adds `MinNewTokensLengthLogitsProcessor`, which has an in-place twin: requests with one
    prompt length share each call (without it, every such row was processed alone), and greedy replies decoded
    together equal `generate()` alone, `<end>` held back for the minimum."""
    model, tokenizer = loaded
    settings = {**GREEDY, "min_length": 0, "min_new_tokens": 9, "sequence_bias": [[[model.config.eos_token_id], 50.0]]}
    worker = BatchedGenerator(model, tokenizer)
    rows = [worker._start(serving_worker.GenerationJob(*worker.prepare(CONVERSATIONS[0], max_new_tokens=14, **settings),
                                                        seed=None, stop=(), loop=None, on_cancel=None))
            for _ in range(2)]
    assert rows[0].batch_key() is not None and rows[0].batch_key() == rows[1].batch_key()
    conversations = CONVERSATIONS[:4]
    expected = [generate_reply(model, tokenizer, messages, max_new_tokens=14, **settings) for messages in conversations]
    worker.start()
    try:
        jobs = [worker.submit(*worker.prepare(messages, max_new_tokens=14, **settings)) for messages in conversations]
        results = [job.result(120) for job in jobs]
    finally:
        worker.close()
    assert [result.text for result in results] == expected
    assert all(result.completion_tokens == 10 and result.finish_reason == "stop" for result in results)  # <end> at 10


def test_the_head_product_equals_the_heads_own_through_onednn():
    """A float32 head of `HEAD_PACKED_MIN_BYTES` or more goes through oneDNN with the weight reordered once, at any row
    count; a small head, another dtype or another module go through the head itself. Either way: the head's logits."""
    assert torch.backends.mkldnn.is_available()  # torch's CPU builds have it: the path below must be taken
    big = torch.nn.Linear(256, 9000, bias=False)  # 9.2 MB of float32 weight
    assert big.weight.nbytes >= serving_worker.HEAD_PACKED_MIN_BYTES
    with_bias = torch.nn.Linear(256, 9000)
    generator = torch.Generator().manual_seed(0)
    for rows, head, dtype, path in [(1, big, torch.float32, "onednn"), (3, big, torch.float32, "onednn"),
                                    (8, big, torch.float32, "onednn"), (17, big, torch.float32, "onednn"),
                                    (8, with_bias, torch.float32, "onednn"),
                                    (8, torch.nn.Linear(256, 100, bias=False), torch.float32, "module"),
                                    (8, copy.deepcopy(big).to(torch.bfloat16), torch.bfloat16, "module"),
                                    (8, torch.nn.Sequential(big), torch.float32, "module")]:
        product = OutputHead(head)
        hidden = torch.randn(rows, 256, generator=generator).to(dtype)
        with torch.inference_mode():
            logits, expected = product(hidden), head(hidden)
        assert product.path(hidden) == path, (rows, dtype, type(head))
        assert logits.shape == expected.shape and logits.dtype == expected.dtype and logits.is_contiguous()
        torch.testing.assert_close(logits, expected)  # float32 rounding: the same sums in another order


def test_the_reordered_head_weight_follows_the_weight():
    """The reordered copy is made again when the weight changes in place or is replaced: never stale logits."""
    head = torch.nn.Linear(256, 9000, bias=False)
    product = OutputHead(head)
    hidden = torch.randn(4, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(product(hidden), head(hidden))
        before = product._packed[1]
    with torch.no_grad():
        head.weight.mul_(-2)  # in place
    with torch.inference_mode():
        torch.testing.assert_close(product(hidden), head(hidden))
        assert product._packed[1] is not before
    head.weight = torch.nn.Parameter(torch.randn(9000, 256) / 16)  # replaced
    with torch.inference_mode():
        torch.testing.assert_close(product(hidden), head(hidden))


def test_without_onednn_the_head_product_takes_the_large_operand_first(monkeypatch):
    """Where oneDNN is missing or fails its check, `HEAD_TRANSPOSED_MIN_ROWS` rows or more of a large float32 head are
    multiplied `weight @ hidden.T`, fewer through the head itself: the head's logits either way."""
    products = []
    mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: products.append(a.shape) or mm(a, b))
    big = torch.nn.Linear(256, 9000, bias=False)
    generator = torch.Generator().manual_seed(0)
    broken = OutputHead(big)
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", lambda weight, rows: torch.zeros_like(weight))
    hidden = torch.randn(8, 256, generator=generator)
    with torch.inference_mode():
        torch.testing.assert_close(broken(hidden), big(hidden))  # the probe caught the wrong layout
    assert broken.path(hidden) == "transposed" and products == [tuple(big.weight.shape)] * 1
    for rows, transposed in [(8, True), (16, True), (serving_worker.HEAD_TRANSPOSED_MIN_ROWS - 1, False)]:
        products.clear()
        product = OutputHead(big)
        product._onednn = False  # as where torch.backends.mkldnn is unavailable
        hidden = torch.randn(rows, 256, generator=generator)
        with torch.inference_mode():
            logits, expected = product(hidden), big(hidden)
        assert products == ([tuple(big.weight.shape)] if transposed else []), rows
        assert logits.is_contiguous()
        torch.testing.assert_close(logits, expected)


@pytest.mark.parametrize("onednn", [True, False])
def test_greedy_replies_decoded_together_with_the_head_products_equal_generate_alone(loaded, monkeypatch, onednn):  # noqa: F811
    model, tokenizer = loaded
    monkeypatch.setattr(serving_worker, "HEAD_PACKED_MIN_BYTES", 0)  # the tiny model's head takes these paths too
    paths = []
    call = OutputHead.__call__
    monkeypatch.setattr(OutputHead, "__call__", lambda self, hidden: paths.append((self.path(hidden), len(hidden)))
                        or call(self, hidden))
    expected = [generate_reply(model, tokenizer, messages, max_new_tokens=15, **GREEDY) for messages in CONVERSATIONS[:8]]
    worker = BatchedGenerator(model, tokenizer)
    worker._head._onednn = onednn and worker._head._onednn
    worker.start()
    try:
        jobs = [worker.submit(*worker.prepare(messages, max_new_tokens=15, **GREEDY)) for messages in CONVERSATIONS[:8]]
        assert [job.result(120).text for job in jobs] == expected
    finally:
        worker.close()
    taken = {path for path, rows in paths if rows >= serving_worker.HEAD_TRANSPOSED_MIN_ROWS}
    assert taken == {"onednn" if onednn else "transposed"}  # rows decoded together took it


def test_the_decoding_mask_gives_the_attention_of_the_2d_mask(loaded):  # noqa: F811
    """A decoding step of a left-padded batch with the worker's prepared 4-D mask: the decoder's hidden states equal
    those from the 2-D mask `generate()` passes (from which `create_causal_mask` builds its own)."""
    import copy as copy_module

    from transformers.cache_utils import DynamicCache

    model, tokenizer = loaded
    assert model.config._attn_implementation == "sdpa"  # the path the mask is prepared for
    worker = BatchedGenerator(model, tokenizer)
    generator = torch.Generator().manual_seed(0)
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[0, :5], mask[2, :2] = 0, 0  # left padding
    ids = torch.randint(5, 100, (4, 9), generator=generator)
    decoder = model.get_decoder()
    with torch.inference_mode():
        cache = decoder(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                        cache=DynamicCache(config=model.config), use_cache=True).cache
        worker._mask = torch.cat([mask, mask.new_ones(4, 1)], dim=1)
        prepared = worker._decoding_mask()
        assert prepared.shape == (4, 1, 1, 10) and prepared.dtype == torch.bool
        step = {"input_ids": torch.randint(5, 100, (4, 1), generator=generator),
                "position_ids": mask.sum(-1, keepdim=True)}
        expected = decoder(**step, attention_mask=worker._mask, cache=copy_module.deepcopy(cache)).last_hidden_state
        result = decoder(**step, attention_mask=prepared, cache=copy_module.deepcopy(cache)).last_hidden_state
        unmasked = decoder(**step, cache=copy_module.deepcopy(cache)).last_hidden_state
    assert torch.equal(result, expected)
    assert not torch.equal(result[0], unmasked[0])  # the padding really is masked out


def test_the_prompt_mask_gives_the_attention_and_cache_of_the_2d_mask(loaded):  # noqa: F811
    """Left-padded prompts prefilled with the worker's prepared 4-D mask: the decoder's hidden states at every
    position, padding included, and the cache equal those from the 2-D mask (from which `create_causal_mask` builds
    its own), so the decoding steps after it see the same keys and values."""
    from transformers.cache_utils import DynamicCache

    model, tokenizer = loaded
    assert model.config._attn_implementation == "sdpa"  # the path the mask is prepared for
    worker = BatchedGenerator(model, tokenizer)
    generator = torch.Generator().manual_seed(1)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[0, :6], mask[2, :1] = 0, 0  # left padding
    prepared = worker._prompt_mask(mask)
    assert prepared.shape == (3, 1, 11, 11) and prepared.dtype == torch.bool
    inputs = {"input_ids": torch.randint(5, 100, (3, 11), generator=generator),
              "position_ids": (mask.cumsum(-1) - 1).clamp(min=0), "use_cache": True}
    decoder = model.get_decoder()
    with torch.inference_mode():
        expected = decoder(**inputs, attention_mask=mask, cache=DynamicCache(config=model.config))
        result = decoder(**inputs, attention_mask=prepared, cache=DynamicCache(config=model.config))
        causal_only = decoder(**inputs, cache=DynamicCache(config=model.config)).last_hidden_state
    assert torch.equal(result.last_hidden_state, expected.last_hidden_state)
    for mine, theirs in zip(result.cache.layers, expected.cache.layers):
        assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)
    assert not torch.equal(result.last_hidden_state[0, 6:], causal_only[0, 6:])  # the padding really is masked out


def _worker_with_running_rows(model, tokenizer, running, steps):
    """A worker (its thread not started) decoding the greedy requests `running` (conversations), `steps` tokens in."""
    worker = BatchedGenerator(model, tokenizer)
    rows = [worker._start(worker.submit(*worker.prepare(messages, max_new_tokens=40, **GREEDY))) for messages in running]
    hidden, cache, mask = worker._prefill(rows)
    worker._join(rows, cache, mask)
    for step in range(steps):
        for row in rows:
            row.ids.append(10 + step)  # the token each row chose (not in the cache yet)
        if step < steps - 1:
            worker._decode()
    return worker


@pytest.mark.parametrize("running, joining, steps", [
    (CONVERSATIONS[:5], CONVERSATIONS[5:7], 12),  # the batch wider than the prompts
    (CONVERSATIONS[5:6] + CONVERSATIONS[7:9], CONVERSATIONS[2:3] + CONVERSATIONS[6:7], 1),  # a prompt wider than it
])
def test_a_merged_pass_equals_a_decoding_step_and_a_prefill_then_the_join(loaded, running, joining, steps):  # noqa: F811
    """`_decode_and_prefill` (the newcomers' prompts in the running rows' pass) against what it replaces — `_decode`,
    `_prefill` of the prompts and `_join`: the same hidden states, the same mask, the same keys and values at every
    real position, and the same hidden states at the step after."""
    model, tokenizer = loaded
    separate = _worker_with_running_rows(model, tokenizer, running, steps)
    merged = _worker_with_running_rows(model, tokenizer, running, steps)
    assert merged._can_merge([merged._start(merged.submit(*merged.prepare(m, **GREEDY))) for m in joining])
    with torch.inference_mode():
        newcomers = [separate._start(separate.submit(*separate.prepare(m, max_new_tokens=40, **GREEDY))) for m in joining]
        hidden = separate._decode()
        prompt_hidden, cache, mask = separate._prefill(newcomers)
        separate._join(newcomers, cache, mask)
        expected = torch.cat([hidden, prompt_hidden])
        newcomers = [merged._start(merged.submit(*merged.prepare(m, max_new_tokens=40, **GREEDY))) for m in joining]
        result = merged._decode_and_prefill(newcomers)
        assert len(merged._rows) == len(running) + len(joining) and merged._rows[-len(joining):] == newcomers
        torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(merged._mask, separate._mask)
        real = separate._mask.bool()[:, None, :, None]  # (B, 1, W, 1) over (B, heads, W, head_dim)
        for mine, theirs in zip(merged._cache.layers, separate._cache.layers):
            assert mine.keys.shape == theirs.keys.shape
            torch.testing.assert_close(mine.keys * real, theirs.keys * real, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(mine.values * real, theirs.values * real, rtol=1e-5, atol=1e-5)
        for worker in (separate, merged):
            for row in worker._rows:
                row.ids.append(42)
        torch.testing.assert_close(merged._decode(), separate._decode(), rtol=1e-5, atol=1e-5)


def test_prompts_are_merged_only_into_a_pass_of_bounded_attention_with_sdpa(loaded, monkeypatch):  # noqa: F811
    model, tokenizer = loaded
    worker = _worker_with_running_rows(model, tokenizer, CONVERSATIONS[:3], 2)
    newcomers = [worker._start(worker.submit(*worker.prepare(m, **GREEDY))) for m in CONVERSATIONS[3:5]]
    assert worker._can_merge(newcomers)
    queries = 3 + sum(len(row.ids) for row in newcomers)
    monkeypatch.setattr(serving_worker, "MERGED_PASS_MAX_SCORES", queries * (worker._mask.numel() + queries) - 1)
    assert not worker._can_merge(newcomers)
    monkeypatch.undo()
    worker.merge_prompts = False
    assert not worker._can_merge(newcomers)
    worker.merge_prompts = True
    monkeypatch.setattr(model.config, "_attn_implementation", "eager")
    assert not worker._can_merge(newcomers)  # the pass's mask is sdpa's boolean one
