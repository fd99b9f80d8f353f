// llamacpp-greedy: runs a GGUF model through libllama (CPU) and prints, as one JSON object on
// stdout, the prompt's token ids, a greedy continuation (argmax, lowest id on ties) and its text.
// Optionally writes the logits of every prompt position as raw little-endian float32 [T, vocab].
// It exists to make reference fixtures for tpnode; it is built by tools/build_llamacpp.sh.
//
// usage: llamacpp-greedy -m MODEL (-p TEXT | -f FILE | --ids 1,2,3) [-n N] [-t THREADS]
//                        [--logits OUT.bin] [--top K] [--no-special]
//   -p/-f      prompt text, tokenized by llama.cpp (BOS added when the model says so)
//   --ids      prompt token ids, used as given
//   -n         tokens to generate (default 32); stops early after an end-of-generation token,
//              which is included in generated_ids
//   --logits   write the prompt positions' logits (one batch, all outputs) to OUT.bin
//   --top K    also print, for every generated step, the K largest logits as [id, logit] pairs
//   --no-special  tokenize with add_special=false (no BOS even if the model adds one)
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "llama.h"

namespace {

struct Options {
  std::string model;
  std::string prompt;
  bool have_prompt = false;
  std::vector<llama_token> ids;
  int n_predict = 32;
  int threads = 2;
  std::string logits_path;
  int top_k = 0;
  bool add_special = true;
};

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error(what);
}

std::vector<llama_token> parse_ids(const std::string& s) {
  std::vector<llama_token> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(static_cast<llama_token>(std::stol(item)));
  }
  return out;
}

Options parse_args(int argc, char** argv) {
  Options o;
  auto need = [&](int i) {
    if (i + 1 >= argc) fail(std::string("missing value after ") + argv[i]);
    return std::string(argv[i + 1]);
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-m") {
      o.model = need(i++);
    } else if (a == "-p") {
      o.prompt = need(i++);
      o.have_prompt = true;
    } else if (a == "-f") {
      std::ifstream in(need(i++), std::ios::binary);
      if (!in) fail("cannot read prompt file " + std::string(argv[i]));
      std::stringstream ss;
      ss << in.rdbuf();
      o.prompt = ss.str();
      o.have_prompt = true;
    } else if (a == "--ids") {
      o.ids = parse_ids(need(i++));
    } else if (a == "-n") {
      o.n_predict = std::stoi(need(i++));
    } else if (a == "-t") {
      o.threads = std::stoi(need(i++));
    } else if (a == "--logits") {
      o.logits_path = need(i++);
    } else if (a == "--top") {
      o.top_k = std::stoi(need(i++));
    } else if (a == "--no-special") {
      o.add_special = false;
    } else {
      fail("unknown argument " + a);
    }
  }
  if (o.model.empty()) fail("-m MODEL is required");
  if (o.have_prompt == !o.ids.empty()) fail("give exactly one of -p, -f, --ids");
  return o;
}

// JSON string escape; bytes that are not valid UTF-8 become U+FFFD so the output always parses.
std::string json_string(const std::string& s) {
  std::string out = "\"";
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = len > 0 && i + len <= s.size();
    for (size_t k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(s[i + k]) >> 6) == 0x2;
    if (!ok) {
      out += "\\ufffd";
      ++i;
      continue;
    }
    if (len == 1) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
          if (c < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
          } else {
            out += static_cast<char>(c);
          }
      }
    } else {
      out.append(s, i, len);
    }
    i += len;
  }
  return out + "\"";
}

std::string json_ids(const std::vector<llama_token>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) out += (i ? "," : "") + std::to_string(ids[i]);
  return out + "]";
}

std::vector<llama_token> tokenize(const llama_vocab* vocab, const std::string& text, bool add_special) {
  const int n = -llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), nullptr, 0,
                                add_special, /*parse_special=*/false);
  std::vector<llama_token> ids(n);
  if (llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), ids.data(), n, add_special,
                     /*parse_special=*/false) != n) {
    fail("tokenization failed");
  }
  return ids;
}

std::string detokenize(const llama_vocab* vocab, const std::vector<llama_token>& ids) {
  if (ids.empty()) return {};
  std::string text(ids.size() * 64 + 16, '\0');
  int n = llama_detokenize(vocab, ids.data(), static_cast<int32_t>(ids.size()), text.data(),
                           static_cast<int32_t>(text.size()), /*remove_special=*/false,
                           /*unparse_special=*/false);
  if (n < 0) {
    text.resize(-n);
    n = llama_detokenize(vocab, ids.data(), static_cast<int32_t>(ids.size()), text.data(),
                         static_cast<int32_t>(text.size()), false, false);
  }
  if (n < 0) fail("detokenization failed");
  text.resize(n);
  return text;
}

