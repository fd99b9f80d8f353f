// tokenizer.json (Hugging Face tokenizers) -> TokenizerData, for safetensors model folders.
// Two shapes of model.type "BPE" are understood:
//  - byte-level (ByteLevel pre-tokenizer or decoder): GPT-2, Llama 3, Qwen2, SmolLM, ...
//    -> model "gpt2", pre picked from the Split regex / Digits step, else from model_type;
//  - SentencePiece in BPE form (byte_fallback, "▁" for spaces via a Prepend/Replace normalizer
//    or a Metaspace pre-tokenizer): Llama 2, Mistral -> model "llama" with the merges kept, so
//    pairs merge by rank exactly as in tokenizers.
#include <spdlog/spdlog.h>

#include <boost/json.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "node/common/error.h"
#include "node/model/tokenizer.h"
#include "node/model/tokenizer_special.h"

namespace tpnode {
namespace {

namespace json = boost::json;

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // "▁"
constexpr int64_t kMaxVocab = 16 * 1024 * 1024;

// The Split regexes of the pre-tokenizers we implement, as tokenizer.json files spell them.
constexpr std::string_view kLlama3Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr std::string_view kQwen2Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr std::string_view kGpt2Regex =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TPNODE_CHECK(in.good(), "cannot open {}", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json::value parse_json(const std::string& path) {
  boost::system::error_code ec;
  json::value v = json::parse(read_text(path), ec);
  TPNODE_CHECK(!ec, "{} is not valid JSON: {}", path, ec.message());
  return v;
}

std::string str(const json::value& v) {
  const json::string& s = v.as_string();
  return std::string(s.data(), s.size());
}

const json::value* member(const json::value& v, std::string_view key) {
  if (!v.is_object()) return nullptr;
  const json::object& o = v.as_object();
  auto it = o.find(key);
  return (it == o.end() || it->value().is_null()) ? nullptr : &it->value();
}

std::string member_str(const json::value& v, std::string_view key) {
  const json::value* m = member(v, key);
  return (m && m->is_string()) ? str(*m) : std::string();
}

bool member_bool(const json::value& v, std::string_view key, bool fallback) {
  const json::value* m = member(v, key);
  return (m && m->is_bool()) ? m->as_bool() : fallback;
}

// A component and, for a Sequence, its parts (normalizers, pre_tokenizers, decoders,
// post_processors all nest the same way), flattened in order.
void flatten(const json::value* v, std::vector<const json::value*>& out) {
  if (v == nullptr || !v->is_object()) return;
  const std::string type = member_str(*v, "type");
  if (type == "Sequence") {
    for (const char* key : {"normalizers", "pretokenizers", "decoders", "processors"}) {
      if (const json::value* parts = member(*v, key); parts && parts->is_array()) {
        for (const json::value& p : parts->as_array()) flatten(&p, out);
      }
    }
    return;
  }
  out.push_back(v);
}

std::vector<const json::value*> components(const json::value& root, std::string_view key) {
  std::vector<const json::value*> out;
  flatten(member(root, key), out);
  return out;
}

const json::value* find_type(const std::vector<const json::value*>& parts, std::string_view type) {
  for (const json::value* p : parts) {
    if (member_str(*p, "type") == type) return p;
  }
  return nullptr;
}

// A Split's pattern: {"Regex": "..."} or {"String": "..."}.
std::string split_regex(const json::value& split) {
  const json::value* pattern = member(split, "pattern");
  if (pattern == nullptr) return {};
  std::string rx = member_str(*pattern, "Regex");
  return rx.empty() ? member_str(*pattern, "String") : rx;
}

std::string pre_from_model_type(const std::string& model_type) {
  if (model_type == "llama" || model_type == "mllama") return "llama3";
  if (model_type.rfind("qwen", 0) == 0) return "qwen2";
  if (model_type == "gpt2") return "gpt2";
  if (model_type == "starcoder2" || model_type == "smollm") return "smollm";
  return {};
}

std::string pick_byte_level_pre(const std::vector<const json::value*>& pre,
                                const std::string& model_type, const std::string& path) {
  const json::value* byte_level = find_type(pre, "ByteLevel");
  const bool byte_level_regex = byte_level && member_bool(*byte_level, "use_regex", true);
  const json::value* digits = find_type(pre, "Digits");
  if (digits && member_bool(*digits, "individual_digits", false) && byte_level_regex) {
    return "smollm";
  }
  if (const json::value* split = find_type(pre, "Split")) {
    const std::string rx = split_regex(*split);
    if (rx == kLlama3Regex) return "llama3";
    if (rx == kQwen2Regex) return "qwen2";
    if (rx == kGpt2Regex) return "gpt2";
    std::string fallback = pre_from_model_type(model_type);
    TPNODE_CHECK_KIND(!fallback.empty(), ErrorKind::kUnsupported,
                      "{}: unsupported pre-tokenizer regex '{}' (model_type '{}')", path,
                      rx.substr(0, 80), model_type);
    spdlog::warn("{}: unknown pre-tokenizer regex, using the {} split for model_type '{}'", path,
                 fallback, model_type);
    return fallback;
  }
  if (byte_level_regex && !digits) return "gpt2";
  std::string fallback = pre_from_model_type(model_type);
  TPNODE_CHECK_KIND(!fallback.empty(), ErrorKind::kUnsupported,
                    "{}: unsupported byte-level pre-tokenizer (model_type '{}')", path, model_type);
  return fallback;
}

// True when a Replace component turns `from` into `to`.
bool is_replace(const json::value& v, std::string_view from, std::string_view to) {
  if (member_str(v, "type") != "Replace") return false;
  const json::value* pattern = member(v, "pattern");
  return pattern && member_str(*pattern, "String") == from && member_str(v, "content") == to;
}

// tokenizer_config.json's special token entries: a string or {"content": "..."}.
std::string token_text(const json::value* v) {
  if (v == nullptr) return {};
  if (v->is_string()) return str(*v);
  return member_str(*v, "content");
}

int32_t find_token(const TokenizerData& d, const std::string& text) {
  if (text.empty()) return -1;
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    if (d.tokens[i] == text) return static_cast<int32_t>(i);
  }
  return -1;
}

struct Template {
  int32_t first_special = -1;  // id of a special token the single template starts with
  int32_t last_special = -1;   // ... or ends with
};

// TemplateProcessing's "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}].
Template post_template(const json::value& root, const TokenizerData& d) {
  Template t;
  const auto procs = components(root, "post_processor");
  const json::value* tp = find_type(procs, "TemplateProcessing");
  if (tp == nullptr) return t;
  const json::value* single = member(*tp, "single");
  if (single == nullptr || !single->is_array() || single->as_array().empty()) return t;
  auto special_id = [&](const json::value& item) -> int32_t {
    const json::value* s = member(item, "SpecialToken");
    return s ? find_token(d, member_str(*s, "id")) : -1;
  };
  const json::array& items = single->as_array();
  t.first_special = special_id(items.front());
  if (items.size() > 1) t.last_special = special_id(items.back());
  return t;
}

void read_vocab(const json::value& model, const json::value& root, const std::string& path,
                TokenizerData& d) {
  const json::value* vocab = member(model, "vocab");
  TPNODE_CHECK(vocab && vocab->is_object(), "{}: model.vocab is missing or not an object", path);
  std::map<int64_t, std::string> by_id;
  std::map<int64_t, int32_t> types;
  for (const auto& kv : vocab->as_object()) {
    TPNODE_CHECK(kv.value().is_int64(), "{}: vocab entry '{}' has no integer id", path,
                 std::string_view(kv.key()));
    const int64_t id = kv.value().as_int64();
    TPNODE_CHECK(id >= 0 && id < kMaxVocab, "{}: vocab id {} out of range", path, id);
    TPNODE_CHECK(by_id.emplace(id, std::string(kv.key())).second, "{}: vocab id {} used twice",
                 path, id);
    types[id] = kTokenNormal;
  }
  if (const json::value* added = member(root, "added_tokens"); added && added->is_array()) {
    for (const json::value& a : added->as_array()) {
      const json::value* idv = member(a, "id");
      TPNODE_CHECK(idv && idv->is_int64(), "{}: an added token has no integer id", path);
      const int64_t id = idv->as_int64();
      TPNODE_CHECK(id >= 0 && id < kMaxVocab, "{}: added token id {} out of range", path, id);
      by_id[id] = member_str(a, "content");
      types[id] = member_bool(a, "special", false) ? kTokenControl : kTokenUserDefined;
    }
  }
  TPNODE_CHECK(!by_id.empty(), "{}: empty vocabulary", path);
  const int64_t n = by_id.rbegin()->first + 1;
  d.tokens.assign(n, std::string());
  d.token_types.assign(n, kTokenUnused);
  for (int64_t i = 0; i < n; ++i) d.tokens[i] = fmt::format("[UNUSED_{}]", i);  // ids in gaps
  for (const auto& [id, text] : by_id) {
    d.tokens[id] = text;
    d.token_types[id] = types[id];
  }
}

void read_merges(const json::value& model, const std::string& path, TokenizerData& d) {
  const json::value* merges = member(model, "merges");
  if (merges == nullptr) return;
  TPNODE_CHECK(merges->is_array(), "{}: model.merges is not an array", path);
  d.merges.reserve(merges->as_array().size());
  for (const json::value& m : merges->as_array()) {
    if (m.is_string()) {
      d.merges.push_back(str(m));
    } else {
      TPNODE_CHECK(m.is_array() && m.as_array().size() == 2 && m.as_array()[0].is_string() &&
                       m.as_array()[1].is_string(),
                   "{}: a merge is neither \"a b\" nor [\"a\", \"b\"]", path);
      d.merges.push_back(str(m.as_array()[0]) + " " + str(m.as_array()[1]));
    }
  }
}

void read_config(const std::string& tokenizer_path, TokenizerData& d, bool& add_bos_set,
                 bool& add_eos_set) {
  const std::filesystem::path dir = std::filesystem::path(tokenizer_path).parent_path();
  const std::filesystem::path config_path = dir / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) {
    const json::value config = parse_json(config_path.string());
    if (int32_t id = find_token(d, token_text(member(config, "bos_token"))); id >= 0) d.bos_id = id;
    if (int32_t id = find_token(d, token_text(member(config, "eos_token"))); id >= 0) d.eos_id = id;
    if (int32_t id = find_token(d, token_text(member(config, "unk_token"))); id >= 0) d.unk_id = id;
    if (int32_t id = find_token(d, token_text(member(config, "pad_token"))); id >= 0) d.pad_id = id;
    if (const json::value* v = member(config, "add_bos_token"); v && v->is_bool()) {
      d.add_bos = v->as_bool();
      add_bos_set = true;
    }
    if (const json::value* v = member(config, "add_eos_token"); v && v->is_bool()) {
      d.add_eos = v->as_bool();
      add_eos_set = true;
    }
    if (const json::value* t = member(config, "chat_template")) {
      if (t->is_string()) {
        d.chat_template = str(*t);
      } else if (t->is_array()) {  // named templates: use "default"
        for (const json::value& named : t->as_array()) {
          if (member_str(named, "name") == "default")
            d.chat_template = member_str(named, "template");
        }
      }
    }
  }
  const std::filesystem::path jinja = dir / "chat_template.jinja";
  if (d.chat_template.empty() && std::filesystem::exists(jinja)) {
    d.chat_template = read_text(jinja.string());
  }
}

}  // namespace

