// Facts about the native runtime, for diagnostics and for choosing defaults.
#pragma once

#include <string>

namespace gilfree {

// Version string of the libtbb that was actually loaded (not the headers built against).
std::string tbb_runtime_version();

// Cores this process may run on: respects the affinity mask (taskset, cgroup cpusets),
// unlike std::thread::hardware_concurrency, so defaults derived from it fit containers.
int usable_cores();

}  // namespace gilfree
