// One TCP connection of the JSON-lines protocol. It owns its socket, read and write
// buffers and the requests it started; every handler runs on the connection's strand, and
// results from the step loop are posted onto it. Closing the connection cancels its requests.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/json/fwd.hpp>

#include <array>
#include <atomic>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include "coordinator/request.h"
#include "coordinator/tcp_options.h"

namespace tpnode::coord {

class Service;

class LineSession : public std::enable_shared_from_this<LineSession> {
 public:
  // `socket` must use a strand executor; `open` counts live sessions (shared, so that a
  // session may outlive the server object). `service` must outlive every session.
  LineSession(boost::asio::ip::tcp::socket socket, Service& service,
              const TcpServerOptions& options, std::shared_ptr<std::atomic<size_t>> open);
  ~LineSession();

  void start();
  // From any thread: a reply line for the request (id, serial); `last` marks its final line.
  void deliver(std::string id, uint64_t serial, std::string line, bool last);

 private:
  struct InFlight {
    uint64_t serial;
    std::shared_ptr<RequestHandle> handle;
    bool dropped = false;  // ended early by back-pressure; later results are discarded
  };

  void do_read();
  void on_read(const boost::system::error_code& ec, size_t n);
  void handle_line(std::string_view line);
  void handle_request(const boost::json::object& obj);
  void handle_cancel(const boost::json::object& obj);
  void on_delivery(const std::string& id, uint64_t serial, std::string& line, bool last);
  void send(std::string line);
  void do_write();
  void shed_load();
  void arm_idle_timer();
  void close();

  boost::asio::ip::tcp::socket socket_;
  boost::asio::steady_timer idle_timer_;
  Service& service_;
  TcpServerOptions options_;
  std::shared_ptr<std::atomic<size_t>> open_;
  std::array<char, 64 * 1024> read_buf_;
  std::string line_;
  bool discarding_ = false;  // skipping the rest of an over-long line
  std::deque<std::string> out_;
  size_t out_bytes_ = 0;
  bool writing_ = false;
  bool shedding_ = false;  // output buffer full: new requests are refused
  bool closed_ = false;
  uint64_t next_serial_ = 1;
  std::unordered_map<std::string, InFlight> in_flight_;  // by client id
};

}  // namespace tpnode::coord
