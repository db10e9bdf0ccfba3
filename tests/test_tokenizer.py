"""SmoliteTokenizer: id-exact with SentencePiece, trainable, with the chat template."""

import json
import os
import re
import string
import subprocess
import sys
import textwrap

import pytest
import sentencepiece
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from smolite_hf import SmoliteTokenizer
from smolite_hf.tokenization_smolite import (
    SPECIAL_PIECES,
    SentencePieceConversionError,
    VocabularySizeError,
    read_sentencepiece_model,
    sentencepiece_normalizer,
)

from .conftest import keras_reference_file


@pytest.fixture(scope="module")
def spm(sentencepiece_model_path):
    return sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model_path))


@pytest.fixture(scope="module")
def tokenizer(sentencepiece_model_path):
    return SmoliteTokenizer.from_sentencepiece(sentencepiece_model_path)


def fixture_texts():
    texts = []
    with open(keras_reference_file("conversations.jsonl"), encoding="utf-8") as f:
        for line in f:
            for message in json.loads(line).get("conversations", []):
                value = message["value"].replace("\n", " ").strip()
                texts += [value, f"<start> {value} <sep>", f"{value} <end>", f"{value} <end> <end>"]
    generation = json.loads(keras_reference_file("generation.json").read_text(encoding="utf-8"))
    texts += [f"<start> {case['prompt']} <sep>" for case in generation["prompts"]]
    return texts


def test_fixture_texts_encode_exactly_as_sentencepiece(tokenizer, spm):
    texts = fixture_texts()
    assert len(texts) > 100
    for text in texts:
        assert tokenizer(text)["input_ids"] == spm.encode(text), text


def test_generation_prompts_match_the_stored_prompt_ids(tokenizer):
    generation = json.loads(keras_reference_file("generation.json").read_text(encoding="utf-8"))
    for case in generation["prompts"]:
        ids = tokenizer(f"<start> {case['prompt']} <sep>")["input_ids"][: generation["max_len"]]
        assert ids == case["prompt_ids"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "<start> 안녕하세요 <sep>",
        "오늘 날씨 어때? <end> <end>",
        "a    b\t\tc\n\nd",  # runs of whitespace
        "  앞뒤 공백  ",
        "ＡＢＣ１２３！",  # full-width forms (NFKC)
        "ㅋㅋㅋ ㅎㅕ ㅠㅠ 버ㄵ",  # compatibility jamo: composed or not, as SentencePiece does
        "안녕～",  # nmt_nfkc keeps the full-width tilde
        "😀👍🇰🇷 emoji",  # characters not in the vocabulary
        "<pad> <unk> are text",  # control pieces are never produced from text
        "a<sep>b<sep><sep>",
        "\x00\x01제어\x7f문자\u200b",
        "가" * 5000,  # very long
    ],
)
def test_edge_cases_encode_and_decode_as_sentencepiece(tokenizer, spm, text):
    ids = tokenizer(text)["input_ids"]
    assert ids == spm.encode(text)
    assert tokenizer.decode(ids) == spm.decode(ids)


def _vocabulary_words():
    proto = read_sentencepiece_model(keras_reference_file("tokenizer.model"))
    return sorted({p.piece.replace("\u2581", "") for p in proto.pieces if p.type == 1} - {""})