TokenizerData tokenizer_data_from_json(const std::string& tokenizer_json_path,
                                       const std::string& model_type) {
  const std::string& path = tokenizer_json_path;
  const json::value root = parse_json(path);
  const json::value* model = member(root, "model");
  TPNODE_CHECK(model && model->is_object(), "{}: no \"model\" object", path);
  const std::string type = member_str(*model, "type");
  TPNODE_CHECK_KIND(type == "BPE" || (type.empty() && member(*model, "merges")),
                    ErrorKind::kUnsupported,
                    "{}: tokenizer model type '{}' is not supported (only BPE)", path, type);

  TokenizerData d;
  read_vocab(*model, root, path, d);
  read_merges(*model, path, d);

  const auto normalizer = components(root, "normalizer");
  const auto pre = components(root, "pre_tokenizer");
  const auto decoder = components(root, "decoder");
  const bool byte_level = find_type(pre, "ByteLevel") || find_type(decoder, "ByteLevel");
  const json::value* metaspace = find_type(pre, "Metaspace");
  bool prepend = false;
  bool spaces_escaped = metaspace != nullptr;
  for (const json::value* n : normalizer) {
    const std::string t = member_str(*n, "type");
    if (t == "Prepend" && member_str(*n, "prepend") == kSpaceMark) {
      prepend = true;
    } else if (is_replace(*n, " ", kSpaceMark)) {
      spaces_escaped = true;
    } else {
      spdlog::warn("{}: normalizer '{}' is not applied", path, t);
    }
  }
  for (const json::value* dec : decoder) {
    if (is_replace(*dec, kSpaceMark, " ")) spaces_escaped = true;
  }

  if (byte_level) {
    d.model = "gpt2";
    d.pre = pick_byte_level_pre(pre, model_type, path);
    d.add_space_prefix = false;
  } else if (spaces_escaped || member_bool(*model, "byte_fallback", false)) {
    d.model = "llama";
    d.pre = "default";
    if (metaspace) {
      const std::string scheme = member_str(*metaspace, "prepend_scheme");
      prepend =
          scheme.empty() ? member_bool(*metaspace, "add_prefix_space", true) : scheme != "never";
    }
    d.add_space_prefix = prepend;
    const bool byte_fallback = member_bool(*model, "byte_fallback", false);
    for (size_t i = 0; i < d.tokens.size(); ++i) {
      const std::string& t = d.tokens[i];
      if (byte_fallback && d.token_types[i] == kTokenNormal && t.size() == 6 &&
          t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
        d.token_types[i] = kTokenByte;
      }
    }
    // Scores for consumers that merge by score (as a GGUF would carry): earlier merge, higher.
    d.scores.assign(d.tokens.size(), 0.0f);
    std::vector<bool> scored(d.tokens.size(), false);
    std::unordered_map<std::string, int32_t> ids;
    for (size_t i = 0; i < d.tokens.size(); ++i) ids.emplace(d.tokens[i], static_cast<int32_t>(i));
    for (size_t rank = 0; rank < d.merges.size(); ++rank) {
      std::string joined = d.merges[rank];
      const size_t sp = joined.find(' ', 1);
      if (sp == std::string::npos) continue;
      joined.erase(sp, 1);
      auto it = ids.find(joined);
      if (it != ids.end() && !scored[it->second]) {
        d.scores[it->second] = -static_cast<float>(rank + 1);
        scored[it->second] = true;
      }
    }
  } else {
    TPNODE_THROW(ErrorKind::kUnsupported,
                 "{}: BPE tokenizer is neither byte-level nor SentencePiece-style", path);
  }

  const std::string unk = member_str(*model, "unk_token");
  d.unk_id = find_token(d, unk);
  if (d.unk_id >= 0 && d.token_types[d.unk_id] != kTokenControl) {
    d.token_types[d.unk_id] = kTokenUnknown;
  }

  bool add_bos_set = false;
  bool add_eos_set = false;
  read_config(path, d, add_bos_set, add_eos_set);
  const Template tmpl = post_template(root, d);
  if (!add_bos_set) d.add_bos = tmpl.first_special >= 0;
  if (!add_eos_set) d.add_eos = tmpl.last_special >= 0;
  if (d.bos_id < 0) d.bos_id = tmpl.first_special;
  if (d.eos_id < 0) d.eos_id = tmpl.last_special;
  for (const char* eot : {"<|eot_id|>", "<|im_end|>", "<end_of_turn>"}) {
    const int32_t id = find_token(d, eot);
    if (id >= 0 && id != d.eos_id) {
      d.eot_id = id;
      break;
    }
  }
  return d;
}

}  // namespace tpnode
