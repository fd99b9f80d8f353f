// Shared by test_nccl: the process's World (nccl_main.cpp), seeded inputs every rank can
// rebuild, and a fixture holding this rank's CUDA backend and NCCL communicator. Tests skip,
// with the reason, unless started by `mpirun -np N` (N >= 2) with a GPU for every rank.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "node/backend/cuda/cuda_backend.h"
#include "parallel/mpi/mpi_communicator.h"
#include "parallel/nccl/nccl_communicator.h"
#include "parallel/world.h"

namespace tpnode::test {

World& world();
mpi::MpiCommunicator& host_comm();

// Why GPU tensor-parallel tests cannot run here; empty when they can. The same on every rank.
std::string gpu_ranks_unavailable();

// Deterministic floats in [-1, 1) for (seed, rank).
inline std::vector<float> seeded_floats(uint64_t seed, int rank, size_t n) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(rank) * 0xBF58476D1CE4E5B9ull + 1;
  std::vector<float> v(n);
  for (auto& f : v) {
    x += 0x9E3779B97F4A7C15ull;  // splitmix64
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    f = static_cast<float>(static_cast<double>(z >> 40) / static_cast<double>(1ull << 24)) * 2.0f - 1.0f;
  }
  return v;
}

// FNV-1a of the bytes: compared across ranks for bit-identical results.
inline uint64_t bits_hash(const std::vector<float>& v) {
  uint64_t h = 1469598103934665603ull;
  const auto* p = reinterpret_cast<const uint8_t*>(v.data());
  for (size_t i = 0; i < v.size() * sizeof(float); ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// True on every rank when every rank passed the same value.
inline bool same_on_all_ranks(uint64_t value) {
  std::vector<uint64_t> all(static_cast<size_t>(host_comm().size()));
  host_comm().all_gather(&value, sizeof(value), all.data());
  for (uint64_t v : all) {
    if (v != value) return false;
  }
  return true;
}

NcclCommunicatorOptions default_comm_options(Backend& backend);

// One CUDA backend and one NCCL communicator per process, made by the first test that needs
// them (collectively: every rank runs the same tests) and kept to the end.
class GpuRanks : public ::testing::Test {
 protected:
  void SetUp() override;
  static Backend& backend();
  static NcclCommunicator& comm();
  // [n] floats uploaded to a new device buffer (offset `shift` floats into it).
  static float* upload(const std::vector<float>& host, size_t shift = 0);
  static std::vector<float> download(const float* dev, size_t n);
};

// Ends the shared backend and communicator (before the World goes).
void release_gpu_ranks();

}  // namespace tpnode::test
