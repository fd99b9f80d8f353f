// A blocking HTTP/1.1 client for the coordinator tests: keep-alive requests, Content-Length
// and chunked bodies, and Server-Sent Events split into their data payloads.
#pragma once

#include <boost/json.hpp>

#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/coordinator/line_client.h"

namespace tpnode::coord::testing {

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;

  boost::json::object json() const { return boost::json::parse(body).as_object(); }
  // The data: payloads of an SSE body.
  std::vector<std::string> events() const {
    std::vector<std::string> out;
    size_t pos = 0;
    while (pos < body.size()) {
      size_t end = body.find("\n\n", pos);
      if (end == std::string::npos) end = body.size();
      const std::string event = body.substr(pos, end - pos);
      if (event.rfind("data: ", 0) == 0) out.push_back(event.substr(6));
      pos = end + 2;
    }
    return out;
  }
};

class HttpClient {
 public:
  explicit HttpClient(uint16_t port) : conn_(port) {}

  void send_request(const std::string& method, const std::string& target,
                    const std::string& body = "", const std::string& extra_headers = "") {
    std::string req = method + " " + target + " HTTP/1.1\r\nHost: localhost\r\n" + extra_headers;
    if (!body.empty() || method == "POST") {
      req += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
             "\r\n";
    }
    req += "\r\n" + body;
    conn_.send_raw(req);
  }

  // Reads one response; nullopt when the connection closes or times out first.
  std::optional<HttpResponse> read_response() {
    HttpResponse r;
    auto status = line();
    if (!status) return std::nullopt;
    if (status->rfind("HTTP/1.1 ", 0) != 0) throw std::runtime_error("bad status line " + *status);
    r.status = std::stoi(status->substr(9, 3));
    while (true) {
      auto h = line();
      if (!h) return std::nullopt;
      if (h->empty()) break;
      const size_t colon = h->find(':');
      std::string name = h->substr(0, colon);
      for (auto& ch : name) ch = static_cast<char>(std::tolower(ch));
      r.headers[name] = h->substr(h->find_first_not_of(' ', colon + 1));
    }
    if (r.headers["transfer-encoding"] == "chunked") {
      while (true) {
        auto size_line = line();
        if (!size_line) return std::nullopt;
        const size_t n = std::stoul(*size_line, nullptr, 16);
        auto data = bytes(n + 2);
        if (!data) return std::nullopt;
        if (n == 0) break;
        r.body += data->substr(0, n);
      }
    } else {
      const size_t n = std::stoul(r.headers.count("content-length") ? r.headers["content-length"] : "0");
      auto data = bytes(n);
      if (!data) return std::nullopt;
      r.body = *data;
    }
    return r;
  }

  HttpResponse request(const std::string& method, const std::string& target,
                       const std::string& body = "") {
    send_request(method, target, body);
    auto r = read_response();
    if (!r) throw std::runtime_error("no response to " + method + " " + target);
    return *r;
  }

  HttpResponse post_json(const std::string& target, const boost::json::object& obj) {
    return request("POST", target, boost::json::serialize(obj));
  }

  LineClient& connection() { return conn_; }

 private:
  std::optional<std::string> line() {
    auto l = conn_.read_line();
    if (l && !l->empty() && l->back() == '\r') l->pop_back();
    return l;
  }
  std::optional<std::string> bytes(size_t n) { return conn_.read_bytes(n); }

  LineClient conn_;
};

}  // namespace tpnode::coord::testing
