// Where an Engine's weights come from: slices of a model file, or synthesised on the
// backend for benchmarks of shapes that have no file.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "node/engine/backend.h"
#include "node/model/model_file.h"

namespace tpnode {

// A rectangle of a 2-D weight [rows, cols] (cols contiguous), in elements.
struct MatrixSlice {
  int64_t row0 = 0, rows = 0;
  int64_t col0 = 0, cols = 0;
};

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual bool has(const std::string& name) const = 0;
  // Full shape [rows, cols] of a 2-D weight (a 1-D tensor has rows = 1).
  virtual std::pair<int64_t, int64_t> shape(const std::string& name) const = 0;
  virtual TensorType type(const std::string& name) const = 0;
  virtual Weight matrix(const std::string& name, const MatrixSlice& slice, Backend& b) = 0;
  // A slice [off, off + n) of a 1-D tensor, as F32.
  virtual float* vector(const std::string& name, int64_t off, int64_t n, Backend& b) = 0;
  virtual uint64_t bytes(const std::string& name, const MatrixSlice& slice) const;
  // The largest quantization block among the row-parallel weights (attn_output, ffn_down):
  // their column split must fall on block boundaries (ShardPlan's `block`).
  int64_t row_parallel_block(const HParams& hp) const;
};

class FileWeightSource final : public WeightSource {
 public:
  explicit FileWeightSource(const ModelFile& file) : file_(file) {}
  bool has(const std::string& name) const override;
  std::pair<int64_t, int64_t> shape(const std::string& name) const override;
  TensorType type(const std::string& name) const override;
  Weight matrix(const std::string& name, const MatrixSlice& slice, Backend& b) override;
  float* vector(const std::string& name, int64_t off, int64_t n, Backend& b) override;

 private:
  const ModelFile& file_;
};

// Every 2-D weight in `matrix_type` (norm weights are ones), except tensors whose name is a
// key of `overrides` or ends with "." + key (e.g. {"ffn_down.weight", Q6_K} for a
// Q4_K_M-like mix; "output.weight" is then the LM head alone, not attn_output).
class SyntheticWeightSource final : public WeightSource {
 public:
  SyntheticWeightSource(const HParams& hp, TensorType matrix_type, uint64_t seed = 1,
                        std::vector<std::pair<std::string, TensorType>> overrides = {});
  bool has(const std::string& name) const override;
  std::pair<int64_t, int64_t> shape(const std::string& name) const override;
  TensorType type(const std::string& name) const override;
  Weight matrix(const std::string& name, const MatrixSlice& slice, Backend& b) override;
  float* vector(const std::string& name, int64_t off, int64_t n, Backend& b) override;

 private:
  HParams hp_;
  TensorType type_;
  uint64_t seed_;
  std::vector<std::pair<std::string, TensorType>> overrides_;
};

}  // namespace tpnode
