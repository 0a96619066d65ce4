// One tower of one ncnn artifact, run with the Options its manifest entry names.
#pragma once

#include <cstdint>
#include <vector>

#include <net.h>

#include "bundle.h"

namespace cnclip {

class Tower {
 public:
  // threads 0: ncnn's default (the big cores).
  Tower(const Artifact& artifact, int threads);

  // Planar float32 [3, R, R] (R as Bundle::artifact checked) → the unnormalized embedding.
  std::vector<float> embed_image(const std::vector<float>& pixels, int resolution);
  // Unpadded ids ([CLS] … [SEP]); positions are 0, 1, 2, … as cn_clip's mask gives them.
  std::vector<float> embed_text(const std::vector<int32_t>& ids);

 private:
  std::vector<float> extract(ncnn::Extractor& extractor);

  const Artifact& artifact_;
  ncnn::Net net_;
};

}  // namespace cnclip
