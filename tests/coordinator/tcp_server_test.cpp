#include "coordinator/tcp_server.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

#include "tests/coordinator/line_client.h"
#include "tests/coordinator/server_harness.h"

namespace tpnode::coord {
namespace {

namespace json = boost::json;
using testing::HarnessOptions;
using testing::LineClient;
using testing::ServerHarness;
using namespace std::chrono_literals;

std::string error_code_of(const json::object& o) {
  if (!o.contains("error")) return "";
  return json::value_to<std::string>(o.at("error").at("code"));
}

TEST(TcpServer, StreamsTextThenDoneWithUsage) {
  ServerHarness h;
  LineClient c(h.port());
  c.send_line(R"({"id":"r1","prompt":"hello world","max_tokens":12,"stream":true})");
  int chunks = 0;
  std::string text;
  json::object done;
  while (auto line = c.read_json()) {
    EXPECT_EQ(line->at("id"), "r1");
    if (line->contains("done")) {
      done = *line;
      break;
    }
    text += json::value_to<std::string>(line->at("text"));
    ++chunks;
  }
  EXPECT_EQ(text, h.reference("hello world", 12));
  EXPECT_GT(chunks, 1);
  ASSERT_TRUE(done.contains("finish_reason")) << json::serialize(done);
  EXPECT_FALSE(done.contains("text"));
  const auto& usage = done.at("usage").as_object();
  EXPECT_EQ(usage.at("prompt_tokens").as_int64(),
            static_cast<int64_t>(h.tok.encode("hello world", true, false).size()));
  EXPECT_EQ(done.at("finish_reason"), usage.at("completion_tokens").as_int64() == 12 ? "length" : "stop");
}

TEST(TcpServer, NonStreamingReplyIsOneLineWithTheWholeText) {
  ServerHarness h;
  LineClient c(h.port());
  c.send_line(R"({"id":7,"prompt":"abc","max_tokens":20})");
  auto line = c.read_json();
  ASSERT_TRUE(line);
  EXPECT_EQ(line->at("id"), "7");
  EXPECT_EQ(line->at("done"), true);
  EXPECT_EQ(json::value_to<std::string>(line->at("text")), h.reference("abc", 20));
}

TEST(TcpServer, ChatMessagesUseTheChatTemplate) {
  ServerHarness h;
  LineClient c(h.port());
  c.send_line(R"({"id":"c","messages":[{"role":"user","content":"hi"}],"max_tokens":9})");
  auto line = c.read_json();
  ASSERT_TRUE(line);
  const std::string rendered = testing::render_fake_chat({{"user", "hi"}});
  EXPECT_EQ(json::value_to<std::string>(line->at("text")), h.reference(rendered, 9));
}

TEST(TcpServer, ManyConnectionsManyRequestsNoneLostAndTextsMatchAlone) {
  HarnessOptions o;
  o.max_queue = 300;  // fewer than the 600 requests: some are refused, explicitly
  ServerHarness h(o);
  constexpr int kConnections = 200;
  constexpr int kPerConnection = 3;
  std::vector<std::unique_ptr<LineClient>> clients;
  for (int i = 0; i < kConnections; ++i) clients.push_back(std::make_unique<LineClient>(h.port()));
  auto prompt_of = [](int i, int j) { return fmt::format("p{} q{}", i % 17, j); };
  for (int i = 0; i < kConnections; ++i) {
    for (int j = 0; j < kPerConnection; ++j) {
      json::object req{{"id", fmt::format("{}-{}", i, j)},
                       {"prompt", prompt_of(i, j)},
                       {"max_tokens", 4 + (i + j) % 13},
                       {"stream", (i + j) % 2 == 0}};
      clients[i]->send_json(req);
    }
  }
  int done = 0, overloaded = 0;
  for (int i = 0; i < kConnections; ++i) {
    std::map<std::string, std::string> text;
    std::set<std::string> ended;
    while (ended.size() < kPerConnection) {
      auto line = clients[i]->read_json(10s);
      ASSERT_TRUE(line) << "connection " << i << " lost a reply; ended " << ended.size();
      const std::string id = json::value_to<std::string>(line->at("id"));
      ASSERT_FALSE(ended.count(id)) << "line after the end of " << id;
      if (line->contains("text")) text[id] += json::value_to<std::string>(line->at("text"));
      if (line->contains("error")) {
        EXPECT_EQ(error_code_of(*line), "overloaded");
        ++overloaded;
        ended.insert(id);
      } else if (line->contains("done")) {
        const int j = std::stoi(id.substr(id.find('-') + 1));
        EXPECT_EQ(text[id], h.reference(prompt_of(i, j), 4 + (i + j) % 13)) << id;
        ++done;
        ended.insert(id);
      }
    }
  }
  EXPECT_EQ(done + overloaded, kConnections * kPerConnection);
  EXPECT_GE(done, 300);
  EXPECT_TRUE(h.wait_idle());
}

TEST(TcpServer, EveryBadInputGetsItsErrorAndTheConnectionKeepsServing) {
  HarnessOptions o;
  o.tcp.max_line_bytes = 4096;
  o.scheduler.max_context = 64;
  ServerHarness h(o);
  LineClient c(h.port());
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{not json", "bad_request"},
      {"[1,2,3]", "bad_request"},
      {R"({"id":"a","prompt":"x","max_tokens":"ten"})", "bad_request"},
      {R"({"id":"b","prompt":"x","max_tokens":0})", "bad_request"},
      {R"({"id":"c","prompt":"x","temperature":-1})", "bad_request"},
      {R"({"id":"d","prompt":"x","top_p":1.5})", "bad_request"},
      {R"({"id":"e","prompt":"x","bogus":1})", "bad_request"},
      {R"({"id":"f"})", "bad_request"},
      {R"({"id":"g","prompt":"x","messages":[]})", "bad_request"},
      {R"({"id":"h","messages":[{"role":"robot","content":"x"}]})", "bad_request"},
      {R"({"id":"i","prompt":"x","stop":[""]})", "bad_request"},
      {R"({"id":"j","prompt":"x","stream":"yes"})", "bad_request"},
      {R"({"id":{},"prompt":"x"})", "bad_request"},
      {R"({"id":"k","prompt":[1,2,99999]})", "bad_request"},
      {R"({"id":"l","prompt":""})", "bad_request"},
      {R"({"cancel":[1]})", "bad_request"},
      {"{\"id\":\"m\",\"prompt\":\"" + std::string(70, 'a') + "\"}", "too_long"},
      {"{\"id\":\"n\",\"prompt\":\"" + std::string(5000, 'a') + "\"}", "bad_request"},
  };
  for (const auto& [input, code] : cases) {
    c.send_line(input);
    auto line = c.read_json();
    ASSERT_TRUE(line) << input;
    EXPECT_EQ(error_code_of(*line), code) << input.substr(0, 80) << " -> " << json::serialize(*line);
    EXPECT_FALSE(json::value_to<std::string>(line->at("error").at("message")).empty());
  }
  // A huge line split over many packets, then a good request on the same connection.
  c.send_raw(std::string(20000, 'x'));
  c.send_raw(std::string(20000, 'y') + "\n");
  auto line = c.read_json();
  ASSERT_TRUE(line);
  EXPECT_EQ(error_code_of(*line), "bad_request");
  c.send_line(R"({"id":"ok","prompt":"fine","max_tokens":5})");
  line = c.read_json();
  ASSERT_TRUE(line);
  EXPECT_EQ(line->at("id"), "ok");
  EXPECT_EQ(json::value_to<std::string>(line->at("text")), h.reference("fine", 5));
  EXPECT_GE(h.metrics.requests("bad_request"), 17u);
}

TEST(TcpServer, DuplicateIdInFlightIsRefused) {
  HarnessOptions o;
  o.exec.step_delay = 2ms;
  ServerHarness h(o);
  LineClient c(h.port());
  c.send_line(R"({"id":"same","prompt":"x","max_tokens":50,"ignore_eos":true})");
  c.send_line(R"({"id":"same","prompt":"y","max_tokens":5})");
  auto line = c.read_json();
  ASSERT_TRUE(line);
  EXPECT_EQ(error_code_of(*line), "bad_request");
  line = c.read_json();
  ASSERT_TRUE(line);
  EXPECT_EQ(line->at("done"), true);
}

TEST(TcpServer, CancelEndsTheRequestAndReturnsEveryKvBlock) {
  HarnessOptions o;
  o.exec.step_delay = 1ms;
  ServerHarness h(o);
  LineClient c(h.port());
  c.send_line(R"({"id":"long","prompt":"go","max_tokens":100000,"ignore_eos":true,"stream":true})");
  c.send_line(R"({"id":"short","prompt":"go on","max_tokens":3})");
  // Wait for some streamed text, so the request holds KV blocks.
  int texts = 0;
  std::optional<json::object> short_reply;
  while (texts < 5) {
    auto line = c.read_json();
    ASSERT_TRUE(line);
    if (line->at("id") == "short") {
      short_reply = line;
    } else {
      ++texts;
    }
  }
  EXPECT_LT(h.loop.stats().kv_free_blocks, h.loop.stats().kv_total_blocks);
  c.send_line(R"({"cancel":"long"})");
  c.send_line(R"({"cancel":"nobody"})");  // unknown ids are ignored
  while (true) {
    auto line = c.read_json();
    ASSERT_TRUE(line);
    if (line->at("id") == "short") {
      short_reply = line;
      continue;
    }
    if (line->contains("done")) {
      EXPECT_EQ(line->at("finish_reason"), "cancelled");
      break;
    }
  }
  EXPECT_TRUE(h.wait_idle());
  EXPECT_EQ(h.metrics.requests("cancelled"), 1u);
  if (!short_reply) short_reply = c.read_json();
  ASSERT_TRUE(short_reply);
  EXPECT_EQ(short_reply->at("done"), true);
}

TEST(TcpServer, ClosingTheConnectionCancelsItsRequests) {
  HarnessOptions o;
  o.exec.step_delay = 1ms;
  ServerHarness h(o);
  {
    LineClient c(h.port());
    for (int i = 0; i < 5; ++i) {
      c.send_line(fmt::format(
          R"({{"id":"{}","prompt":"go {}","max_tokens":100000,"ignore_eos":true,"stream":true}})",
          i, i));
    }
    ASSERT_TRUE(c.read_json());  // generation has started
  }
  EXPECT_TRUE(h.wait_idle());
  EXPECT_EQ(h.metrics.requests("cancelled"), 5u);
  // The server still serves.
  LineClient c2(h.port());
  c2.send_line(R"({"id":"after","prompt":"x","max_tokens":3})");
  auto line = c2.read_json();
  ASSERT_TRUE(line);
  EXPECT_EQ(line->at("done"), true);
}

TEST(TcpServer, FullQueueAnswersOverloadedAtOnce) {
  HarnessOptions o;
  o.exec.step_delay = 2ms;
  o.scheduler.max_seqs = 1;
  o.max_queue = 2;
  ServerHarness h(o);
  LineClient c(h.port());
  for (int i = 0; i < 10; ++i) {
    c.send_line(fmt::format(R"({{"id":"{}","prompt":"x","max_tokens":20,"ignore_eos":true}})", i));
  }
  int overloaded = 0, done = 0;
  const auto t0 = std::chrono::steady_clock::now();
  std::chrono::steady_clock::duration first_refusal{};
  for (int i = 0; i < 10; ++i) {
    auto line = c.read_json();
    ASSERT_TRUE(line);
    if (error_code_of(*line) == "overloaded") {
      if (overloaded++ == 0) first_refusal = std::chrono::steady_clock::now() - t0;
    } else {
      EXPECT_EQ(line->at("done"), true);
      ++done;
    }
  }
  EXPECT_GE(overloaded, 5);
  EXPECT_GE(done, 2);
  // Refusals do not wait for generation (20 tokens take >= 40 ms here).
  EXPECT_LT(first_refusal, 40ms);
  EXPECT_GE(h.metrics.requests("overloaded"), 5u);
}

TEST(TcpServer, SlowReaderIsCutOffWithoutBlockingOthers) {
  HarnessOptions o;
  o.tcp.max_output_bytes = 16 * 1024;
  o.tcp.socket_send_buffer = 4096;
  o.scheduler.max_context = 1 << 20;
  o.exec.kv_blocks = 1 << 15;  // room for a very long generation
  o.exec.window = 8;
  ServerHarness h(o);
  LineClient slow(h.port(), /*rcvbuf=*/4096);
  slow.send_line(
      R"({"id":"flood","prompt":"x","max_tokens":1000000,"ignore_eos":true,"stream":true})");
  // Another client is served normally while the slow one does not read.
  LineClient fast(h.port());
  for (int i = 0; i < 3; ++i) {
    fast.send_line(fmt::format(R"({{"id":"f{}","prompt":"fast {}","max_tokens":8}})", i, i));
    auto line = fast.read_json(5s);
    ASSERT_TRUE(line);
    EXPECT_EQ(line->at("done"), true);
  }
  // The flood fills the kernel buffers, then the server's, then it is cancelled.
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (h.metrics.requests("slow_reader") == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_EQ(h.metrics.requests("slow_reader"), 1u)
      << "steps " << h.loop.stats().steps << "\n" << h.metrics.render().substr(0, 1500);
  EXPECT_TRUE(h.wait_idle());
  // Reading now, the client finds its text and then the error that ended it.
  std::string last;
  while (auto line = slow.read_line(2s)) last = *line;
  EXPECT_NE(last.find("slow_reader"), std::string::npos) << last.substr(0, 200);
}

TEST(TcpServer, IdleConnectionIsClosed) {
  HarnessOptions o;
  o.tcp.idle_timeout_s = 0.2;
  ServerHarness h(o);
  LineClient c(h.port());
  c.send_line(R"({"id":"a","prompt":"x","max_tokens":2})");
  ASSERT_TRUE(c.read_json());
  EXPECT_FALSE(c.read_line(3s));
  EXPECT_TRUE(c.eof());
}

TEST(TcpServer, DrainFinishesInFlightRequestsAndRefusesNewOnes) {
  HarnessOptions o;
  o.exec.step_delay = 1ms;
  ServerHarness h(o);
  LineClient c(h.port());
  c.send_line(R"({"id":"a","prompt":"x","max_tokens":30,"ignore_eos":true})");
  std::this_thread::sleep_for(5ms);
  h.loop.drain(std::chrono::steady_clock::now() + 5s);
  c.send_line(R"({"id":"b","prompt":"y","max_tokens":3})");
  auto first = c.read_json();
  ASSERT_TRUE(first);
  EXPECT_EQ(first->at("id"), "b");
  EXPECT_EQ(error_code_of(*first), "shutting_down");
  auto second = c.read_json();
  ASSERT_TRUE(second);
  EXPECT_EQ(second->at("id"), "a");
  EXPECT_EQ(second->at("finish_reason"), "length");
}

TEST(TcpServer, DrainDeadlineCancelsWhatIsLeft) {
  HarnessOptions o;
  o.exec.step_delay = 1ms;
  ServerHarness h(o);
  LineClient c(h.port());
  c.send_line(R"({"id":"a","prompt":"x","max_tokens":100000,"ignore_eos":true})");
  std::this_thread::sleep_for(20ms);
  h.loop.drain(std::chrono::steady_clock::now() + 50ms);
  auto line = c.read_json();
  ASSERT_TRUE(line);
  EXPECT_EQ(line->at("finish_reason"), "cancelled");
  EXPECT_TRUE(h.wait_idle());
}

TEST(TcpServer, RequestDeadlineEndsWithTimeout) {
  HarnessOptions o;
  o.exec.step_delay = 1ms;
  ServerHarness h(o);
  LineClient c(h.port());
  c.send_line(R"({"id":"t","prompt":"x","max_tokens":100000,"ignore_eos":true,"timeout":0.05})");
  auto line = c.read_json();
  ASSERT_TRUE(line);
  EXPECT_EQ(line->at("finish_reason"), "timeout");
  EXPECT_GT(line->at("usage").at("completion_tokens").as_int64(), 0);
  EXPECT_TRUE(h.wait_idle());
}

}  // namespace
}  // namespace tpnode::coord
