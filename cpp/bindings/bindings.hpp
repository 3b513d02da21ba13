// One bind_* function per binding file; module.cpp only assembles them.
#pragma once

#include <pybind11/pybind11.h>

namespace gilfree::bindings {

void bind_info(pybind11::module_& m);
void bind_thread_pool(pybind11::module_& m);
void bind_process_pool(pybind11::module_& m);
void bind_flow(pybind11::module_& m);

}  // namespace gilfree::bindings
