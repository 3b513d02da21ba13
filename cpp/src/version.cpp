#include "gilfree/version.hpp"

#include <oneapi/tbb/info.h>
#include <oneapi/tbb/version.h>

namespace gilfree {

std::string tbb_runtime_version() { return TBB_runtime_version(); }

int usable_cores() { return tbb::info::default_concurrency(); }

}  // namespace gilfree
