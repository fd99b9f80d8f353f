// A ModelFile over one GGUF file, and the pieces it is built from (usable on an in-memory
// GgufFile, so fuzzers and tests reach them without a file on disk).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "node/model/gguf_file.h"
#include "node/model/model_file.h"

namespace tpnode {

// From `<arch>.*` keys and the tensor table; throws naming the source and the key.
HParams hparams_from_gguf(const GgufFile& gguf);
// From tokenizer.ggml.* and tokenizer.chat_template.
TokenizerData tokenizer_from_gguf(const GgufFile& gguf);
// Views of every tensor, pointing into the parsed bytes.
std::vector<TensorView> tensor_views_from_gguf(const GgufFile& gguf);

// Maps and parses `path`; HParams and tensor shapes are checked by ModelFile::open.
std::unique_ptr<ModelFile> open_gguf_model(const std::string& path);

}  // namespace tpnode
