#include "coordinator/line_session.h"

#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/json.hpp>
#include <spdlog/spdlog.h>

#include <chrono>

#include "coordinator/line_protocol.h"
#include "coordinator/request_spec.h"
#include "coordinator/service.h"

namespace tpnode::coord {
namespace asio = boost::asio;
namespace json = boost::json;
using boost::system::error_code;

namespace {

// Runs on the step-loop thread: formats replies and posts them to the connection.
class LineObserver final : public RequestObserver {
 public:
  LineObserver(std::shared_ptr<LineSession> session, std::string id, uint64_t serial, bool stream)
      : session_(std::move(session)), id_(std::move(id)), serial_(serial), stream_(stream) {}

  void on_text(std::string_view text) override {
    if (stream_) {
      session_->deliver(id_, serial_, line_text(id_, text), false);
    } else {
      text_ += text;
    }
  }

  void on_end(const RequestEnd& end) override {
    // Dropping the session reference here breaks the session -> request -> observer cycle.
    auto session = std::move(session_);
    session->deliver(id_, serial_, line_end(id_, end, stream_ ? nullptr : &text_), true);
  }

 private:
  std::shared_ptr<LineSession> session_;
  std::string id_;
  uint64_t serial_;
  bool stream_;
  std::string text_;  // the whole reply, when not streaming
};

}  // namespace

LineSession::LineSession(asio::ip::tcp::socket socket, Service& service,
                         const TcpServerOptions& options,
                         std::shared_ptr<std::atomic<size_t>> open)
    : socket_(std::move(socket)),
      idle_timer_(socket_.get_executor()),
      service_(service),
      options_(options),
      open_(std::move(open)) {
  open_->fetch_add(1);
}

LineSession::~LineSession() { open_->fetch_sub(1); }

void LineSession::start() {
  asio::post(socket_.get_executor(), [self = shared_from_this()] {
    error_code ec;
    self->socket_.set_option(asio::ip::tcp::no_delay(true), ec);
    if (self->options_.socket_send_buffer > 0) {
      // A small kernel buffer makes back-pressure visible to the session sooner.
      self->socket_.set_option(asio::socket_base::send_buffer_size(self->options_.socket_send_buffer), ec);
    }
    self->arm_idle_timer();
    self->do_read();
  });
}

void LineSession::do_read() {
  socket_.async_read_some(asio::buffer(read_buf_),
                          [self = shared_from_this()](const error_code& ec, size_t n) {
                            self->on_read(ec, n);
                          });
}

void LineSession::on_read(const error_code& ec, size_t n) {
  if (closed_) return;
  if (ec) {
    // EOF or reset: the client is gone, and so is the reason to generate.
    close();
    return;
  }
  std::string_view data(read_buf_.data(), n);
  while (!data.empty() && !closed_) {
    const size_t nl = data.find('\n');
    const std::string_view part = data.substr(0, nl);
    if (!discarding_) {
      if (line_.size() + part.size() > options_.max_line_bytes) {
        discarding_ = true;
        line_.clear();
        line_.shrink_to_fit();
      } else {
        line_.append(part);
      }
    }
    if (nl == std::string_view::npos) break;
    data.remove_prefix(nl + 1);
    if (discarding_) {
      discarding_ = false;
      service_.count_refused(ErrorCode::kBadRequest);
      send(line_error("", ErrorCode::kBadRequest,
                      fmt::format("line longer than {} bytes", options_.max_line_bytes)));
    } else {
      std::string line = std::move(line_);
      line_.clear();
      handle_line(line);
    }
  }
  if (!closed_) {
    arm_idle_timer();
    do_read();
  }
}

void LineSession::handle_line(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.find_first_not_of(" \t") == std::string_view::npos) return;  // blank: keep-alive
  error_code ec;
  json::value v = json::parse(line, ec);
  if (ec || !v.is_object()) {
    service_.count_refused(ErrorCode::kBadRequest);
    send(line_error("", ErrorCode::kBadRequest,
                    ec ? fmt::format("malformed JSON: {}", ec.message())
                       : std::string("a request must be a JSON object")));
    return;
  }
  const json::object& obj = v.get_object();
  if (obj.contains("cancel")) {
    handle_cancel(obj);
  } else {
    handle_request(obj);
  }
}

void LineSession::handle_cancel(const json::object& obj) {
  const json::value& target = obj.at("cancel");
  std::string id;
  if (target.is_string()) {
    id = std::string(target.get_string());
  } else if (target.is_int64()) {
    id = std::to_string(target.get_int64());
  } else {
    service_.count_refused(ErrorCode::kBadRequest);
    send(line_error("", ErrorCode::kBadRequest, "field 'cancel': must be a request id"));
    return;
  }
  // A request that already ended needs no answer: its final line is on its way.
  auto it = in_flight_.find(id);
  if (it != in_flight_.end() && !it->second.dropped) service_.cancel(*it->second.handle);
}

