#include "coordinator/tcp_server.h"

#include "coordinator/line_protocol.h"
#include "coordinator/line_session.h"

namespace tpnode::coord {
namespace asio = boost::asio;
using asio::ip::tcp;

TcpServer::TcpServer(asio::io_context& io, Service& service, const TcpServerOptions& options)
    : listener_(
          io,
          ListenerOptions{"TCP server", options.host, options.port, options.max_connections},
          [&service, options, this](tcp::socket socket) {
            std::make_shared<LineSession>(std::move(socket), service, options, listener_.open())
                ->start();
          },
          [](tcp::socket socket) {
            const std::string line = line_error("", ErrorCode::kOverloaded, "too many connections");
            boost::system::error_code ignored;
            socket.write_some(asio::buffer(line), ignored);
            socket.close(ignored);
          }) {}

}  // namespace tpnode::coord
