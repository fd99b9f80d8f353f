// tpnode bench-serve: a load generator for a running `tpnode serve`. N clients, each on its
// own TCP connection, send R requests in all (streamed, fixed prompt and generation lengths)
// and the run reports requests/s, output tokens/s, time to first token and inter-token
// latency percentiles.
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>
#include <boost/json.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cmath>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <unistd.h>

#include "node/cli/command.h"
#include "node/common/error.h"

namespace tpnode::cli {
namespace {

namespace asio = boost::asio;
namespace json = boost::json;
using Clock = std::chrono::steady_clock;

struct BenchServeOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8700;
  int clients = 8;
  int requests = 64;
  int prompt_words = 128;  // about one token each
  int gen_tokens = 128;
  uint64_t seed = 1;
  std::string json_out;
  double wait_ready_s = 60;  // how long to retry while the server is loading (not_ready)
};

struct Result {
  bool ok = false;
  std::string error;
  double ttft_s = 0;
  std::vector<double> gaps_s;  // between streamed chunks
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Distinct prompts per request (so no two are alike), drawn from common words.
std::string make_prompt(int words, uint64_t seed) {
  static const char* kWords[] = {"the", "time", "river", "city", "light", "small", "house",
                                 "open", "green", "water", "story", "north", "music", "stone",
                                 "early", "paper", "field", "table", "quick", "learn"};
  std::mt19937_64 rng(seed);
  std::string out = "Continue this text:";
  for (int i = 0; i < words; ++i) {
    out += ' ';
    out += kWords[rng() % std::size(kWords)];
  }
  return out;
}

Result run_one(asio::ip::tcp::socket& socket, asio::streambuf& buf, const BenchServeOptions& o,
               int index) {
  Result r;
  json::object req{{"id", index},
                   {"prompt", make_prompt(o.prompt_words, o.seed * 1000003 + index)},
                   {"max_tokens", o.gen_tokens},
                   {"ignore_eos", true},
                   {"stream", true}};
  const std::string line = json::serialize(req) + "\n";
  const auto t0 = Clock::now();
  auto last = t0;
  bool first = true;
  boost::system::error_code ec;
  asio::write(socket, asio::buffer(line), ec);
  if (ec) {
    r.error = ec.message();
    return r;
  }
  while (true) {
    const size_t n = asio::read_until(socket, buf, '\n', ec);
    if (ec) {
      r.error = "connection lost: " + ec.message();
      return r;
    }
    std::string reply(asio::buffers_begin(buf.data()),
                      asio::buffers_begin(buf.data()) + static_cast<std::ptrdiff_t>(n - 1));
    buf.consume(n);
    const auto now = Clock::now();
    const json::object msg = json::parse(reply).as_object();
    if (const auto* err = msg.if_contains("error")) {
      r.error = json::value_to<std::string>(err->at("code"));
      return r;
    }
    if (msg.contains("text")) {
      if (first) {
        r.ttft_s = seconds(now - t0);
        first = false;
      } else {
        r.gaps_s.push_back(seconds(now - last));
      }
      last = now;
    }
    if (msg.contains("done")) {
      r.ok = true;
      r.prompt_tokens = msg.at("usage").at("prompt_tokens").as_int64();
      r.completion_tokens = msg.at("usage").at("completion_tokens").as_int64();
      return r;
    }
  }
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  return v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)];
}

// One client connection to the server; ec holds why it could not connect.
struct Connection {
  asio::io_context io;
  asio::ip::tcp::socket socket{io};
  asio::streambuf buf;
  boost::system::error_code ec;

  explicit Connection(const BenchServeOptions& o) {
    asio::ip::tcp::resolver resolver(io);
    const auto endpoints = resolver.resolve(o.host, std::to_string(o.port), ec);
    if (!ec) asio::connect(socket, endpoints, ec);
  }
};

