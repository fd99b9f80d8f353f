// tpnode serve: the serving node. Every rank loads its shard; rank 0 also runs the
// coordinator (TCP JSON lines + OpenAI-compatible HTTP) and drives the other ranks through
// the executor. See docs/PROTOCOL.md.
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "coordinator/http_server.h"
#include "coordinator/metrics.h"
#include "coordinator/service.h"
#include "coordinator/step_loop.h"
#include "coordinator/tcp_server.h"
#include "node/cli/command.h"
#include "node/cli/runtime.h"
#include "node/common/error.h"
#include "node/model/chat_template.h"
#include "parallel/world.h"

namespace tpnode::cli {
namespace {

namespace asio = boost::asio;
using coord::Clock;

struct ServeOptions {
  RuntimeOptions runtime;
  coord::TcpServerOptions tcp;
  coord::HttpServerOptions http;
  coord::ServiceOptions service;
  bool no_http = false;
  bool host_sampling = false;  // sample every request on the host, never on the GPU
  bool overlap = true;         // queue decode steps ahead where the engine chains
  int64_t max_queue = 256;
  double drain_seconds = 30.0;
  int io_threads = 2;
  std::string log_level = "info";
};

// The network side of rank 0: io_context threads, both servers, signal handling. Built
// before the model loads, so /health can answer 503 while it does.
class Frontend {
 public:
  Frontend(const ServeOptions& o, coord::Service& service)
      : work_(io_.get_executor()), signals_(io_, SIGINT, SIGTERM) {
    tcp_ = std::make_unique<coord::TcpServer>(io_, service, o.tcp);
    tcp_->start();
    if (!o.no_http) {
      http_ = std::make_unique<coord::HttpServer>(io_, service, o.http);
      http_->start();
    }
    spdlog::info("listening: TCP JSON lines on {}:{}{}", o.tcp.host, tcp_->port(),
                 http_ ? fmt::format(", HTTP on {}:{}", o.http.host, http_->port()) : "");
    for (int i = 0; i < std::max(1, o.io_threads); ++i) threads_.emplace_back([this] { io_.run(); });
  }

  ~Frontend() { stop(); }

  // on_signal runs on a network thread for each SIGINT/SIGTERM.
  void on_signal(std::function<void(int)> handler) {
    handler_ = std::move(handler);
    wait_signal();
  }

  void stop_accepting() {
    tcp_->stop_accepting();
    if (http_) http_->stop_accepting();
  }

