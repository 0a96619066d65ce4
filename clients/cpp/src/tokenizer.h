// cn_clip's tokenizer (cn_clip/clip/bert_tokenizer.py + cn_clip.clip.tokenize), reading the bundle's vocab.txt.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace cnclip {

// The Unicode version of the character tables (that of the Python unicodedata they were generated from).
extern const char kUnicodeVersion[];

class Tokenizer {
 public:
  Tokenizer(const std::string& vocab_file, int context_length, int max_chars_per_word);

  // [CLS], the first context_length - 2 word pieces, [SEP]: unpadded, as ncnn's text towers take them.
  // Pad with 0 to context_length for ONNX towers (cn_clip pads with a literal 0). Throws
  // std::runtime_error for text that is not valid UTF-8.
  std::vector<int32_t> encode(const std::string& utf8_text) const;

 private:
  std::vector<int32_t> pieces(const std::string& utf8_text) const;
  void wordpiece(const std::u32string& word, std::vector<int32_t>& out) const;
  int32_t id(const std::string& token, const std::string& vocab_file) const;

  std::unordered_map<std::string, int32_t> vocab_;
  int context_length_;
  size_t max_chars_per_word_;
  int32_t cls_, sep_, unk_;
};

}  // namespace cnclip
