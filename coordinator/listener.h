// Accepts TCP connections on an io_context and hands each socket (on its own strand) to a
// callback; past the connection limit the socket goes to `refuse` instead. Shared by the
// line-protocol and HTTP servers.
#pragma once

#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace tpnode::coord {

struct ListenerOptions {
  std::string what;  // for messages: "TCP server", "HTTP server"
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  size_t max_connections = 4096;
};

class Listener {
 public:
  using Accept = std::function<void(boost::asio::ip::tcp::socket)>;

  // Binds and listens at once; throws tpnode::Error when it cannot.
  Listener(boost::asio::io_context& io, const ListenerOptions& options, Accept accept,
           Accept refuse);
  ~Listener();

  uint16_t port() const;
  void start();           // begins accepting
  void stop_accepting();  // from any thread
  // Counts live connections: sessions hold a copy and decrement it when they end.
  const std::shared_ptr<std::atomic<size_t>>& open() const { return open_; }

 private:
  void accept();

  boost::asio::io_context& io_;
  ListenerOptions options_;
  Accept on_accept_;
  Accept on_refuse_;
  boost::asio::ip::tcp::acceptor acceptor_;
  std::shared_ptr<std::atomic<size_t>> open_ = std::make_shared<std::atomic<size_t>>(0);
};

}  // namespace tpnode::coord
