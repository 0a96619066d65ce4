// A converted bundle as the client reads it: manifest.json, every file checked against its sha256 before use.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "image.h"

namespace cnclip {

struct TensorSpec {
  std::string name, dtype, role;
  std::vector<int> shape;  // -1 for a named (variable) axis
};

struct FileEntry {
  std::filesystem::path path;  // inside the bundle, already checked to stay there
  std::string sha256;
};

struct Artifact {
  std::string key;  // e.g. "text.ncnn-fp16"
  std::string runtime;
  std::vector<FileEntry> files;
  std::vector<TensorSpec> inputs, outputs;
  std::map<std::string, bool> runtime_options;

  const TensorSpec& input(const std::string& role) const;
};

struct Bundle {
  std::filesystem::path root;
  Preprocess preprocess;
  std::filesystem::path vocab;
  int context_length = 0;
  int max_chars_per_word = 0;
  std::string unicode_version;  // of the tables the bundle's tokenizer was checked with
  std::map<std::string, Artifact> artifacts;  // by "tower.stage"

  // Reads manifest.json and checks the vocabulary's sha256.
  static Bundle open(const std::filesystem::path& root);
  // One tower of one stage, its files' sha256 checked (hashing every artifact up front would read the whole bundle).
  const Artifact& artifact(const std::string& tower, const std::string& stage) const;
};

std::string sha256_hex(const void* data, size_t size);

}  // namespace cnclip
