// tpnode client: sends one prompt (or chat message) to a running `tpnode serve` over the
// TCP JSON-lines protocol and streams the reply to stdout; usage goes to stderr.
#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>
#include <boost/json.hpp>
#include <fmt/format.h>

#include <cstdio>
#include <iostream>
#include <iterator>
#include <optional>

#include "node/cli/command.h"
#include "node/common/error.h"

namespace tpnode::cli {
namespace {

namespace asio = boost::asio;
namespace json = boost::json;

struct ClientOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8700;
  std::string prompt;  // "-" = read stdin
  bool chat = false;
  std::string system;
  int64_t max_tokens = 256;
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<int64_t> top_k;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool no_stream = false;
  bool ignore_eos = false;
  bool show_usage = true;
};

json::object make_request(const ClientOptions& o, std::string prompt) {
  json::object req{{"id", "client-1"}, {"max_tokens", o.max_tokens}, {"stream", !o.no_stream}};
  if (o.chat) {
    json::array messages;
    if (!o.system.empty()) messages.push_back({{"role", "system"}, {"content", o.system}});
    messages.push_back({{"role", "user"}, {"content", prompt}});
    req["messages"] = std::move(messages);
  } else {
    req["prompt"] = std::move(prompt);
  }
  if (o.temperature) req["temperature"] = *o.temperature;
  if (o.top_p) req["top_p"] = *o.top_p;
  if (o.top_k) req["top_k"] = *o.top_k;
  if (o.seed) req["seed"] = *o.seed;
  if (!o.stop.empty()) {
    json::array stops;
    for (const auto& s : o.stop) stops.push_back(json::string(s));
    req["stop"] = std::move(stops);
  }
  if (o.ignore_eos) req["ignore_eos"] = true;
  return req;
}

int run_client(const ClientOptions& o) {
  std::string prompt = o.prompt;
  if (prompt == "-") prompt.assign(std::istreambuf_iterator<char>(std::cin), {});
  asio::io_context io;
  asio::ip::tcp::socket socket(io);
  boost::system::error_code ec;
  asio::ip::tcp::resolver resolver(io);
  const auto endpoints = resolver.resolve(o.host, std::to_string(o.port), ec);
  if (!ec) asio::connect(socket, endpoints, ec);
  TPNODE_CHECK_KIND(!ec, ErrorKind::kRuntime, "cannot connect to {}:{}: {}", o.host, o.port,
                    ec.message());
  const std::string line = json::serialize(make_request(o, std::move(prompt))) + "\n";
  asio::write(socket, asio::buffer(line));

  asio::streambuf buf;
  while (true) {
    asio::read_until(socket, buf, '\n', ec);
    TPNODE_CHECK_KIND(!ec, ErrorKind::kRuntime, "connection lost: {}", ec.message());
    std::string reply(asio::buffers_begin(buf.data()),
                      asio::buffers_begin(buf.data()) + static_cast<std::ptrdiff_t>(
                                                            buf.size()));
    const size_t nl = reply.find('\n');
    buf.consume(nl + 1);
    reply.resize(nl);
    const json::object msg = json::parse(reply).as_object();
    if (const auto* err = msg.if_contains("error")) {
      std::fflush(stdout);
      fmt::print(stderr, "error {}: {}\n", json::value_to<std::string>(err->at("code")),
                 json::value_to<std::string>(err->at("message")));
      return 1;
    }
    if (const auto* text = msg.if_contains("text")) {
      const auto& s = text->get_string();
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
    }
    if (msg.contains("done")) {
      std::fputs("\n", stdout);
      std::fflush(stdout);
      if (o.show_usage) {
        const auto& usage = msg.at("usage");
        fmt::print(stderr, "[finish: {}, prompt {} tokens, completion {} tokens]\n",
                   json::value_to<std::string>(msg.at("finish_reason")),
                   usage.at("prompt_tokens").as_int64(), usage.at("completion_tokens").as_int64());
      }
      return 0;
    }
  }
}

const RegisterCommand kRegister{Command{
    "client", "send a prompt to a running `tpnode serve` and stream the reply",
    [](CLI::App& app) -> std::function<int()> {
      auto o = std::make_shared<ClientOptions>();
      app.add_option("--host", o->host, "server address");
      app.add_option("--port", o->port, "server TCP port");
      app.add_option("-p,--prompt", o->prompt, "the prompt (- reads stdin)")->required();
      app.add_flag("--chat", o->chat, "send the prompt as a user chat message");
      app.add_option("--system", o->system, "system message (with --chat)");
      app.add_option("-n,--max-tokens", o->max_tokens, "tokens to generate at most");
      app.add_option("--temp", o->temperature, "temperature (server default: greedy)");
      app.add_option("--top-p", o->top_p, "top-p");
      app.add_option("--top-k", o->top_k, "top-k");
      app.add_option("--seed", o->seed, "sampling seed");
      app.add_option("--stop", o->stop, "stop string (repeatable)");
      app.add_flag("--no-stream", o->no_stream, "one reply at the end instead of a stream");
      app.add_flag("--ignore-eos", o->ignore_eos, "generate past end-of-generation tokens");
      app.add_flag("!--no-usage", o->show_usage, "do not print usage to stderr");
      return [o] { return run_client(*o); };
    }}};

}  // namespace
}  // namespace tpnode::cli
