// Test doubles for the coordinator: a tiny Tokenizer and a deterministic fake model behind
// the StepExecutor interface. The fake keeps a "KV cache" of token ids in the block slots the
// plan names and computes each next token from what it reads back from those slots, so a
// wrong block table, a wrong n_past or a block shared by two sequences changes the output.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <span>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "coordinator/request.h"
#include "node/common/error.h"
#include "node/engine/step_executor.h"
#include "node/model/tokenizer.h"

namespace tpnode::coord::testing {

// Vocabulary: 0 = end of generation; then single characters, two tokens that are the two
// bytes of "é", and a few multi-character pieces.
inline TokenizerData fake_tokenizer_data() {
  TokenizerData d;
  d.model = "fake";
  d.tokens.push_back("<eos>");
  d.token_types.push_back(3);
  for (char c = 'a'; c <= 'z'; ++c) d.tokens.push_back(std::string(1, c));
  for (const char* piece : {" ", "\n", ".", "S", "T", "O", "P", "\xC3", "\xA9", "ab", "STOP"}) {
    d.tokens.push_back(piece);
  }
  d.token_types.resize(d.tokens.size(), 1);
  d.eos_id = 0;
  return d;
}

class FakeTokenizer final : public Tokenizer {
 public:
  FakeTokenizer() : Tokenizer(fake_tokenizer_data()) {}

  // Greedy longest match over the non-control pieces; unknown bytes are skipped.
  std::vector<int32_t> encode(std::string_view text, bool add_special,
                              bool parse_special) const override {
    std::vector<int32_t> out;
    size_t i = 0;
    while (i < text.size()) {
      int32_t best = -1;
      size_t best_len = 0;
      for (int32_t id = 1; id < n_vocab(); ++id) {
        const std::string& p = data_.tokens[static_cast<size_t>(id)];
        if (p.size() > best_len && text.substr(i, p.size()) == p) {
          best = id;
          best_len = p.size();
        }
      }
      if (best < 0) {
        ++i;
        continue;
      }
      out.push_back(best);
      i += best_len;
    }
    return out;
  }

  std::string token_to_piece(int32_t id, bool special) const override {
    if (id <= 0 || id >= n_vocab()) return special && id == 0 ? "<eos>" : "";
    return data_.tokens[static_cast<size_t>(id)];
  }

  bool is_eog(int32_t id) const override { return id == 0; }

  int32_t id_of(std::string_view piece) const {
    for (int32_t id = 0; id < n_vocab(); ++id) {
      if (data_.tokens[static_cast<size_t>(id)] == piece) return id;
    }
    throw std::runtime_error("no token " + std::string(piece));
  }
};

// The next token as a function of the whole context (prompt + generated so far).
using NextToken = std::function<int32_t(std::span<const int32_t> context)>;

// A hash of the context picks a letter or space; every `eos_every`-th hash value ends.
inline NextToken hashed_model(uint32_t eos_every = 0) {
  return [eos_every](std::span<const int32_t> ctx) -> int32_t {
    uint64_t h = 1469598103934665603ull;
    for (int32_t t : ctx) h = (h ^ static_cast<uint64_t>(t)) * 1099511628211ull;
    if (eos_every && h % eos_every == 0) return 0;
    return static_cast<int32_t>(1 + h % 27);  // 'a'..'z' or ' '
  };
}

struct FakeExecutorOptions {
  int64_t kv_blocks = 64;
  int64_t block_size = 4;
  int32_t n_vocab = 40;
  std::chrono::microseconds step_delay{0};
  int64_t fail_at_step = -1;  // throw from run() at this step number
  // The model sees only the last `window` tokens (0 = all), so very long generations stay
  // linear in cost.
  int64_t window = 0;
  // When set, rows whose plan asks for device sampling come back as this function's token
  // (a stand-in for a backend that samples), the others as logits.
  NextToken device_next = {};
  // With device_next: chains() (steps submitted ahead take kChainedToken from the draw of the
  // step submitted before them).
  bool chain = false;
};

class FakeExecutor final : public StepExecutor {
 public:
  FakeExecutor(const FakeExecutorOptions& o, NextToken next)
      : o_(o),
        next_(std::move(next)),
        slots_(static_cast<size_t>(o.kv_blocks * o.block_size), -1),
        owner_(slots_.size(), 0) {}

