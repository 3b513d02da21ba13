// gilfree._core: the only door into C++. Assembles the bind_* functions, nothing else.
#include "bindings.hpp"

PYBIND11_MODULE(_core, m) {
    m.doc() = "gilfree native core: thread pool, process pool, flow scheduler and runtime information.";
    gilfree::bindings::bind_info(m);
    gilfree::bindings::bind_thread_pool(m);
    gilfree::bindings::bind_process_pool(m);
    gilfree::bindings::bind_flow(m);
}
