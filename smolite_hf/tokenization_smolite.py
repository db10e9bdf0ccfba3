"""Smolite tokenizer: SentencePiece Unigram semantics on the `tokenizers` (Rust) backend.

A converted tokenizer gives the same ids as `sentencepiece` on the original `.model`. SentencePiece does four things
that a default conversion misses, and the pipeline here reproduces each:

1. It normalises the *whole* string first (`nmt_nfkc`: NFKC, control characters removed, odd whitespace to a space,
   runs of spaces collapsed, ends stripped, a dummy-prefix `▁`, spaces to `▁`). Its character map composes some
   sequences that NFKC also composes (compatibility jamo `ㅎㅕ` -> `혀`) but not a syllable followed by a final
   consonant (`버ㄵ` stays two characters), and keeps the full-width tilde `～`; the normaliser below does the same.
2. Only then are user-defined pieces (`<start>`, `<sep>`, `<end>`) matched, wherever they occur, so the space before
   `<sep>` survives as its own `▁` piece. Here a pre-tokenizer isolates them after normalisation; special tokens are
   never matched in the raw text (`split_special_tokens=True`).
3. Control pieces (`<pad>`) and `<unk>` are never produced from text: the literal string `<pad>` is ordinary
   characters. Here they get a score no segmentation can prefer, and runs of characters outside the vocabulary are
   isolated, so that they become one `<unk>` each (consecutive unknown characters fuse, as in SentencePiece).
4. `<unk>` decodes to ` ⁇ `.
5. It sums path scores in float32, whose rounding decides between segmentations that use the same pieces in another
   order (long runs of one character); `tokenizers` sums in float64. Encoding therefore runs
   `SentencePieceSegmenter`, a float32 port of SentencePiece's Viterbi, as the pre-tokenizer; `tokenizer.json` keeps
   the portable Rust pipeline (items 1-4), which other runtimes can load and which differs only in that tie order.
   Every constructor (`from_pretrained`, `from_sentencepiece`, `train`, unpickling) installs the segmenter;
   `save_pretrained` and pickling write the portable pipeline.

The original `.model` is read here too (`sentencepiece_pieces`, with transformers' protobuf schema), so that
`SmoliteTokenizer.from_sentencepiece` needs no other module; `convert_sentencepiece_to_hf` is the script around it.

Known differences from SentencePiece, on text that chat data does not contain: sequences of several combining marks
(NFKC reorders them canonically, SentencePiece's map does not) and code points added to Unicode after the version
built into `tokenizers`' NFKC.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import Unigram
from transformers import TokenizersBackend
from transformers.utils import logging

from .configuration_smolite import SmoliteConfig

logger = logging.get_logger(__name__)

PAD, UNK, START, SEP, END = "<pad>", "<unk>", "<start>", "<sep>", "<end>"
# A freshly trained tokenizer puts the five special pieces first, at these ids (those of the released models).
SPECIAL_PIECES = [PAD, UNK, START, SEP, END]
USER_DEFINED_PIECES = [START, SEP, END]
SPECIAL_TOKENS = {"pad_token": PAD, "unk_token": UNK, "bos_token": START, "sep_token": SEP, "eos_token": END}
UNKNOWN_SURFACE = " \u2047 "  # how SentencePiece decodes <unk>
# sentencepiece scores a user-defined piece of n bytes as n * 0.1 - 0.1 (measured with sentencepiece 0.2 through
# NBestEncode: "<start>" scores 0.6, "<sep>" 0.4), which makes it win over any segmentation of the same characters.
USER_DEFINED_BONUS = 0.1
# Score of pieces that must never come out of text (control pieces, <unk>); far below any real segmentation.
UNREACHABLE_SCORE = -1e9

# Each chat turn pair is rendered exactly as one original training example: `<start> {user} <sep> {assistant} <end>`.
# Pairs are joined by a space; a system message is prepended to the first user message; newlines become spaces.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='', expect='user') -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is not string -%}"
    "{{ raise_exception('Smolite chat template: message ' ~ loop.index0 ~ ' (role ' ~ message['role'] ~ ') has no "
    "text content; give \"content\" as a string.') }}"
    "{%- endif -%}"
    "{%- set text = message['content'] | replace('\\n', ' ') | trim -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- if not loop.first -%}"
    "{{ raise_exception('Smolite chat template: a system message may only come first (message ' ~ loop.index0 ~ ').') }}"
    "{%- endif -%}"
    "{%- set ns.system = text -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{%- if ns.expect != 'user' -%}"
    "{{ raise_exception('Smolite chat template: message ' ~ loop.index0 ~ ' is a second user message in a row; "
    "user and assistant messages must alternate.') }}"
    "{%- endif -%}"
    "{%- if loop.index0 > (1 if ns.system or messages[0]['role'] == 'system' else 0) -%}{{ ' ' }}{%- endif -%}"
    "{{ '<start> ' + ((ns.system + ' ') if ns.system else '') + text + ' <sep>' }}"
    "{%- set ns.system = '' -%}{%- set ns.expect = 'assistant' -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- if ns.expect != 'assistant' -%}"
    "{{ raise_exception('Smolite chat template: message ' ~ loop.index0 ~ ' is an assistant message without a "
    "user message before it.') }}"
    "{%- endif -%}"
    "{% generation %}{{ ' ' + text + ' <end>' }}{% endgeneration %}"
    "{%- set ns.expect = 'user' -%}"
    "{%- else -%}"
    "{{ raise_exception('Smolite chat template: message ' ~ loop.index0 ~ ' has role \"' ~ message['role'] ~ '\"; "
    "use \"system\", \"user\" or \"assistant\".') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

_ESCAPE = "\ufdd0"  # a Unicode noncharacter, used only inside the normaliser and never left in its output


def sentencepiece_normalizer() -> normalizers.Normalizer:
    """SentencePiece's `nmt_nfkc` rule with its default whitespace handling and dummy prefix, in `tokenizers`."""
    hangul_syllable_then_jamo = Regex("(?<=[\uac00-\ud7a3])(?=[\u3131-\u318e\u11a8-\u11ff])")
    return normalizers.Sequence(
        [
            normalizers.Replace(_ESCAPE, _ESCAPE + "0"),  # keep a literal escape character distinct
            normalizers.Replace("\uff5e", _ESCAPE + "1"),  # nmt_nfkc keeps the full-width tilde
            normalizers.Replace(hangul_syllable_then_jamo, _ESCAPE + "2"),  # no syllable + final-consonant merge
            normalizers.NFKC(),
            normalizers.Replace(_ESCAPE + "2", ""),
            normalizers.Replace(_ESCAPE + "1", "\uff5e"),
            normalizers.Replace(_ESCAPE + "0", _ESCAPE),
            normalizers.Replace(Regex("[\x01-\x08\x0b\x0e-\x1f\x7f\x8f\x9f]"), ""),
            normalizers.Replace(Regex("[\t\n\x0c\r\u061c\u1680\u200b\u200c\u200e\u200f\u2028\u2029\ufeff\ufffd\u2581]"), " "),
            normalizers.Replace(Regex(" {2,}"), " "),
            normalizers.Replace(Regex("^ | $"), ""),
            normalizers.Prepend("\u2581"),
            normalizers.Replace(" ", "\u2581"),
        ]
    )


