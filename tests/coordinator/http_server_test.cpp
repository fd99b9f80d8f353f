#include "coordinator/http_server.h"

#include <gtest/gtest.h>

#include "tests/coordinator/http_client.h"
#include "tests/coordinator/prometheus_text.h"
#include "tests/coordinator/server_harness.h"

namespace tpnode::coord {
namespace {

namespace json = boost::json;
using testing::HarnessOptions;
using testing::HttpClient;
using testing::ServerHarness;
using namespace std::chrono_literals;

std::string str(const json::value& v) { return json::value_to<std::string>(v); }

TEST(HttpServer, HealthIs503UntilTheEngineIsReady) {
  HarnessOptions o;
  o.attach = false;
  ServerHarness h(o);
  HttpClient c(h.http_port());
  auto r = c.request("GET", "/health");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(str(r.json().at("status")), "loading");
  r = c.request("POST", "/v1/completions", R"({"prompt":"x"})");
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(str(r.json().at("error").at("code")), "not_ready");
  h.attach();
  r = c.request("GET", "/health");
  EXPECT_EQ(r.status, 200);
  h.service.set_draining();
  EXPECT_EQ(c.request("GET", "/health").status, 503);
}

TEST(HttpServer, ModelsListsTheServedModel) {
  HarnessOptions o;
  o.service.model_name = "fake-model";
  ServerHarness h(o);
  HttpClient c(h.http_port());
  auto r = c.request("GET", "/v1/models");
  ASSERT_EQ(r.status, 200);
  const auto body = r.json();
  EXPECT_EQ(str(body.at("object")), "list");
  ASSERT_EQ(body.at("data").as_array().size(), 1u);
  EXPECT_EQ(str(body.at("data").at(0).at("id")), "fake-model");
  EXPECT_EQ(body.at("data").at(0).at("max_model_len").as_int64(), 1024);
}

TEST(HttpServer, CompletionMatchesTheReferenceWithUsage) {
  ServerHarness h;
  HttpClient c(h.http_port());
  auto r = c.post_json("/v1/completions", {{"model", "anything"},
                                           {"prompt", "hello there"},
                                           {"max_tokens", 15},
                                           {"temperature", 0}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.headers["content-type"], "application/json");
  const auto body = r.json();
  EXPECT_EQ(str(body.at("object")), "text_completion");
  EXPECT_EQ(str(body.at("id")).rfind("cmpl-", 0), 0u);
  const auto& choice = body.at("choices").at(0);
  EXPECT_EQ(str(choice.at("text")), h.reference("hello there", 15));
  const auto& usage = body.at("usage");
  EXPECT_EQ(usage.at("prompt_tokens").as_int64(),
            static_cast<int64_t>(h.tok.encode("hello there", true, false).size()));
  EXPECT_EQ(usage.at("total_tokens").as_int64(),
            usage.at("prompt_tokens").as_int64() + usage.at("completion_tokens").as_int64());
  const std::string reason = str(choice.at("finish_reason"));
  EXPECT_TRUE(reason == "stop" || reason == "length") << reason;
}

TEST(HttpServer, ChatCompletionUsesTheTemplate) {
  ServerHarness h;
  HttpClient c(h.http_port());
  json::object req{{"model", "m"},
                   {"messages", json::array{json::object{{"role", "system"}, {"content", "be"}},
                                            json::object{{"role", "user"}, {"content", "hi"}}}},
                   {"max_tokens", 11},
                   {"temperature", 0.0}};
  auto r = c.post_json("/v1/chat/completions", req);
  ASSERT_EQ(r.status, 200) << r.body;
  const auto body = r.json();
  EXPECT_EQ(str(body.at("object")), "chat.completion");
  const auto& msg = body.at("choices").at(0).at("message");
  EXPECT_EQ(str(msg.at("role")), "assistant");
  EXPECT_EQ(str(msg.at("content")),
            h.reference(testing::render_fake_chat({{"system", "be"}, {"user", "hi"}}), 11));
}

TEST(HttpServer, StreamedCompletionIsServerSentEventsEndingInDone) {
  ServerHarness h;
  HttpClient c(h.http_port());
  auto r = c.post_json("/v1/completions", {{"prompt", "stream me"},
                                           {"max_tokens", 20},
                                           {"temperature", 0},
                                           {"stream", true},
                                           {"stream_options", {{"include_usage", true}}}});
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.headers["content-type"], "text/event-stream");
  const auto events = r.events();
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  int finish_chunks = 0;
  bool usage_seen = false;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const auto e = json::parse(events[i]).as_object();
    EXPECT_EQ(str(e.at("object")), "text_completion");
    if (e.contains("usage")) {
      usage_seen = true;
      EXPECT_TRUE(e.at("choices").as_array().empty());
      continue;
    }
    const auto& choice = e.at("choices").at(0);
    text += str(choice.at("text"));
    if (!choice.at("finish_reason").is_null()) ++finish_chunks;
  }
  EXPECT_EQ(text, h.reference("stream me", 20));
  EXPECT_EQ(finish_chunks, 1);
  EXPECT_TRUE(usage_seen);
}

TEST(HttpServer, StreamedChatStartsWithTheAssistantRole) {
  ServerHarness h;
  HttpClient c(h.http_port());
  json::object req{{"messages", json::array{json::object{{"role", "user"}, {"content", "yo"}}}},
                   {"max_tokens", 8},
                   {"temperature", 0},
                   {"stream", true}};
  auto r = c.post_json("/v1/chat/completions", req);
  ASSERT_EQ(r.status, 200);
  const auto events = r.events();
  ASSERT_GE(events.size(), 3u);
  const auto first = json::parse(events[0]).as_object();
  EXPECT_EQ(str(first.at("object")), "chat.completion.chunk");
  EXPECT_EQ(str(first.at("choices").at(0).at("delta").at("role")), "assistant");
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const json::value event = json::parse(events[i]);
    const auto& delta = event.at("choices").at(0).at("delta").as_object();
    if (delta.contains("content")) text += str(delta.at("content"));
  }
  EXPECT_EQ(text, h.reference(testing::render_fake_chat({{"user", "yo"}}), 8));
}

