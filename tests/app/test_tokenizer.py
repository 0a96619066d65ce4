"""The torch-free tokenizer against cn_clip.clip.tokenize, the reference it must equal id for id."""

from __future__ import annotations

import importlib.resources
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cn_clip.clip import _tokenizer as cn_clip_tokenizer
from cn_clip.clip import tokenize as cn_clip_tokenize
from hypothesis import given, settings
from hypothesis import strategies as st

from converters.app.tokenizer import SPECIAL_TOKENS, Tokenizer
from converters.errors import ArtifactError

CN_CLIP_VOCAB = importlib.resources.files("cn_clip.clip") / "vocab.txt"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_vocab(CN_CLIP_VOCAB)


@pytest.fixture(scope="module")
def jieba_words() -> list[str]:
    """Real Chinese words: jieba's dictionary (one 'word frequency tag' a line, ~350k lines)."""
    dictionary = importlib.resources.files("jieba") / "dict.txt"
    return [line.split(" ")[0] for line in dictionary.read_text("utf-8").splitlines()]


def assert_same_ids(tokenizer: Tokenizer, texts: list[str], context_length: int = 52) -> None:
    expected = cn_clip_tokenize(texts, context_length=context_length).numpy()
    got = tokenizer.encode(texts)
    assert got.dtype == np.int64 and got.shape == expected.shape
    differing = [text for text, a, b in zip(texts, got, expected) if not np.array_equal(a, b)]
    assert not differing, f"{len(differing)} texts tokenize differently, e.g. {differing[:5]!r}"


def test_jieba_words(tokenizer, jieba_words):
    assert_same_ids(tokenizer, random.Random(0).sample(jieba_words, 20_000))


def test_sentences_built_from_jieba_words(tokenizer, jieba_words):
    rng = random.Random(1)
    separators = ["", "", "", " ", "，", "。", "！", "、", " and ", "2025年", "ABC", "…", "\n"]
    sentences = [
        "".join(rng.choice(jieba_words) + rng.choice(separators) for _ in range(rng.randint(1, 40)))
        for _ in range(2_000)
    ]
    assert_same_ids(tokenizer, sentences)


EDGE_CASES = {
    "mixed scripts": "海边的日落 sunset 2025年12月31日, iPhone15拍摄",
    "full-width": "ＡＢＣ１２３，！？ｈｅｌｌｏ　世界",
    "emoji": "🐱猫咪😀 🥲 👨‍👩‍👧 ❤️ 🇨🇳",
    "accented Latin": "café naïve Ångström CRÈME brûlée İstanbul",
    "combining marks": "e\u0301 a\u0308\u0308 \u0301 \u0301\u0301",
    "control characters": "猫\x00狗\t鸟\u200b鱼\ufeff虾\x7f蟹\x85\r\n\ufffd",
    "line and paragraph separators": "一\u2028二\u2029三\xa0四\u3000五",
    "empty": "",
    "whitespace only": " \t\n\u3000 ",
    "control only": "\x00\u200b\ufeff",
    "over-long": "一只猫在沙发上睡觉，" * 20,
    "over-long English": "a photo of a cat sleeping on the sofa " * 20,
    "single word of 200 chars": "a" * 200,
    "single word of 201 chars": "a" * 201,
    "long word among words": "猫 " + "x" * 250 + " 狗",
    "Japanese kana": "ひらがな カタカナ ｶﾀｶﾅ 東京タワーの夜景",
    "Korean hangul": "한국어 서울의 밤 풍경",
    "Greek final sigma": "ΟΔΟΣ ΣΟΦΙΑΣ. ΑΣ,ΣΑ Σ",
    "CJK extension E start": "\U0002b820\U0002b821字",
    "private use": "\ue000猫\uf8ff",
    "recent punctuation": "a\u2e55b\u2e5dc",
    "lone surrogate": "猫\ud800dog cat\udfff",
    "ligature and numerals": "ﬁsh Ⅻ ① ²",
    "ascii punctuation": "$100^2 `code` a_b {x} ~y~ @me #tag",
}


