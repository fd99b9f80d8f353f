// libFuzzer target: the whole GGUF path from bytes — parse, metadata rendering, HParams,
// tokenizer data, tensor views, validation and shape checks. tpnode::Error is the expected
// outcome for most inputs; a crash, sanitizer report or other exception is a finding.
#include <spdlog/spdlog.h>

#include <cstddef>
#include <cstdint>
#include <span>

#include "node/common/error.h"
#include "node/model/gguf_file.h"
#include "node/model/gguf_model_file.h"
#include "node/model/model_file_checks.h"

namespace {

// Reads every byte a view claims, so ASan sees any range that leaves the input.
volatile uint8_t g_sink;
void touch(const uint8_t* p, uint64_t n) {
  if (n == 0) return;
  g_sink = p[0];
  g_sink = p[n - 1];
}

void run(std::span<const uint8_t> bytes) {
  tpnode::GgufFile g = tpnode::GgufFile::parse(bytes, "fuzz.gguf");
  for (const auto& [key, value] : g.metadata()) (void)tpnode::gguf_value_summary(value);
  for (const tpnode::GgufTensorInfo& t : g.tensors()) {
    std::span<const uint8_t> data = g.tensor_bytes(t);
    touch(data.data(), data.size());
  }
  std::vector<tpnode::TensorView> views = tpnode::tensor_views_from_gguf(g);
  tpnode::HParams hp = tpnode::hparams_from_gguf(g);
  (void)tpnode::tokenizer_from_gguf(g);
  hp.validate();
  tpnode::check_model_tensors(hp, views, g.source());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);  // bad token ids warn; the noise hides findings
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    run({data, size});
  } catch (const tpnode::Error&) {
    // Rejected cleanly: the expected outcome for malformed input.
  }
  return 0;
}
