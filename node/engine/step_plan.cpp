#include "node/engine/step_plan.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "node/common/error.h"
#include "node/engine/sampler.h"

namespace tpnode {

int64_t StepPlan::n_tokens() const {
  int64_t n = 0;
  for (const auto& s : seqs) n += static_cast<int64_t>(s.tokens.size());
  return n;
}

int64_t StepPlan::n_logits() const {
  int64_t n = 0;
  for (const auto& s : seqs) n += s.want_logits ? 1 : 0;
  return n;
}

void DeviceSampling::validate() const {
  if (!enabled) return;
  TPNODE_CHECK(std::isfinite(temperature) && temperature >= 0.0f,
               "device sampling: temperature must be >= 0 (got {})", temperature);
  TPNODE_CHECK(top_k >= 0, "device sampling: top_k must be >= 0 (got {})", top_k);
  TPNODE_CHECK(top_p > 0.0f && top_p <= 1.0f, "device sampling: top_p must be in (0, 1] (got {})",
               top_p);
  TPNODE_CHECK(min_p >= 0.0f && min_p <= 1.0f, "device sampling: min_p must be in [0, 1] (got {})",
               min_p);
}

DeviceSampling device_sampling_for(const SamplingParams& p) {
  const bool penalties = p.penalty_last_n > 0 &&
                         (p.repetition_penalty != 1.0f || p.presence_penalty != 0.0f ||
                          p.frequency_penalty != 0.0f);
  if (penalties) return {};
  return {.enabled = true,
          .temperature = p.temperature,
          .top_k = p.top_k,
          .top_p = p.top_p,
          .min_p = p.min_p,
          .seed = p.seed};
}

namespace {

// Little-endian fixed-width fields; every rank is the same architecture (x86-64), and the
// reader checks each length against the bytes left.
class Writer {
 public:
  template <typename T>
  void put(T v) {
    out_.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  void put_ints(const std::vector<int32_t>& v) {
    put<uint32_t>(static_cast<uint32_t>(v.size()));
    out_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(int32_t));
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(const std::string& s) : p_(s.data()), left_(s.size()) {}
  template <typename T>
  T get() {
    TPNODE_CHECK(left_ >= sizeof(T), "step plan: truncated ({} bytes left, need {})", left_,
                 sizeof(T));
    T v;
    std::memcpy(&v, p_, sizeof(T));
    p_ += sizeof(T);
    left_ -= sizeof(T);
    return v;
  }
  std::vector<int32_t> get_ints() {
    const uint32_t n = get<uint32_t>();
    TPNODE_CHECK(n <= left_ / sizeof(int32_t), "step plan: array of {} ints past the end", n);
    std::vector<int32_t> v(n);
    std::memcpy(v.data(), p_, n * sizeof(int32_t));
    p_ += n * sizeof(int32_t);
    left_ -= n * sizeof(int32_t);
    return v;
  }
  size_t left() const { return left_; }

 private:
  const char* p_;
  size_t left_;
};

constexpr uint32_t kMagic = 0x50545053;  // "SPTP"

}  // namespace

std::string serialize(const StepPlan& plan) {
  Writer w;
  w.put<uint32_t>(kMagic);
  w.put<uint64_t>(plan.step);
  w.put<uint8_t>(plan.shutdown ? 1 : 0);
  w.put<uint32_t>(static_cast<uint32_t>(plan.seqs.size()));
  for (const auto& s : plan.seqs) {
    w.put<uint64_t>(s.seq_id);
    w.put<int32_t>(s.n_past);
    w.put<uint8_t>(s.want_logits ? 1 : 0);
    w.put_ints(s.tokens);
    w.put_ints(s.blocks);
    w.put<uint8_t>(s.sampling.enabled ? 1 : 0);
    w.put<float>(s.sampling.temperature);
    w.put<int32_t>(s.sampling.top_k);
    w.put<float>(s.sampling.top_p);
    w.put<float>(s.sampling.min_p);
    w.put<uint64_t>(s.sampling.seed);
  }
  return w.take();
}

StepPlan deserialize_step_plan(const std::string& bytes) {
  Reader r(bytes);
  TPNODE_CHECK(r.get<uint32_t>() == kMagic, "step plan: bad magic");
  StepPlan plan;
  plan.step = r.get<uint64_t>();
  plan.shutdown = r.get<uint8_t>() != 0;
  const uint32_t n = r.get<uint32_t>();
  // Each sequence takes at least 46 bytes, which bounds a corrupt count.
  TPNODE_CHECK(n <= r.left() / 46 + 1, "step plan: {} sequences cannot fit", n);
  plan.seqs.resize(n);
  for (auto& s : plan.seqs) {
    s.seq_id = r.get<uint64_t>();
    s.n_past = r.get<int32_t>();
    s.want_logits = r.get<uint8_t>() != 0;
    s.tokens = r.get_ints();
    s.blocks = r.get_ints();
    s.sampling.enabled = r.get<uint8_t>() != 0;
    s.sampling.temperature = r.get<float>();
    s.sampling.top_k = r.get<int32_t>();
    s.sampling.top_p = r.get<float>();
    s.sampling.min_p = r.get<float>();
    s.sampling.seed = r.get<uint64_t>();
    TPNODE_CHECK(s.n_past >= 0, "step plan: negative n_past");
    s.sampling.validate();
  }
  TPNODE_CHECK(r.left() == 0, "step plan: {} trailing bytes", r.left());
  return plan;
}

}  // namespace tpnode
