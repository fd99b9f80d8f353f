// setup_rank_logging: worker ranks write their own file; rank 0 keeps no file.
#include "parallel/rank_log.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace tpnode {
namespace {

std::string read_all(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

class RankLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_ = spdlog::default_logger();
    dir_ =
        (std::filesystem::temp_directory_path() / ("tpnode-rank-log-" + std::to_string(getpid())))
            .string();
  }
  void TearDown() override {
    spdlog::set_default_logger(saved_);
    std::filesystem::remove_all(dir_);
  }
  std::shared_ptr<spdlog::logger> saved_;
  std::string dir_;
};

TEST_F(RankLogTest, WorkerWritesItsOwnFile) {
  Topology t;
  t.rank = 2;
  t.size = 3;
  const std::string path = setup_rank_logging(t, {.dir = dir_ + "/logs"});
  EXPECT_EQ(path, dir_ + "/logs/tpnode-rank2.log");
  spdlog::info("hello from the worker");
  spdlog::debug("below the level");
  const std::string text = read_all(path);
  EXPECT_NE(text.find("[rank 2]"), std::string::npos) << text;
  EXPECT_NE(text.find("hello from the worker"), std::string::npos) << text;
  EXPECT_EQ(text.find("below the level"), std::string::npos) << text;
}

TEST_F(RankLogTest, RankZeroHasNoFile) {
  Topology t;
  t.rank = 0;
  t.size = 3;
  EXPECT_EQ(setup_rank_logging(t, {.dir = dir_ + "/logs"}), "");
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/logs"));
}

}  // namespace
}  // namespace tpnode
