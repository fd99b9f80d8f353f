#include "coordinator/stop_matcher.h"

#include <algorithm>

#include "coordinator/utf8.h"

namespace tpnode::coord {

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

size_t StopMatcher::holdback() const {
  size_t best = 0;
  const std::string_view p = pending_;
  for (const auto& stop : stops_) {
    const size_t longest = std::min(stop.size() - 1, p.size());
    for (size_t k = longest; k > best; --k) {
      if (p.substr(p.size() - k) == std::string_view(stop).substr(0, k)) {
        best = k;
        break;
      }
    }
  }
  return best;
}

StopMatcher::Output StopMatcher::push(std::string_view bytes) {
  pending_.append(bytes);
  Output out;
  size_t first = std::string::npos;
  for (const auto& stop : stops_) first = std::min(first, pending_.find(stop));
  if (first != std::string::npos) {
    out.text = utf8_sanitize(std::string_view(pending_).substr(0, first));
    out.stopped = true;
    pending_.clear();
    return out;
  }
  const std::string_view safe = std::string_view(pending_).substr(0, pending_.size() - holdback());
  const size_t n = utf8_complete_prefix(safe);
  out.text = utf8_sanitize(safe.substr(0, n));
  pending_.erase(0, n);
  return out;
}

std::string StopMatcher::flush() {
  std::string out = utf8_sanitize(pending_);
  pending_.clear();
  return out;
}

}  // namespace tpnode::coord
