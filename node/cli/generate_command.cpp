// tpnode generate: one prompt, streamed to stdout. Under mpirun rank 0 plans and samples,
// every rank runs its shard.
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <fstream>

#include "node/cli/command.h"
#include "node/cli/runtime.h"
#include "node/common/error.h"
#include "node/engine/kv_blocks.h"
#include "node/engine/sampler.h"
#include "node/model/chat_template.h"

namespace tpnode::cli {
namespace {

struct GenerateOptions {
  RuntimeOptions runtime;
  std::string prompt;
  std::string system;
  int n_predict = 128;
  bool chat = false;
  bool ignore_eos = false;
  bool show_special = false;
  std::string logits_out;  // every sampled step's logits, float32, for comparisons
  std::string tokens_out;  // generated token ids, one per line
  bool host_sampling = false;  // sample on the host even when the backend can
  bool overlap = true;         // queue each decode step before reading the last one's token
  SamplingParams sampling;
};

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

int run_generate(const GenerateOptions& o) {
  o.sampling.validate();
  TPNODE_CHECK(o.n_predict >= 0, "-n must be >= 0");
  auto rt = make_runtime(o.runtime);
  if (!rt->is_root()) return rt->run_worker();

  const Tokenizer& tok = *rt->tokenizer;
  Engine& engine = *rt->engine;
  std::string text = o.prompt;
  if (o.chat) {
    std::vector<ChatMessage> messages;
    if (!o.system.empty()) messages.push_back({"system", o.system});
    messages.push_back({"user", o.prompt});
    text = ChatTemplate::from_tokenizer(tok.data()).apply(messages, true);
  }
  std::vector<int32_t> tokens = tok.encode(text, /*add_special=*/true, /*parse_special=*/o.chat);
  TPNODE_CHECK(!tokens.empty(), "the prompt is empty after tokenization");
  const int64_t limit = engine.max_context();
  TPNODE_CHECK(static_cast<int64_t>(tokens.size()) < limit,
               "prompt of {} tokens does not fit the context of {} (raise --ctx)", tokens.size(),
               limit);

  KvBlockManager kv(engine.kv_blocks(), engine.options().kv_block_size);
  Sampler sampler(o.sampling);
  StreamDecoder decoder(tok);
  std::ofstream logits_file, tokens_file;
  if (!o.logits_out.empty()) logits_file.open(o.logits_out, std::ios::binary);
  if (!o.tokens_out.empty()) tokens_file.open(o.tokens_out);

  constexpr uint64_t kSeq = 1;
  const int64_t n_prompt = static_cast<int64_t>(tokens.size());
  const int64_t n_total = std::min<int64_t>(n_prompt + o.n_predict, limit);
  TPNODE_CHECK(kv.reserve(kSeq, n_total), "KV cache too small for {} tokens", n_total);

  StepPlan plan;
  int64_t n_past = 0, n_gen = 0;
  auto t0 = Clock::now();
  double prompt_s = 0;
  // Prefill in chunks of the step budget; only the last chunk's logits are needed.
  const int64_t chunk = engine.options().max_batch_tokens;
  std::vector<int32_t> pending(tokens.begin(), tokens.end());
  // Tokens drawn on the device can feed the next step there (kChainedToken): that step is
  // queued before this one's token is read, so the GPU does not wait for the host.
  const DeviceSampling device =
      !logits_file && !o.host_sampling ? device_sampling_for(o.sampling) : DeviceSampling{};
  const bool chain = o.overlap && device.enabled && rt->executor->chains();
  bool queued = false;  // this iteration's step went in as the last one's chained successor
  while (true) {
    const int64_t take = std::min<int64_t>(chunk, static_cast<int64_t>(pending.size()));
    plan.step += 1;
    plan.seqs.assign(1, SeqStep{});
    SeqStep& s = plan.seqs[0];
    s.seq_id = kSeq;
    s.n_past = static_cast<int32_t>(n_past);
    s.tokens.assign(pending.begin(), pending.begin() + take);
    s.blocks = kv.table(kSeq);
    s.want_logits = take == static_cast<int64_t>(pending.size());
    // Sampled where the logits are when the engine can, unless the logits are wanted.
    if (s.want_logits) s.sampling = device;
    if (!queued) rt->executor->submit(plan);
    // The next step goes in now when this step's token will be used and so would the next's;
    // if this token ends the text, the queued step is collected and dropped.
    queued = chain && s.want_logits && n_gen + 1 < o.n_predict && n_past + take + 1 < n_total;
    if (queued) {
      StepPlan next = plan;
      next.step += 1;
      next.seqs[0].n_past = static_cast<int32_t>(n_past + take);
      next.seqs[0].tokens = {kChainedToken};
      rt->executor->submit(next);
    }
    const StepOutput& out = rt->executor->collect();
    n_past += take;
    pending.erase(pending.begin(), pending.begin() + take);
    if (!pending.empty()) continue;
    if (n_gen == 0) prompt_s = seconds_since(t0);
    auto drop_queued = [&] {
      if (queued) rt->executor->collect();
    };
    if (n_gen >= o.n_predict || n_past >= n_total) {
      drop_queued();
      break;
    }

    if (logits_file) {
      logits_file.write(reinterpret_cast<const char*>(out.logits.data()),
                        static_cast<std::streamsize>(out.logits.size() * sizeof(float)));
    }
    const int32_t next = out.sampled(0) ? out.tokens[0] : sampler.sample(out.logits, tokens);
    tokens.push_back(next);
    ++n_gen;
    if (tokens_file) tokens_file << next << '\n';
    if (!o.ignore_eos && tok.is_eog(next)) {
      drop_queued();
      break;
    }
    const std::string piece = o.show_special ? tok.token_to_piece(next, true) : decoder.push(next);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    pending.assign(1, next);
  }
  const std::string tail = decoder.flush();
  std::fwrite(tail.data(), 1, tail.size(), stdout);
  std::fputs("\n", stdout);
  std::fflush(stdout);
  const double gen_s = seconds_since(t0) - prompt_s;
  rt->executor->shutdown();
  kv.release(kSeq);
  std::fprintf(stderr,
               "prompt: %lld tokens in %.3f s (%.1f tok/s); generation: %lld tokens in %.3f s "
               "(%.1f tok/s)\n",
               static_cast<long long>(n_prompt), prompt_s, n_prompt / std::max(prompt_s, 1e-9),
               static_cast<long long>(n_gen), gen_s,
               n_gen > 1 ? (n_gen - 1) / std::max(gen_s, 1e-9) : 0.0);
  return 0;
}

const RegisterCommand kRegister{Command{
    "generate", "generate text from a prompt, streamed to stdout",
    [](CLI::App& app) -> std::function<int()> {
      auto o = std::make_shared<GenerateOptions>();
      // llama.cpp's defaults, so the two are comparable out of the box.
      o->sampling.temperature = 0.8f;
      o->sampling.top_k = 40;
      o->sampling.top_p = 0.95f;
      o->sampling.min_p = 0.05f;
      // One sequence: an automatic KV cache of one context, not of a server's many.
      o->runtime.engine.max_seqs = 1;
      add_runtime_options(app, o->runtime);
      app.add_option("-p,--prompt", o->prompt, "the prompt")->required();
      app.add_option("-n,--n-predict", o->n_predict, "tokens to generate");
      app.add_flag("--chat", o->chat, "wrap the prompt in the model's chat template");
      app.add_option("--system", o->system, "system message (with --chat)");
      app.add_option("--temp", o->sampling.temperature, "temperature (0 = greedy)");
      app.add_option("--top-k", o->sampling.top_k, "top-k (0 = off)");
      app.add_option("--top-p", o->sampling.top_p, "top-p");
      app.add_option("--min-p", o->sampling.min_p, "min-p");
      app.add_option("--repeat-penalty", o->sampling.repetition_penalty, "repetition penalty");
      app.add_option("--presence-penalty", o->sampling.presence_penalty, "presence penalty");
      app.add_option("--frequency-penalty", o->sampling.frequency_penalty, "frequency penalty");
      app.add_option("--seed", o->sampling.seed, "sampling seed");
      app.add_flag("--host-sampling", o->host_sampling,
                   "sample on the host even when the backend can sample on the device (a "
                   "seeded run then matches the CPU backend's tokens)");
      app.add_flag("--ignore-eos", o->ignore_eos, "keep generating past end-of-generation");
      app.add_flag("!--no-overlap", o->overlap,
                   "read each token before queueing the next step (by default, with tokens "
                   "drawn on one GPU, the next step is queued first and takes it there)");
      app.add_flag("--special", o->show_special, "print control tokens");
      app.add_option("--logits-out", o->logits_out, "write each sampled step's logits (f32)");
      app.add_option("--tokens-out", o->tokens_out, "write generated token ids");
      return [o] { return run_generate(*o); };
    }}};

}  // namespace
}  // namespace tpnode::cli