TEXT_PARTS = st.one_of(
    st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3),  # Korean syllables
    st.sampled_from(_vocabulary_words()),  # real pieces, so segmentation is exercised
    st.characters(min_codepoint=0x3131, max_codepoint=0x318E),  # compatibility jamo
    st.characters(min_codepoint=0x1100, max_codepoint=0x11FF),  # conjoining jamo
    st.sampled_from(string.ascii_letters + string.digits),
    st.sampled_from(string.punctuation + "～。、！？…"),
    st.sampled_from([" ", "  ", "   ", "\t", "\n", "\r\n", "\u3000", "\u00a0", "\u2581"]),  # whitespace runs
    st.sampled_from(["😀", "👍", "❤️", "🇰🇷", "👨\u200d👩\u200d👧", "🤔"]),
    st.characters(min_codepoint=0xFF01, max_codepoint=0xFF5E),  # full-width forms
    st.sampled_from(["<start>", "<sep>", "<end>", "<pad>", "<unk>", " <sep> ", "<start", "sep>"]),
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TEXT_PARTS, max_size=40).map("".join))
def test_property_encode_and_decode_equal_sentencepiece(tokenizer, spm, text):
    ids = tokenizer(text)["input_ids"]
    assert ids == spm.encode(text)
    assert tokenizer.decode(ids) == spm.decode(ids)


def test_runs_of_one_character_keep_sentencepiece_float32_tie_order(tokenizer, spm):
    """Segmentations with the same pieces in another order tie in exact arithmetic; float32 rounding decides."""
    for character in "-014ㅋ.!":
        for n in range(1, 61):
            for text in (character * n, f"<start> {character * n} <sep>", f"안녕{character * n}<end>{character * n}"):
                assert tokenizer(text)["input_ids"] == spm.encode(text), text


def test_every_way_of_making_a_tokenizer_encodes_with_the_float32_segmenter(tokenizer, spm, tmp_path):
    """Loading, unpickling and copying install the exact segmenter too (the portable pipeline breaks some ties
    differently, so they would differ from SentencePiece on these runs)."""
    import copy
    import pickle

    from tokenizers import Tokenizer

    tokenizer.save_pretrained(tmp_path)
    portable = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    runs = [character * n for character in "-014ㅋ.!" for n in range(1, 61)]
    assert any(portable.encode(text).ids != spm.encode(text) for text in runs)  # the test can tell them apart
    for made in (AutoTokenizer.from_pretrained(tmp_path), pickle.loads(pickle.dumps(tokenizer)), copy.deepcopy(tokenizer)):
        assert [made(text)["input_ids"] for text in runs] == [spm.encode(text) for text in runs]


def test_the_tokenizer_does_not_import_the_sentencepiece_converter(sentencepiece_model_path):
    """The converter script imports the tokenizer, never the other way round (no import cycle)."""
    code = (
        "import sys\n"
        "from smolite_hf.tokenization_smolite import SmoliteTokenizer\n"
        f"SmoliteTokenizer.from_sentencepiece({str(sentencepiece_model_path)!r})\n"
        "assert 'smolite_hf.convert_sentencepiece_to_hf' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_sentencepiece_conversion_script(sentencepiece_model_path, spm, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "smolite_hf.convert_sentencepiece_to_hf", "--model", str(sentencepiece_model_path),
         "--output-dir", str(tmp_path / "tok")], capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(1000 pieces)" in done.stdout
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded("<start> 안녕하세요 <sep>")["input_ids"] == spm.encode("<start> 안녕하세요 <sep>")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    failed = subprocess.run(
        [sys.executable, "-m", "smolite_hf.convert_sentencepiece_to_hf", "--model", str(bad), "--output-dir",
         str(tmp_path / "tok2")], capture_output=True, text=True,
    )
    assert failed.returncode == 2 and "bad.model: not a SentencePiece model" in failed.stderr
    assert "Traceback" not in failed.stderr and not (tmp_path / "tok2").exists()


def test_saved_tokenizer_json_is_the_portable_pipeline(tokenizer, tmp_path):
    """tokenizer.json holds no Python component (other runtimes load it); encoding still uses the exact segmenter."""
    from tokenizers import Tokenizer

    tokenizer("warm up")  # installs the exact segmenter
    tokenizer.save_pretrained(tmp_path)
    portable = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    portable.encode_special_tokens = True  # what split_special_tokens=True in tokenizer_config.json sets
    assert portable.encode("<start> 안녕하세요 <sep>").ids == tokenizer("<start> 안녕하세요 <sep>")["input_ids"]
    import pickle

    assert pickle.loads(pickle.dumps(tokenizer))("-" * 30)["input_ids"] == tokenizer("-" * 30)["input_ids"]