  const StepOutput& run(const StepPlan& plan) override {
    std::lock_guard lock(mu_);
    ++steps_;
    if (static_cast<int64_t>(plan.step) == o_.fail_at_step) {
      TPNODE_THROW(ErrorKind::kRuntime, "fake executor: failure injected at step {}", plan.step);
    }
    if (o_.step_delay.count() > 0) std::this_thread::sleep_for(o_.step_delay);
    out_.logits.clear();
    out_.tokens.clear();
    std::vector<int32_t> row_tokens;
    std::set<int32_t> used;
    std::set<uint64_t> seqs;
    int64_t tokens = 0;
    for (const SeqStep& s : plan.seqs) {
      check(seqs.insert(s.seq_id).second, "sequence twice in one plan");
      check(!s.tokens.empty(), "a sequence with no tokens");
      const int64_t n_total = s.n_past + static_cast<int64_t>(s.tokens.size());
      check(static_cast<int64_t>(s.blocks.size()) * o_.block_size >= n_total,
            "block table too short");
      for (int32_t b : s.blocks) {
        check(b >= 0 && b < o_.kv_blocks, "block id out of range");
        check(used.insert(b).second, "block shared by two sequences");
      }
      std::vector<int32_t> ctx;
      const int64_t first = o_.window > 0 ? std::max<int64_t>(0, s.n_past - o_.window) : 0;
      for (int64_t p = first; p < s.n_past; ++p) {
        const size_t slot = slot_of(s, p);
        check(owner_[slot] == s.seq_id, "read a KV slot this sequence did not write");
        ctx.push_back(slots_[slot]);
      }
      for (size_t i = 0; i < s.tokens.size(); ++i) {
        const size_t slot = slot_of(s, s.n_past + static_cast<int64_t>(i));
        slots_[slot] = s.tokens[i];
        owner_[slot] = s.seq_id;
        ctx.push_back(s.tokens[i]);
      }
      tokens += static_cast<int64_t>(s.tokens.size());
      max_step_tokens_ = std::max(max_step_tokens_, tokens);
      if (!s.want_logits) continue;
      if (o_.device_next && s.sampling.enabled) {
        s.sampling.validate();
        row_tokens.push_back(o_.device_next(ctx));
        continue;
      }
      row_tokens.push_back(-1);
      const int32_t target = next_(ctx);
      for (int32_t v = 0; v < o_.n_vocab; ++v) {
        out_.logits.push_back(v == target ? 10.0f : 0.1f * static_cast<float>(v % 7));
      }
    }
    const bool any_sampled =
        std::any_of(row_tokens.begin(), row_tokens.end(), [](int32_t t) { return t >= 0; });
    if (any_sampled) out_.tokens = std::move(row_tokens);
    last_plan_ = plan;
    return out_;
  }

  bool chains() const override { return o_.chain; }
  void submit(const StepPlan& plan) override {
    if (!o_.chain) return StepExecutor::submit(plan);
    check(queued_.size() < 2, "a third uncollected step");
    StepPlan p = plan;
    for (SeqStep& s : p.seqs) {
      if (s.tokens.empty() || s.tokens[0] != kChainedToken) continue;
      check(s.tokens.size() == 1, "a chained token with others");
      const auto it = last_draw_.find(s.seq_id);
      check(it != last_draw_.end(), "a chained token without a draw in the step before");
      s.tokens[0] = it->second;
      ++chained_;
    }
    const StepOutput& out = run(p);
    last_draw_.clear();
    size_t row = 0;
    for (const SeqStep& s : p.seqs) {
      if (!s.want_logits) continue;
      if (out.sampled(row)) last_draw_[s.seq_id] = out.tokens[row];
      ++row;
    }
    queued_.push_back(out);
  }
  const StepOutput& collect() override {
    if (!o_.chain) return StepExecutor::collect();
    check(!queued_.empty(), "collect without a step");
    collected_ = std::move(queued_.front());
    queued_.pop_front();
    return collected_;
  }
  int64_t chained() const { return chained_; }

