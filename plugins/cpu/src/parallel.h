// A parallel for over [0, count) on `threads` host threads (the caller's thread is one of them).
#ifndef VOSRT_CPU_PARALLEL_H
#define VOSRT_CPU_PARALLEL_H

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

namespace vosrt {

inline int resolve_threads(int threads) {
  if (threads > 0) return threads;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? (int)hw : 1;
}

// body(worker, index) for every index; items are handed out one at a time, so uneven tiles balance.
// `worker` in [0, threads) lets a body keep per-thread scratch.
template <typename Body>
void parallel_for(int count, int threads, const Body& body) {
  threads = std::max(1, std::min(resolve_threads(threads), count));
  std::atomic<int> next{0};
  auto work = [&](int worker) {
    for (int i = next.fetch_add(1); i < count; i = next.fetch_add(1)) body(worker, i);
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (int w = 1; w < threads; ++w) pool.emplace_back(work, w);
  work(0);
  for (auto& t : pool) t.join();
}

}  // namespace vosrt

#endif  // VOSRT_CPU_PARALLEL_H
