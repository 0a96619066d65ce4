// cnclip-embed: embeddings of texts or images from a converted bundle's ncnn artifacts, as JSON Lines.
#include <cstdio>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "bundle.h"
#include "image.h"
#include "tokenizer.h"
#include "tower.h"

namespace {

const char kUsage[] =
    "usage: cnclip-embed BUNDLE_DIR --stage STAGE (--texts FILE | --images FILE...) [--threads N]\n"
    "       cnclip-embed BUNDLE_DIR --no-embed (--texts FILE | --images FILE...) [--save-resized DIR]\n"
    "\n"
    "Embeds each text or image with the bundle's ncnn artifacts, checked against manifest.json's sha256 first.\n"
    "\n"
    "  --stage STAGE   ncnn-fp32, ncnn-fp16 or ncnn-int8 (the bundle's stage names); run with the Options\n"
    "                  the manifest's runtime_options give (ncnn-fp16 computes in fp16 where the CPU can)\n"
    "  --texts FILE    UTF-8, one text per line ('-' for standard input)\n"
    "  --images FILE…  JPEG or PNG files\n"
    "  --threads N     ncnn threads (default: ncnn's, the big cores)\n"
    "  --no-embed      tokenize or preprocess only: token ids and pixel checksums, no model\n"
    "  --save-resized DIR  also write each resized RGB image as DIR/N.png (N: its position, from 0)\n"
    "\n"
    "Prints one JSON object per input, in order: {\"text\", \"token_ids\", \"embedding\"} or\n"
    "{\"image\", \"pixels_sha256\", \"resized_rgb_sha256\", \"embedding\"}; token_ids are unpadded\n"
    "([CLS] … [SEP], what ncnn's text tower takes), embeddings unnormalized. An input that fails gives\n"
    "{\"text\"|\"image\", \"error\"} and the exit status 1 (a non-finite embedding is such an error);\n"
    "a bad bundle or command line, 2.\n";

struct Arguments {
  std::string bundle, stage, texts, resized_dir;
  std::vector<std::string> images;
  int threads = 0;
  bool embed = true;
};

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "error: " << message << "\n\n" << kUsage;
  std::exit(2);
}

Arguments parse(int argc, char** argv) {
  Arguments args;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](const char* what) -> std::string {
      if (i + 1 >= argc) usage_error(arg + " needs " + what);
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "--stage") {
      args.stage = value("a stage name");
    } else if (arg == "--texts") {
      args.texts = value("a file");
    } else if (arg == "--images") {
      while (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) args.images.push_back(argv[++i]);
      if (args.images.empty()) usage_error("--images needs at least one file");
    } else if (arg == "--threads") {
      const std::string text = value("a number");
      size_t used = 0;
      try {
        args.threads = std::stoi(text, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != text.size() || args.threads < 1) usage_error("--threads takes a whole number of at least 1");
    } else if (arg == "--save-resized") {
      args.resized_dir = value("a folder");
    } else if (arg == "--no-embed") {
      args.embed = false;
    } else if (arg.rfind("--", 0) == 0) {
      usage_error("unknown option " + arg);
    } else if (args.bundle.empty()) {
      args.bundle = arg;
    } else {
      usage_error("one bundle folder only; images follow --images");
    }
  }
  if (args.bundle.empty()) usage_error("name the bundle folder (the one holding manifest.json)");
  if (args.texts.empty() == args.images.empty()) usage_error("give either --texts FILE or --images FILE...");
  if (args.embed && args.stage.empty()) usage_error("--stage is needed to embed (or --no-embed)");
  return args;
}

std::vector<std::string> read_lines(const std::string& file) {
  std::ifstream in;
  if (file != "-") {
    in.open(file, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + file);
  }
  std::istream& source = file == "-" ? std::cin : in;
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(source, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  return lines;
}

// nlohmann writes NaN and inf as null; an embedding holding one is an error, not a vector.
std::vector<float> finite(std::vector<float> embedding) {
  for (float value : embedding)
    if (!std::isfinite(value)) throw std::runtime_error("the embedding is not finite (NaN or inf): the model is broken");
  return embedding;
}

void print(const nlohmann::ordered_json& record) {
  std::cout << record.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << '\n';
}

int run(const Arguments& args) {
  cnclip::Bundle bundle = cnclip::Bundle::open(args.bundle);
  const std::string tower_name = args.texts.empty() ? "visual" : "text";
  std::unique_ptr<cnclip::Tower> tower;
  if (args.embed) tower = std::make_unique<cnclip::Tower>(bundle.artifact(tower_name, args.stage), args.threads);
  if (!args.texts.empty() && bundle.unicode_version != cnclip::kUnicodeVersion)
    std::cerr << "warning: the bundle's tokenizer was checked with Unicode " << bundle.unicode_version
              << ", this client's tables are Unicode " << cnclip::kUnicodeVersion
              << ": characters new in between may tokenize differently\n";
  int failures = 0;
  if (!args.texts.empty()) {
    cnclip::Tokenizer tokenizer(bundle.vocab.string(), bundle.context_length, bundle.max_chars_per_word);
    std::vector<std::string> lines = read_lines(args.texts);
    for (size_t n = 0; n < lines.size(); ++n) {
      nlohmann::ordered_json record = {{"text", lines[n]}};
      try {
        std::vector<int32_t> ids = tokenizer.encode(lines[n]);
        record["token_ids"] = ids;
        if (tower) record["embedding"] = finite(tower->embed_text(ids));
      } catch (const std::exception& error) {
        record["error"] = std::string(args.texts) + " line " + std::to_string(n + 1) + ": " + error.what();
        ++failures;
      }
      print(record);
    }
  }
  for (size_t n = 0; n < args.images.size(); ++n) {
    const std::string& path = args.images[n];
    nlohmann::ordered_json record = {{"image", path}};
    try {
      cnclip::Image rgb = cnclip::resized_rgb(cnclip::decode_image(path), bundle.preprocess);
      if (!args.resized_dir.empty()) cnclip::save_png(rgb, args.resized_dir + "/" + std::to_string(n) + ".png");
      std::vector<float> pixels = cnclip::normalized_pixels(rgb, bundle.preprocess);
      record["pixels_sha256"] = cnclip::sha256_hex(pixels.data(), pixels.size() * sizeof(float));
      record["resized_rgb_sha256"] = cnclip::sha256_hex(rgb.data.data(), rgb.data.size());
      if (tower) record["embedding"] = finite(tower->embed_image(pixels, bundle.preprocess.resolution));
    } catch (const std::exception& error) {
      record["error"] = error.what();
      ++failures;
    }
    print(record);
  }
  return failures ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  Arguments args = parse(argc, argv);
  try {
    return run(args);
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 2;
  }
}