def _literal(text: str) -> str:
    """`text` as a regular expression matching exactly it."""
    return "".join(f"\\x{{{ord(c):X}}}" for c in text)


def _character_class(characters: set[str]) -> str:
    """A regex character class body listing `characters` as code-point ranges."""
    points = sorted(ord(c) for c in characters)
    ranges, start = [], None
    for i, point in enumerate(points):
        if start is None:
            start = point
        if i + 1 == len(points) or points[i + 1] != point + 1:
            ranges.append(f"\\x{{{start:X}}}" if start == point else f"\\x{{{start:X}}}-\\x{{{point:X}}}")
            start = None
    return "".join(ranges)


def build_backend(pieces: list[tuple[str, float, str]], unk_id: int) -> Tokenizer:
    """A `tokenizers.Tokenizer` with SentencePiece Unigram semantics.

    `pieces` are `(piece, score, kind)` in id order, `kind` one of `normal`, `user_defined`, `control`, `unknown`,
    `unused` (the SentencePiece piece types).
    """
    vocab = [(piece, UNREACHABLE_SCORE if kind in ("control", "unknown", "unused") else score) for piece, score, kind in pieces]
    user_defined = [piece for piece, _, kind in pieces if kind == "user_defined"]
    known = {c for piece, _, kind in pieces if kind == "normal" for c in piece}
    known |= {piece for piece in user_defined if len(piece) == 1}
    known.discard("\u2581")

    isolated = [_literal(piece) for piece in sorted(user_defined, key=len, reverse=True)]  # longest first
    isolated.append(f"[^{_character_class(known)}\\x{{2581}}]+")  # a run of characters outside the vocabulary

    backend = Tokenizer(Unigram(vocab, unk_id=unk_id, byte_fallback=False))
    backend.normalizer = sentencepiece_normalizer()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex("|".join(isolated)), behavior="isolated"),
            pre_tokenizers.Split("\u2581", behavior="merged_with_next"),
        ]
    )
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace(pieces[unk_id][0], UNKNOWN_SURFACE),
            decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
        ]
    )
    return backend


