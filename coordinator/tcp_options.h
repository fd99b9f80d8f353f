// Options of the TCP JSON-lines server.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace tpnode::coord {

struct TcpServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8700;                     // 0 = any free port (tests)
  size_t max_line_bytes = 1 << 20;          // longer lines get bad_request and are skipped
  size_t max_output_bytes = 4 << 20;        // replies buffered per connection before slow_reader
  double idle_timeout_s = 300.0;            // a connection with nothing in flight closes after
  size_t max_connections = 4096;
  int socket_send_buffer = 0;               // SO_SNDBUF of connections; 0 = the OS's

};

}  // namespace tpnode::coord
