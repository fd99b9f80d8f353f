// The TCP JSON-lines server: accepts connections on the io_context it is given and hands
// each to a LineSession. Everything runs on that io_context's threads.
#pragma once

#include <memory>

#include "coordinator/listener.h"
#include "coordinator/tcp_options.h"

namespace tpnode::coord {

class Service;

class TcpServer {
 public:
  // Binds and listens at once (throws tpnode::Error when the address is taken).
  // `service` must outlive the io_context's handlers.
  TcpServer(boost::asio::io_context& io, Service& service, const TcpServerOptions& options);

  uint16_t port() const { return listener_.port(); }
  void start() { listener_.start(); }
  void stop_accepting() { listener_.stop_accepting(); }
  size_t open_connections() const { return listener_.open()->load(); }

 private:
  Listener listener_;
};

}  // namespace tpnode::coord
