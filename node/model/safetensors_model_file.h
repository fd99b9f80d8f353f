// A ModelFile over a Hugging Face model folder: config.json, model.safetensors or the shards
// listed by model.safetensors.index.json, tokenizer.json (+ tokenizer_config.json).
#pragma once

#include <boost/json/object.hpp>
#include <memory>
#include <string>

#include "node/model/hparams.h"
#include "node/model/model_file.h"

namespace tpnode {

// From config.json's fields; `source` (the config.json path) names it in errors. The
// tensor-dependent facts (tied embeddings when the config is silent) are settled by the loader.
HParams hparams_from_config_json(const boost::json::object& config, const std::string& source);

// Maps every shard and reads the folder; HParams and shapes are checked by ModelFile::open.
std::unique_ptr<ModelFile> open_safetensors_model(const std::string& dir);

}  // namespace tpnode
