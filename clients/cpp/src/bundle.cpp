#include "bundle.h"

#include <openssl/evp.h>

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
  std::string actual = sha256_file(file.path);
  if (actual != file.sha256)
    throw std::runtime_error(file.path.string() + " has sha256 " + actual + ", not the manifest's " + file.sha256 +
                             ": the file changed after conversion; convert again");
  return file.path;
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

const TensorSpec& TowerArtifact::input(const std::string& role) const {
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
    bundle.preprocess.resolution = pre.at("resolution");
    for (int band = 0; band < 3; ++band) {
      // Read as double, stored as float32: what numpy's float32 arrays of the same JSON numbers hold.
      bundle.preprocess.mean[band] = static_cast<float>(pre.at("mean").at(band).get<double>());
      bundle.preprocess.std[band] = static_cast<float>(pre.at("std").at(band).get<double>());
    }
    bundle.preprocess.center_crop = pre.value("resize_mode", "square") == "shortest_edge_center_crop";
    if (bundle.preprocess.center_crop) bundle.preprocess.shortest_edge = pre.at("shortest_edge");
    const json& tokenizer = manifest.at("tokenizer");
    bundle.context_length = tokenizer.at("context_length");
    bundle.max_chars_per_word = tokenizer.at("max_chars_per_word");
    bundle.vocab = verified(confined(root, manifest.at("files").at("vocab")));
    for (const auto& [key, entry] : manifest.at("artifacts").items()) {
      TowerArtifact artifact{key, entry.at("runtime"), {}, tensors(entry.at("inputs")), tensors(entry.at("outputs")), {}};
      if (artifact.runtime != "ncnn") continue;
      for (const json& file : entry.at("files")) artifact.files.push_back(confined(root, file));
      const json options = entry.value("runtime_options", json::object());
      for (const auto& [name, value] : options.items())
        artifact.runtime_options[name] = value.get<bool>();
      bundle.artifacts[key] = artifact;
    }
  } catch (const json::exception& error) {
    throw std::runtime_error(manifest_path.string() + " is not a manifest this client reads: " + error.what());
  }
  return bundle;
}

const TowerArtifact& Bundle::artifact(const std::string& tower, const std::string& stage) const {
  auto found = artifacts.find(tower + "." + stage);
  if (found == artifacts.end()) {
    std::string stages;
    for (const auto& [key, _] : artifacts)
      if (key.rfind(tower + ".", 0) == 0) stages += " " + key.substr(tower.size() + 1);
    throw std::runtime_error("the bundle " + root.string() + " has no ncnn artifact for " + tower + " " + stage +
                             "; it has:" + (stages.empty() ? " none" : stages));
  }
  for (const FileEntry& file : found->second.files) verified(file);
  return found->second;
}

}  // namespace cnclip
