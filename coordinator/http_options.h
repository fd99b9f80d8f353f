// Options of the OpenAI-compatible HTTP server.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace tpnode::coord {

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;               // 0 = any free port (tests)
  size_t max_body_bytes = 1 << 20;    // larger bodies get 413
  size_t max_output_bytes = 4 << 20;  // unsent stream bytes before the request is cut off
  double idle_timeout_s = 300.0;      // keep-alive connections idle this long close
  size_t max_connections = 4096;
};

}  // namespace tpnode::coord