TEST(HttpServer, KeepAliveServesManyRequestsOnOneConnection) {
  ServerHarness h;
  HttpClient c(h.http_port());
  for (int i = 0; i < 5; ++i) {
    auto r = c.post_json("/v1/completions",
                         {{"prompt", fmt::format("n{}", i)}, {"max_tokens", 4}, {"temperature", 0}});
    ASSERT_EQ(r.status, 200);
    EXPECT_EQ(str(r.json().at("choices").at(0).at("text")), h.reference(fmt::format("n{}", i), 4));
    r = c.request("GET", "/health");
    EXPECT_EQ(r.status, 200);
  }
  EXPECT_EQ(h.http->open_connections(), 1u);
}

TEST(HttpServer, ErrorsHaveTheirStatusCodes) {
  HarnessOptions o;
  o.http.max_body_bytes = 2048;
  o.scheduler.max_context = 64;
  ServerHarness h(o);
  struct Case {
    std::string method, target, body;
    int status;
  };
  const std::vector<Case> cases = {
      {"POST", "/v1/completions", "{oops", 400},
      {"POST", "/v1/completions", R"({"prompt":"x","n":2})", 400},
      {"POST", "/v1/completions", R"({"prompt":"x","max_tokens":-1})", 400},
      {"POST", "/v1/completions", R"({"prompt":"x","temperature":"hot"})", 400},
      {"POST", "/v1/completions", R"({"messages":[{"role":"user","content":"x"}]})", 400},
      {"POST", "/v1/chat/completions", R"({"prompt":"x"})", 400},
      {"POST", "/v1/chat/completions", R"({"messages":"x"})", 400},
      {"POST", "/v1/completions", R"({"prompt":"x","logprobs":3})", 400},
      {"POST", "/v1/completions", "{\"prompt\":\"" + std::string(100, 'a') + "\"}", 400},
      {"GET", "/v1/completions", "", 405},
      {"POST", "/health", "", 405},
      {"GET", "/nope", "", 404},
  };
  for (const auto& t : cases) {
    HttpClient c(h.http_port());
    auto r = c.request(t.method, t.target, t.body);
    EXPECT_EQ(r.status, t.status) << t.method << " " << t.target << " " << t.body.substr(0, 60);
    EXPECT_TRUE(r.json().at("error").as_object().contains("message")) << r.body;
  }
  // Too large: 413, then the connection closes.
  HttpClient big(h.http_port());
  auto r = big.request("POST", "/v1/completions", std::string(5000, ' '));
  EXPECT_EQ(r.status, 413);
  // And the server still serves.
  HttpClient c(h.http_port());
  r = c.post_json("/v1/completions", {{"prompt", "ok"}, {"max_tokens", 3}});
  EXPECT_EQ(r.status, 200);
}

TEST(HttpServer, FullQueueIs429AndDeadlineIs504) {
  HarnessOptions o;
  o.exec.step_delay = 2ms;
  o.scheduler.max_seqs = 1;
  o.max_queue = 1;
  ServerHarness h(o);
  // Occupy the engine and the one queue slot over TCP lines (they do not wait for replies).
  testing::LineClient lines(h.port());
  auto wait_for = [&](auto pred) {
    const auto t0 = std::chrono::steady_clock::now();
    while (!pred(h.loop.stats()) && std::chrono::steady_clock::now() - t0 < 5s) {
      std::this_thread::sleep_for(1ms);
    }
  };
  lines.send_line(R"({"id":"a","prompt":"x","max_tokens":1000,"ignore_eos":true})");
  wait_for([](const StepLoopStats& s) { return s.running == 1; });
  lines.send_line(R"({"id":"b","prompt":"x","max_tokens":1000,"ignore_eos":true})");
  wait_for([](const StepLoopStats& s) { return s.waiting == 1; });
  HttpClient c(h.http_port());
  auto r = c.post_json("/v1/completions", {{"prompt", "x"}, {"max_tokens", 3}});
  EXPECT_EQ(r.status, 429) << r.body;
  lines.send_line(R"({"cancel":"a"})");
  lines.send_line(R"({"cancel":"b"})");
  ASSERT_TRUE(h.wait_idle());
  r = c.post_json("/v1/completions",
                  {{"prompt", "x"}, {"max_tokens", 5000}, {"ignore_eos", true}, {"timeout", 0.05}});
  EXPECT_EQ(r.status, 504) << r.body;
  EXPECT_EQ(str(r.json().at("error").at("code")), "timeout");
}