  // Lets the last replies go out (bounded), then stops the network threads.
  void stop() {
    if (threads_.empty()) return;
    stop_accepting();
    const auto deadline = Clock::now() + std::chrono::seconds(2);
    while (Clock::now() < deadline && open_connections() > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    work_.reset();
    io_.stop();
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

 private:
  size_t open_connections() const {
    return tcp_->open_connections() + (http_ ? http_->open_connections() : 0);
  }

  void wait_signal() {
    signals_.async_wait([this](const boost::system::error_code& ec, int sig) {
      if (ec) return;
      handler_(sig);
      wait_signal();
    });
  }

  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  asio::signal_set signals_;
  std::unique_ptr<coord::TcpServer> tcp_;
  std::unique_ptr<coord::HttpServer> http_;
  std::vector<std::thread> threads_;
  std::function<void(int)> handler_;
};

coord::ChatRenderer chat_renderer(const Tokenizer& tok) {
  try {
    auto tmpl = std::make_shared<ChatTemplate>(ChatTemplate::from_tokenizer(tok.data()));
    return [tmpl](const std::vector<ChatMessage>& messages) {
      return tmpl->apply(messages, /*add_generation_prompt=*/true);
    };
  } catch (const Error& e) {
    spdlog::warn("chat requests disabled: {}", e.what());
    return {};
  }
}

int run_serve(ServeOptions& o) {
  spdlog::set_level(spdlog::level::from_str(o.log_level));
  if (o.service.model_name.empty()) {
    o.service.model_name = std::filesystem::path(o.runtime.model).filename().string();
    if (o.service.model_name.ends_with(".gguf")) {
      o.service.model_name.resize(o.service.model_name.size() - 5);
    }
  }
  coord::Metrics metrics;
  coord::Service service(o.service, metrics);
  // Under an MPI launcher only rank 0 listens, and it knows its rank after the runtime starts.
  std::unique_ptr<Frontend> frontend;
  if (!started_by_mpi_launcher()) frontend = std::make_unique<Frontend>(o, service);

  auto rt = make_runtime(o.runtime);
  if (!rt->is_root()) return rt->run_worker();

  const Engine& engine = *rt->engine;
  coord::StepLoopOptions lo;
  lo.scheduler.max_batch_tokens = engine.options().max_batch_tokens;
  lo.scheduler.max_seqs = engine.options().max_seqs;
  lo.scheduler.max_context = engine.max_context();
  lo.scheduler.device_sampling = !o.host_sampling;
  lo.kv_blocks = engine.kv_blocks();
  lo.kv_block_size = engine.options().kv_block_size;
  lo.max_queue = o.max_queue;
  lo.overlap = o.overlap;
  coord::StepLoop loop(lo, *rt->executor, *rt->tokenizer, &metrics);
  service.attach(*rt->tokenizer, loop, chat_renderer(*rt->tokenizer));
  if (!frontend) frontend = std::make_unique<Frontend>(o, service);

  std::atomic<int> signals{0};
  frontend->on_signal([&](int sig) {
    if (signals.fetch_add(1) == 0) {
      spdlog::info("signal {}: draining (at most {} s), then exiting", sig, o.drain_seconds);
      service.set_draining();
      frontend->stop_accepting();
      loop.drain(Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(o.drain_seconds)));
    } else {
      spdlog::info("signal {} again: cancelling what is left", sig);
      loop.drain(Clock::now());
    }
  });
  spdlog::info("ready: model {}, context {} tokens, KV {} blocks x {} tokens, {} seqs x {} "
               "tokens per step",
               o.service.model_name, loop.context_limit(), lo.kv_blocks, lo.kv_block_size,
               lo.scheduler.max_seqs, lo.scheduler.max_batch_tokens);

  // The step loop runs here, on the main thread: it drives every rank through the executor.
  loop.run();
  rt->executor->shutdown();
  frontend->stop();
  spdlog::info("stopped");
  return 0;
}

const RegisterCommand kRegister{Command{
    "serve", "serve the model over TCP JSON lines and an OpenAI-compatible HTTP API",
    [](CLI::App& app) -> std::function<int()> {
      auto o = std::make_shared<ServeOptions>();
      o->http.port = 8080;
      o->service.model_name.clear();  // default: the model file's name
      add_runtime_options(app, o->runtime);
      app.add_option("--host", o->tcp.host, "address to listen on (both protocols)");
      app.add_option("--port", o->tcp.port, "TCP JSON-lines port (0 = any free port)");
      app.add_option("--http-port", o->http.port, "HTTP port (0 = any free port)");
      app.add_flag("--no-http", o->no_http, "serve only the TCP protocol");
      app.add_flag("--host-sampling", o->host_sampling,
                   "sample on the host even where the GPU could (one-GPU runs sample unpenalised "
                   "requests on the device by default)");
      app.add_flag("!--no-overlap", o->overlap,
                   "run one step at a time (by default, on one GPU, each decode step is queued "
                   "before the one before it returns its tokens)");
      app.add_option("--model-name", o->service.model_name,
                     "model id reported by /v1/models (default: the file name)");
      app.add_option("--max-queue", o->max_queue, "requests waiting to start before overloaded")
          ->check(CLI::Range(1, 1 << 20));
      app.add_option("--default-max-tokens", o->service.default_max_tokens,
                     "max_tokens of requests that give none")
          ->check(CLI::Range(1, 1 << 30));
      app.add_option("--request-timeout", o->service.max_request_seconds,
                     "deadline of every request in seconds (0 = none)")
          ->check(CLI::NonNegativeNumber);
      app.add_option("--max-line-bytes", o->tcp.max_line_bytes, "longest TCP request line");
      app.add_option("--max-body-bytes", o->http.max_body_bytes, "largest HTTP request body");
      app.add_option("--max-output-bytes", o->tcp.max_output_bytes,
                     "unread reply bytes per connection before its requests are cut off");
      app.add_option("--idle-timeout", o->tcp.idle_timeout_s,
                     "seconds before an idle connection is closed")
          ->check(CLI::PositiveNumber);
      app.add_option("--drain-seconds", o->drain_seconds,
                     "on SIGTERM/SIGINT, time in-flight requests get to finish")
          ->check(CLI::NonNegativeNumber);
      app.add_option("--io-threads", o->io_threads, "network threads")->check(CLI::Range(1, 64));
      app.add_option("--log-level", o->log_level, "trace, debug, info, warn, error")
          ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
      return [o] {
        // One set of limits for both protocols.
        o->http.host = o->tcp.host;
        o->http.max_output_bytes = o->tcp.max_output_bytes;
        o->http.idle_timeout_s = o->tcp.idle_timeout_s;
        return run_serve(*o);
      };
    }}};

}  // namespace
}  // namespace tpnode::cli
