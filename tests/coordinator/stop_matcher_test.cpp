#include "coordinator/stop_matcher.h"

#include <gtest/gtest.h>

#include "coordinator/utf8.h"

namespace tpnode::coord {
namespace {

// Feeds `pieces` one at a time; returns what was sent and whether it stopped.
std::pair<std::string, bool> feed(StopMatcher& m, const std::vector<std::string>& pieces) {
  std::string sent;
  for (const auto& p : pieces) {
    auto out = m.push(p);
    sent += out.text;
    if (out.stopped) return {sent, true};
  }
  return {sent + m.flush(), false};
}

TEST(StopMatcher, HoldsBackAPossibleStartAndReleasesItWhenItDiverges) {
  StopMatcher m({"</s>"});
  auto out = m.push("hello <");
  EXPECT_EQ(out.text, "hello ");
  EXPECT_EQ(m.pending(), "<");
  out = m.push("/");
  EXPECT_EQ(out.text, "");
  out = m.push("x");
  EXPECT_EQ(out.text, "</x");
  EXPECT_FALSE(out.stopped);
}

TEST(StopMatcher, FindsStopsAcrossPiecesAndDropsEverythingFromThem) {
  StopMatcher m({"\n\n", "END"});
  auto [sent, stopped] = feed(m, {"line", "\n", "\n", "more"});
  EXPECT_EQ(sent, "line");
  EXPECT_TRUE(stopped);
  StopMatcher m2({"END"});
  std::tie(sent, stopped) = feed(m2, {"th", "e E", "N", "Dgame"});
  EXPECT_EQ(sent, "the ");
  EXPECT_TRUE(stopped);
}

TEST(StopMatcher, EarliestOfSeveralStopsWins) {
  // "bcdx" begins before "cd" does, though "cd" is complete first.
  StopMatcher m({"cd", "bcdx"});
  auto out = m.push("abcdx");
  EXPECT_TRUE(out.stopped);
  EXPECT_EQ(out.text, "a");
  StopMatcher m2({"cd", "bcdx"});
  out = m2.push("abcdy");
  EXPECT_TRUE(out.stopped);
  EXPECT_EQ(out.text, "ab");
}

TEST(StopMatcher, NoStopsPassesTextThroughButNotHalfCharacters) {
  StopMatcher m({});
  EXPECT_EQ(m.push("a\xE2\x82").text, "a");
  EXPECT_EQ(m.push("\xAC!").text, "\xE2\x82\xAC!");
  EXPECT_EQ(m.push("\xF0\x9F").text, "");
  EXPECT_EQ(m.flush(), "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(Utf8, CompletePrefixAndSanitize) {
  EXPECT_EQ(utf8_complete_prefix("abc"), 3u);
  EXPECT_EQ(utf8_complete_prefix("ab\xC3"), 2u);
  EXPECT_EQ(utf8_complete_prefix("ab\xC3\xA9"), 4u);
  EXPECT_EQ(utf8_complete_prefix("\xF0\x9F\x98"), 0u);
  EXPECT_EQ(utf8_complete_prefix("x\xA9"), 2u);  // stray continuation: invalid, not pending
  EXPECT_EQ(utf8_sanitize("ok\xC3\xA9"), "ok\xC3\xA9");
  EXPECT_EQ(utf8_sanitize("a\xFF" "b"), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(utf8_sanitize("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(utf8_sanitize("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");              // overlong
}

}  // namespace
}  // namespace tpnode::coord