@pytest.mark.parametrize("text", EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_edge_cases(tokenizer, text):
    assert_same_ids(tokenizer, [text])


def test_edge_cases_in_one_batch(tokenizer):
    assert_same_ids(tokenizer, list(EDGE_CASES.values()))


@pytest.mark.parametrize("context_length", [2, 8, 77])
def test_other_context_lengths(context_length):
    texts = ["海边的日落", "一只猫在沙发上睡觉" * 10, ""]
    assert_same_ids(Tokenizer.from_vocab(CN_CLIP_VOCAB, context_length), texts, context_length)


# Surrogates are kept in (hypothesis excludes them by default); the sampled characters are the
# ones where Hugging Face's own BERT normalizer parts differ from cn_clip.
TRICKY = "Σσς中文 .,！ＡＢé\u0301\u200b\x00\ue000\U0002b820\u2e55\u166d\u1734İ"
FUZZ_CHARACTERS = st.one_of(st.characters(exclude_categories=()), st.sampled_from(TRICKY))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(FUZZ_CHARACTERS, max_size=80), min_size=1, max_size=6))
def test_fuzz_against_cn_clip(tokenizer, texts):
    assert_same_ids(tokenizer, texts)


def test_single_string_gives_one_row(tokenizer):
    ids = tokenizer.encode("一只猫")
    assert ids.shape == (1, 52)
    assert ids[0, 0] == tokenizer.special_ids["[CLS]"]


def test_piece_counts_flag_truncated_and_empty_texts(tokenizer):
    texts = ["一只猫", "", " \u200b\t", "猫" * 50, "猫" * 51]
    counts = tokenizer.piece_counts(texts)
    assert counts.tolist() == [3, 0, 0, 50, 51]
    assert (counts > tokenizer.max_pieces).tolist() == [False, False, False, False, True]
    ids = tokenizer.encode(texts)
    assert ids[4, -1] == tokenizer.special_ids["[SEP]"]
    assert (ids[1, 2:] == 0).all() and ids[1, 1] == tokenizer.special_ids["[SEP]"]


def test_spec_is_json_and_matches_cn_clip_vocab(tokenizer):
    spec = json.loads(json.dumps(tokenizer.spec()))
    assert spec["vocab_file"] == "vocab.txt"
    assert spec["vocab_size"] == len(cn_clip_tokenizer.vocab) == 21128
    assert spec["special_token_ids"] == {token: cn_clip_tokenizer.vocab[token] for token in SPECIAL_TOKENS}
    assert spec["context_length"] == 52 and spec["padding_id"] == 0 and spec["lower_case"] is True


def test_missing_vocab_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="vocab.txt"):
        Tokenizer.from_vocab(tmp_path / "vocab.txt")


def test_vocab_without_special_tokens_is_an_artifact_error(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n猫\n", encoding="utf-8")
    with pytest.raises(ArtifactError, match=r"\[CLS\], \[SEP\], \[MASK\]"):
        Tokenizer.from_vocab(path)


def test_non_string_items_are_refused(tokenizer):
    with pytest.raises(TypeError, match="bytes"):
        tokenizer.encode(["猫", b"dog"])


def test_tokenizer_and_preprocess_import_without_torch():
    code = (
        "import sys, converters.app.tokenizer, converters.app.preprocess; "
        "print(sorted(m for m in ('torch', 'torchvision', 'cn_clip') if m in sys.modules))"
    )
    repo_root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def hf_file(tokenizer, tmp_path_factory):
    import tokenizers

    path = tmp_path_factory.mktemp("hf") / "tokenizer.hf.json"
    path.write_text(tokenizer.hf_json(), encoding="utf-8")
    return tokenizers.Tokenizer.from_file(str(path))  # as an app loads it, from the file alone


def test_the_hugging_face_file_gives_cn_clips_ids_on_ordinary_text(hf_file, jieba_words):
    rng = random.Random(2)
    words = rng.sample(jieba_words, 20_000)
    sentences = ["".join(rng.choice(jieba_words) + rng.choice(["", " ", "，", "2025年", "ABC"]) for _ in range(rng.randint(1, 40)))
                 for _ in range(2_000)]
    texts = [*words, *sentences]
    expected = cn_clip_tokenize(texts, context_length=52).numpy()
    got = np.array([encoding.ids for encoding in hf_file.encode_batch(texts)])
    differing = [text for text, a, b in zip(texts, got, expected) if not np.array_equal(a, b)]
    assert not differing, differing[:5]


def test_the_hugging_face_file_differs_where_its_docstring_says(hf_file):
    """Private-use characters: cn_clip gives [UNK], tokenizers' BertNormalizer drops them (stated in the manifest)."""
    expected = cn_clip_tokenize(["猫\ue000狗"]).numpy()[0]
    got = hf_file.encode("猫\ue000狗").ids
    assert list(expected[:5]) == [101, 4344, 100, 4318, 102] and got[:4] == [101, 4344, 4318, 102]