def test_special_ids_and_defaults(tokenizer, spm):
    assert tokenizer.pad_token_id == spm.piece_to_id("<pad>") == 0
    assert tokenizer.unk_token_id == spm.unk_id() == 1
    assert (tokenizer.bos_token, tokenizer.sep_token, tokenizer.eos_token) == ("<start>", "<sep>", "<end>")
    assert (tokenizer.bos_token_id, tokenizer.sep_token_id, tokenizer.eos_token_id) == (2, 3, 4)
    assert tokenizer.padding_side == "left" and tokenizer.model_max_length == 100
    assert len(tokenizer) == spm.get_piece_size()


def test_skip_special_tokens(tokenizer):
    ids = tokenizer("<start> 안녕하세요 <sep>")["input_ids"]
    assert tokenizer.decode(ids) == "<start> 안녕하세요 <sep>"
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == "안녕하세요"


def _edited_model(path, tmp_path, edit):
    proto = read_sentencepiece_model(path)
    edit(proto)
    out = tmp_path / "edited.model"
    out.write_bytes(proto.SerializeToString())
    return out


def test_special_ids_are_read_by_piece_name(sentencepiece_model_path, tmp_path):
    def move_specials(proto):  # put <end> first and <sep> last: ids change, pieces stay
        pieces = list(proto.pieces)
        end, sep = pieces[4], pieces[3]
        rest = [p for i, p in enumerate(pieces) if i not in (3, 4)]
        del proto.pieces[:]
        proto.pieces.extend([end] + rest + [sep])
        proto.trainer_spec.unk_id = 2
        proto.trainer_spec.pad_id = 1

    edited = _edited_model(sentencepiece_model_path, tmp_path, move_specials)
    spm = sentencepiece.SentencePieceProcessor(model_file=str(edited))
    tokenizer = SmoliteTokenizer.from_sentencepiece(edited)
    assert tokenizer.eos_token_id == spm.piece_to_id("<end>") == 0
    assert tokenizer.sep_token_id == spm.piece_to_id("<sep>") == 999
    assert tokenizer.unk_token_id == spm.unk_id() == 2 and tokenizer.pad_token_id == 1
    for text in ["<start> 안녕 <sep>", "응 <end>", "<pad> x"]:
        assert tokenizer(text)["input_ids"] == spm.encode(text)


def test_a_model_without_pad_pads_with_unk(sentencepiece_model_path, tmp_path):
    def drop_pad(proto):
        pieces = [p for p in proto.pieces if p.piece != "<pad>"]
        del proto.pieces[:]
        proto.pieces.extend(pieces)
        proto.trainer_spec.pad_id = -1
        proto.trainer_spec.unk_id = 0

    edited = _edited_model(sentencepiece_model_path, tmp_path, drop_pad)
    spm = sentencepiece.SentencePieceProcessor(model_file=str(edited))
    tokenizer = SmoliteTokenizer.from_sentencepiece(edited)
    assert tokenizer.pad_token == "<unk>" and tokenizer.pad_token_id == spm.piece_to_id("<pad>") == spm.unk_id()
    assert tokenizer("<start> 안녕 <sep>")["input_ids"] == spm.encode("<start> 안녕 <sep>")


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "empty"])
def test_missing_or_corrupt_model_file_is_refused_naming_it(sentencepiece_model_path, tmp_path, damage):
    path = tmp_path / f"{damage}.model"
    data = sentencepiece_model_path.read_bytes()
    if damage == "garbage":
        path.write_bytes(os.urandom(5000))
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "empty":
        path.write_bytes(b"")
    with pytest.raises(SentencePieceConversionError, match=f"{damage}.model"):
        SmoliteTokenizer.from_sentencepiece(path)


