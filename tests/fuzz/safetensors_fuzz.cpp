// libFuzzer target: the safetensors header parser from bytes. tpnode::Error is the expected
// outcome for most inputs; a crash, sanitizer report or other exception is a finding.
#include <cstddef>
#include <cstdint>
#include <span>

#include "node/common/error.h"
#include "node/model/hf_names.h"
#include "node/model/safetensors_file.h"

namespace {

volatile uint8_t g_sink;

void run(std::span<const uint8_t> bytes) {
  tpnode::SafetensorsHeader h = tpnode::parse_safetensors(bytes, "fuzz.safetensors");
  for (const tpnode::SafetensorsTensor& t : h.tensors) {
    (void)tpnode::internal_name_from_hf(t.name);
    // The parser promises [data_offset + begin, data_offset + end) lies inside the input.
    if (t.end > t.begin) {
      g_sink = bytes[h.data_offset + t.begin];
      g_sink = bytes[h.data_offset + t.end - 1];
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    run({data, size});
  } catch (const tpnode::Error&) {
    // Rejected cleanly.
  }
  return 0;
}