class SentencePieceSegmenter:
    """SentencePiece's Unigram Viterbi (`EncodeOptimized`) over a whole normalised string, in float32 as it is there.

    `tokenizers` sums path scores in float64; SentencePiece sums them in float32, whose rounding decides between
    segmentations that use the same pieces in another order (ties in exact arithmetic, e.g. long runs of one
    character). As a pre-tokenizer, this splits the normalised text into exactly SentencePiece's pieces (runs of
    unknown characters merged, as SentencePiece merges them), and the Unigram model then maps each split to its id.
    """

    def __init__(self, vocab: list[tuple[str, float]]):
        import numpy as np

        self._f32 = np.float32
        user_defined = set(USER_DEFINED_PIECES)
        normal = [(piece, score) for piece, score in vocab if score > UNREACHABLE_SCORE / 2 and piece not in user_defined]
        self.unk_score = min(np.float32(score) for _, score in normal) - np.float32(10.0)
        self.pieces = {piece: (np.float32(score), False) for piece, score in normal}
        self.pieces.update({piece: (None, True) for piece, _ in vocab if piece in user_defined})
        self.max_length = max(len(piece) for piece in self.pieces)

    def spans(self, text: str) -> list[tuple[int, int]]:
        f32, n = self._f32, len(text)
        score, start_of, unknown = [f32(0.0)] + [None] * n, [None] * (n + 1), [False] * (n + 1)
        for start in range(n):
            till, has_single = score[start], False
            for end in range(start + 1, min(n, start + self.max_length) + 1):
                entry = self.pieces.get(text[start:end])
                if entry is None:
                    continue
                piece_score, user_defined = entry
                if user_defined:  # "extra bonus to always be selected": 0.1 per byte - 0.1, as sentencepiece scores it
                    piece_score = f32(float(f32(len(text[start:end].encode("utf-8"))) * USER_DEFINED_BONUS) - 0.1)
                exact = candidate = piece_score + till  # float32 addition
                if score[end] is None or start_of[end] is None or exact > float(score[end]):
                    score[end], start_of[end], unknown[end] = candidate, start, False
                has_single = has_single or end == start + 1
            if not has_single:
                candidate = self.unk_score + till
                if start_of[start + 1] is None or candidate > score[start + 1]:
                    score[start + 1], start_of[start + 1], unknown[start + 1] = candidate, start, True
        spans, end = [], n
        while end > 0:
            spans.append((start_of[end], end, unknown[end]))
            end = start_of[end]
        merged: list[tuple[int, int]] = []
        previous_unknown = False
        for start, end, is_unknown in reversed(spans):
            if is_unknown and previous_unknown:
                merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
            previous_unknown = is_unknown
        return merged

    def pre_tokenize(self, pretokenized) -> None:
        pretokenized.split(lambda _, normalized: [normalized[a:b] for a, b in self.spans(str(normalized))])


# SentencePiece piece types (sentencepiece_model.proto)
PIECE_KINDS = {1: "normal", 2: "unknown", 3: "control", 4: "user_defined", 5: "unused", 6: "byte"}
UNIGRAM = 1


class SentencePieceConversionError(ValueError):
    """The file is not a SentencePiece model that a `SmoliteTokenizer` reproduces exactly."""