def test_save_and_load_round_trip(tokenizer, tmp_path, spm):
    tokenizer.save_pretrained(tmp_path)
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "tokenization_smolite.py"} <= set(os.listdir(tmp_path))
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is SmoliteTokenizer
    assert loaded.special_tokens_map == tokenizer.special_tokens_map
    assert loaded.chat_template == tokenizer.chat_template
    assert (loaded.padding_side, loaded.model_max_length, loaded.split_special_tokens) == ("left", 100, True)
    for text in fixture_texts()[:40] + ["<pad> ㄱ <sep>", "ＡＢ ～"]:
        assert loaded(text)["input_ids"] == spm.encode(text)


def test_left_padding_for_batches(tokenizer):
    batch = tokenizer(["<start> 안녕 <sep>", "<start> 오늘 날씨 어때? <sep>"], padding=True)
    short, long = batch["input_ids"]
    assert len(short) == len(long) and short[0] == tokenizer.pad_token_id
    assert batch["attention_mask"][0][0] == 0 and batch["attention_mask"][0][-1] == 1


# ---------------------------------------------------------------------------------------------------- chat template


def test_single_user_turn_is_the_original_prompt(tokenizer, spm):
    for prompt in ["안녕하세요", "오늘 날씨 어때?", "  공백  많은   질문 ", "줄\n바꿈"]:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=False)
        original = prompt.replace("\n", " ").strip()
        assert ids == spm.encode(f"<start> {original} <sep>")


def test_conversation_rendering():
    conversation = [
        {"role": "system", "content": "친절하게 답해요."},
        {"role": "user", "content": "안녕"},
        {"role": "assistant", "content": "안녕하세요!"},
        {"role": "user", "content": "뭐 해?"},
    ]
    tokenizer = SmoliteTokenizer.from_sentencepiece(keras_reference_file("tokenizer.model"))
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert text == "<start> 친절하게 답해요. 안녕 <sep> 안녕하세요! <end> <start> 뭐 해? <sep>"
    assistant = tokenizer.apply_chat_template(conversation[1:3], tokenize=False)
    assert assistant == "<start> 안녕 <sep> 안녕하세요! <end>"


def test_assistant_tokens_mask_covers_the_reply_and_end(tokenizer, spm):
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "네 반가워요"}],
        return_assistant_tokens_mask=True, return_dict=True,
    )
    prompt_length = len(spm.encode("<start> 안녕 <sep>"))
    assert out["input_ids"] == spm.encode("<start> 안녕 <sep> 네 반가워요 <end>")
    assert out["assistant_masks"] == [0] * prompt_length + [1] * (len(out["input_ids"]) - prompt_length)
    assert out["input_ids"][-1] == tokenizer.eos_token_id


@pytest.mark.parametrize(
    "messages, message",
    [
        ([{"role": "bot", "content": "x"}], 'has role "bot"'),
        ([{"role": "user", "content": 3}], "has no text content"),
        ([{"role": "user", "content": ["a"]}], "has no text content"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "second user message in a row"),
        ([{"role": "assistant", "content": "a"}], "without a user message before it"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "system message may only come first"),
    ],
)
def test_chat_template_errors_are_clear(tokenizer, messages, message):
    with pytest.raises(Exception, match=message):
        tokenizer.apply_chat_template(messages, tokenize=False)


def test_empty_content_renders(tokenizer):
    assert tokenizer.apply_chat_template([{"role": "user", "content": ""}], tokenize=False) == "<start>  <sep>"


# ---------------------------------------------------------------------------------------------------- training


def training_texts():
    texts = []
    with open(keras_reference_file("conversations.jsonl"), encoding="utf-8") as f:
        for line in f:
            texts += [m["value"] for m in json.loads(line).get("conversations", [])]
    return texts


