#include "node/common/error.h"

namespace tpnode {

void raise_api_error(std::string_view api, std::string_view call, std::string_view detail,
                     const char* file, int line) {
  throw Error(ErrorKind::kRuntime,
              fmt::format("{} error: {} failed: {} ({}:{})", api, call, detail, file, line));
}

}  // namespace tpnode
