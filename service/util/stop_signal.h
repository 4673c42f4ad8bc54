// SIGTERM / SIGINT handling for the server binaries: block both in every thread (call before any
// thread starts), then wait for one in the main thread.
#ifndef LMHEAD_SERVICE_UTIL_STOP_SIGNAL_H_
#define LMHEAD_SERVICE_UTIL_STOP_SIGNAL_H_

namespace lmhead {

void BlockStopSignals();
// Returns the signal received (SIGTERM or SIGINT).
int WaitForStopSignal();

}  // namespace lmhead

#endif  // LMHEAD_SERVICE_UTIL_STOP_SIGNAL_H_
