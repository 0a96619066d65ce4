// cn_clip's tokenizer (cn_clip/clip/bert_tokenizer.py + cn_clip.clip.tokenize), reading the bundle's vocab.txt.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace cnclip {

// UTF-8 → code points; throws std::runtime_error on malformed input (Python would not decode it either).
std::u32string decode_utf8(const std::string& text);
std::string encode_utf8(const std::u32string& text);

// BERT's basic step as cn_clip runs it: the words WordPiece sees, in order.
std::vector<std::u32string> split_words(const std::u32string& text);

class Tokenizer {
 public:
  Tokenizer(const std::string& vocab_file, int context_length, int max_chars_per_word);

  // [CLS], the first context_length - 2 word pieces, [SEP]: unpadded, as ncnn's text towers take them.
  // Pad with 0 to context_length for ONNX towers (cn_clip pads with a literal 0).
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
