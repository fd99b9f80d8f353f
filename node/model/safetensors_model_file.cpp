#include "node/model/safetensors_model_file.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>

#include "node/common/error.h"
#include "node/model/hf_names.h"
#include "node/model/mapped_file.h"
#include "node/model/safetensors_file.h"
#include "node/model/tokenizer.h"

namespace tpnode {

namespace {

namespace fs = std::filesystem;
namespace json = boost::json;

constexpr uintmax_t kMaxSmallJsonBytes = uintmax_t{64} << 20;

json::value read_json_file(const fs::path& path) {
  std::error_code fec;
  uintmax_t size = fs::file_size(path, fec);
  TPNODE_CHECK(!fec, "{}: cannot read: {}", path.string(), fec.message());
  TPNODE_CHECK(size <= kMaxSmallJsonBytes, "{}: {} bytes is too large for a JSON side file",
               path.string(), size);
  std::ifstream in(path, std::ios::binary);
  TPNODE_CHECK(in.good(), "{}: cannot open", path.string());
  std::string text(static_cast<size_t>(size), '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  TPNODE_CHECK(in.gcount() == static_cast<std::streamsize>(size), "{}: short read", path.string());
  boost::system::error_code ec;
  json::value v = json::parse(text, ec);
  TPNODE_CHECK(!ec, "{}: not valid JSON: {}", path.string(), ec.message());
  return v;
}

// Typed access to config.json; a JSON null counts as absent (HF writes "head_dim": null).
class ConfigReader {
 public:
  ConfigReader(const json::object& o, const std::string& source) : o_(o), source_(source) {}

  const json::value* find(std::string_view key) const {
    const json::value* v = o_.if_contains(key);
    return v == nullptr || v->is_null() ? nullptr : v;
  }

  std::optional<int64_t> integer_opt(std::string_view key) const {
    const json::value* v = find(key);
    if (v == nullptr) return std::nullopt;
    if (v->is_int64()) return v->get_int64();
    if (v->is_uint64() &&
        v->get_uint64() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return static_cast<int64_t>(v->get_uint64());
    }
    // Some configs write whole numbers as 4096.0.
    if (v->is_double() && std::abs(v->get_double()) < 9.0e15 &&
        v->get_double() == std::floor(v->get_double())) {
      return static_cast<int64_t>(v->get_double());
    }
    TPNODE_THROW(ErrorKind::kInvalidInput, "{}: '{}' is {}, expected an integer", source_, key,
                 json::serialize(*v));
  }

  int64_t integer(std::string_view key) const {
    std::optional<int64_t> v = integer_opt(key);
    TPNODE_CHECK(v.has_value(), "{}: missing required key '{}'", source_, key);
    return *v;
  }

  std::optional<double> number_opt(std::string_view key) const {
    const json::value* v = find(key);
    if (v == nullptr) return std::nullopt;
    if (v->is_number()) return v->to_number<double>();
    TPNODE_THROW(ErrorKind::kInvalidInput, "{}: '{}' is {}, expected a number", source_, key,
                 json::serialize(*v));
  }

  std::optional<bool> boolean_opt(std::string_view key) const {
    const json::value* v = find(key);
    if (v == nullptr) return std::nullopt;
    TPNODE_CHECK(v->is_bool(), "{}: '{}' is {}, expected true or false", source_, key,
                 json::serialize(*v));
    return v->get_bool();
  }

  std::optional<std::string> string_opt(std::string_view key) const {
    const json::value* v = find(key);
    if (v == nullptr) return std::nullopt;
    TPNODE_CHECK(v->is_string(), "{}: '{}' is {}, expected a string", source_, key,
                 json::serialize(*v));
    return std::string(v->get_string());
  }

 private:
  const json::object& o_;
  const std::string& source_;
};

RopeScaling rope_scaling_from_config(const ConfigReader& cfg, const std::string& source) {
  RopeScaling rs;
  const json::value* v = cfg.find("rope_scaling");
  if (v == nullptr) return rs;
  const json::object* o = v->if_object();
  TPNODE_CHECK(o != nullptr, "{}: 'rope_scaling' is not an object", source);
  ConfigReader r(*o, source);
  std::string type = r.string_opt("rope_type").value_or(r.string_opt("type").value_or(""));
  if (type.empty() || type == "default") return rs;
  auto factor = [&] {
    std::optional<double> f = r.number_opt("factor");
    TPNODE_CHECK(f.has_value(), "{}: rope_scaling of type '{}' needs 'factor'", source, type);
    return static_cast<float>(*f);
  };
  if (type == "linear") {
    rs.kind = RopeScaling::Kind::kLinear;
    rs.factor = factor();
    return rs;
  }
  if (type == "llama3") {
    rs.kind = RopeScaling::Kind::kLlama3;
    rs.factor = factor();
    rs.low_freq_factor =
        static_cast<float>(r.number_opt("low_freq_factor").value_or(rs.low_freq_factor));
    rs.high_freq_factor =
        static_cast<float>(r.number_opt("high_freq_factor").value_or(rs.high_freq_factor));
    rs.original_context =
        r.integer_opt("original_max_position_embeddings").value_or(rs.original_context);
    return rs;
  }
  TPNODE_THROW(ErrorKind::kUnsupported,
               "{}: rope_scaling type '{}' is not supported (linear, llama3)", source, type);
}

int32_t find_token(const TokenizerData& t, std::string_view text) {
  auto it = std::find(t.tokens.begin(), t.tokens.end(), text);
  return it == t.tokens.end() ? -1 : static_cast<int32_t>(it - t.tokens.begin());
}

// bos_token / eos_token are a string or {"content": "..."}.
std::optional<std::string> special_token_text(const json::object& o, std::string_view key) {
  const json::value* v = o.if_contains(key);
  if (v == nullptr) return std::nullopt;
  if (v->is_string()) return std::string(v->get_string());
  if (const json::object* obj = v->if_object()) {
    if (const json::value* c = obj->if_contains("content"); c != nullptr && c->is_string()) {
      return std::string(c->get_string());
    }
  }
  return std::nullopt;
}

void apply_tokenizer_config(const fs::path& path, TokenizerData& t) {
  json::value root = read_json_file(path);
  const json::object* o = root.if_object();
  TPNODE_CHECK(o != nullptr, "{}: not a JSON object", path.string());
  if (const json::value* ct = o->if_contains("chat_template")) {
    if (ct->is_string()) {
      t.chat_template = std::string(ct->get_string());
    } else if (const json::array* list = ct->if_array()) {
      // A list of named templates: take "default", else the first.
      for (const json::value& item : *list) {
        const json::object* named = item.if_object();
        if (named == nullptr) continue;
        const json::value* name = named->if_contains("name");
        const json::value* tmpl = named->if_contains("template");
        if (tmpl == nullptr || !tmpl->is_string()) continue;
        bool is_default = name != nullptr && name->is_string() && name->get_string() == "default";
        if (t.chat_template.empty() || is_default)
          t.chat_template = std::string(tmpl->get_string());
        if (is_default) break;
      }
    }
  }
  if (const json::value* b = o->if_contains("add_bos_token"); b != nullptr && b->is_bool())
    t.add_bos = b->get_bool();
  if (const json::value* e = o->if_contains("add_eos_token"); e != nullptr && e->is_bool())
    t.add_eos = e->get_bool();
  if (auto bos = special_token_text(*o, "bos_token")) {
    if (int32_t id = find_token(t, *bos); id >= 0) t.bos_id = id;
  }
  if (auto eos = special_token_text(*o, "eos_token")) {
    if (int32_t id = find_token(t, *eos); id >= 0) t.eos_id = id;
  }
}

// config.json's bos_token_id / eos_token_id (eos may be a list) when the tokenizer files are
// silent.
void apply_config_token_ids(const json::object& config, TokenizerData& t) {
  auto id_of = [&](const json::value* v) -> int32_t {
    if (v != nullptr && v->is_array() && !v->get_array().empty()) v = &v->get_array()[0];
    if (v == nullptr || !v->is_int64()) return -1;
    int64_t id = v->get_int64();
    return id >= 0 && static_cast<uint64_t>(id) < t.tokens.size() ? static_cast<int32_t>(id) : -1;
  };
  if (t.bos_id < 0) t.bos_id = id_of(config.if_contains("bos_token_id"));
  if (t.eos_id < 0) t.eos_id = id_of(config.if_contains("eos_token_id"));
}

// Doubles as fmt prints them (5e+05 rather than Boost's 5E5); everything else as JSON.
std::string render(const json::value& v) {
  return v.is_double() ? fmt::format("{}", v.get_double()) : json::serialize(v);
}

std::string clip(std::string s, size_t n = 60) {
  if (s.size() > n) {
    s.resize(n);
    s += "...";
  }
  return s;
}

struct Shard {
  std::string file;  // the shard's path
  SafetensorsHeader header;
};

class SafetensorsModelFile final : public ModelFile {
 public:
  explicit SafetensorsModelFile(const std::string& dir) {
    path_ = dir;
    fs::path root(dir);
    fs::path config_path = root / "config.json";
    TPNODE_CHECK(fs::is_regular_file(config_path), "{}: model folder has no config.json", dir);
    json::value config = read_json_file(config_path);
    TPNODE_CHECK(config.is_object(), "{}: not a JSON object", config_path.string());
    config_ = std::move(config.get_object());
    hparams_ = hparams_from_config_json(config_, config_path.string());

    std::vector<Shard> shards = map_shards(root);
    settle_tied_embeddings(shards, config_path.string());
    for (const Shard& s : shards) add_tensors(s);
    hparams_.attn_bias = hparams_.attn_bias || find("blk.0.attn_q.bias") != nullptr;

    fs::path tok = root / "tokenizer.json";
    TPNODE_CHECK(fs::is_regular_file(tok), "{}: model folder has no tokenizer.json", dir);
    tokenizer_ = tokenizer_data_from_json(tok.string(), hparams_.arch);
    if (fs::path tc = root / "tokenizer_config.json"; fs::is_regular_file(tc))
      apply_tokenizer_config(tc, tokenizer_);
    apply_config_token_ids(config_, tokenizer_);
  }

  std::string_view format() const override { return "safetensors"; }

  void release_pages() const override {
    for (const MappedFile& m : maps_) m.release_pages();
  }

  std::vector<std::pair<std::string, std::string>> metadata_summary() const override {
    std::vector<std::pair<std::string, std::string>> out;
    out.emplace_back("safetensors.shards", std::to_string(maps_.size()));
    for (const auto& kv : config_)
      out.emplace_back(std::string(kv.key()), clip(render(kv.value())));
    return out;
  }

 private:
  std::vector<Shard> map_shards(const fs::path& root) {
    std::vector<std::string> names;
    std::map<std::string, std::string, std::less<>> index;  // tensor -> shard file name
    fs::path index_path = root / "model.safetensors.index.json";
    if (fs::is_regular_file(index_path)) {
      json::value v = read_json_file(index_path);
      const json::object* o = v.if_object();
      const json::value* wm = o != nullptr ? o->if_contains("weight_map") : nullptr;
      TPNODE_CHECK(wm != nullptr && wm->is_object(), "{}: no 'weight_map' object",
                   index_path.string());
      for (const auto& kv : wm->get_object()) {
        TPNODE_CHECK(kv.value().is_string(), "{}: weight_map['{}'] is not a file name",
                     index_path.string(), std::string_view(kv.key()));
        std::string file(kv.value().get_string());
        // Shards live beside the index: a path would let a hostile index read elsewhere.
        TPNODE_CHECK(
            !file.empty() && file.find('/') == std::string::npos && file != "." && file != "..",
            "{}: shard name '{}' is not a plain file name", index_path.string(), file);
        if (std::find(names.begin(), names.end(), file) == names.end()) names.push_back(file);
        index.emplace(std::string(kv.key()), file);
      }
      TPNODE_CHECK(!names.empty(), "{}: weight_map is empty", index_path.string());
    } else {
      TPNODE_CHECK(
          fs::is_regular_file(root / "model.safetensors"),
          "{}: model folder has neither model.safetensors nor model.safetensors.index.json", path_);
      names.push_back("model.safetensors");
    }

    std::vector<Shard> shards;
    std::set<std::string, std::less<>> seen;
    for (const std::string& name : names) {
      std::string file = (root / name).string();
      maps_.emplace_back(file);
      Shard s{file, parse_safetensors(maps_.back().bytes(), file)};
      for (const SafetensorsTensor& t : s.header.tensors) {
        TPNODE_CHECK(seen.insert(t.name).second, "{}: tensor '{}' appears in more than one shard",
                     file, t.name);
        auto it = index.find(t.name);
        TPNODE_CHECK(index.empty() || it == index.end() || it->second == name,
                     "{}: holds tensor '{}' that the index places in '{}'", file, t.name,
                     it->second);
      }
      shards.push_back(std::move(s));
    }
    for (const auto& [tensor, file] : index) {
      TPNODE_CHECK(seen.count(tensor) != 0,
                   "{}: the index places tensor '{}' in '{}', which does not hold it",
                   index_path.string(), tensor, file);
    }
    return shards;
  }

  // tie_word_embeddings decides; when config.json is silent, a missing lm_head means tied.
  void settle_tied_embeddings(const std::vector<Shard>& shards, const std::string& config_path) {
    ConfigReader cfg(config_, config_path);
    if (std::optional<bool> tie = cfg.boolean_opt("tie_word_embeddings")) {
      hparams_.tied_embeddings = *tie;
      return;
    }
    bool has_head = false;
    for (const Shard& s : shards) {
      for (const SafetensorsTensor& t : s.header.tensors)
        has_head = has_head || t.name == "lm_head.weight";
    }
    hparams_.tied_embeddings = !has_head;
  }

  void add_tensors(const Shard& s) {
    const uint8_t* base = nullptr;
    for (const MappedFile& m : maps_) {
      if (m.path() == s.file) base = m.bytes().data();
    }
    for (const SafetensorsTensor& t : s.header.tensors) {
      std::optional<std::string> name = internal_name_from_hf(t.name);
      if (!name) {
        spdlog::debug("{}: skipping tensor '{}' (not used by the forward)", s.file, t.name);
        continue;
      }
      if (*name == "output.weight" && hparams_.tied_embeddings) continue;
      TPNODE_CHECK_KIND(t.type.has_value(), ErrorKind::kUnsupported,
                        "{}: tensor '{}' has dtype {}; only F32, F16 and BF16 are supported",
                        s.file, t.name, t.dtype);
      TPNODE_CHECK(!t.shape.empty() && t.shape.size() <= 4,
                   "{}: tensor '{}' has {} dimensions, expected 1..4", s.file, t.name,
                   t.shape.size());
      TPNODE_CHECK(find(*name) == nullptr, "{}: tensor '{}' maps to '{}', which is already present",
                   s.file, t.name, *name);
      TensorView v;
      v.name = std::move(*name);
      v.type = *t.type;
      v.shape.assign(t.shape.rbegin(), t.shape.rend());  // GGUF order: contiguous dimension first
      v.nbytes = t.end - t.begin;
      v.file_offset = s.header.data_offset + t.begin;
      v.data = base + v.file_offset;
      v.file = s.file;
      tensors_.push_back(std::move(v));
    }
  }

  std::vector<MappedFile> maps_;
  json::object config_;
};

}  // namespace

HParams hparams_from_config_json(const json::object& config, const std::string& source) {
  ConfigReader cfg(config, source);
  HParams hp;
  std::optional<std::string> type = cfg.string_opt("model_type");
  TPNODE_CHECK(type.has_value(), "{}: missing required key 'model_type'", source);
  TPNODE_CHECK_KIND(*type == "llama" || *type == "mistral" || *type == "qwen2",
                    ErrorKind::kUnsupported,
                    "{}: model_type '{}' is not supported (llama, mistral, qwen2)", source, *type);
  hp.arch = *type;
  hp.name = cfg.string_opt("_name_or_path").value_or("");
  hp.n_layer = cfg.integer("num_hidden_layers");
  hp.n_embd = cfg.integer("hidden_size");
  hp.n_head = cfg.integer("num_attention_heads");
  hp.n_head_kv = cfg.integer_opt("num_key_value_heads").value_or(hp.n_head);
  TPNODE_CHECK(hp.n_head > 0, "{}: num_attention_heads = {} must be positive", source, hp.n_head);
  hp.head_dim = cfg.integer_opt("head_dim").value_or(hp.n_embd / hp.n_head);
  hp.n_ff = cfg.integer("intermediate_size");
  hp.n_vocab = cfg.integer("vocab_size");
  // Transformers' defaults when the key is absent.
  hp.n_ctx_train =
      cfg.integer_opt("max_position_embeddings").value_or(hp.arch == "qwen2" ? 32768 : 2048);
  hp.rope_theta = static_cast<float>(cfg.number_opt("rope_theta").value_or(10000.0));
  hp.rms_eps = static_cast<float>(cfg.number_opt("rms_norm_eps").value_or(1e-6));
  hp.rope_scaling = rope_scaling_from_config(cfg, source);
  hp.rope_style = RopeStyle::kNeox;  // HF layout: rotate_half
  hp.tied_embeddings = cfg.boolean_opt("tie_word_embeddings").value_or(false);
  hp.attn_bias = hp.arch == "qwen2" || cfg.boolean_opt("attention_bias").value_or(false);
  return hp;
}

std::unique_ptr<ModelFile> open_safetensors_model(const std::string& dir) {
  return std::make_unique<SafetensorsModelFile>(dir);
}

}  // namespace tpnode
