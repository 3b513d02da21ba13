// _core.Flow: the streaming map's flow scheduler (gilfree::FlowScheduler): conversions and
// the GIL only; every scheduling decision is in cpp/src/flow.cpp, tested without Python in
// tests/cpp/test_flow.cpp.
//
// Who calls what, and who holds the GIL
//
//   Python driver (imap's consumer)      PyFlowHost                        FlowScheduler
//   flow.next(pull, dispatch) ─────────▶ [GIL] ─────────────────────────▶ next(host)
//   pull(k) -> (n_read, exhausted) ◀──── [GIL] host.pull ◀────────────── room for k items
//   dispatch(stage, ids) ◀────────────── [GIL] host.dispatch ◀────────── ids may start
//                                        [no GIL] host.unlocked(wait) ◀─ nothing to do: wait
//                                        (pycall::wait_without_gil: back     <= 50 ms or to a
//                                        ahead of pool workers, then          linger deadline
//                                        PyErr_CheckSignals)
//   raises KeyboardInterrupt ◀────────── host.check_interrupt() == true ─▶ closes the flow
//   returns [(id, failed), ...] ◀──────────────────────────────────────── items that leave
//
//   executors (pool threads, the loop,   [GIL held, or not: the call only takes the
//   inline code inside dispatch):        scheduler's mutex, which is never held while
//   flow.done(stage, ids, failed) ─────▶ anyone waits for the GIL] done()
//   flow.close() / flow.stats() [any thread] ───────────────────────────▶ close() / stats()
//
// An exception from pull or dispatch leaves next() as it is (the flow is closed). The
// Flow holds no Python objects between calls: pull and dispatch are passed to each next().
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "gilfree/flow.hpp"
#include "py_call.hpp"

namespace py = pybind11;

namespace gilfree::bindings {
namespace {

class PyFlowHost final : public FlowHost {
public:
    PyFlowHost(const py::object& pull, const py::object& dispatch)
        : pull_(pull), dispatch_(dispatch) {}

    std::pair<std::size_t, bool> pull(std::size_t k) override {
        py::object got = pull_(k);
        try {
            auto t = got.cast<std::tuple<std::size_t, bool>>();
            return {std::get<0>(t), std::get<1>(t)};
        } catch (const py::cast_error&) {
            throw py::type_error("Flow.next: pull(" + std::to_string(k) +
                                 ") must return (n_read, exhausted), got " +
                                 std::string(py::repr(got)));
        }
    }

    void dispatch(std::size_t stage, const std::vector<std::uint64_t>& ids) override {
        py::list list(ids.size());
        for (std::size_t i = 0; i < ids.size(); ++i)
            PyList_SET_ITEM(list.ptr(), static_cast<Py_ssize_t>(i),
                            py::int_(ids[i]).release().ptr());
        dispatch_(stage, list);
    }

    // The signal handlers ran when the last wait took the GIL back; true: one raised
    // (KeyboardInterrupt) and its error is set.
    bool check_interrupt() override { return signalled_; }

    // Ctrl-C latency: one wait (<= 50 ms) plus one GIL switch interval.
    void unlocked(const std::function<void()>& wait) override {
        pycall::wait_without_gil(
            [&] {
                wait();
                return true;
            },
            signalled_);
    }

private:
    const py::object& pull_;
    const py::object& dispatch_;
    bool signalled_ = false;
};

py::list next(FlowScheduler& flow, const py::object& pull, const py::object& dispatch) {
    PyFlowHost host(pull, dispatch);
    std::vector<FlowScheduler::Exit> exits;
    try {
        exits = flow.next(host);
    } catch (const FlowInterrupted&) {
        throw py::error_already_set();  // PyErr_CheckSignals set it
    }
    py::list out(exits.size());
    for (std::size_t i = 0; i < exits.size(); ++i)
        PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i),
                        py::make_tuple(exits[i].first, exits[i].second).release().ptr());
    return out;
}

py::dict stats(const FlowScheduler& flow) {
    const FlowStats st = flow.stats();
    py::dict d;
    d["pulled"] = st.pulled;
    d["left"] = st.left;
    d["exhausted"] = st.exhausted;
    d["closed"] = st.closed;
    py::list stages;
    for (const FlowStageStats& s : st.stages) {
        py::dict x;
        x["queued"] = s.queued;
        x["in_flight"] = s.in_flight;
        x["parked"] = s.parked;
        x["busy"] = s.busy;
        x["done_total"] = s.done_total;
        stages.append(x);
    }
    d["stages"] = stages;
    return d;
}

}  // namespace

void bind_flow(py::module_& m) {
    using StageTuple = std::tuple<std::size_t, std::size_t, std::size_t, double>;
    py::class_<FlowScheduler>(m, "Flow")
        .def(py::init([](const std::vector<StageTuple>& stages, std::size_t read_ahead,
                         bool ordered) {
                 std::vector<FlowStage> cfg;
                 for (const auto& [capacity, queue_bound, batch_size, linger_s] : stages)
                     cfg.push_back(FlowStage{capacity, queue_bound, batch_size, linger_s});
                 return new FlowScheduler(std::move(cfg), read_ahead, ordered);
             }),
             py::arg("stages"), py::arg("read_ahead"), py::arg("ordered") = true)
        .def("next", &next, py::arg("pull"), py::arg("dispatch"))
        .def(
            "done",
            [](FlowScheduler& flow, std::size_t stage, const std::vector<std::uint64_t>& ids,
               const std::vector<bool>& failed) { flow.done(stage, ids, failed); },
            py::arg("stage"), py::arg("ids"), py::arg("failed") = std::vector<bool>{})
        .def("close", &FlowScheduler::close)
        .def("stats", &stats);
}

}  // namespace gilfree::bindings
