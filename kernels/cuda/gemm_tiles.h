// The token tiling shared by the tensor-core GEMMs of decode batches (gemm_dq, gemm_kq): each
// CTA computes 128 weight rows x one token tile of 4 or 8 n-tiles of 8 tokens (the warpgroup
// MMA shapes m64n32 and m64n64).
#pragma once

#include <cstdint>

#include "node/common/error.h"

namespace tpnode::cuda {

inline constexpr int kGemmTileRows = 128;
inline constexpr int kGemmMaxNB = 8;  // n-tiles per token tile: 64 tokens

// The m tokens in tiles of at most 8 * max_nb (32 or 64), as even as can be, each a 32- or
// 64-token MMA tile, or with `with48` a 48-token one where that holds the tile's tokens
// (tokens past m are computed and not stored).
struct GemmTokenTiling {
  int tiles = 1;
  int nb = 4;  // n-tiles of 8 per tile
};
inline GemmTokenTiling gemm_token_tiling(int64_t m, int max_nb = kGemmMaxNB, bool with48 = false) {
  const int64_t tiles = (m + 8 * max_nb - 1) / (8 * max_nb);
  const int64_t per_tile = (m + tiles - 1) / tiles;
  return {static_cast<int>(tiles), per_tile <= 32 ? 4 : with48 && per_tile <= 48 ? 6 : 8};
}

// What a gemm_dq or gemm_kq kernel reads of its launch's k split and token tiling.
struct GemmSplitArgs {
  int m = 0;             // tokens
  int n_stages = 0;      // cols / 256
  int splits = 1;        // k splits (gridDim.z)
  int token_tiles = 1;   // gridDim.x
  int groups = 0;        // 8-token groups of x
  float* partials = nullptr;     // the k splits' partial tiles (splits > 1)
  unsigned* counters = nullptr;  // one arrival counter per output tile, left zero
};
inline GemmSplitArgs gemm_split_args(int64_t m, int64_t n_stages, int splits, int token_tiles,
                                     float* partials, unsigned* counters) {
  return {.m = static_cast<int>(m),
          .n_stages = static_cast<int>(n_stages),
          .splits = splits,
          .token_tiles = token_tiles,
          .groups = static_cast<int>((m + 7) / 8),
          .partials = partials,
          .counters = counters};
}

// Floats of one output tile of nb n-tiles.
inline int64_t gemm_tile_floats(int nb) { return static_cast<int64_t>(kGemmTileRows) * nb * 8; }

}  // namespace tpnode::cuda

// Runs the body with `NB` the compile-time n-tiles of a token tile (4 or 8); `who` names the
// kernel in the error.
// clang-format off
#define TPNODE_DISPATCH_TOKEN_TILES(who, nb, NB, ...)                                      \
  switch (nb) {                                                                            \
    case 4: { constexpr int NB = 4; __VA_ARGS__ } break;                                   \
    case 8: { constexpr int NB = 8; __VA_ARGS__ } break;                                   \
    default: TPNODE_THROW(::tpnode::ErrorKind::kUnsupported, "{}: {} column tiles", who, (nb)); \
  }
// clang-format on
