#include "coordinator/http_session.h"

#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <sstream>

#include "coordinator/openai_request.h"
#include "coordinator/service.h"

namespace tpnode::coord {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using boost::system::error_code;

namespace {

class HttpObserver final : public RequestObserver {
 public:
  HttpObserver(std::shared_ptr<HttpSession> session, uint64_t serial, bool stream)
      : session_(std::move(session)), serial_(serial), stream_(stream) {}

  void on_text(std::string_view text) override {
    if (stream_) {
      session_->deliver_text(serial_, std::string(text));
    } else {
      text_ += text;
    }
  }

  void on_end(const RequestEnd& end) override {
    auto session = std::move(session_);  // breaks the session -> request -> observer cycle
    session->deliver_end(serial_, end, std::move(text_));
  }

 private:
  std::shared_ptr<HttpSession> session_;
  uint64_t serial_;
  bool stream_;
  std::string text_;
};

std::chrono::steady_clock::duration seconds(double s) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(s));
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

constexpr std::string_view kSseHeader =
    "HTTP/1.1 200 OK\r\n"
    "Server: tpnode\r\n"
    "Content-Type: text/event-stream\r\n"
    "Cache-Control: no-cache\r\n"
    "Transfer-Encoding: chunked\r\n"
    "\r\n";

}  // namespace

HttpSession::HttpSession(asio::ip::tcp::socket socket, Service& service,
                         const HttpServerOptions& options,
                         std::shared_ptr<std::atomic<size_t>> open)
    : stream_(std::move(socket)), service_(service), options_(options), open_(std::move(open)) {
  open_->fetch_add(1);
}

HttpSession::~HttpSession() { open_->fetch_sub(1); }

void HttpSession::start() {
  asio::post(stream_.get_executor(), [self = shared_from_this()] {
    error_code ec;
    self->stream_.socket().set_option(asio::ip::tcp::no_delay(true), ec);
    self->do_read();
  });
}

void HttpSession::do_read() {
  if (closed_) return;
  parser_.emplace();
  parser_->body_limit(options_.max_body_bytes);
  stream_.expires_after(seconds(options_.idle_timeout_s));
  http::async_read(stream_, buffer_, *parser_,
                   [self = shared_from_this()](const error_code& ec, size_t) { self->on_read(ec); });
}

void HttpSession::on_read(const error_code& ec) {
  if (closed_) return;
  if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
      ec == asio::error::connection_reset || ec == asio::error::eof) {
    close();
    return;
  }
  keep_alive_ = false;  // after a read error the stream position is unknown
  in_exchange_ = true;
  if (ec == http::error::body_limit) {
    service_.count_refused(ErrorCode::kBadRequest);
    respond(413, openai_error("invalid_request_error", "too_large",
                              fmt::format("body larger than {} bytes", options_.max_body_bytes)));
    return;
  }
  if (ec) {
    if (ec == asio::error::operation_aborted) return;
    service_.count_refused(ErrorCode::kBadRequest);
    respond(400, openai_error("invalid_request_error", "bad_request",
                              fmt::format("malformed HTTP request: {}", ec.message())));
    return;
  }
  const Request req = parser_->release();
  keep_alive_ = req.keep_alive();
  route(req);
}

void HttpSession::route(const Request& req) {
  std::string_view target(req.target().data(), req.target().size());
  target = target.substr(0, target.find('?'));
  const bool get = req.method() == http::verb::get;
  const bool post = req.method() == http::verb::post;
  if (target == "/health") {
    if (!get) return respond(405, openai_error("invalid_request_error", "method", "use GET"));
    if (service_.healthy()) return respond(200, R"({"status":"ok"})");
    return respond(503, service_.ready() ? R"({"status":"draining"})" : R"({"status":"loading"})");
  }
  if (target == "/metrics") {
    if (!get) return respond(405, openai_error("invalid_request_error", "method", "use GET"));
    return respond(200, service_.metrics().render(), "text/plain; version=0.0.4; charset=utf-8");
  }
  if (target == "/v1/models") {
    if (!get) return respond(405, openai_error("invalid_request_error", "method", "use GET"));
    json::object model{{"id", service_.options().model_name},
                       {"object", "model"},
                       {"created", 0},
                       {"owned_by", "tpnode"}};
    if (service_.ready()) model["max_model_len"] = service_.context_limit();
    return respond(200, json::serialize(json::object{{"object", "list"},
                                                     {"data", json::array{model}}}));
  }
  if (target == "/v1/completions" || target == "/v1/chat/completions") {
    if (!post) return respond(405, openai_error("invalid_request_error", "method", "use POST"));
    return handle_generation(req, target == "/v1/chat/completions");
  }
  respond(404, openai_error("invalid_request_error", "not_found",
                            fmt::format("no such endpoint: {}", target)));
}

void HttpSession::handle_generation(const Request& req, bool chat) {
  OpenAIRequest parsed;
  try {
    parsed = parse_openai_request(req.body(), chat);
  } catch (const RequestError& e) {
    service_.count_refused(e.code());
    return respond_error(e.code(), e.what());
  }
  reply_ = OpenAIReply{chat, service_.next_id(chat ? "chatcmpl" : "cmpl"),
                       service_.options().model_name, unix_now()};
  parsed.spec.id = reply_.id;
  streaming_ = parsed.spec.stream;
  include_usage_ = parsed.include_usage;
  first_chunk_ = true;
  const uint64_t serial = ++serial_;
  try {
    active_ = service_.submit(
        parsed.spec, std::make_shared<HttpObserver>(shared_from_this(), serial, streaming_));
  } catch (const RequestError& e) {
    return respond_error(e.code(), e.what());
  }
  // Generation can take long: no read/write deadline, but notice a disconnect.
  stream_.expires_never();
  if (streaming_) send(std::string(kSseHeader));
  start_watch();
}

