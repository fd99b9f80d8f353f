// One HTTP/1.1 connection of the OpenAI-compatible API (keep-alive, one request at a time).
// While a generation runs the session keeps a read pending, so a client that disconnects
// cancels its request at once; streamed replies are Server-Sent Events in chunked encoding.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include <atomic>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "coordinator/http_options.h"
#include "coordinator/openai_format.h"
#include "coordinator/request.h"

namespace tpnode::coord {

class Service;

class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(boost::asio::ip::tcp::socket socket, Service& service,
              const HttpServerOptions& options, std::shared_ptr<std::atomic<size_t>> open);
  ~HttpSession();

  void start();
  // From the step loop: results of the generation with this serial.
  void deliver_text(uint64_t serial, std::string text);
  void deliver_end(uint64_t serial, RequestEnd end, std::string text);

 private:
  using Request = boost::beast::http::request<boost::beast::http::string_body>;

  void do_read();
  void on_read(const boost::system::error_code& ec);
  void route(const Request& req);
  void handle_generation(const Request& req, bool chat);
  void on_text(std::string& text);
  void on_end(const RequestEnd& end, const std::string& text);

  // Queues a complete response and ends the exchange.
  void respond(unsigned status, std::string body, std::string_view content_type = "application/json");
  void respond_error(ErrorCode code, std::string_view message);
  void send_event(std::string_view data);  // one SSE event as one HTTP chunk
  void send(std::string bytes);
  void do_write();
  void end_exchange();  // the response is fully queued; read the next request once written
  void start_watch();
  void on_watch(const boost::system::error_code& ec, size_t n);
  void close();

  boost::beast::tcp_stream stream_;
  boost::beast::flat_buffer buffer_;
  std::optional<boost::beast::http::request_parser<boost::beast::http::string_body>> parser_;
  Service& service_;
  HttpServerOptions options_;
  std::shared_ptr<std::atomic<size_t>> open_;

  bool keep_alive_ = true;
  bool in_exchange_ = false;     // a request was read and its response is not fully written
  bool response_queued_ = false;  // ...and all of the response is queued
  bool watching_ = false;        // a read is pending to notice a disconnect
  // The generation in progress, if any.
  uint64_t serial_ = 0;
  std::shared_ptr<RequestHandle> active_;
  bool streaming_ = false;
  bool include_usage_ = false;
  bool first_chunk_ = true;
  OpenAIReply reply_;

  std::deque<std::string> out_;
  size_t out_bytes_ = 0;
  bool writing_ = false;
  bool closed_ = false;
};

}  // namespace tpnode::coord