class VocabularySizeError(ValueError):
    """The training text cannot give a tokenizer of the requested size: it forms at most `largest` pieces, or its
    characters need at least `smallest`. `describe(option)` words the error for the setting the caller exposes (the
    command line says `--vocab-size`)."""

    def __init__(self, requested: int, *, largest: int | None = None, smallest: int | None = None):
        self.requested, self.largest, self.smallest = requested, largest, smallest
        super().__init__(self.describe("vocab_size"))

    def describe(self, option: str) -> str:
        if self.largest is not None:
            return (
                f"{option} {self.requested} is more than the training text supports: SentencePiece's trainer can form "
                f"at most {self.largest} pieces from it; give more text or ask for {option} {self.largest} or less."
            )
        return (
            f"{option} {self.requested} is too small for the training text: each of its distinct characters (after "
            f"normalisation, with those of the special pieces' names) must be a piece, besides the "
            f"{len(SPECIAL_PIECES)} special pieces, so the vocabulary needs at least {self.smallest} pieces; ask for "
            f"{option} {self.smallest} or more."
        )


def read_sentencepiece_model(model_file: str | os.PathLike):
    """Parse a SentencePiece `ModelProto` (with transformers' bundled protobuf schema), with errors naming the file."""
    from transformers.convert_slow_tokenizer import import_protobuf

    path = Path(model_file)
    if not path.is_file():
        raise SentencePieceConversionError(f"{path}: no such file (expected a SentencePiece '*.model' file).")
    model_pb2 = import_protobuf()
    proto = model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as err:  # protobuf raises DecodeError and friends
        raise SentencePieceConversionError(f"{path}: not a SentencePiece model (cannot be parsed: {err}).") from err
    if not proto.pieces:
        raise SentencePieceConversionError(f"{path}: not a SentencePiece model (it has no pieces; truncated or empty file?).")
    return proto


def sentencepiece_pieces(model_file: str | os.PathLike) -> tuple[list[tuple[str, float, str]], int, dict[str, str]]:
    """`(pieces, unk_id, special_tokens)` of an original Smolite SentencePiece `.model`, for `build_backend`.

    Special tokens are found by piece name, never assumed; a model without `<pad>` pads with `<unk>` (what the
    original did: SentencePiece answers the unk id for a missing piece). Raises `SentencePieceConversionError` for a
    model this pipeline does not reproduce exactly (not Unigram, byte fallback, another normaliser, missing pieces).
    """
    path = Path(model_file)
    proto = read_sentencepiece_model(path)
    if proto.trainer_spec.model_type != UNIGRAM:
        raise SentencePieceConversionError(
            f"{path}: model_type {proto.trainer_spec.model_type} is not Unigram (1); Smolite tokenizers are Unigram."
        )
    if proto.trainer_spec.byte_fallback:
        raise SentencePieceConversionError(f"{path}: byte_fallback models are not supported (Smolite's are not).")
    spec = proto.normalizer_spec
    if spec.name != "nmt_nfkc" or not spec.add_dummy_prefix or not spec.remove_extra_whitespaces or not spec.escape_whitespaces:
        raise SentencePieceConversionError(
            f"{path}: normalizer '{spec.name}' (add_dummy_prefix={spec.add_dummy_prefix}, remove_extra_whitespaces="
            f"{spec.remove_extra_whitespaces}) is not supported; only SentencePiece's default nmt_nfkc with dummy "
            "prefix and whitespace cleaning reproduces exactly."
        )

    pieces = []
    for index, piece in enumerate(proto.pieces):
        kind = PIECE_KINDS.get(piece.type)
        if kind is None or kind == "byte":
            raise SentencePieceConversionError(f"{path}: piece {index} ({piece.piece!r}) has unsupported type {piece.type}.")
        pieces.append((piece.piece, piece.score, kind))
    ids = {piece: index for index, (piece, _, _) in enumerate(pieces)}
    unknown = [index for index, (_, _, kind) in enumerate(pieces) if kind == "unknown"]
    if len(unknown) != 1:
        raise SentencePieceConversionError(f"{path}: expected exactly one unknown piece, found {len(unknown)}.")
    unk_id = unknown[0]
    for name in USER_DEFINED_PIECES:
        if name not in ids:
            raise SentencePieceConversionError(
                f"{path}: the piece '{name}' is missing; Smolite's chat format needs {START}, {SEP} and {END}."
            )
        if pieces[ids[name]][2] != "user_defined":
            raise SentencePieceConversionError(
                f"{path}: '{name}' is a {pieces[ids[name]][2]} piece; it must be user-defined so that text can contain it."
            )
    special_tokens = {
        "pad_token": PAD if PAD in ids else pieces[unk_id][0],  # the original padded with the unk id then
        "unk_token": pieces[unk_id][0],
        "bos_token": START,
        "sep_token": SEP,
        "eos_token": END,
    }
    known = {c for piece, _, kind in pieces if kind == "normal" for c in piece}
    for piece, _, kind in pieces:
        if kind in ("control", "unknown") and not set(piece) & known:
            logger.warning(
                f"{path}: no character of the {kind} piece {piece!r} is in the vocabulary, so the literal text "
                f"{piece!r} encodes as that piece instead of <unk> as in SentencePiece."
            )
    return pieces, unk_id, special_tokens


