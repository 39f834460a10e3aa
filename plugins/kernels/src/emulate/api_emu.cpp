// api.cu compiled as C++ for the host emulation (see emulate.h).
#include "../api.cu"
#include "emulate.h"

// Test hooks of the emulation (no CUDA counterpart): leave a stale error for the next entry point to find,
// or make the n-th kernel launch from now fail, as a real launch can.
extern "C" void vosrtEmuSetLastError(int error) { vosrt_emu::last_error = error; }
extern "C" void vosrtEmuFailLaunch(int nth) { vosrt_emu::launches_until_failure = nth; }
