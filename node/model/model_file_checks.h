// Consistency of a model's tensor table with its HParams, shared by the GGUF and
// safetensors loaders: every tensor the llama-family forward reads must be present with
// the shape HParams implies, so a bad file fails at open and not in the middle of a step.
#pragma once

#include <string>
#include <vector>

#include "node/model/hparams.h"
#include "node/model/model_file.h"

namespace tpnode {

// Throws tpnode::Error naming `path`, the tensor and the expected and found shapes.
void check_model_tensors(const HParams& hp, const std::vector<TensorView>& tensors,
                         const std::string& path);

}  // namespace tpnode
