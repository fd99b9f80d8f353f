#include "parallel/mpi/mpi_check.h"

#include <string>

#include "node/common/error.h"

namespace tpnode::mpi {

void raise_mpi_error(const char* call, int code, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  std::string detail;
  if (MPI_Error_string(code, text, &len) == MPI_SUCCESS) {
    detail.assign(text, static_cast<size_t>(len));
  } else {
    detail = "unknown error";
  }
  raise_api_error("MPI", call, fmt::format("{} (code {})", detail, code), file, line);
}

}  // namespace tpnode::mpi