// Feeds tokens at positions [pos0, pos0 + n); outputs logits for all of them or only the last.
void decode(llama_context* ctx, const std::vector<llama_token>& tokens, int pos0, bool all_logits) {
  llama_batch batch = llama_batch_init(static_cast<int32_t>(tokens.size()), 0, 1);
  batch.n_tokens = static_cast<int32_t>(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    batch.token[i] = tokens[i];
    batch.pos[i] = pos0 + static_cast<llama_pos>(i);
    batch.n_seq_id[i] = 1;
    batch.seq_id[i][0] = 0;
    batch.logits[i] = all_logits || i + 1 == tokens.size();
  }
  const int rc = llama_decode(ctx, batch);
  llama_batch_free(batch);
  if (rc != 0) fail("llama_decode returned " + std::to_string(rc));
}

llama_token argmax(const float* logits, int n_vocab) {
  int best = 0;
  for (int i = 1; i < n_vocab; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return best;
}

// The k largest logits, largest first (lowest id first among equals), as a JSON array of pairs.
std::string json_top(const float* logits, int n_vocab, int k) {
  std::vector<int> idx(n_vocab);
  for (int i = 0; i < n_vocab; ++i) idx[i] = i;
  k = std::min(k, n_vocab);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  std::string out = "[";
  char buf[64];
  for (int i = 0; i < k; ++i) {
    std::snprintf(buf, sizeof buf, "%s[%d,%.6g]", i ? "," : "", idx[i], logits[idx[i]]);
    out += buf;
  }
  return out + "]";
}

int run(const Options& o) {
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  llama_model* model = llama_model_load_from_file(o.model.c_str(), mp);
  if (!model) fail("cannot load model " + o.model);
  const llama_vocab* vocab = llama_model_get_vocab(model);
  const int n_vocab = llama_vocab_n_tokens(vocab);

  const std::vector<llama_token> prompt = o.have_prompt ? tokenize(vocab, o.prompt, o.add_special) : o.ids;
  if (prompt.empty()) fail("empty prompt");

  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = static_cast<uint32_t>(prompt.size() + o.n_predict + 16);
  cp.n_batch = static_cast<uint32_t>(prompt.size());
  cp.n_ubatch = static_cast<uint32_t>(prompt.size());
  cp.n_threads = o.threads;
  cp.n_threads_batch = o.threads;
  llama_context* ctx = llama_init_from_model(model, cp);
  if (!ctx) fail("cannot create context");

  const bool want_logits = !o.logits_path.empty();
  decode(ctx, prompt, 0, want_logits);
  if (want_logits) {
    std::ofstream out(o.logits_path, std::ios::binary);
    for (size_t i = 0; i < prompt.size(); ++i) {
      const float* row = llama_get_logits_ith(ctx, static_cast<int32_t>(i));
      if (!row) fail("no logits for position " + std::to_string(i));
      out.write(reinterpret_cast<const char*>(row), static_cast<std::streamsize>(sizeof(float) * n_vocab));
    }
    if (!out) fail("cannot write " + o.logits_path);
  }

  std::vector<llama_token> generated;
  std::vector<std::string> tops;
  bool hit_eog = false;
  int pos = static_cast<int>(prompt.size());
  for (int i = 0; i < o.n_predict; ++i) {
    const float* logits = llama_get_logits_ith(ctx, -1);
    const llama_token next = argmax(logits, n_vocab);
    if (o.top_k > 0) tops.push_back(json_top(logits, n_vocab, o.top_k));
    generated.push_back(next);
    if (llama_vocab_is_eog(vocab, next)) {
      hit_eog = true;
      break;
    }
    if (i + 1 == o.n_predict) break;
    decode(ctx, {next}, pos++, false);
  }

  std::printf("{\"prompt\":%s,\"add_bos\":%s,\"n_vocab\":%d,\"prompt_ids\":%s,\"generated_ids\":%s,"
              "\"generated_text\":%s,\"finish\":\"%s\"",
              json_string(o.prompt).c_str(), llama_vocab_get_add_bos(vocab) ? "true" : "false", n_vocab,
              json_ids(prompt).c_str(), json_ids(generated).c_str(),
              json_string(detokenize(vocab, generated)).c_str(), hit_eog ? "eog" : "length");
  if (o.top_k > 0) {
    std::printf(",\"top_logits\":[");
    for (size_t i = 0; i < tops.size(); ++i) std::printf("%s%s", i ? "," : "", tops[i].c_str());
    std::printf("]");
  }
  std::printf("}\n");

  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llamacpp-greedy: %s\n", e.what());
    return 1;
  }
}
