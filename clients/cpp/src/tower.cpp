#include "tower.h"

#include <cstring>
#include <map>
#include <numeric>
#include <stdexcept>

namespace cnclip {
namespace {

// The ncnn::Option booleans a manifest may set, by the names the Python bindings give them.
bool ncnn::Option::*option_member(const std::string& name) {
  static const std::map<std::string, bool ncnn::Option::*> members = {
      {"use_fp16_storage", &ncnn::Option::use_fp16_storage},
      {"use_fp16_packed", &ncnn::Option::use_fp16_packed},
      {"use_fp16_arithmetic", &ncnn::Option::use_fp16_arithmetic},
      {"use_bf16_storage", &ncnn::Option::use_bf16_storage},
      {"use_int8_inference", &ncnn::Option::use_int8_inference},
      {"use_int8_storage", &ncnn::Option::use_int8_storage},
      {"use_int8_packed", &ncnn::Option::use_int8_packed},
      {"use_int8_arithmetic", &ncnn::Option::use_int8_arithmetic},
      {"use_packing_layout", &ncnn::Option::use_packing_layout},
      {"use_winograd_convolution", &ncnn::Option::use_winograd_convolution},
      {"use_sgemm_convolution", &ncnn::Option::use_sgemm_convolution},
      {"lightmode", &ncnn::Option::lightmode},
  };
  auto found = members.find(name);
  return found == members.end() ? nullptr : found->second;
}

}  // namespace

Tower::Tower(const Artifact& artifact, int threads) : artifact_(artifact) {
  for (const auto& [name, value] : artifact.runtime_options) {
    // A 0-3 field in ncnn (DAZ and FTZ bits), on or off in a manifest, as ncnn_runtime.py reads it.
    if (name == "flush_denormals") {
      net_.opt.flush_denormals = value ? 3 : 0;
      continue;
    }
    bool ncnn::Option::*member = option_member(name);
    if (!member)
      throw std::runtime_error(artifact.key + ": this client sets no ncnn Option named " + name +
                               " (its runtime_options in manifest.json); add it to option_member in tower.cpp");
    net_.opt.*member = value;
  }
  if (threads > 0) net_.opt.num_threads = threads;
  if (artifact.files.size() != 2)
    throw std::runtime_error(artifact.key + ": an ncnn model is a .param and a .bin, but " +
                             std::to_string(artifact.files.size()) + " files are listed");
  const std::string param = artifact.files[0].path.string(), bin = artifact.files[1].path.string();
  if (net_.load_param(param.c_str()) != 0 || net_.load_model(bin.c_str()) != 0)
    throw std::runtime_error("ncnn cannot load " + param + " with " + bin +
                             ": built with an older ncnn than the manifest's tools.ncnn? Rebuild the client");
  if (artifact.outputs.empty()) throw std::runtime_error(artifact.key + " lists no output in manifest.json");
  // What this client feeds; a manifest that says otherwise describes another kind of model.
  for (const TensorSpec& input : artifact.inputs) {
    const char* expected = input.role == "pixels" ? "float32" : "int32";
    if (input.dtype != expected)
      throw std::runtime_error(artifact.key + " input " + input.name + " is " + input.dtype + "; this client feeds " +
                               expected + " " + input.role);
  }
}

std::vector<float> Tower::extract(ncnn::Extractor& extractor) {
  ncnn::Mat out;
  const std::string& name = artifact_.outputs.at(0).name;
  if (extractor.extract(name.c_str(), out) != 0)
    throw std::runtime_error(artifact_.key + ": ncnn failed to compute " + name + " (a blob name the model lacks?)");
  ncnn::Mat flat = out.reshape(out.w * out.h * out.d * out.c);
  return std::vector<float>(static_cast<const float*>(flat.data), static_cast<const float*>(flat.data) + flat.w);
}

std::vector<float> Tower::embed_image(const std::vector<float>& pixels, int resolution) {
  const TensorSpec& spec = artifact_.input("pixels");
  ncnn::Mat input(resolution, resolution, 3);
  const size_t plane = static_cast<size_t>(resolution) * resolution;
  // ncnn pads each channel to an aligned stride, so planes are copied one by one.
  for (int band = 0; band < 3; ++band) std::memcpy(input.channel(band), &pixels[band * plane], plane * sizeof(float));
  ncnn::Extractor extractor = net_.create_extractor();
  extractor.input(spec.name.c_str(), input);
  return extract(extractor);
}

std::vector<float> Tower::embed_text(const std::vector<int32_t>& ids) {
  const TensorSpec& id_spec = artifact_.input("token_ids");
  const TensorSpec& position_spec = artifact_.input("position_ids");
  const int count = static_cast<int>(ids.size());
  // Integer blobs are int32 Mats of element size 4, which ncnn's Embed and Gather layers read as indices.
  ncnn::Mat id_mat(count, static_cast<size_t>(4u)), position_mat(count, static_cast<size_t>(4u));
  std::memcpy(id_mat.data, ids.data(), count * sizeof(int32_t));
  std::iota(static_cast<int32_t*>(position_mat.data), static_cast<int32_t*>(position_mat.data) + count, 0);
  ncnn::Extractor extractor = net_.create_extractor();
  extractor.input(id_spec.name.c_str(), id_mat);
  extractor.input(position_spec.name.c_str(), position_mat);
  return extract(extractor);
}

}  // namespace cnclip
