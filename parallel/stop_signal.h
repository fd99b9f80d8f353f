// SIGINT/SIGTERM as a request to stop. mpirun turns Ctrl-C into SIGTERM for every rank and
// SIGKILLs them about a second later; a worker that notices the request leaves its loop, its
// waits throw instead of polling on, and World skips the MPI_Finalize that would hang on
// ranks already gone. A second signal kills the process at once.
#pragma once

namespace tpnode {

// Installs the handlers (idempotent). Rank 0's server installs its own (Asio signal_set);
// this is for processes with no other way to learn of a stop.
void install_stop_signal_handlers();

bool stop_requested();
int stop_signal();  // the signal number, 0 when none was received

// For tests.
void reset_stop_request();

}  // namespace tpnode