  // The last plan run() saw.
  StepPlan last_plan() const {
    std::lock_guard lock(mu_);
    return last_plan_;
  }

  void shutdown() override { shutdowns_.fetch_add(1); }

  int64_t steps() const {
    std::lock_guard lock(mu_);
    return steps_;
  }
  int64_t max_step_tokens() const {
    std::lock_guard lock(mu_);
    return max_step_tokens_;
  }
  int shutdowns() const { return shutdowns_.load(); }

 private:
  size_t slot_of(const SeqStep& s, int64_t pos) const {
    return static_cast<size_t>(s.blocks[static_cast<size_t>(pos / o_.block_size)] * o_.block_size +
                               pos % o_.block_size);
  }
  static void check(bool ok, const char* what) {
    if (!ok) TPNODE_THROW(ErrorKind::kRuntime, "fake executor: {}", what);
  }

  FakeExecutorOptions o_;
  NextToken next_;
  mutable std::mutex mu_;
  std::vector<int32_t> slots_;
  std::vector<uint64_t> owner_;
  StepOutput out_;
  StepPlan last_plan_;
  std::map<uint64_t, int32_t> last_draw_;  // chain: seq_id -> the last submitted step's draw
  std::deque<StepOutput> queued_;
  StepOutput collected_;
  int64_t chained_ = 0;
  int64_t steps_ = 0;
  int64_t max_step_tokens_ = 0;
  std::atomic<int> shutdowns_{0};
};

// Collects what the scheduler reports for one request (thread-safe).
class RecordingObserver final : public RequestObserver {
 public:
  void on_text(std::string_view text) override {
    std::lock_guard lock(mu_);
    EXPECT_FALSE(ended_) << "text after the end";
    text_ += text;
    chunks_.emplace_back(text);
  }
  void on_end(const RequestEnd& end) override {
    {
      std::lock_guard lock(mu_);
      EXPECT_FALSE(ended_) << "ended twice";
      ended_ = true;
      end_ = end;
    }
    cv_.notify_all();
  }
  bool ended() const {
    std::lock_guard lock(mu_);
    return ended_;
  }
  bool wait(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return ended_; });
  }
  std::string text() const {
    std::lock_guard lock(mu_);
    return text_;
  }
  std::vector<std::string> chunks() const {
    std::lock_guard lock(mu_);
    return chunks_;
  }
  RequestEnd end() const {
    std::lock_guard lock(mu_);
    return end_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::string text_;
  std::vector<std::string> chunks_;
  bool ended_ = false;
  RequestEnd end_;
};

// What the fake model generates for `prompt` when run alone, computed directly from the
// model function (no scheduler, no KV blocks): the independent reference.
inline std::string reference_text(const NextToken& next, const Tokenizer& tok,
                                  std::vector<int32_t> ctx, int64_t max_tokens, int64_t context) {
  std::string text;
  for (int64_t i = 0; i < max_tokens && static_cast<int64_t>(ctx.size()) < context; ++i) {
    const int32_t t = next(ctx);
    ctx.push_back(t);
    if (tok.is_eog(t)) break;
    text += tok.token_to_piece(t, false);
  }
  return text;
}

inline GenerationRequest make_request(std::string id, std::vector<int32_t> prompt,
                                      int64_t max_tokens) {
  GenerationRequest r;
  r.id = std::move(id);
  r.prompt = std::move(prompt);
  r.max_tokens = max_tokens;
  return r;
}

}  // namespace tpnode::coord::testing