class SmoliteTokenizer(TokenizersBackend):
    """Smolite's SentencePiece Unigram tokenizer on the fast (`tokenizers`) backend.

    Special tokens: `<pad>` (padding), `<unk>`, `<start>` (`bos_token`), `<sep>` (`sep_token`, ends a user turn) and
    `<end>` (`eos_token`, ends a reply). Nothing is added around encoded text: the chat template writes the markers,
    exactly as the original wrote `<start> {prompt} <sep>`. Padding is on the left, for generation.

    Make one from an original SentencePiece model with `SmoliteTokenizer.from_sentencepiece("tokenizer.model")` (needs
    `protobuf`), train one with `SmoliteTokenizer.train(texts, vocab_size=...)`, or load a saved folder with
    `AutoTokenizer.from_pretrained`.

    Example:

    ```python
    >>> tokenizer = AutoTokenizer.from_pretrained("smolite-small")
    >>> ids = tokenizer.apply_chat_template([{"role": "user", "content": "안녕하세요"}], add_generation_prompt=True)
    >>> tokenizer.decode(ids["input_ids"])
    '<start> 안녕하세요 <sep>'
    ```
    """

    vocab_files_names = {"tokenizer_file": "tokenizer.json"}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "left"

    @classmethod
    def from_sentencepiece(cls, model_file, **kwargs) -> "SmoliteTokenizer":
        """A tokenizer whose `encode` equals `SentencePieceProcessor(model_file).encode` for every text.

        Reads an original SentencePiece `.model` (needs `protobuf`); raises `SentencePieceConversionError` naming
        the file for one it cannot reproduce exactly. Keyword arguments go to the tokenizer (`model_max_length`...).
        """
        pieces, unk_id, special_tokens = sentencepiece_pieces(model_file)
        return cls.from_backend(build_backend(pieces, unk_id=unk_id), special_tokens, **kwargs)

    @classmethod
    def from_backend(cls, backend: Tokenizer, special_tokens: dict[str, str], **kwargs) -> "SmoliteTokenizer":
        """Wrap a `build_backend` pipeline; the window defaults to the config's `max_position_embeddings`."""
        kwargs.setdefault("model_max_length", SmoliteConfig.max_position_embeddings)
        kwargs.setdefault("chat_template", CHAT_TEMPLATE)
        tokenizer = cls(
            tokenizer_object=backend,
            split_special_tokens=True,
            clean_up_tokenization_spaces=False,
            **special_tokens,
            **kwargs,
        )
        return tokenizer._use_exact_segmentation()

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> "SmoliteTokenizer":
        """`TokenizersBackend.from_pretrained`, then encoding through `SentencePieceSegmenter` (see the class doc)."""
        return super().from_pretrained(*args, **kwargs)._use_exact_segmentation()

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        *,
        length: int | None = None,
        max_piece_length: int = 16,
        show_progress: bool = False,
        **kwargs,
    ) -> "SmoliteTokenizer":
        """Train a Unigram tokenizer on `texts` with SentencePiece's own trainer, the tool the original used.

        The same texts give the same tokenizer on every run (one training thread, the input in its order, no
        sampling). Normalisation is SentencePiece's `nmt_nfkc` with the dummy prefix, as in a converted model, and
        every character of the text is a piece (`character_coverage` 1). The special pieces get fixed ids: `<pad>` 0
        (control), `<unk>` 1, `<start>` 2, `<sep>` 3, `<end>` 4 (user-defined), as in the released models; the
        characters of their names are pieces too, so that their literal text encodes as characters, as SentencePiece
        does. Raises `VocabularySizeError` naming the largest vocabulary the text supports, or the smallest that holds
        its characters, instead of returning another size. `length` is accepted for `train_new_from_iterator`'s sake.
        """
        import io
        import re

        import sentencepiece

        if vocab_size <= len(SPECIAL_PIECES):
            raise ValueError(f"vocab_size must be larger than the {len(SPECIAL_PIECES)} special pieces, got {vocab_size}.")
        model = io.BytesIO()
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=_strings(texts), model_writer=model, model_type="unigram", vocab_size=vocab_size,
                character_coverage=1.0, normalization_rule_name="nmt_nfkc", max_sentencepiece_length=max_piece_length,
                pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, pad_piece=PAD, unk_piece=UNK,
                user_defined_symbols=USER_DEFINED_PIECES,
                required_chars="".join(sorted({c for piece in SPECIAL_PIECES for c in piece})),
                num_threads=1, shuffle_input_sentence=False, input_sentence_size=0,
                minloglevel=0 if show_progress else 2,
            )
        except RuntimeError as err:
            most = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", str(err))
            least = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", str(err))
            if most:
                raise VocabularySizeError(vocab_size, largest=int(most.group(2))) from None
            if least:
                raise VocabularySizeError(vocab_size, smallest=int(least.group(2))) from None
            raise
        processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
        pieces = []
        for index in range(processor.get_piece_size()):
            piece = processor.id_to_piece(index)
            kind = ("control" if processor.is_control(index) else "unknown" if processor.is_unknown(index)
                    else "user_defined" if piece in USER_DEFINED_PIECES else "normal")
            pieces.append((piece, processor.get_score(index), kind))
        if [piece for piece, _, _ in pieces[: len(SPECIAL_PIECES)]] != SPECIAL_PIECES:
            raise AssertionError(f"special pieces not at ids 0-4: {pieces[:5]}")
        return cls.from_backend(build_backend(pieces, unk_id=1), SPECIAL_TOKENS, **kwargs)

    # Encoding runs SentencePieceSegmenter (Python) as the pre-tokenizer, installed by every constructor above; the
    # portable Rust pipeline (identical but for float32 tie order) is what `save_pretrained` and pickling write.

    def _use_exact_segmentation(self) -> "SmoliteTokenizer":
        if getattr(self, "_portable_pre_tokenizer", None) is None:
            vocab = json.loads(self._tokenizer.to_str())["model"]["vocab"]
            self._portable_pre_tokenizer = self._tokenizer.pre_tokenizer
            self._tokenizer.pre_tokenizer = pre_tokenizers.PreTokenizer.custom(SentencePieceSegmenter(vocab))
        return self

    @contextmanager
    def _portable(self):
        """Within this context the backend holds its serialisable (Rust-only) pre-tokenizer."""
        runtime = None
        if getattr(self, "_portable_pre_tokenizer", None) is not None:
            runtime, self._tokenizer.pre_tokenizer = self._tokenizer.pre_tokenizer, self._portable_pre_tokenizer
        try:
            yield
        finally:
            if runtime is not None:
                self._tokenizer.pre_tokenizer = runtime

    def save_pretrained(self, *args, **kwargs):
        """`TokenizersBackend.save_pretrained`, writing the portable pipeline to `tokenizer.json`."""
        with self._portable():
            return super().save_pretrained(*args, **kwargs)

    def __getstate__(self):
        state = dict(self.__dict__)
        with self._portable():
            state["_tokenizer"] = Tokenizer.from_str(self._tokenizer.to_str())
        state["_portable_pre_tokenizer"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._use_exact_segmentation()

    def train_new_from_iterator(self, text_iterator, vocab_size, length=None, new_special_tokens=None, **kwargs):
        """Train a new Smolite tokenizer (same pipeline and special pieces) on `text_iterator`."""
        if new_special_tokens:
            raise ValueError("SmoliteTokenizer has a fixed set of special pieces; new_special_tokens is not supported.")
        return type(self).train(text_iterator, vocab_size, length=length, model_max_length=self.model_max_length, **kwargs)


def _strings(texts: Iterable[str]) -> Iterator[str]:
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"training text {index} is {type(text).__name__}, not str")
        yield text


__all__ = [
    "CHAT_TEMPLATE",
    "SentencePieceConversionError",
    "SmoliteTokenizer",
    "build_backend",
    "read_sentencepiece_model",
    "sentencepiece_normalizer",
    "sentencepiece_pieces",
]