TEST(HttpServer, ClientThatDisconnectsMidStreamCancelsItsRequest) {
  HarnessOptions o;
  o.exec.step_delay = 1ms;
  ServerHarness h(o);
  {
    HttpClient c(h.http_port());
    c.send_request("POST", "/v1/completions",
                   R"({"prompt":"x","max_tokens":100000,"ignore_eos":true,"stream":true})");
    // Status line and some events.
    ASSERT_TRUE(c.connection().read_line());
    ASSERT_TRUE(c.connection().read_bytes(500));
  }
  EXPECT_TRUE(h.wait_idle());
  EXPECT_EQ(h.metrics.requests("cancelled"), 1u);
}

TEST(HttpServer, ClientThatDisconnectsBeforeANonStreamedReplyCancelsIt) {
  HarnessOptions o;
  o.exec.step_delay = 1ms;
  ServerHarness h(o);
  {
    HttpClient c(h.http_port());
    c.send_request("POST", "/v1/completions",
                   R"({"prompt":"x","max_tokens":100000,"ignore_eos":true})");
    const auto t0 = std::chrono::steady_clock::now();
    while (h.loop.stats().running == 0 && std::chrono::steady_clock::now() - t0 < 5s) {
      std::this_thread::sleep_for(1ms);
    }
  }
  EXPECT_TRUE(h.wait_idle());
  EXPECT_EQ(h.metrics.requests("cancelled"), 1u);
}

TEST(HttpServer, MetricsAreValidPrometheusText) {
  ServerHarness h;
  HttpClient c(h.http_port());
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(c.post_json("/v1/completions", {{"prompt", "m"}, {"max_tokens", 4}, {"ignore_eos", true}})
                  .status,
              200);
  }
  EXPECT_EQ(c.post_json("/v1/completions", {{"prompt", 5}}).status, 400);
  ASSERT_TRUE(h.wait_idle());
  auto r = c.request("GET", "/metrics");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.headers["content-type"].rfind("text/plain; version=0.0.4", 0), 0u);
  std::map<std::string, testing::PromFamily> m;
  ASSERT_NO_THROW(m = testing::parse_prometheus(r.body)) << r.body;
  EXPECT_EQ(m.at("tpnode_requests_total").type, "counter");
  EXPECT_EQ(testing::prom_value(m, "tpnode_requests_total", {{"outcome", "length"}}), 3);
  EXPECT_EQ(testing::prom_value(m, "tpnode_requests_total", {{"outcome", "bad_request"}}), 1);
  EXPECT_EQ(testing::prom_value(m, "tpnode_generated_tokens_total"), 12);
  EXPECT_EQ(testing::prom_value(m, "tpnode_prompt_tokens_total"), 3);
  EXPECT_EQ(testing::prom_value(m, "tpnode_kv_blocks_total"), 256);
  EXPECT_EQ(testing::prom_value(m, "tpnode_kv_blocks_used"), 0);
  EXPECT_EQ(testing::prom_value(m, "tpnode_running_sequences"), 0);
  EXPECT_EQ(testing::prom_value(m, "tpnode_queue_depth"), 0);
  EXPECT_EQ(testing::prom_value(m, "tpnode_ready"), 1);
  EXPECT_EQ(m.at("tpnode_time_to_first_token_seconds").type, "histogram");
  EXPECT_EQ(testing::prom_value(m, "tpnode_time_to_first_token_seconds_count"), 3);
  EXPECT_EQ(testing::prom_value(m, "tpnode_inter_token_latency_seconds_count"), 9);
  EXPECT_GE(testing::prom_value(m, "tpnode_step_duration_seconds_count"), 4);
  // The parser itself refuses broken text.
  EXPECT_THROW(testing::parse_prometheus("x 1\n"), std::runtime_error);
  EXPECT_THROW(testing::parse_prometheus("# TYPE x counter\nx{a=b} 1\n"), std::runtime_error);
  EXPECT_THROW(testing::parse_prometheus("# TYPE x counter\nx one\n"), std::exception);
}

}  // namespace
}  // namespace tpnode::coord