void LineSession::handle_request(const json::object& obj) {
  std::string id;
  try {
    id = request_id_of(obj);
    RequestSpec spec = parse_request_spec(obj, Dialect::kLine);
    if (id.empty()) id = service_.next_id("req");
    spec.id = id;
    if (in_flight_.count(id)) {
      throw RequestError(ErrorCode::kBadRequest,
                         fmt::format("request id '{}' is already in flight", id));
    }
    if (shedding_) {
      throw RequestError(ErrorCode::kSlowReader,
                         "replies are not being read; refusing new requests");
    }
    const uint64_t serial = next_serial_++;
    auto observer = std::make_shared<LineObserver>(shared_from_this(), id, serial, spec.stream);
    // Registered before submit: the step loop may answer before submit returns, but its
    // delivery is posted to this strand and so runs after this handler.
    auto handle = service_.submit(spec, std::move(observer));
    in_flight_.emplace(id, InFlight{serial, std::move(handle)});
  } catch (const RequestError& e) {
    if (e.code() == ErrorCode::kBadRequest || e.code() == ErrorCode::kSlowReader) {
      service_.count_refused(e.code());  // submit() counts its own refusals
    }
    send(line_error(id, e.code(), e.what()));
  }
}

void LineSession::deliver(std::string id, uint64_t serial, std::string line, bool last) {
  asio::post(socket_.get_executor(),
             [self = shared_from_this(), id = std::move(id), serial, line = std::move(line),
              last]() mutable { self->on_delivery(id, serial, line, last); });
}

void LineSession::on_delivery(const std::string& id, uint64_t serial, std::string& line,
                              bool last) {
  auto it = in_flight_.find(id);
  if (it == in_flight_.end() || it->second.serial != serial) return;
  const bool dropped = it->second.dropped;
  if (last) in_flight_.erase(it);
  if (closed_ || dropped) return;
  send(std::move(line));
}

void LineSession::send(std::string line) {
  if (closed_) return;
  out_bytes_ += line.size();
  out_.push_back(std::move(line));
  if (out_bytes_ > options_.max_output_bytes && !shedding_) shed_load();
  // Even error lines stop being queued past twice the limit: the client is not reading.
  if (out_bytes_ > 2 * options_.max_output_bytes + 64 * 1024) {
    spdlog::warn("closing a connection with {} bytes of unread replies", out_bytes_);
    close();
    return;
  }
  if (!writing_) do_write();
}

void LineSession::shed_load() {
  shedding_ = true;
  for (auto& [id, f] : in_flight_) {
    if (f.dropped) continue;
    f.dropped = true;
    service_.cancel(*f.handle);
    service_.count_refused(ErrorCode::kSlowReader);
    const std::string line = line_error(
        id, ErrorCode::kSlowReader,
        fmt::format("more than {} bytes of replies unread; request cancelled",
                    options_.max_output_bytes));
    out_bytes_ += line.size();
    out_.push_back(line);
  }
}

void LineSession::do_write() {
  writing_ = true;
  asio::async_write(socket_, asio::buffer(out_.front()),
                    [self = shared_from_this()](const error_code& ec, size_t) {
                      self->writing_ = false;
                      if (self->closed_) return;
                      if (ec) {
                        self->close();
                        return;
                      }
                      self->out_bytes_ -= self->out_.front().size();
                      self->out_.pop_front();
                      if (self->shedding_ && self->out_bytes_ < self->options_.max_output_bytes / 2) {
                        self->shedding_ = false;
                      }
                      if (!self->out_.empty()) self->do_write();
                    });
}

void LineSession::arm_idle_timer() {
  if (options_.idle_timeout_s <= 0) return;
  idle_timer_.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(options_.idle_timeout_s)));
  idle_timer_.async_wait([self = shared_from_this()](const error_code& ec) {
    if (ec || self->closed_) return;  // re-armed or closed
    if (self->in_flight_.empty() && !self->writing_) {
      spdlog::debug("closing an idle connection");
      self->close();
    } else {
      self->arm_idle_timer();
    }
  });
}

void LineSession::close() {
  if (closed_) return;
  closed_ = true;
  for (auto& [id, f] : in_flight_) {
    if (!f.dropped) service_.cancel(*f.handle);
  }
  // out_ stays: a write in progress may still point into it.
  error_code ec;
  idle_timer_.cancel();
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ec);
  socket_.close(ec);
}

}  // namespace tpnode::coord
