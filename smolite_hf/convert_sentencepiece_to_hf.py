"""Convert an original Smolite SentencePiece model (`*.model`) into a `SmoliteTokenizer`, id for id.

```python
from smolite_hf import SmoliteTokenizer
tokenizer = SmoliteTokenizer.from_sentencepiece("tokenizer.model")
tokenizer.save_pretrained("smolite-small")
```

Only `protobuf` is needed to read the model file; the converted tokenizer runs on `tokenizers` alone.

Special ids are read from the model by piece name (`<pad>`, `<unk>`, `<start>`, `<sep>`, `<end>`), never assumed.
A model without a `<pad>` piece pads with `<unk>`: that is what the original code did, since SentencePiece answers
the unk id for a missing piece.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers.utils import logging

from .tokenization_smolite import END, PAD, SEP, START, SmoliteTokenizer, build_backend

# SentencePiece piece types (sentencepiece_model.proto)
PIECE_KINDS = {1: "normal", 2: "unknown", 3: "control", 4: "user_defined", 5: "unused", 6: "byte"}
UNIGRAM = 1
logger = logging.get_logger(__name__)


class SentencePieceConversionError(ValueError):
    """The file is not a SentencePiece model this converter reproduces exactly."""


def read_sentencepiece_model(model_file: str | os.PathLike):
    """Parse a SentencePiece `ModelProto`, with errors that name the file."""
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


def tokenizer_from_sentencepiece(
    model_file: str | os.PathLike, tokenizer_class=SmoliteTokenizer, model_max_length: int = 100, **kwargs
) -> SmoliteTokenizer:
    """A `SmoliteTokenizer` whose `encode` equals `SentencePieceProcessor(model_file).encode` for every text."""
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
    for name in (START, SEP, END):
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
    backend = build_backend(pieces, unk_id=unk_id)
    return tokenizer_class.from_backend(backend, special_tokens, model_max_length=model_max_length, **kwargs)


__all__ = ["SentencePieceConversionError", "read_sentencepiece_model", "tokenizer_from_sentencepiece"]
