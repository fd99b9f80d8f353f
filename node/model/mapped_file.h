// A read-only memory mapping of a whole file (RAII). Parsers work over its byte span, so
// the same code parses a mapped model file, a test buffer or a fuzzer input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace tpnode {

class MappedFile {
 public:
  // Maps `path` read-only. Throws tpnode::Error naming the path when it cannot be opened,
  // is not a regular file, or cannot be mapped. An empty file gives an empty span.
  explicit MappedFile(const std::string& path);
  ~MappedFile();

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;

  const std::string& path() const { return path_; }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }

  // Tells the OS the pages may be dropped; they are read back from the file if touched again.
  void release_pages() const;

 private:
  void unmap();

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace tpnode
