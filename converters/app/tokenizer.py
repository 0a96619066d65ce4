"""Chinese-CLIP's text tokenizer without torch: the ids `cn_clip.clip.tokenize` makes.

cn_clip runs Google BERT's tokenizer (`cn_clip/clip/bert_tokenizer.py`): a
basic step that cleans the text, isolates CJK ideographs, lower-cases, strips
accents and splits punctuation, then greedy longest-match WordPiece.

Only the WordPiece step is handed to Hugging Face `tokenizers`. Its
`BertNormalizer` and `BertPreTokenizer` classify characters with their own
frozen Unicode tables and differ from cn_clip, measured over every code point:
they drop private-use characters (cn_clip keeps them, giving [UNK]); their CJK
range starts at U+2B920 instead of U+2B820; they do not know the punctuation,
nonspacing marks and format characters added since their tables were made;
and they lower-case character by character, so a word-final 'Σ' becomes 'σ'
where Python's `str.lower` gives 'ς' (a different id). The basic step below
therefore classifies with Python's `unicodedata`, as cn_clip does.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from converters.errors import ArtifactError

DEFAULT_CONTEXT_LENGTH = 52
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# cn_clip fills rows with a literal 0 (torch.zeros), whatever the vocab says.
PADDING_ID = 0
# WordpieceTokenizer's default in cn_clip; tokenizers' own default is 100.
MAX_CHARS_PER_WORD = 200

# CJK ideograph blocks exactly as cn_clip's `_is_chinese_char` lists them.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)
_CJK = re.compile("[" + "".join(f"{chr(low)}-{chr(high)}" for low, high in _CJK_RANGES) + "]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class Tokenizer:
    """Texts → int64 ids `[N, context_length]`: `[CLS]`, word pieces cut to fit, `[SEP]`, zeros."""

    def __init__(self, vocab: dict[str, int], vocab_file: str, context_length: int = DEFAULT_CONTEXT_LENGTH):
        if context_length < 2:
            raise ValueError(f"context_length must leave room for [CLS] and [SEP]; got {context_length}.")
        missing = [token for token in SPECIAL_TOKENS if token not in vocab]
        if missing:
            raise ArtifactError(f"The vocabulary {vocab_file} lacks the special tokens {', '.join(missing)}.")
        self.vocab_file = vocab_file
        self.vocab_size = len(vocab)
        self.context_length = context_length
        self.special_ids = {token: vocab[token] for token in SPECIAL_TOKENS}
        self._wordpiece = tokenizers.Tokenizer(
            WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=MAX_CHARS_PER_WORD)
        )

    @classmethod
    def from_vocab(cls, path: str | Path, context_length: int = DEFAULT_CONTEXT_LENGTH) -> "Tokenizer":
        """Load a BERT vocab.txt (one token a line, the line number is the id), as cn_clip reads it."""
        path = Path(path)
        try:
            with path.open(encoding="utf-8") as lines:
                # Same as cn_clip's load_vocab: universal newlines, each line stripped, a later duplicate wins.
                vocab = {line.strip(): index for index, line in enumerate(lines)}
        except (OSError, UnicodeDecodeError) as error:
            raise ArtifactError(f"Cannot read the tokenizer vocabulary {path}: {error}") from error
        return cls(vocab, path.name, context_length)

    @property
    def max_pieces(self) -> int:
        """How many word pieces fit between [CLS] and [SEP]; the rest are dropped."""
        return self.context_length - 2

    def encode(self, texts: str | Sequence[str]) -> np.ndarray:
        pieces = self._pieces(texts)
        ids = np.full((len(pieces), self.context_length), PADDING_ID, dtype=np.int64)
        for row, text_pieces in zip(ids, pieces):
            kept = [self.special_ids["[CLS]"], *text_pieces[: self.max_pieces], self.special_ids["[SEP]"]]
            row[: len(kept)] = kept
        return ids

    def piece_counts(self, texts: str | Sequence[str]) -> np.ndarray:
        """Word pieces per text before truncation: above `max_pieces` was cut, 0 means only [CLS][SEP]."""
        return np.array([len(p) for p in self._pieces(texts)], dtype=np.int64)

    def _pieces(self, texts: str | Sequence[str]) -> list[list[int]]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"The tokenizer takes str or a sequence of str, not {type(text).__name__}.")
        encodings = self._wordpiece.encode_batch(
            [split_words(text) for text in texts], is_pretokenized=True, add_special_tokens=False
        )
        return [encoding.ids for encoding in encodings]

    def hf_json(self) -> str:
        """The same tokenizer as a Hugging Face `tokenizers` file, which tokenizers (Rust, Python),
        tokenizers-cpp, swift-transformers and transformers.js load as is.

        Its BertNormalizer classifies characters with tokenizers' own tables (see the module's
        docstring). Measured against cn_clip.clip.tokenize (tests/app/test_tokenizer.py): the same
        ids on 20,000 jieba words and 2,000 sentences; over every code point between two CJK
        characters, 137,866 of 1,112,064 differ: 137,468 private-use characters (cn_clip gives
        [UNK], this file drops them), 384 nonspacing marks, 13 format characters and 1 spacing mark
        newer than its tables.
        """
        tokenizer = tokenizers.Tokenizer(
            WordPiece(self._wordpiece.get_vocab(), unk_token="[UNK]", max_input_chars_per_word=MAX_CHARS_PER_WORD)
        )
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        cls, sep = self.special_ids["[CLS]"], self.special_ids["[SEP]"]
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
        )
        tokenizer.enable_truncation(max_length=self.context_length)
        tokenizer.enable_padding(length=self.context_length, pad_id=PADDING_ID, pad_token="[PAD]")
        return tokenizer.to_str(pretty=True)

    def spec(self) -> dict:
        """What an app must reproduce to feed the text tower, as JSON-able facts."""
        return {
            "algorithm": "BERT BasicTokenizer + WordPiece, as cn_clip/clip/bert_tokenizer.py",
            "vocab_file": self.vocab_file,
            "vocab_size": self.vocab_size,
            "lower_case": True,
            "strip_accents": "NFD, then drop nonspacing marks (Mn), after lower-casing",
            "unicode_version": unicodedata.unidata_version,
            "wordpiece_prefix": "##",
            "max_chars_per_word": MAX_CHARS_PER_WORD,
            "special_token_ids": dict(self.special_ids),
            "context_length": self.context_length,
            "layout": "[CLS] + pieces[:context_length - 2] + [SEP], then padding to context_length",
            "truncation": f"silent: word pieces beyond the first {self.max_pieces} are dropped",
            "padding_id": PADDING_ID,
            "dtype": "int64",
            "hf_tokenizer": {
                "file": "tokenizer.hf.json",
                "agreement": "the same ids as cn_clip on ordinary text (20,000 jieba words, 2,000 sentences); it drops "
                "private-use characters, for which cn_clip gives [UNK], and classifies 398 marks and format characters "
                "newer than its tables differently. Where exactness matters, use this spec's algorithm (vocab_file).",
            },
        }


def split_words(text: str) -> list[str]:
    """cn_clip's BasicTokenizer: the words WordPiece sees, in order."""
    cleaned = "".join(" " if _is_whitespace(char) else char for char in text if not _is_dropped(char))
    words = []
    # Lower-casing per whitespace-separated token, as cn_clip does, decides which 'Σ' are word-final.
    for token in _CJK.sub(r" \g<0> ", cleaned).split():
        words.extend(_split_on_punctuation(_strip_accents(token.lower())))
    if _SURROGATE.search(text):
        # A lone surrogate cannot cross into Rust; a word holding one matches no vocab entry, so
        # cn_clip's WordPiece gives [UNK] for it, which is what the literal "[UNK]" word looks up.
        words = ["[UNK]" if _SURROGATE.search(word) else word for word in words]
    return words


def _is_dropped(char: str) -> bool:
    return char in "\x00\ufffd" or (char not in "\t\n\r" and unicodedata.category(char) in ("Cc", "Cf"))


def _is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_punctuation(char: str) -> bool:
    # cn_clip counts every non-alphanumeric printable ASCII character ("$", "^", "`"…) as punctuation.
    return ("!" <= char <= "~" and not char.isalnum()) or unicodedata.category(char).startswith("P")


def _strip_accents(token: str) -> str:
    return "".join(char for char in unicodedata.normalize("NFD", token) if unicodedata.category(char) != "Mn")


def _split_on_punctuation(token: str) -> list[str]:
    pieces, current = [], []
    for char in token:
        if _is_punctuation(char):
            if current:
                pieces.append("".join(current))
                current = []
            pieces.append(char)
        else:
            current.append(char)
    if current:
        pieces.append("".join(current))
    return pieces
