#include "coordinator/http_server.h"

#include "coordinator/http_session.h"

namespace tpnode::coord {
namespace asio = boost::asio;
using asio::ip::tcp;

HttpServer::HttpServer(asio::io_context& io, Service& service, const HttpServerOptions& options)
    : listener_(
          io,
          ListenerOptions{"HTTP server", options.host, options.port, options.max_connections},
          [&service, options, this](tcp::socket socket) {
            std::make_shared<HttpSession>(std::move(socket), service, options, listener_.open())
                ->start();
          },
          [](tcp::socket socket) {
            static const std::string kBusy =
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            boost::system::error_code ignored;
            socket.write_some(asio::buffer(kBusy), ignored);
            socket.close(ignored);
          }) {}

}  // namespace tpnode::coord
