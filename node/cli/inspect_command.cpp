// tpnode inspect FILE|DIR [--tensors] [--metadata]: what a model file holds, without loading
// weights anywhere. A bad file fails in ModelFile::open with one error line (exit 1).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>
#include <memory>
#include <string>

#include "node/cli/command.h"
#include "node/common/error.h"
#include "node/model/chat_template.h"
#include "node/model/model_file.h"

namespace tpnode::cli {
namespace {

struct InspectOptions {
  std::string path;
  bool tensors = false;
  bool metadata = false;
};

std::string human_bytes(uint64_t n) {
  if (n < 1024) return fmt::format("{} B", n);
  if (n < (uint64_t{1} << 20)) return fmt::format("{:.1f} KiB", n / 1024.0);
  if (n < (uint64_t{1} << 30)) return fmt::format("{:.1f} MiB", n / 1048576.0);
  return fmt::format("{:.2f} GiB", n / 1073741824.0);
}

std::string rope_kind_text(const RopeScaling& rs) {
  switch (rs.kind) {
    case RopeScaling::Kind::kNone:
      return "none";
    case RopeScaling::Kind::kLinear:
      return fmt::format("linear, factor {}", rs.factor);
    case RopeScaling::Kind::kLlama3:
      return fmt::format(
          "llama3, factor {}, low_freq_factor {}, high_freq_factor {}, original context {}",
          rs.factor, rs.low_freq_factor, rs.high_freq_factor, rs.original_context);
  }
  return "?";
}

std::string rope_scaling_text(const RopeScaling& rs) {
  if (!rs.freq_factors.empty()) {
    return fmt::format("{} (+ {} frequency factors, {:.3g}..{:.3g})", rope_kind_text(rs),
                       rs.freq_factors.size(), rs.freq_factors.front(), rs.freq_factors.back());
  }
  return rope_kind_text(rs);
}

std::string chat_family(const TokenizerData& t) {
  if (t.chat_template.empty()) return "none";
  try {
    switch (ChatTemplate::from_tokenizer(t).family()) {
      case ChatTemplate::Family::kChatML:
        return "chatml";
      case ChatTemplate::Family::kLlama3:
        return "llama3";
      case ChatTemplate::Family::kMistral:
        return "mistral";
    }
  } catch (const Error&) {
    // An unrecognised template is a fact to report here, not a reason to fail.
  }
  return fmt::format("unrecognised ({} bytes)", t.chat_template.size());
}

std::string token_text(const TokenizerData& t, int32_t id) {
  if (id < 0 || static_cast<size_t>(id) >= t.tokens.size()) return "none";
  return fmt::format("{} {:?}", id, t.tokens[static_cast<size_t>(id)]);
}

void print_summary(const ModelFile& m) {
  const HParams& hp = m.hparams();
  fmt::print("file:           {}\n", m.path());
  fmt::print("format:         {}\n", m.format());
  fmt::print("architecture:   {}\n", hp.arch);
  fmt::print("name:           {}\n", hp.name.empty() ? "-" : hp.name);
  fmt::print("layers:         {}\n", hp.n_layer);
  fmt::print("hidden size:    {}\n", hp.n_embd);
  fmt::print("heads:          {} (KV heads {}, head dim {})\n", hp.n_head, hp.n_head_kv,
             hp.head_dim);
  fmt::print("ffn size:       {}\n", hp.n_ff);
  fmt::print("vocab size:     {}\n", hp.n_vocab);
  fmt::print("train context:  {}\n", hp.n_ctx_train);
  fmt::print("rope:           theta {}, {} pairs, scaling {}\n", hp.rope_theta,
             hp.rope_style == RopeStyle::kNeox ? "neox" : "interleaved",
             rope_scaling_text(hp.rope_scaling));
  fmt::print("rms eps:        {}\n", hp.rms_eps);
  fmt::print("tied embedding: {}\n", hp.tied_embeddings ? "yes" : "no");
  fmt::print("q/k/v bias:     {}\n", hp.attn_bias ? "yes" : "no");

  const TokenizerData& t = m.tokenizer();
  fmt::print("tokenizer:      {} (pre {}), {} tokens, {} merges\n", t.model,
             t.pre.empty() ? "-" : t.pre, t.tokens.size(), t.merges.size());
  fmt::print("bos:            {}{}\n", token_text(t, t.bos_id), t.add_bos ? " (added)" : "");
  fmt::print("eos:            {}\n", token_text(t, t.eos_id));
  if (t.eot_id >= 0) fmt::print("eot:            {}\n", token_text(t, t.eot_id));
  fmt::print("chat template:  {}\n", chat_family(t));

  uint64_t total = 0;
  std::map<std::string, std::pair<int, uint64_t>> by_type;  // type -> (tensors, bytes)
  for (const TensorView& tv : m.tensors()) {
    total += tv.nbytes;
    auto& [count, bytes] = by_type[std::string(type_name(tv.type))];
    ++count;
    bytes += tv.nbytes;
  }
  fmt::print("tensors:        {}, {} bytes ({})\n", m.tensors().size(), total, human_bytes(total));
  for (const auto& [type, cb] : by_type) {
    fmt::print("  {:<6} {:>5} tensors {:>14} bytes ({})\n", type, cb.first, cb.second,
               human_bytes(cb.second));
  }
}

void print_tensors(const ModelFile& m) {
  fmt::print("\n{:<32} {:<5} {:<16} {:>12} {:>12}\n", "name", "type", "shape", "offset", "bytes");
  for (const TensorView& t : m.tensors()) {
    fmt::print("{:<32} {:<5} {:<16} {:>12} {:>12}\n", t.name, type_name(t.type),
               fmt::format("[{}]", fmt::join(t.shape, ", ")), t.file_offset, t.nbytes);
  }
}

void print_metadata(const ModelFile& m) {
  fmt::print("\n");
  for (const auto& [key, value] : m.metadata_summary()) fmt::print("{} = {}\n", key, value);
}

int run_inspect(const InspectOptions& o) {
  std::unique_ptr<ModelFile> m = ModelFile::open(o.path);
  print_summary(*m);
  if (o.tensors) print_tensors(*m);
  if (o.metadata) print_metadata(*m);
  return 0;
}

const RegisterCommand kRegister{Command{
    "inspect", "show a model file's architecture, tokenizer and tensors",
    [](CLI::App& app) -> std::function<int()> {
      auto o = std::make_shared<InspectOptions>();
      app.add_option("model", o->path, "a .gguf file or a safetensors model folder")->required();
      app.add_flag("--tensors", o->tensors, "list every tensor: name, type, shape, offset, bytes");
      app.add_flag("--metadata", o->metadata, "dump the metadata (GGUF keys or config.json)");
      return [o] { return run_inspect(*o); };
    }}};

}  // namespace
}  // namespace tpnode::cli
