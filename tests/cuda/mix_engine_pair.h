// Two CUDA engines on one synthetic model in llama.cpp's Q4_K_M mix (tsupport::small_llama with
// n_ff 512 over 8 layers: Q6_K attn_v and ffn_down in layers 0, 3, 6 and 7, Q4_K elsewhere),
// whose backends differ only in the options given: for tests that an option changes no bit.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "node/backend/cuda/cuda_backend.h"
#include "node/engine/engine.h"
#include "node/engine/single_rank_collective.h"
#include "node/engine/synthetic_mix.h"
#include "node/engine/weight_source.h"
#include "tests/engine/test_support.h"

namespace tpnode::test {

struct MixEnginePair {
  MixEnginePair(const std::string& name, const CudaBackendOptions& options_a,
                const CudaBackendOptions& options_b, uint64_t seed, const EngineOptions& eo)
      : hp(hparams(name)),
        mix(synthetic_mix("q4_k_m", hp)),
        backend_a(make_cuda_backend(options_a)),
        backend_b(make_cuda_backend(options_b)),
        src_a(hp, mix.matrix, seed, mix.overrides),
        src_b(hp, mix.matrix, seed, mix.overrides),
        a(hp, src_a, *backend_a, c_a, eo),
        b(hp, src_b, *backend_b, c_b, eo) {}

  static HParams hparams(const std::string& name) {
    HParams h = tsupport::small_llama(name, 512);
    h.n_layer = 8;
    return h;
  }

  HParams hp;
  SyntheticMix mix;
  std::unique_ptr<Backend> backend_a, backend_b;
  SyntheticWeightSource src_a, src_b;
  SingleRankCollective c_a, c_b;
  Engine a, b;
};

}  // namespace tpnode::test