def test_train_round_trip(tmp_path):
    trained = SmoliteTokenizer.train(training_texts(), vocab_size=400)
    assert len(trained) == 400
    assert [trained.convert_ids_to_tokens(i) for i in range(5)] == ["<pad>", "<unk>", "<start>", "<sep>", "<end>"]
    assert (trained.pad_token_id, trained.unk_token_id, trained.bos_token_id, trained.sep_token_id, trained.eos_token_id) == (0, 1, 2, 3, 4)
    text = "<start> 오늘 날씨가 좋네요 <sep> 네 정말 좋아요 <end>"
    ids = trained(text)["input_ids"]
    assert ids[:2] == [trained.convert_tokens_to_ids("\u2581"), 2] and ids[-1] == 4
    assert trained.decode(ids) == text
    assert "<pad>" not in trained.convert_ids_to_tokens(trained("<pad>")["input_ids"])
    trained.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is SmoliteTokenizer and loaded(text)["input_ids"] == ids


def test_training_normalises_like_the_converted_tokenizer(tokenizer):
    trained = SmoliteTokenizer.train(training_texts(), vocab_size=400)
    for text in ["ＡＢ  ㅎㅕ\t～", "  a  b  ", "<start>x<sep>"]:
        assert trained.backend_tokenizer.normalizer.normalize_str(text) == tokenizer.backend_tokenizer.normalizer.normalize_str(text)


def test_training_refuses_a_vocabulary_the_corpus_cannot_support_naming_the_largest_it_can():
    with pytest.raises(VocabularySizeError, match=r"vocab_size 5000 is more than .* at most (\d+) pieces") as caught:
        SmoliteTokenizer.train(training_texts(), vocab_size=5000)
    largest = int(re.search(r"at most (\d+) pieces", str(caught.value)).group(1))
    assert (caught.value.requested, caught.value.largest) == (5000, largest)
    assert f"vocab_size {largest} or less" in str(caught.value)
    assert len(SmoliteTokenizer.train(training_texts(), vocab_size=largest)) == largest  # the named size trains
    with pytest.raises(VocabularySizeError, match=f"at most {largest} pieces"):
        SmoliteTokenizer.train(training_texts(), vocab_size=largest + 1)


def alphabet_size(texts):
    """Distinct characters of the normalised texts and of the special pieces' names: each must become a piece."""
    normalizer = sentencepiece_normalizer()
    return len({c for text in texts for c in normalizer.normalize_str(text)} | {c for piece in SPECIAL_PIECES for c in piece})


@pytest.mark.parametrize("vocab_size", [40, 100, 345])
def test_training_refuses_a_vocabulary_too_small_for_the_characters_naming_the_bound(vocab_size):
    """Below the alphabet the vocabulary is refused with the true lower bound, not "supports only N pieces, fewer than
    vocab_size" (what an earlier trainer, which silently returned more pieces than asked, led to)."""
    minimum = alphabet_size(training_texts()) + len(SPECIAL_PIECES)
    assert vocab_size < minimum
    with pytest.raises(VocabularySizeError) as caught:
        SmoliteTokenizer.train(training_texts(), vocab_size=vocab_size)
    message = str(caught.value)
    assert f"vocab_size {vocab_size} is too small" in message and f"needs at least {minimum} pieces" in message
    assert caught.value.smallest == minimum
    assert "fewer than" not in message


