// api.cu compiled as C++ for the host emulation (see emulate.h).
#include "../api.cu"
#include "emulate.h"

// Test hooks of the emulation (no CUDA counterpart): leave a stale error for the next entry point to find,
// or make the n-th kernel launch from now fail, as a real launch can.
extern "C" void vosrtEmuSetLastError(int error) { vosrt_emu::last_error = error; }
extern "C" void vosrtEmuFailLaunch(int nth) { vosrt_emu::launches_until_failure = nth; }
// The opt-in shared memory per block that the "device" reports (bytes; 0: an H100's or H200's 227 KiB), so
// that tests reach the paths of smaller GPUs.
// It is another "device" then (cudaGetDevice answers a new number): what the host code learnt of the
// previous one, and the kernels' dynamic shared-memory limits set on it, do not carry over.
extern "C" void vosrtEmuSetSharedLimit(int bytes) {
  vosrt_emu::shared_limit = bytes > 0 ? bytes : 227 * 1024;
  ++vosrt_emu::device_id;
  std::lock_guard<std::mutex> hold(vosrt_emu::function_limits_lock);
  vosrt_emu::function_limits.clear();
}
// A new context on the same device (cudaDeviceReset, or a driver-API context of the host's): the kernels' dynamic
// shared-memory limits set in the old one are gone, the device is the same.
extern "C" void vosrtEmuResetContext() {
  std::lock_guard<std::mutex> hold(vosrt_emu::function_limits_lock);
  vosrt_emu::function_limits.clear();
}
// cp.async copies of `bytes` (4, 8 or 16) issued since the last call with that size; the count restarts.
extern "C" long long vosrtEmuTakeAsyncCopies(int bytes) {
  return bytes == 4 || bytes == 8 || bytes == 16 ? vosrt_emu::async_copies[bytes].exchange(0) : -1;
}
// How a block's warps are scheduled (emulate.h, vosrt_emu::schedule: 0 free, 1 ascending, 2 descending,
// 3 shuffled, warp by warp between barriers) and whether cp.async copies also land when issued (eager).
extern "C" void vosrtEmuSetSchedule(int schedule, int eager_copies) {
  vosrt_emu::schedule = schedule >= 0 && schedule <= 3 ? schedule : 0;
  vosrt_emu::eager_copies = eager_copies != 0;
}
