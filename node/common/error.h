// One exception type for the control path and one check macro family.
// API-specific macros (CUDA, cuBLAS, NCCL, MPI) are built on tpnode::raise_api_error
// in their own headers so this one stays free of those dependencies.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <string_view>

namespace tpnode {

// What kind of failure: lets callers map errors to exit codes or protocol codes
// without parsing messages.
enum class ErrorKind {
  kInvalidInput,  // bad model file, bad request, bad option
  kOutOfMemory,   // KV cache or device memory exhausted
  kUnsupported,   // valid input we do not handle (e.g. an unknown tensor type)
  kRuntime,       // API failures, lost ranks
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& what) : std::runtime_error(what), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

[[noreturn]] void raise_api_error(std::string_view api, std::string_view call, std::string_view detail,
                                  const char* file, int line);

}  // namespace tpnode

// Throws tpnode::Error(kind, formatted message) when cond is false.
#define TPNODE_CHECK_KIND(cond, kind, ...)                                 \
  do {                                                                     \
    if (!(cond)) throw ::tpnode::Error((kind), ::fmt::format(__VA_ARGS__)); \
  } while (0)

#define TPNODE_CHECK(cond, ...) TPNODE_CHECK_KIND(cond, ::tpnode::ErrorKind::kInvalidInput, __VA_ARGS__)

#define TPNODE_THROW(kind, ...) throw ::tpnode::Error((kind), ::fmt::format(__VA_ARGS__))
