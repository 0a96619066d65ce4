#include "tokenizer.h"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>

namespace cnclip {
namespace {

struct CharRange {
  char32_t first, last;
  uint8_t value;
};
struct CharMapping {
  char32_t point;
  uint8_t length;
  char32_t mapped[4];
};
#include "unicode_tables.inc"
static_assert(CNCLIP_MAPPING_WIDTH <= 4, "CharMapping::mapped is too short for the generated tables");

// Flag bits as gen_unicode_tables.py writes them.
enum : uint8_t {
  kDropped = 1,          // removed by _clean_text: NUL, U+FFFD, Cc and Cf except \t \n \r
  kWhitespace = 2,       // turned into ' ' by _clean_text: ' ', \t, \n, \r, Zs
  kSpace = 4,            // str.isspace(): where str.split() cuts
  kPunctuation = 8,      // _is_punctuation: non-alphanumeric printable ASCII, or P*
  kNonspacing = 16,      // Mn: dropped by _run_strip_accents after NFD
  kCased = 32,           // cased and not case-ignorable, as str.lower's final-sigma rule sees it
  kCaseIgnorable = 64,
};

constexpr char32_t kCapitalSigma = 0x3A3, kSmallSigma = 0x3C3, kFinalSigma = 0x3C2;
constexpr char32_t kHangulFirst = 0xAC00, kHangulLast = 0xD7A3;

uint8_t lookup(const CharRange* table, size_t size, char32_t point) {
  const CharRange* end = table + size;
  const CharRange* found = std::upper_bound(table, end, point, [](char32_t p, const CharRange& r) { return p < r.first; });
  if (found == table) return 0;
  --found;
  return point <= found->last ? found->value : 0;
}

uint8_t flags(char32_t point) { return lookup(kCharFlags, std::size(kCharFlags), point); }
uint8_t combining_class(char32_t point) { return lookup(kCombiningClass, std::size(kCombiningClass), point); }

// cn_clip's _is_chinese_char: these blocks exactly, typo-compatible ranges included.
bool is_cjk(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// str.lower's rule for 'Σ': final form when a cased letter comes before it and none after it,
// looking past case-ignorable characters both ways, within the word being lowered.
char32_t lower_sigma(const std::u32string& word, size_t at) {
  size_t before = at;
  while (before > 0 && (flags(word[before - 1]) & kCaseIgnorable)) --before;
  if (before == 0 || !(flags(word[before - 1]) & kCased)) return kSmallSigma;
  size_t after = at + 1;
  while (after < word.size() && (flags(word[after]) & kCaseIgnorable)) ++after;
  return after < word.size() && (flags(word[after]) & kCased) ? kSmallSigma : kFinalSigma;
}

// Lower-case, then canonical decomposition (NFD), one code point at a time.
void lower_decomposed(const std::u32string& word, size_t at, std::u32string& out) {
  char32_t c = word[at];
  if (c == kCapitalSigma) {
    out.push_back(lower_sigma(word, at));
  } else if (c >= kHangulFirst && c <= kHangulLast) {
    // Hangul syllables decompose by formula (Unicode §3.12), not by table.
    char32_t index = c - kHangulFirst;
    out.push_back(0x1100 + index / (21 * 28));
    out.push_back(0x1161 + (index % (21 * 28)) / 28);
    if (index % 28) out.push_back(0x11A7 + index % 28);
  } else {
    const CharMapping* end = kLowerDecomposed + std::size(kLowerDecomposed);
    const CharMapping* found =
        std::lower_bound(kLowerDecomposed, end, c, [](const CharMapping& m, char32_t p) { return m.point < p; });
    if (found != end && found->point == c) {
      out.append(found->mapped, found->length);
    } else {
      out.push_back(c);
    }
  }
}

// token.lower(), then _run_strip_accents: NFD (with canonical reordering of combining marks), then drop Mn.
std::u32string lower_without_accents(const std::u32string& token) {
  std::u32string decomposed;
  for (size_t i = 0; i < token.size(); ++i) lower_decomposed(token, i, decomposed);
  for (size_t i = 1; i < decomposed.size(); ++i) {
    for (size_t j = i; j > 0; --j) {
      uint8_t moving = combining_class(decomposed[j]);
      if (moving == 0 || combining_class(decomposed[j - 1]) <= moving) break;
      std::swap(decomposed[j], decomposed[j - 1]);
    }
  }
  std::u32string kept;
  for (char32_t c : decomposed)
    if (!(flags(c) & kNonspacing)) kept.push_back(c);
  return kept;
}

void split_on_punctuation(const std::u32string& token, std::vector<std::u32string>& words) {
  std::u32string current;
  for (char32_t c : token) {
    if (flags(c) & kPunctuation) {
      if (!current.empty()) words.push_back(std::move(current));
      current.clear();
      words.emplace_back(1, c);
    } else {
      current.push_back(c);
    }
  }
  if (!current.empty()) words.push_back(std::move(current));
}

std::u32string strip_spaces(const std::u32string& text) {
  size_t first = 0, last = text.size();
  while (first < last && (flags(text[first]) & kSpace)) ++first;
  while (last > first && (flags(text[last - 1]) & kSpace)) --last;
  return text.substr(first, last - first);
}

// UTF-8 → code points; malformed input throws (Python would not decode it either).
std::u32string decode_utf8(const std::string& text) {
  std::u32string out;
  size_t i = 0;
  while (i < text.size()) {
    unsigned char lead = text[i];
    int length = lead < 0x80 ? 1 : (lead >> 5) == 6 ? 2 : (lead >> 4) == 14 ? 3 : (lead >> 3) == 30 ? 4 : 0;
    if (length == 0 || i + length > text.size()) throw std::runtime_error("not valid UTF-8");
    char32_t point = length == 1 ? lead : lead & (0x7F >> length);
    for (int k = 1; k < length; ++k) {
      unsigned char next = text[i + k];
      if ((next >> 6) != 2) throw std::runtime_error("not valid UTF-8");
      point = (point << 6) | (next & 0x3F);
    }
    static const char32_t kSmallest[] = {0, 0, 0x80, 0x800, 0x10000};
    if (point < kSmallest[length] || point > 0x10FFFF || (point >= 0xD800 && point <= 0xDFFF))
      throw std::runtime_error("not valid UTF-8");
    out.push_back(point);
    i += length;
  }
  return out;
}

std::string encode_utf8(const std::u32string& text) {
  std::string out;
  for (char32_t c : text) {
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else if (c < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else if (c < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (c >> 12)));
      out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (c >> 18)));
      out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

// BERT's basic step as cn_clip runs it: the words WordPiece sees, in order.
std::vector<std::u32string> split_words(const std::u32string& text) {
  // _clean_text, then _tokenize_chinese_chars: each CJK ideograph becomes its own token.
  std::u32string spaced;
  for (char32_t c : text) {
    uint8_t f = flags(c);
    if (f & kDropped) continue;
    if (f & kWhitespace) {
      spaced.push_back(U' ');
    } else if (is_cjk(c)) {
      spaced.append({U' ', c, U' '});
    } else {
      spaced.push_back(c);
    }
  }
  std::vector<std::u32string> words;
  std::u32string token;
  auto flush = [&] {
    if (!token.empty()) split_on_punctuation(lower_without_accents(token), words);
    token.clear();
  };
  for (char32_t c : spaced) {
    if (flags(c) & kSpace) {
      flush();
    } else {
      token.push_back(c);
    }
  }
  flush();
  return words;
}

}  // namespace

const char kUnicodeVersion[] = CNCLIP_UNICODE_VERSION;

Tokenizer::Tokenizer(const std::string& vocab_file, int context_length, int max_chars_per_word)
    : context_length_(context_length), max_chars_per_word_(max_chars_per_word) {
  if (context_length < 2) throw std::runtime_error("context_length must leave room for [CLS] and [SEP]");
  std::ifstream in(vocab_file, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read the vocabulary " + vocab_file);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // As cn_clip's load_vocab reads it: universal newlines, each line stripped, the line number is the id,
  // a later duplicate wins.
  int32_t index = 0;
  size_t start = 0;
  while (start < bytes.size()) {
    size_t end = bytes.find_first_of("\r\n", start);
    if (end == std::string::npos) end = bytes.size();
    std::u32string line;
    try {
      line = decode_utf8(bytes.substr(start, end - start));
    } catch (const std::runtime_error&) {
      throw std::runtime_error(vocab_file + " line " + std::to_string(index + 1) + " is not valid UTF-8");
    }
    vocab_[encode_utf8(strip_spaces(line))] = index++;
    start = end + (end + 1 < bytes.size() && bytes[end] == '\r' && bytes[end + 1] == '\n' ? 2 : 1);
  }
  cls_ = id("[CLS]", vocab_file);
  sep_ = id("[SEP]", vocab_file);
  unk_ = id("[UNK]", vocab_file);
}

int32_t Tokenizer::id(const std::string& token, const std::string& vocab_file) const {
  auto found = vocab_.find(token);
  if (found == vocab_.end()) throw std::runtime_error("the vocabulary " + vocab_file + " lacks " + token);
  return found->second;
}

void Tokenizer::wordpiece(const std::u32string& word, std::vector<int32_t>& out) const {
  if (word.size() > max_chars_per_word_) {
    out.push_back(unk_);
    return;
  }
  std::vector<int32_t> pieces;
  size_t start = 0;
  while (start < word.size()) {
    // Greedy longest match first; a piece that is not the word's start carries the "##" prefix.
    size_t end = word.size();
    int32_t found = -1;
    for (; end > start; --end) {
      std::string piece = (start > 0 ? "##" : "") + encode_utf8(word.substr(start, end - start));
      auto hit = vocab_.find(piece);
      if (hit != vocab_.end()) {
        found = hit->second;
        break;
      }
    }
    if (found < 0) {
      out.push_back(unk_);
      return;
    }
    pieces.push_back(found);
    start = end;
  }
  out.insert(out.end(), pieces.begin(), pieces.end());
}

std::vector<int32_t> Tokenizer::pieces(const std::string& utf8_text) const {
  std::vector<int32_t> ids;
  for (const std::u32string& word : split_words(decode_utf8(utf8_text))) wordpiece(word, ids);
  return ids;
}

std::vector<int32_t> Tokenizer::encode(const std::string& utf8_text) const {
  std::vector<int32_t> all = pieces(utf8_text);
  std::vector<int32_t> ids{cls_};
  size_t kept = std::min(all.size(), static_cast<size_t>(context_length_ - 2));
  ids.insert(ids.end(), all.begin(), all.begin() + kept);
  ids.push_back(sep_);
  return ids;
}

}  // namespace cnclip
