#include "bundle.h"

#include <openssl/evp.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace cnclip {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string hex(const unsigned char* bytes, unsigned size) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < size; ++i) {
    out.push_back(digits[bytes[i] >> 4]);
    out.push_back(digits[bytes[i] & 15]);
  }
  return out;
}

std::string sha256_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> context(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr);
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), buffer.size());
    EVP_DigestUpdate(context.get(), buffer.data(), in.gcount());
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned size = 0;
  EVP_DigestFinal_ex(context.get(), digest, &size);
  return hex(digest, size);
}

// A manifest path names a file inside the bundle; anything else is refused before it is opened.
FileEntry confined(const fs::path& root, const json& entry) {
  fs::path relative = entry.at("path").get<std::string>();
  for (const fs::path& part : relative)
    if (part == "..") throw std::runtime_error("manifest path " + relative.string() + " leaves the bundle");
  if (relative.is_absolute()) throw std::runtime_error("manifest path " + relative.string() + " is absolute");
  fs::path path = root / relative;
  fs::path real = fs::weakly_canonical(path), base = fs::weakly_canonical(root);
  if (std::mismatch(base.begin(), base.end(), real.begin(), real.end()).first != base.end())
    throw std::runtime_error(path.string() + " resolves outside the bundle (a symbolic link?)");
  return {path, entry.at("sha256").get<std::string>()};
}

const fs::path& verified(const FileEntry& file) {
  if (!fs::is_regular_file(file.path))
    throw std::runtime_error(file.path.string() + " is missing or not a regular file; convert again");
  std::string actual = sha256_file(file.path);
  if (actual != file.sha256)
    throw std::runtime_error(file.path.string() + " has sha256 " + actual + ", not the manifest's " + file.sha256 +
                             ": the file changed after conversion; convert again");
  return file.path;
}

int integer(const json& parent, const std::string& key, int low, int high) {
  const json& value = parent.at(key.substr(key.find('.') + 1));
  if (!value.is_number_integer() || value.get<int64_t>() < low || value.get<int64_t>() > high)
    throw std::runtime_error(key + " is " + value.dump() + "; it must be a whole number from " + std::to_string(low) +
                             " to " + std::to_string(high));
  return value.get<int>();
}

std::vector<TensorSpec> tensors(const json& list) {
  std::vector<TensorSpec> out;
  for (const json& item : list) {
    TensorSpec spec{item.at("name"), item.at("dtype"), item.at("role"), {}};
    for (const json& axis : item.at("shape")) spec.shape.push_back(axis.is_number_integer() ? axis.get<int>() : -1);
    out.push_back(spec);
  }
  return out;
}

}  // namespace

std::string sha256_hex(const void* data, size_t size) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned length = 0;
  EVP_Digest(data, size, digest, &length, EVP_sha256(), nullptr);
  return hex(digest, length);
}

const TensorSpec& Artifact::input(const std::string& role) const {
  for (const TensorSpec& spec : inputs)
    if (spec.role == role) return spec;
  throw std::runtime_error(key + " has no input with role " + role);
}

Bundle Bundle::open(const fs::path& root) {
  fs::path manifest_path = root / "manifest.json";
  std::ifstream in(manifest_path);
  if (!in) throw std::runtime_error("no manifest.json in " + root.string() + ": is this a converted bundle?");
  Bundle bundle;
  bundle.root = root;
  try {
    json manifest = json::parse(in);
    const json& pre = manifest.at("preprocess");
    Preprocess& spec = bundle.preprocess;
    spec.resolution = integer(pre, "preprocess.resolution", 1, 8192);
    for (int band = 0; band < 3; ++band) {
      // Read as double, stored as float32: what numpy's float32 arrays of the same JSON numbers hold.
      spec.mean[band] = static_cast<float>(pre.at("mean").at(band).get<double>());
      spec.std[band] = static_cast<float>(pre.at("std").at(band).get<double>());
      if (!(spec.std[band] > 0) || !std::isfinite(spec.std[band]) || !std::isfinite(spec.mean[band]))
        throw std::runtime_error("preprocess.mean and preprocess.std must be finite, std above 0");
    }
    const std::string mode = pre.value("resize_mode", "square");
    if (mode != "square" && mode != "shortest_edge_center_crop")
      throw std::runtime_error("preprocess.resize_mode is '" + mode + "'; this client knows square and shortest_edge_center_crop");
    spec.center_crop = mode == "shortest_edge_center_crop";
    if (spec.center_crop) spec.shortest_edge = integer(pre, "preprocess.shortest_edge", spec.resolution, 8192);
    const json& tokenizer = manifest.at("tokenizer");
    bundle.context_length = integer(tokenizer, "tokenizer.context_length", 2, 4096);
    bundle.max_chars_per_word = integer(tokenizer, "tokenizer.max_chars_per_word", 1, 100000);
    bundle.unicode_version = tokenizer.value("unicode_version", "");
    bundle.vocab = verified(confined(root, manifest.at("files").at("vocab")));
    for (const auto& [key, entry] : manifest.at("artifacts").items()) {
      Artifact artifact{key, entry.at("runtime"), {}, tensors(entry.at("inputs")), tensors(entry.at("outputs")), {}};
      if (artifact.runtime != "ncnn") continue;
      for (const json& file : entry.at("files")) artifact.files.push_back(confined(root, file));
      const json options = entry.value("runtime_options", json::object());
      for (const auto& [name, value] : options.items())
        artifact.runtime_options[name] = value.get<bool>();
      bundle.artifacts[key] = artifact;
    }
  } catch (const nlohmann::json::exception& error) {
    throw std::runtime_error(manifest_path.string() + " is not a manifest this client reads: " + error.what() +
                             "; convert the bundle again");
  } catch (const std::runtime_error& error) {
    throw std::runtime_error(manifest_path.string() + ": " + error.what());
  }
  return bundle;
}

const Artifact& Bundle::artifact(const std::string& tower, const std::string& stage) const {
  auto found = artifacts.find(tower + "." + stage);
  if (found == artifacts.end()) {
    std::string stages;
    for (const auto& [key, _] : artifacts)
      if (key.rfind(tower + ".", 0) == 0) stages += " " + key.substr(tower.size() + 1);
    throw std::runtime_error("the bundle " + root.string() + " has no ncnn artifact for " + tower + " " + stage +
                             "; it has:" + (stages.empty() ? " none" : stages));
  }
  const Artifact& artifact = found->second;
  for (const TensorSpec& input : artifact.inputs)
    if (input.role == "pixels" && input.shape != std::vector<int>{3, preprocess.resolution, preprocess.resolution})
      throw std::runtime_error(artifact.key + " takes pixels of another size than preprocess.resolution " +
                               std::to_string(preprocess.resolution) + " in " + (root / "manifest.json").string());
  for (const FileEntry& file : artifact.files) verified(file);
  return artifact;
}

}  // namespace cnclip
