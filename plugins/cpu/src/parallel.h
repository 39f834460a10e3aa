// A parallel for over [0, count) on `threads` host threads (the caller's thread is one of them).
#ifndef VOSRT_CPU_PARALLEL_H
#define VOSRT_CPU_PARALLEL_H

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "vosrt_cpu_ops.h"

namespace vosrt {

inline int resolve_threads(int threads) {
  if (threads > 0) return threads;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? (int)hw : 1;
}

// body(worker, index) for every index; items are handed out one at a time, so uneven tiles balance.
// `worker` in [0, threads) lets a body keep per-thread scratch. An exception thrown by a body (a scratch
// buffer that cannot be allocated) stops the hand-out and is rethrown here once every thread has joined;
// threads that cannot be started leave their share to the others.
template <typename Body>
void parallel_for(int count, int threads, const Body& body) {
  threads = std::max(1, std::min(resolve_threads(threads), count));
  std::atomic<int> next{0};
  std::exception_ptr failure;
  std::mutex failure_lock;
  auto work = [&](int worker) {
    try {
      for (int i = next.fetch_add(1); i < count; i = next.fetch_add(1)) body(worker, i);
    } catch (...) {
      next.store(count);
      std::lock_guard<std::mutex> hold(failure_lock);
      if (!failure) failure = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  try {
    pool.reserve(threads - 1);
    for (int w = 1; w < threads; ++w) pool.emplace_back(work, w);
  } catch (...) {  // std::system_error or std::bad_alloc: run on the threads that did start
  }
  work(0);
  for (auto& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
}

// The body of a C entry point: no exception may cross into its caller (ctypes, ONNX Runtime), so one that
// runs out of host memory or threads returns VOSRT_ERROR_HOST_RESOURCES instead of ending the process.
template <typename Body>
vosrtStatus_t host_guarded(const Body& body) noexcept {
  try {
    return body();
  } catch (...) {
    return VOSRT_ERROR_HOST_RESOURCES;
  }
}

}  // namespace vosrt

#endif  // VOSRT_CPU_PARALLEL_H