void HttpSession::deliver_text(uint64_t serial, std::string text) {
  asio::post(stream_.get_executor(),
             [self = shared_from_this(), serial, text = std::move(text)]() mutable {
               if (serial == self->serial_ && self->active_ && !self->closed_) self->on_text(text);
             });
}

void HttpSession::deliver_end(uint64_t serial, RequestEnd end, std::string text) {
  asio::post(stream_.get_executor(), [self = shared_from_this(), serial, end = std::move(end),
                                      text = std::move(text)] {
    if (serial == self->serial_ && self->active_ && !self->closed_) self->on_end(end, text);
  });
}

void HttpSession::on_text(std::string& text) {
  send_event(openai_text_chunk(reply_, text, first_chunk_));
  first_chunk_ = false;
}

void HttpSession::on_end(const RequestEnd& end, const std::string& text) {
  active_.reset();
  if (streaming_) {
    if (end.reason == FinishReason::kError) {
      send_event(openai_error(end.error_code, end.error_message));
    } else {
      send_event(openai_finish_chunk(reply_, end));
      if (include_usage_) send_event(openai_usage_chunk(reply_, end.usage));
    }
    send_event("[DONE]");
    send("0\r\n\r\n");
    end_exchange();
    return;
  }
  switch (end.reason) {
    case FinishReason::kStop:
    case FinishReason::kLength:
      return respond(200, openai_response(reply_, text, end));
    case FinishReason::kTimeout:
      return respond(504, openai_error("server_error", "timeout",
                                       "the request's deadline passed before it finished"));
    case FinishReason::kCancelled:
      return respond(503, openai_error("server_error", "cancelled",
                                       "the request was cancelled (server shutting down)"));
    case FinishReason::kError:
      return respond_error(end.error_code, end.error_message);
  }
}

void HttpSession::respond(unsigned status, std::string body, std::string_view content_type) {
  http::response<http::string_body> res{static_cast<http::status>(status), 11};
  res.set(http::field::server, "tpnode");
  res.set(http::field::content_type, content_type);
  res.keep_alive(keep_alive_);
  res.body() = std::move(body);
  res.prepare_payload();
  std::ostringstream os;
  os << res;
  send(std::move(os).str());
  end_exchange();
}

void HttpSession::respond_error(ErrorCode code, std::string_view message) {
  respond(http_status_of(code), openai_error(code, message));
}

void HttpSession::send_event(std::string_view data) {
  const std::string event = fmt::format("data: {}\n\n", data);
  send(fmt::format("{:x}\r\n{}\r\n", event.size(), event));
}

void HttpSession::send(std::string bytes) {
  if (closed_) return;
  out_bytes_ += bytes.size();
  out_.push_back(std::move(bytes));
  if (out_bytes_ > options_.max_output_bytes && active_) {
    // The client does not read its stream: end the request rather than buffer without bound.
    spdlog::warn("request {}: {} bytes of stream unread; cancelling it", reply_.id, out_bytes_);
    service_.count_refused(ErrorCode::kSlowReader);
    close();
    return;
  }
  if (!writing_) do_write();
}

void HttpSession::do_write() {
  writing_ = true;
  asio::async_write(stream_, asio::buffer(out_.front()),
                    [self = shared_from_this()](const error_code& ec, size_t) {
                      self->writing_ = false;
                      if (self->closed_) return;
                      if (ec) {
                        self->close();
                        return;
                      }
                      self->out_bytes_ -= self->out_.front().size();
                      self->out_.pop_front();
                      if (!self->out_.empty()) {
                        self->do_write();
                        return;
                      }
                      if (!self->response_queued_) return;
                      // The whole response is out: next request, or goodbye.
                      self->response_queued_ = false;
                      self->in_exchange_ = false;
                      if (!self->keep_alive_) {
                        error_code ignored;
                        self->stream_.socket().shutdown(asio::ip::tcp::socket::shutdown_send,
                                                        ignored);
                        self->close();
                      } else if (self->watching_) {
                        self->stream_.socket().cancel();  // on_watch then reads the next one
                      } else {
                        self->do_read();
                      }
                    });
}

void HttpSession::end_exchange() {
  response_queued_ = true;
  if (!writing_ && out_.empty()) {
    // Nothing left to write (cannot happen: a response is never empty); read on.
    response_queued_ = false;
    in_exchange_ = false;
    do_read();
  }
}

void HttpSession::start_watch() {
  watching_ = true;
  stream_.async_read_some(buffer_.prepare(4096),
                          [self = shared_from_this()](const error_code& ec, size_t n) {
                            self->on_watch(ec, n);
                          });
}

void HttpSession::on_watch(const error_code& ec, size_t n) {
  watching_ = false;
  if (closed_) return;
  if (!ec) {
    // A pipelined request arrived early: keep it for the next read.
    buffer_.commit(n);
    if (in_exchange_) {
      if (buffer_.size() < options_.max_body_bytes + 64 * 1024) start_watch();
    } else {
      do_read();
    }
    return;
  }
  if (ec == asio::error::operation_aborted) {
    if (!in_exchange_) do_read();
    return;
  }
  // EOF or reset while generating: the client has gone.
  close();
}

void HttpSession::close() {
  if (closed_) return;
  closed_ = true;
  if (active_) {
    service_.cancel(*active_);
    active_.reset();
  }
  error_code ec;
  stream_.socket().shutdown(asio::ip::tcp::socket::shutdown_both, ec);
  stream_.socket().close(ec);
}

}  // namespace tpnode::coord
