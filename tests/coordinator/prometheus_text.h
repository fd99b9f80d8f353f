// A strict parser of the Prometheus text exposition format (0.0.4), for tests: every line
// must be a well-formed HELP/TYPE comment or sample, every sample must belong to a declared
// family, and histograms must have cumulative buckets ending in +Inf == _count.
#pragma once

#include <cmath>
#include <map>
#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

namespace tpnode::coord::testing {

struct PromSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0.0;
};

struct PromFamily {
  std::string type;
  std::string help;
  std::vector<PromSample> samples;
};

inline double parse_prom_value(const std::string& s) {
  if (s == "+Inf") return INFINITY;
  if (s == "-Inf") return -INFINITY;
  if (s == "NaN") return NAN;
  size_t used = 0;
  const double v = std::stod(s, &used);
  if (used != s.size()) throw std::runtime_error("bad value '" + s + "'");
  return v;
}

inline std::map<std::string, PromFamily> parse_prometheus(const std::string& text) {
  static const std::regex help(R"(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*))");
  static const std::regex type(
      R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped))");
  static const std::regex sample(
      R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? ([^ ]+))");
  static const std::regex label(R"(([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)\")");
  std::map<std::string, PromFamily> families;
  if (text.empty() || text.back() != '\n') throw std::runtime_error("must end with a newline");
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t end = text.find('\n', pos);
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    std::smatch m;
    if (std::regex_match(line, m, help)) {
      families[m[1]].help = m[2];
    } else if (std::regex_match(line, m, type)) {
      auto& f = families[m[1]];
      if (!f.type.empty()) throw std::runtime_error("TYPE twice for " + m[1].str());
      if (!f.samples.empty()) throw std::runtime_error("TYPE after samples for " + m[1].str());
      f.type = m[2];
    } else if (std::regex_match(line, m, sample)) {
      PromSample s;
      s.name = m[1];
      s.value = parse_prom_value(m[4]);
      std::string labels = m[3];
      while (!labels.empty()) {
        std::smatch lm;
        if (!std::regex_search(labels, lm, label) || lm.position(0) != 0) {
          throw std::runtime_error("bad labels in: " + line);
        }
        s.labels[lm[1]] = lm[2];
        labels = labels.substr(static_cast<size_t>(lm.length(0)));
        if (!labels.empty()) {
          if (labels[0] != ',') throw std::runtime_error("bad labels in: " + line);
          labels = labels.substr(1);
        }
      }
      std::string family = s.name;
      for (const char* suffix : {"_bucket", "_sum", "_count"}) {
        const std::string sf = suffix;
        if (family.size() > sf.size() && family.ends_with(sf) &&
            families.count(family.substr(0, family.size() - sf.size())) &&
            families[family.substr(0, family.size() - sf.size())].type == "histogram") {
          family = family.substr(0, family.size() - sf.size());
        }
      }
      auto it = families.find(family);
      if (it == families.end() || it->second.type.empty()) {
        throw std::runtime_error("sample of an undeclared family: " + line);
      }
      if (it->second.type == "counter" && !(s.value >= 0)) {
        throw std::runtime_error("negative counter: " + line);
      }
      it->second.samples.push_back(std::move(s));
    } else {
      throw std::runtime_error("unparseable line: '" + line + "'");
    }
  }
  for (const auto& [name, f] : families) {
    if (f.type != "histogram") continue;
    double last = 0.0, prev_le = -INFINITY, count = -1.0, inf = -1.0;
    for (const auto& s : f.samples) {
      if (s.name == name + "_bucket") {
        const double le = parse_prom_value(s.labels.at("le"));
        if (!(le > prev_le)) throw std::runtime_error(name + ": buckets out of order");
        if (s.value < last) throw std::runtime_error(name + ": buckets not cumulative");
        prev_le = le;
        last = s.value;
        if (std::isinf(le)) inf = s.value;
      } else if (s.name == name + "_count") {
        count = s.value;
      }
    }
    if (inf < 0 || inf != count) throw std::runtime_error(name + ": +Inf bucket != _count");
  }
  return families;
}

// The value of the sample `name` with exactly `labels`; throws when absent.
inline double prom_value(const std::map<std::string, PromFamily>& families, const std::string& name,
                         const std::map<std::string, std::string>& labels = {}) {
  for (const auto& [_, f] : families) {
    for (const auto& s : f.samples) {
      if (s.name == name && s.labels == labels) return s.value;
    }
  }
  throw std::runtime_error("no sample " + name);
}

}  // namespace tpnode::coord::testing