def test_training_is_reproducible_and_segments_as_sentencepiece_does(tmp_path):
    """Two trainings on the same text give the same pieces and scores (SentencePiece's trainer, one thread), and the
    result encodes as `sentencepiece` itself does with the same pieces."""
    import sentencepiece

    first, second = (SmoliteTokenizer.train(training_texts(), vocab_size=400) for _ in range(2))
    first.save_pretrained(tmp_path / "first")
    second.save_pretrained(tmp_path / "second")
    assert (tmp_path / "first" / "tokenizer.json").read_bytes() == (tmp_path / "second" / "tokenizer.json").read_bytes()
    processor = sentencepiece.SentencePieceProcessor()
    model_file = tmp_path / "same.model"
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(training_texts()), model_prefix=str(tmp_path / "same"), model_type="unigram", vocab_size=400,
        character_coverage=1.0, pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, user_defined_symbols=["<start>", "<sep>", "<end>"],
        required_chars="".join(sorted({c for piece in SPECIAL_PIECES for c in piece})), num_threads=1,
        shuffle_input_sentence=False, minloglevel=2)
    processor.load(str(model_file))
    assert [first.convert_ids_to_tokens(i) for i in range(400)] == [processor.id_to_piece(i) for i in range(400)]
    for text in training_texts()[:40] + ["<start> 오늘 날씨가 좋네요 <sep>", "ㅋㅋㅋㅋㅋㅋㅋ 진짜?"]:
        assert first(text)["input_ids"] == processor.encode(text), text


def test_train_new_from_iterator_keeps_the_special_pieces(tokenizer):
    trained = tokenizer.train_new_from_iterator(training_texts(), vocab_size=400)
    assert type(trained) is SmoliteTokenizer and len(trained) == 400
    assert trained.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["<pad>", "<unk>", "<start>", "<sep>", "<end>"]


# ---------------------------------------------------------------------------------------------------- remote code

REMOTE_TOKENIZER = textwrap.dedent(
    """
    import json, sys
    sys.modules["smolite_hf"] = None
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
    assert type(tokenizer).__module__.startswith("transformers_modules."), type(tokenizer).__module__
    texts = json.loads(sys.argv[2])
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "안녕"}], add_generation_prompt=True, return_dict=False)
    print(json.dumps({"ids": [tokenizer(t)["input_ids"] for t in texts], "chat": chat, "class": type(tokenizer).__name__}))
    """
)


def test_trust_remote_code_load_without_the_package(tokenizer, spm, tmp_path):
    folder = tmp_path / "remote-tokenizer"
    tokenizer.save_pretrained(folder)
    texts = ["<start> 안녕하세요 <sep>", "<pad> ㅎㅕ ＡＢ", "😀 a  b"]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", REMOTE_TOKENIZER, str(folder), json.dumps(texts)],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["class"] == "SmoliteTokenizer"
    assert result["ids"] == [spm.encode(t) for t in texts]
    assert result["chat"] == spm.encode("<start> 안녕 <sep>")


def test_a_vocabulary_just_above_the_bound_trains():
    minimum = alphabet_size(training_texts()) + len(SPECIAL_PIECES)
    assert len(SmoliteTokenizer.train(training_texts(), vocab_size=minimum + 1)) == minimum + 1


def test_train_tokenizer_command(tmp_path):
    text_file = tmp_path / "extra.txt"
    text_file.write_text("추가 문장입니다\n\n또 다른 문장\n", encoding="utf-8")
    conversations = keras_reference_file("conversations.jsonl")
    out = tmp_path / "tok"
    done = subprocess.run(
        [sys.executable, "-m", "smolite_hf", "train-tokenizer", "--data", str(conversations), str(text_file),
         "--vocab-size", "400", "--output-dir", str(out)],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Trained a 400-piece tokenizer" in done.stdout
    loaded = AutoTokenizer.from_pretrained(out)
    assert type(loaded) is SmoliteTokenizer and len(loaded) == 400
    assert loaded.decode(loaded("<start> 또 다른 문장 <sep>")["input_ids"]) == "<start> 또 다른 문장 <sep>"

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversations": []}\n{not json\n', encoding="utf-8")
    failed = subprocess.run(
        [sys.executable, "-m", "smolite_hf", "train-tokenizer", "--data", str(bad), "--vocab-size", "50",
         "--output-dir", str(tmp_path / "tok2")],
        capture_output=True, text=True,
    )
    assert failed.returncode == 2 and "bad.jsonl, line 2: not valid JSON" in failed.stderr
    assert not (tmp_path / "tok2").exists()
