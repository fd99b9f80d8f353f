// The OpenAI-compatible HTTP server (Boost.Beast) over the same Service as the TCP
// protocol: /v1/completions, /v1/chat/completions, /v1/models, /health, /metrics.
#pragma once

#include "coordinator/http_options.h"
#include "coordinator/listener.h"

namespace tpnode::coord {

class Service;

class HttpServer {
 public:
  // Binds and listens at once. `service` must outlive the io_context's handlers.
  HttpServer(boost::asio::io_context& io, Service& service, const HttpServerOptions& options);

  uint16_t port() const { return listener_.port(); }
  void start() { listener_.start(); }
  void stop_accepting() { listener_.stop_accepting(); }
  size_t open_connections() const { return listener_.open()->load(); }

 private:
  Listener listener_;
};

}  // namespace tpnode::coord
