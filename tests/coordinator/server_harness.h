// A whole coordinator over the fake model: step loop thread, service, TCP server on a free
// port, io_context threads. Tests talk to it through real sockets.
#pragma once

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "coordinator/http_server.h"
#include "coordinator/metrics.h"
#include "coordinator/service.h"
#include "coordinator/step_loop.h"
#include "coordinator/tcp_server.h"
#include "tests/coordinator/fake_model.h"

namespace tpnode::coord::testing {

struct HarnessOptions {
  FakeExecutorOptions exec{.kv_blocks = 256, .block_size = 16};
  SchedulerOptions scheduler{.max_batch_tokens = 64, .max_seqs = 16, .max_context = 1024};
  int64_t max_queue = 1024;
  ServiceOptions service;
  TcpServerOptions tcp{.port = 0};
  HttpServerOptions http{.port = 0};
  bool attach = true;  // false: the service stays "loading" until attach()
  NextToken model = hashed_model(/*eos_every=*/29);
};

// "role: content" lines, then "assistant:"; enough to tell chat from plain prompts.
inline std::string render_fake_chat(const std::vector<ChatMessage>& messages) {
  std::string out;
  for (const auto& m : messages) out += m.role + ": " + m.content + "\n";
  return out + "assistant:";
}

class ServerHarness {
 public:
  explicit ServerHarness(const HarnessOptions& o = {})
      : options(o),
        exec(o.exec, o.model),
        loop(StepLoopOptions{.scheduler = o.scheduler,
                             .kv_blocks = o.exec.kv_blocks,
                             .kv_block_size = o.exec.block_size,
                             .max_queue = o.max_queue},
             exec, tok, &metrics),
        service(o.service, metrics),
        work(io.get_executor()) {
    if (o.attach) attach();
    loop.start();
    tcp = std::make_unique<TcpServer>(io, service, o.tcp);
    tcp->start();
    http = std::make_unique<HttpServer>(io, service, o.http);
    http->start();
    for (int i = 0; i < 2; ++i) threads.emplace_back([this] { io.run(); });
  }

  void attach() { service.attach(tok, loop, render_fake_chat); }

  ~ServerHarness() {
    tcp->stop_accepting();
    http->stop_accepting();
    loop.stop();
    work.reset();
    // Let the last replies and closes run, then stop.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    io.stop();
    for (auto& t : threads) t.join();
  }

  uint16_t port() const { return tcp->port(); }
  uint16_t http_port() const { return http->port(); }

  // True once nothing runs or waits and every KV block is free again.
  bool wait_idle(std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      const StepLoopStats s = loop.stats();
      if (s.running == 0 && s.waiting == 0 && s.kv_free_blocks == s.kv_total_blocks) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return false;
  }

  std::string reference(const std::string& prompt, int64_t max_tokens) const {
    return reference_text(options.model, tok, tok.encode(prompt, true, false), max_tokens,
                          options.scheduler.max_context);
  }

  HarnessOptions options;
  FakeTokenizer tok;
  Metrics metrics;
  FakeExecutor exec;
  StepLoop loop;
  Service service;
  boost::asio::io_context io;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work;
  std::unique_ptr<TcpServer> tcp;
  std::unique_ptr<HttpServer> http;
  std::vector<std::thread> threads;
};

}  // namespace tpnode::coord::testing
