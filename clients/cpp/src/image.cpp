#include "image.h"

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <memory>
#include <stdexcept>

namespace cnclip {
namespace {

using File = std::unique_ptr<FILE, int (*)(FILE*)>;

File open_file(const std::string& path) {
  File file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) throw std::runtime_error("cannot open " + path);
  return file;
}

void check_size(const std::string& path, int64_t width, int64_t height) {
  if (width * height > kMaxPixels)
    throw std::runtime_error(path + " is " + std::to_string(width) + "x" + std::to_string(height) +
                             " pixels, above the limit of " + std::to_string(kMaxPixels) + "; downscale it first");
}

// libjpeg and libpng report errors by longjmp. Each call that may jump runs in a small function of its
// own whose frame holds no C++ object, so a jump never skips a destructor or leaves one half-updated.
struct JpegErrors {
  jpeg_error_mgr base;
  std::jmp_buf jump;
  bool truncated;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_fail(j_common_ptr info) {
  auto* errors = reinterpret_cast<JpegErrors*>(info->err);
  info->err->format_message(info, errors->message);
  std::longjmp(errors->jump, 1);
}

void jpeg_warn(j_common_ptr info, int level) {
  // Pillow refuses a JPEG that ends early; libjpeg would fill the rest with gray and only warn.
  if (level < 0 && info->err->msg_code == JWRN_JPEG_EOF) reinterpret_cast<JpegErrors*>(info->err)->truncated = true;
}

bool jpeg_header(jpeg_decompress_struct* info, JpegErrors* errors, FILE* file) {
  if (setjmp(errors->jump)) return false;
  jpeg_stdio_src(info, file);
  jpeg_read_header(info, TRUE);
  return true;
}

bool jpeg_pixels(jpeg_decompress_struct* info, JpegErrors* errors, uint8_t* data, size_t stride) {
  if (setjmp(errors->jump)) return false;
  // Pillow opens one-component JPEGs as L and the rest as RGB, with libjpeg's default (islow) IDCT and
  // fancy upsampling, which are left as they are.
  info->out_color_space = info->num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(info);
  while (info->output_scanline < info->output_height) {
    JSAMPROW row = data + static_cast<size_t>(info->output_scanline) * stride;
    jpeg_read_scanlines(info, &row, 1);
  }
  jpeg_finish_decompress(info);
  return true;
}

// jpeg_create_decompress itself can fail (out of memory), so it too runs where a jump can land.
bool jpeg_create(jpeg_decompress_struct* info, JpegErrors* errors) {
  if (setjmp(errors->jump)) return false;
  jpeg_create_decompress(info);
  return true;
}

struct JpegReader {
  jpeg_decompress_struct info{};
  JpegErrors errors{};
  bool created = false;
  JpegReader() {
    info.err = jpeg_std_error(&errors.base);
    errors.base.error_exit = jpeg_fail;
    errors.base.emit_message = jpeg_warn;
  }
  ~JpegReader() {
    if (created) jpeg_destroy_decompress(&info);
  }
};

Image decode_jpeg(const std::string& path, FILE* file) {
  JpegReader reader;
  auto fail = [&] { return std::runtime_error(path + " is not a JPEG libjpeg can decode: " + reader.errors.message); };
  if (!(reader.created = jpeg_create(&reader.info, &reader.errors))) throw fail();
  if (!jpeg_header(&reader.info, &reader.errors, file)) throw fail();
  if (reader.info.jpeg_color_space == JCS_CMYK || reader.info.jpeg_color_space == JCS_YCCK)
    throw std::runtime_error(path + " is a CMYK JPEG, which this client does not convert; save it as RGB");
  check_size(path, reader.info.image_width, reader.info.image_height);
  Image image;
  image.width = reader.info.image_width;
  image.height = reader.info.image_height;
  image.channels = reader.info.num_components == 1 ? 1 : 3;
  image.data.resize(static_cast<size_t>(image.width) * image.height * image.channels);
  if (!jpeg_pixels(&reader.info, &reader.errors, image.data.data(), static_cast<size_t>(image.width) * image.channels))
    throw fail();
  if (reader.errors.truncated) throw std::runtime_error(path + " is truncated (the JPEG data ends early)");
  return image;
}

struct PngReader {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  ~PngReader() { png_destroy_read_struct(&png, &info, nullptr); }
};

// Reads the header and sets Pillow's transformations; `depth` and `type` are the file's own.
bool png_header(png_structp png, png_infop info, FILE* file, int* depth_out, int* type_out) {
  if (setjmp(png_jmpbuf(png))) return false;
  // libpng's default caps width and height at 1,000,000 each; the pixel count is capped by check_size instead.
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
  png_init_io(png, file);
  png_read_info(png, info);
  int depth = *depth_out = png_get_bit_depth(png, info), type = *type_out = png_get_color_type(png, info);
  // The modes Pillow opens PNGs in: 16-bit samples keep their high byte, 1/2/4-bit gray is scaled to 8 bits
  // (1-bit as mode '1', resized with nearest), palette images stay indices ('P', nearest), and tRNS stays
  // metadata (no alpha channel is made from it).
  if (depth == 16) png_set_strip_16(png);
  if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (type == PNG_COLOR_TYPE_PALETTE) png_set_packing(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  return true;
}

bool png_pixels(png_structp png, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_image(png, rows);
  return true;
}

Image decode_png(const std::string& path, FILE* file) {
  PngReader reader;
  if (!reader.info) throw std::runtime_error("out of memory reading " + path);
  auto fail = [&] { return std::runtime_error(path + " is truncated or not a PNG libpng can decode"); };
  png_structp png = reader.png;
  png_infop info = reader.info;
  int depth = 0, type = 0;
  if (!png_header(png, info, file, &depth, &type)) throw fail();
  png_uint_32 width = png_get_image_width(png, info), height = png_get_image_height(png, info);
  check_size(path, width, height);
  if (type == PNG_COLOR_TYPE_GRAY && depth == 16)
    throw std::runtime_error(path + " is a 16-bit grayscale PNG, which Pillow opens as I;16 and this client does "
                                    "not handle; save it as 8-bit");
  Image image;
  image.width = width;
  image.height = height;
  image.channels = png_get_channels(png, info);
  image.nearest = type == PNG_COLOR_TYPE_PALETTE || (type == PNG_COLOR_TYPE_GRAY && depth == 1);
  image.data.resize(static_cast<size_t>(width) * height * image.channels);
  std::vector<png_bytep> rows(height);
  for (png_uint_32 y = 0; y < height; ++y) rows[y] = image.data.data() + static_cast<size_t>(y) * width * image.channels;
  if (!png_pixels(png, rows.data())) throw fail();
  if (type == PNG_COLOR_TYPE_PALETTE) {
    png_colorp palette = nullptr;
    int entries = 0;
    png_get_PLTE(png, info, &palette, &entries);
    std::vector<uint8_t> rgb(static_cast<size_t>(width) * height * 3, 0);
    for (size_t i = 0; i < image.data.size(); ++i) {
      if (image.data[i] >= entries) continue;  // outside the palette: black
      rgb[i * 3] = palette[image.data[i]].red;
      rgb[i * 3 + 1] = palette[image.data[i]].green;
      rgb[i * 3 + 2] = palette[image.data[i]].blue;
    }
    image.data = std::move(rgb);
    image.channels = 3;
  }
  return image;
}

// Pillow's bicubic kernel (a = -0.5) and its fixed point: 22 fraction bits, 8-bit intermediate rows.
constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

struct Coefficients {
  int taps;
  std::vector<int> first, count;  // per output index: first input index, number of inputs
  std::vector<int32_t> weights;   // taps per output index
};

// The weights of each output pixel over the input pixels under its kernel, widened by the reduction factor
// (antialiasing), normalized to sum 1, then rounded to fixed point away from zero.
Coefficients coefficients(int in_size, int out_size) {
  double scale = static_cast<double>(in_size) / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = 2.0 * filterscale;
  Coefficients c;
  c.taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(static_cast<size_t>(out_size) * c.taps, 0);
  std::vector<double> k(c.taps);
  for (int xx = 0; xx < out_size; ++xx) {
    double center = (xx + 0.5) * scale;
    double total = 0.0;
    double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    for (int x = 0; x < xmax; ++x) {
      k[x] = bicubic((x + xmin - center + 0.5) * ss);
      total += k[x];
    }
    for (int x = 0; x < xmax; ++x) {
      double w = total != 0.0 ? k[x] / total : k[x];
      c.weights[static_cast<size_t>(xx) * c.taps + x] =
          static_cast<int32_t>(w < 0 ? -0.5 + w * (1 << kPrecisionBits) : 0.5 + w * (1 << kPrecisionBits));
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

uint8_t clip8(int32_t sum) {
  int32_t value = sum >> kPrecisionBits;
  return static_cast<uint8_t>(value < 0 ? 0 : value > 255 ? 255 : value);
}

// One pass along x (horizontal) or y (vertical) of `in`, which is width × height × channels.
Image resample_pass(const Image& in, int out_size, bool horizontal) {
  Coefficients c = coefficients(horizontal ? in.width : in.height, out_size);
  Image out = in;
  (horizontal ? out.width : out.height) = out_size;
  out.data.assign(static_cast<size_t>(out.width) * out.height * in.channels, 0);
  const int ch = in.channels;
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      int index = horizontal ? x : y;
      const int32_t* k = &c.weights[static_cast<size_t>(index) * c.taps];
      for (int band = 0; band < ch; ++band) {
        int32_t sum = 1 << (kPrecisionBits - 1);
        for (int t = 0; t < c.count[index]; ++t) {
          int sx = horizontal ? c.first[index] + t : x, sy = horizontal ? y : c.first[index] + t;
          sum += in.data[(static_cast<size_t>(sy) * in.width + sx) * ch + band] * k[t];
        }
        out.data[(static_cast<size_t>(y) * out.width + x) * ch + band] = clip8(sum);
      }
    }
  }
  return out;
}

// Pillow's affine nearest: the input pixel under each output pixel's centre, the position advanced by
// adding the step once per pixel (multiplying instead rounds differently at some exact boundaries).
Image resize_nearest(const Image& in, int width, int height) {
  Image out = in;
  out.width = width;
  out.height = height;
  out.data.resize(static_cast<size_t>(width) * height * in.channels);
  const double xscale = static_cast<double>(in.width) / width, yscale = static_cast<double>(in.height) / height;
  double ypos = yscale * 0.5;
  for (int y = 0; y < height; ++y, ypos += yscale) {
    const int sy = std::min(static_cast<int>(ypos), in.height - 1);
    double xpos = xscale * 0.5;
    for (int x = 0; x < width; ++x, xpos += xscale) {
      const int sx = std::min(static_cast<int>(xpos), in.width - 1);
      for (int band = 0; band < in.channels; ++band)
        out.data[(static_cast<size_t>(y) * width + x) * in.channels + band] =
            in.data[(static_cast<size_t>(sy) * in.width + sx) * in.channels + band];
    }
  }
  return out;
}

uint8_t muldiv255(unsigned value, unsigned alpha) {
  unsigned t = value * alpha + 128;
  return static_cast<uint8_t>(((t >> 8) + t) >> 8);
}

// LA → La / RGBA → RGBa before resizing, and back after, as Pillow's resize does.
void premultiply(Image& image) {
  const int ch = image.channels;
  for (size_t p = 0; p < image.data.size(); p += ch)
    for (int band = 0; band < ch - 1; ++band) image.data[p + band] = muldiv255(image.data[p + band], image.data[p + ch - 1]);
}

void unpremultiply(Image& image) {
  const int ch = image.channels;
  for (size_t p = 0; p < image.data.size(); p += ch) {
    unsigned alpha = image.data[p + ch - 1];
    for (int band = 0; band < ch - 1; ++band) {
      unsigned value = image.data[p + band];
      // Where alpha is 0 or 255 Pillow keeps the value as it is.
      if (alpha != 0 && alpha != 255) {
        unsigned restored = 255 * value / alpha;
        image.data[p + band] = static_cast<uint8_t>(restored > 255 ? 255 : restored);
      }
    }
  }
}

}  // namespace

Image decode_image(const std::string& path) {
  File file = open_file(path);
  unsigned char magic[8] = {0};
  size_t got = std::fread(magic, 1, sizeof magic, file.get());
  std::rewind(file.get());
  if (got >= 3 && magic[0] == 0xFF && magic[1] == 0xD8 && magic[2] == 0xFF) return decode_jpeg(path, file.get());
  if (got == 8 && png_sig_cmp(magic, 0, 8) == 0) return decode_png(path, file.get());
  throw std::runtime_error(got == 0 ? path + " is an empty file" : path + " is neither a JPEG nor a PNG");
}

Image resize(const Image& image, int width, int height) {
  if (image.width == width && image.height == height) return image;
  if (image.nearest) return resize_nearest(image, width, height);
  Image work = image;
  bool alpha = image.channels == 2 || image.channels == 4;
  if (alpha) premultiply(work);
  // Two passes through an 8-bit intermediate image, which rounds and clips, so their order shows. Pillow
  // runs rows first, except (since 13.0, python-pillow/Pillow#9549) when the height shrinks by more than
  // twice as many pixels as the width: then columns first.
  const bool columns_first = height < work.height && work.height - height > 2 * (work.width - width);
  if (columns_first && work.height != height) work = resample_pass(work, height, false);
  if (work.width != width) work = resample_pass(work, width, true);
  if (work.height != height) work = resample_pass(work, height, false);
  if (alpha) unpremultiply(work);
  return work;
}

Image to_rgb(const Image& image) {
  if (image.channels == 3) return image;
  Image rgb = image;
  rgb.channels = 3;
  rgb.data.resize(static_cast<size_t>(image.width) * image.height * 3);
  for (size_t p = 0; p < static_cast<size_t>(image.width) * image.height; ++p) {
    const uint8_t* in = &image.data[p * image.channels];
    bool gray = image.channels <= 2;
    for (int band = 0; band < 3; ++band) rgb.data[p * 3 + band] = gray ? in[0] : in[band];
  }
  return rgb;
}

Image resized_rgb(const Image& image, const Preprocess& spec) {
  if (!spec.center_crop) return to_rgb(resize(image, spec.resolution, spec.resolution));
  Image rgb = to_rgb(image);
  rgb.nearest = false;
  bool portrait = rgb.width <= rgb.height;
  int shorter = portrait ? rgb.width : rgb.height, longer = portrait ? rgb.height : rgb.width;
  const double scaled_size = static_cast<double>(spec.shortest_edge) * longer / shorter;
  if (scaled_size > kMaxPixels) throw std::runtime_error("the image is too elongated to scale its shorter side to " +
                                                         std::to_string(spec.shortest_edge));
  const int scaled = static_cast<int>(scaled_size);
  rgb = portrait ? resize(rgb, spec.shortest_edge, scaled) : resize(rgb, scaled, spec.shortest_edge);
  int left = (rgb.width - spec.resolution) / 2, top = (rgb.height - spec.resolution) / 2;
  // Bundle::open requires shortest_edge >= resolution, so the crop lies inside the resized image.
  if (left < 0 || top < 0) throw std::logic_error("centre crop larger than the resized image");
  Image crop;
  crop.width = crop.height = spec.resolution;
  crop.channels = 3;
  crop.data.resize(static_cast<size_t>(spec.resolution) * spec.resolution * 3);
  for (int y = 0; y < spec.resolution; ++y)
    for (int x = 0; x < spec.resolution * 3; ++x)
      crop.data[(static_cast<size_t>(y) * spec.resolution) * 3 + x] =
          rgb.data[(static_cast<size_t>(y + top) * rgb.width + left) * 3 + x];
  return crop;
}

void save_png(const Image& rgb, const std::string& path) {
  png_image out{};
  out.version = PNG_IMAGE_VERSION;
  out.width = rgb.width;
  out.height = rgb.height;
  out.format = PNG_FORMAT_RGB;
  if (!png_image_write_to_file(&out, path.c_str(), 0, rgb.data.data(), 0, nullptr))
    throw std::runtime_error("cannot write " + path + ": " + out.message);
}

std::vector<float> normalized_pixels(const Image& rgb, const Preprocess& spec) {
  const size_t plane = static_cast<size_t>(rgb.width) * rgb.height;
  std::vector<float> pixels(plane * 3);
  for (int band = 0; band < 3; ++band)
    for (size_t p = 0; p < plane; ++p)
      // Three float32 operations in this order, never fused (the build passes -ffp-contract=off).
      pixels[band * plane + p] = (static_cast<float>(rgb.data[p * 3 + band]) / 255.0f - spec.mean[band]) / spec.std[band];
  return pixels;
}

}  // namespace cnclip
