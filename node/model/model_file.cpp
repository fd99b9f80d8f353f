#include "node/model/model_file.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "node/common/error.h"
#include "node/model/gguf_file.h"
#include "node/model/gguf_model_file.h"
#include "node/model/model_file_checks.h"
#include "node/model/safetensors_model_file.h"

namespace tpnode {

namespace {

namespace fs = std::filesystem;

bool has_gguf_magic(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  uint32_t magic = 0;
  in.read(reinterpret_cast<char*>(&magic), sizeof(magic));
  return in.gcount() == sizeof(magic) && magic == kGgufMagic;
}

std::unique_ptr<ModelFile> open_by_kind(const std::string& path) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  TPNODE_CHECK(!ec && fs::exists(st), "{}: no such file or directory", path);
  if (fs::is_directory(st)) return open_safetensors_model(path);
  if (path.ends_with(".gguf") || has_gguf_magic(path)) return open_gguf_model(path);
  TPNODE_CHECK(
      !path.ends_with(".safetensors"),
      "{}: open a safetensors model by its folder (config.json, *.safetensors, tokenizer.json)",
      path);
  TPNODE_THROW(ErrorKind::kInvalidInput, "{}: not a GGUF file (no GGUF magic) nor a model folder",
               path);
}

}  // namespace

int64_t TensorView::rows() const {
  int64_t r = 1;
  for (size_t i = 1; i < shape.size(); ++i) r *= shape[i];
  return r;
}

int64_t TensorView::elements() const { return shape.empty() ? 0 : cols() * rows(); }

std::unique_ptr<ModelFile> ModelFile::open(const std::string& path) {
  std::unique_ptr<ModelFile> m = open_by_kind(path);
  try {
    m->hparams_.validate();
  } catch (const Error& e) {
    TPNODE_THROW(e.kind(), "{}: {}", path, e.what());
  }
  check_model_tensors(m->hparams_, m->tensors_, path);
  return m;
}

const TensorView* ModelFile::find(std::string_view name) const {
  for (const TensorView& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const TensorView& ModelFile::get(std::string_view name) const {
  const TensorView* t = find(name);
  TPNODE_CHECK(t != nullptr, "{}: missing tensor '{}'", path_, name);
  return *t;
}

}  // namespace tpnode
