// _core.tbb_version(), _core.hardware_concurrency(): runtime facts for diagnostics.
#include "bindings.hpp"
#include "gilfree/version.hpp"

namespace gilfree::bindings {

void bind_info(pybind11::module_& m) {
    m.def("tbb_version", &tbb_runtime_version,
          "Version of the oneTBB runtime library that is loaded.");
    m.def("hardware_concurrency", &usable_cores,
          "Number of cores this process may run on (respects the CPU affinity mask).");
}

}  // namespace gilfree::bindings
