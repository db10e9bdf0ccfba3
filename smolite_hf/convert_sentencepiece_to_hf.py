"""Convert an original Smolite SentencePiece model (`*.model`) into a tokenizer folder, id for id.

```bash
python -m smolite_hf.convert_sentencepiece_to_hf --model tokenizer.model --output-dir smolite-small
```

```python
from smolite_hf import SmoliteTokenizer
tokenizer = SmoliteTokenizer.from_sentencepiece("tokenizer.model")
tokenizer.save_pretrained("smolite-small")
```

Only `protobuf` is needed to read the model file; the converted tokenizer runs on `tokenizers` alone. The reading
itself lives with the tokenizer (`tokenization_smolite.sentencepiece_pieces`, used by
`SmoliteTokenizer.from_sentencepiece`), so this script imports the tokenizer and never the other way round.
Special ids are read from the model by piece name (`<pad>`, `<unk>`, `<start>`, `<sep>`, `<end>`), never assumed.
"""

from __future__ import annotations

import argparse
import os
import sys

from .tokenization_smolite import SentencePieceConversionError, SmoliteTokenizer, read_sentencepiece_model


def tokenizer_from_sentencepiece(model_file: str | os.PathLike, tokenizer_class=SmoliteTokenizer, **kwargs):
    """`tokenizer_class.from_sentencepiece(model_file, **kwargs)`: a tokenizer whose `encode` equals
    `SentencePieceProcessor(model_file).encode` for every text."""
    return tokenizer_class.from_sentencepiece(model_file, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert a Smolite SentencePiece .model into a tokenizer folder.")
    parser.add_argument("--model", required=True, metavar="FILE", help="the SentencePiece *.model file")
    parser.add_argument("--output-dir", required=True, metavar="DIR", help="the folder to write the tokenizer to")
    args = parser.parse_args(argv)
    try:
        tokenizer = tokenizer_from_sentencepiece(args.model)
    except SentencePieceConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tokenizer.save_pretrained(args.output_dir)
    print(f"Converted {args.model} ({len(tokenizer)} pieces) into {args.output_dir}")
    return 0


__all__ = ["SentencePieceConversionError", "read_sentencepiece_model", "tokenizer_from_sentencepiece"]

if __name__ == "__main__":
    raise SystemExit(main())