// Waits until the server answers a one-token request (it refuses requests with not_ready
// while loading, and its port may not be open yet); false after `seconds`.
bool wait_until_ready(const BenchServeOptions& o, double seconds_max) {
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(seconds_max));
  BenchServeOptions probe = o;
  probe.prompt_words = 1;
  probe.gen_tokens = 1;
  while (true) {
    Connection c(o);
    std::string error = c.ec ? "cannot connect: " + c.ec.message() : "";
    if (!c.ec) {
      const Result r = run_one(c.socket, c.buf, probe, -1);
      if (r.ok) return true;
      error = r.error;
    }
    if (Clock::now() >= deadline) {
      fmt::print(stderr, "bench-serve: the server at {}:{} is not ready ({})\n", o.host, o.port,
                 error);
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

int run_bench_serve(const BenchServeOptions& o) {
  TPNODE_CHECK(o.clients > 0 && o.requests > 0 && o.gen_tokens > 0 && o.prompt_words >= 0,
               "clients, requests and gen tokens must be positive");
  if (o.wait_ready_s > 0 && !wait_until_ready(o, o.wait_ready_s)) return 1;
  std::atomic<int> next{0};
  std::atomic<int> finished{0};
  std::atomic<int64_t> tokens{0};
  std::mutex mu;
  std::condition_variable all_done;
  std::vector<Result> results;
  const auto t0 = Clock::now();
  // When the last request finished: the wall time is measured to it, not to the end of the
  // progress display's wait.
  Clock::time_point t_end = t0;
  std::vector<std::thread> threads;
  for (int c = 0; c < o.clients; ++c) {
    threads.emplace_back([&] {
      Connection conn(o);
      for (int i = next++; i < o.requests; i = next++) {
        Result r;
        if (conn.ec) {
          r.error = "cannot connect: " + conn.ec.message();
        } else {
          r = run_one(conn.socket, conn.buf, o, i);
        }
        tokens += r.completion_tokens;
        std::lock_guard lock(mu);
        results.push_back(std::move(r));
        if (++finished == o.requests) {
          t_end = Clock::now();
          all_done.notify_all();
        }
      }
    });
  }
  const bool tty = isatty(fileno(stderr)) != 0;
  while (finished.load() < o.requests) {
    {
      std::unique_lock lock(mu);
      all_done.wait_for(lock, std::chrono::milliseconds(tty ? 250 : 2000),
                        [&] { return finished.load() >= o.requests; });
    }
    const double t = seconds(Clock::now() - t0);
    std::fprintf(stderr, "%s[bench-serve] %d/%d requests, %.1f output tok/s, %.1f s%s",
                 tty ? "\r" : "", finished.load(), o.requests,
                 static_cast<double>(tokens.load()) / std::max(t, 1e-9), t, tty ? "" : "\n");
    std::fflush(stderr);
  }
  for (auto& t : threads) t.join();
  const double wall = seconds(t_end - t0);
  if (tty) std::fputs("\n", stderr);

  std::vector<double> ttft, gaps;
  int64_t out_tokens = 0, in_tokens = 0;
  int ok = 0;
  std::map<std::string, int> errors;
  for (const auto& r : results) {
    if (!r.ok) {
      ++errors[r.error];
      continue;
    }
    ++ok;
    ttft.push_back(r.ttft_s * 1e3);
    for (double g : r.gaps_s) gaps.push_back(g * 1e3);
    out_tokens += r.completion_tokens;
    in_tokens += r.prompt_tokens;
  }
  fmt::print("requests: {} ok, {} failed, {} clients, {:.2f} s\n", ok, o.requests - ok, o.clients,
             wall);
  for (const auto& [what, n] : errors) fmt::print("  error {}: {}\n", what, n);
  fmt::print("throughput: {:.2f} requests/s, {:.1f} output tokens/s, {:.1f} prompt tokens/s\n",
             ok / wall, static_cast<double>(out_tokens) / wall,
             static_cast<double>(in_tokens) / wall);
  fmt::print("TTFT ms:         p50 {:8.1f}  p90 {:8.1f}  p99 {:8.1f}\n", percentile(ttft, 50),
             percentile(ttft, 90), percentile(ttft, 99));
  fmt::print("inter-token ms:  p50 {:8.2f}  p90 {:8.2f}  p99 {:8.2f}\n", percentile(gaps, 50),
             percentile(gaps, 90), percentile(gaps, 99));
  if (!o.json_out.empty()) {
    json::object report{{"clients", o.clients},
                        {"requests", o.requests},
                        {"ok", ok},
                        {"wall_s", wall},
                        {"requests_per_s", ok / wall},
                        {"output_tokens_per_s", static_cast<double>(out_tokens) / wall},
                        {"ttft_ms", {{"p50", percentile(ttft, 50)},
                                     {"p90", percentile(ttft, 90)},
                                     {"p99", percentile(ttft, 99)}}},
                        {"itl_ms", {{"p50", percentile(gaps, 50)},
                                    {"p90", percentile(gaps, 90)},
                                    {"p99", percentile(gaps, 99)}}}};
    std::ofstream(o.json_out) << json::serialize(report) << "\n";
  }
  return ok == o.requests ? 0 : 1;
}

const RegisterCommand kRegister{Command{
    "bench-serve", "load-test a running `tpnode serve` (requests/s, tokens/s, TTFT, ITL)",
    [](CLI::App& app) -> std::function<int()> {
      auto o = std::make_shared<BenchServeOptions>();
      app.add_option("--host", o->host, "server address");
      app.add_option("--port", o->port, "server TCP port");
      app.add_option("-c,--clients", o->clients, "concurrent clients (one connection each)");
      app.add_option("-r,--requests", o->requests, "requests in all");
      app.add_option("--prompt-words", o->prompt_words, "words per prompt (about a token each)");
      app.add_option("--gen-tokens", o->gen_tokens, "tokens generated per request");
      app.add_option("--seed", o->seed, "seed of the prompt generator");
      app.add_option("--json-out", o->json_out, "also write the results as JSON here");
      app.add_option("--wait-ready", o->wait_ready_s,
                     "seconds to wait for the server to finish loading before the run (0: "
                     "start at once)");
      return [o] { return run_bench_serve(*o); };
    }}};

}  // namespace
}  // namespace tpnode::cli
