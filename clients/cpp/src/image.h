// Image preprocessing identical to cn_clip's image_transform (Pillow's antialiased bicubic), from JPEG or PNG files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cnclip {

// A decoded image in the mode Pillow would open it in: 1 channel (L), 2 (LA), 3 (RGB) or 4 (RGBA),
// interleaved. `nearest` marks the modes Pillow resizes with nearest instead of bicubic ('1' and 'P').
struct Image {
  int width = 0, height = 0, channels = 0;
  bool nearest = false;
  std::vector<uint8_t> data;
};

// Pillow's own limit; larger images are refused before their pixels are decoded.
constexpr int64_t kMaxPixels = 89478485;

// The first frame of a JPEG (grayscale or colour) or PNG (any bit depth but 16-bit grayscale), as stored:
// EXIF orientation is not applied, as in cn_clip. Throws std::runtime_error naming the file.
Image decode_image(const std::string& path);

// Pillow's Image.resize(size, BICUBIC) in the image's own mode (premultiplied alpha for LA/RGBA, nearest
// for '1' and 'P'), bit for bit with Pillow 13 (which orders its two passes differently from Pillow 12 for
// images whose height shrinks much more than their width).
Image resize(const Image& image, int width, int height);

// Image.convert("RGB"): gray replicated, alpha dropped without compositing.
Image to_rgb(const Image& image);

struct Preprocess {
  int resolution;
  float mean[3], std[3];
  bool center_crop = false;  // a Hugging Face processor: RGB first, shorter side to shortest_edge, centre crop
  int shortest_edge = 0;
};

// The uint8 RGB image the model sees: resolution × resolution, interleaved.
Image resized_rgb(const Image& image, const Preprocess& spec);

// A uint8 RGB image as a PNG file (for comparing with golden.json's resized_rgb_file).
void save_png(const Image& rgb, const std::string& path);

// (uint8 / 255 - mean) / std in float32, planar [3, resolution, resolution].
std::vector<float> normalized_pixels(const Image& rgb, const Preprocess& spec);

}  // namespace cnclip
