// Shared by test_parallel's tests: the process's World (set up by mpi_main.cpp) and helpers
// for inputs that every rank can regenerate from a seed.
#pragma once

#include <cstdint>
#include <vector>

#include "parallel/world.h"

namespace tpnode::test {

World& world();

// Deterministic floats in [-1, 1) for (seed, rank): every rank can rebuild every other
// rank's input.
inline std::vector<float> seeded_floats(uint64_t seed, int rank, size_t n) {
  uint64_t x =
      seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(rank) * 0xBF58476D1CE4E5B9ull + 1;
  std::vector<float> v(n);
  for (auto& f : v) {
    // splitmix64
    x += 0x9E3779B97F4A7C15ull;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    f = static_cast<float>(static_cast<double>(z >> 40) / static_cast<double>(1ull << 24)) * 2.0f -
        1.0f;
  }
  return v;
}

}  // namespace tpnode::test
