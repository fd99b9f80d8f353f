#include "coordinator/listener.h"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <spdlog/spdlog.h>

#include "node/common/error.h"

namespace tpnode::coord {
namespace asio = boost::asio;
using asio::ip::tcp;
using boost::system::error_code;

Listener::Listener(asio::io_context& io, const ListenerOptions& options, Accept accept,
                   Accept refuse)
    : io_(io),
      options_(options),
      on_accept_(std::move(accept)),
      on_refuse_(std::move(refuse)),
      acceptor_(asio::make_strand(io)) {
  error_code ec;
  const auto address = asio::ip::make_address(options.host, ec);
  TPNODE_CHECK(!ec, "{}: host '{}' is not an IP address ({})", options.what, options.host,
               ec.message());
  const tcp::endpoint endpoint(address, options.port);
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  TPNODE_CHECK_KIND(!ec, ErrorKind::kRuntime, "{}: cannot listen on {}:{}: {}", options.what,
                    options.host, options.port, ec.message());
}

Listener::~Listener() = default;

uint16_t Listener::port() const {
  error_code ec;
  return acceptor_.local_endpoint(ec).port();
}

void Listener::start() {
  asio::post(acceptor_.get_executor(), [this] { accept(); });
}

void Listener::stop_accepting() {
  asio::post(acceptor_.get_executor(), [this] {
    error_code ec;
    acceptor_.close(ec);
  });
}

void Listener::accept() {
  acceptor_.async_accept(asio::make_strand(io_), [this](const error_code& ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
    if (ec) {
      // Out of file descriptors and the like: log, and keep accepting.
      spdlog::warn("{}: accept failed: {}", options_.what, ec.message());
    } else if (open_->load() >= options_.max_connections) {
      on_refuse_(std::move(socket));
    } else {
      on_accept_(std::move(socket));
    }
    accept();
  });
}

}  // namespace tpnode::coord
