"""Property/fuzz tests: arbitrary input either works or is refused with our error naming where — never an unrelated
traceback. Bounded for the suite; `SMOLITE_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz.py` runs a longer campaign
(the README's Reliability section quotes one)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2.exceptions import TemplateError

from smolite_hf.convert_smolite_keras_to_hf import SmoliteConversionError, convert_keras_to_hf
from smolite_hf.data import ConversationFormatError, build_examples, read_conversations

from .conftest import keras_reference_file

SCALE = int(os.environ.get("SMOLITE_FUZZ_EXAMPLES", "0"))


def budget(default: int):
    return settings(max_examples=SCALE or default, deadline=None, derandomize=not SCALE,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tokenizer(converted_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(converted_dir)


@pytest.fixture(scope="module")
def spm():
    sentencepiece = pytest.importorskip("sentencepiece")
    return sentencepiece.SentencePieceProcessor(model_file=str(keras_reference_file("tokenizer.model")))


# -- the tokenizer on arbitrary Unicode --------------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)  # every code point but lone surrogates


@budget(400)
@given(ANY_TEXT)
def test_tokenizer_takes_any_unicode_and_decodes_like_sentencepiece(tokenizer, spm, text):
    ids = tokenizer(text)["input_ids"]
    assert all(0 <= i < len(tokenizer) for i in ids)
    assert tokenizer.decode(ids) == spm.decode(ids)


# -- the conversation loader on arbitrary JSON and bytes -----------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["conversations", "messages", "from", "value", "role", "content", "x"]) | st.text(max_size=5),
        inner, max_size=4),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "human", "gpt", 3]),
                                 "content": st.text(max_size=30) | st.integers()})
PLAUSIBLE = st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=5)})
LINE = st.one_of(
    JSON.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8")),
    PLAUSIBLE.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8")),
    st.binary(max_size=60),  # invalid UTF-8, stray control bytes, half JSON
    st.sampled_from([b"", b"   ", b"\xef\xbb\xbf", b"{", b'{"messages": [', b"\x00" * 5, b"\xff\xfe"]),
    st.integers(10_000, 200_000).map(lambda n: b'{"messages": [{"role": "user", "content": "' + b"a" * n + b'"}]}'),
)


@budget(300)
@given(lines=st.lists(LINE, max_size=6), bom=st.booleans(), newline=st.sampled_from([b"\n", b"\r\n"]))
def test_the_loader_loads_or_names_file_and_line(tokenizer, lines, bom, newline):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.jsonl"
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + newline.join(line.replace(b"\n", b" ").replace(b"\r", b" ")
                                                                          for line in lines))
        for skip in (False, True):
            try:
                conversations, report = read_conversations(path, skip_bad_lines=skip)
            except ConversationFormatError as error:
                message = str(error)
                assert message.startswith(str(path)), message
                assert ", line " in message or "the file is empty" in message, message
                continue
            assert report.conversations == len(conversations)
            build_examples(conversations, tokenizer, max_length=100)  # whatever loaded can be built into examples


# -- the chat template on arbitrary message lists ------------------------------------------------------------------

CONTENT = st.one_of(st.text(max_size=30), st.just(""), st.none(), st.integers(), st.lists(st.text(max_size=5), max_size=2),
                    st.just([{"type": "text", "text": "hi"}]))
ROLE = st.sampled_from(["user", "assistant", "system", "tool", "", "USER"]) | st.text(max_size=6) | st.integers()
ENTRY = st.one_of(
    st.fixed_dictionaries({"role": ROLE, "content": CONTENT}),
    st.fixed_dictionaries({"role": ROLE}),
    st.fixed_dictionaries({"content": CONTENT}),
    st.fixed_dictionaries({"role": ROLE, "content": CONTENT, "name": st.text(max_size=4)}),
    st.text(max_size=5) | st.none() | st.integers(),
)


@budget(400)
@given(messages=st.lists(ENTRY, max_size=6), generation_prompt=st.booleans())
def test_the_chat_template_renders_or_says_why(tokenizer, messages, generation_prompt):
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as error:
        assert str(error).startswith("Smolite chat template: message "), str(error)
        return
    except TypeError as error:  # transformers' own check: entries must be dicts
        assert "Chat messages should be dicts" in str(error) and not all(isinstance(m, dict) for m in messages)
        return
    except ValueError as error:  # transformers' own check: at least one message
        assert "empty conversation" in str(error) and messages == []
        return
    # a rendering is defined only for well-formed conversations: string contents, known roles, user/assistant turns
    assert isinstance(rendered, str)
    assert all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
    assert all(m["role"] in ("system", "user", "assistant") for m in messages)
    turns = [m["role"] for m in messages if m["role"] != "system"]
    assert turns == ["user", "assistant"] * (len(turns) // 2) + ["user"] * (len(turns) % 2)
    assert rendered.count("<sep>") == turns.count("user") and rendered.count("<end>") == turns.count("assistant")


# -- the converter on truncated, random and wrong-layout HDF5 ------------------------------------------------------


def _refused_cleanly(source: Path, out: Path):
    with pytest.raises(SmoliteConversionError) as caught:
        convert_keras_to_hf(source, out)
    assert str(source) in str(caught.value), str(caught.value)
    assert not out.exists(), "a failed conversion left its output folder behind"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".") or p.name != source.name], list(out.parent.iterdir())


@budget(60)
@given(cut=st.floats(0.0, 0.999))
def test_the_converter_refuses_truncated_files(cut):
    original = keras_reference_file("smolite_tiny.weights.h5").read_bytes()
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "cut.weights.h5"
        source.write_bytes(original[: int(len(original) * cut)])
        _refused_cleanly(source, Path(folder) / "out")


@budget(60)
@given(st.binary(max_size=4096), st.booleans())
def test_the_converter_refuses_random_bytes(data, hdf5_signature):
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "random.weights.h5"
        source.write_bytes((b"\x89HDF\r\n\x1a\n" if hdf5_signature else b"") + data)
        _refused_cleanly(source, Path(folder) / "out")


DATASET_PATHS = st.sampled_from([
    "layers/embedding/vars/0", "layers/layer_normalization/vars/0", "layers/layer_normalization/vars/1",
    "blocks/gpt_block/ln1/vars/0", "blocks/gpt_block/mha/query_dense/vars/0", "blocks/gpt_block/ffn/proj/vars/0",
    "blocks/gpt_block_1/ln1/vars/0", "vars/0", "optimizer/vars/0", "layers/dense/vars/0", "x/y",
])


@budget(80)
@given(st.dictionaries(DATASET_PATHS, st.lists(st.integers(1, 6), min_size=0, max_size=3), max_size=6))
def test_the_converter_refuses_wrong_layouts(datasets):
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "layout.weights.h5"
        with h5py.File(source, "w") as f:
            for name, shape in datasets.items():
                try:
                    f.create_dataset(name, data=np.zeros(shape, dtype=np.float32))
                except ValueError:  # a path under an existing dataset
                    pass
        _refused_cleanly(source, Path(folder) / "out")
