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
//   start(stage, n) ◀─────────────────── [GIL] host.start ◀───────────── a claimed stage
//                                                                          needs n workers
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
//   flow.drained(stage) [a process stage's feeder] ─────────────────────▶ drained(): no
//                                                                          more items can come
//   workers of a claimed stage: C++ (ThreadPool.serve, bind_thread_pool.cpp) calls
//   claim() without the GIL; flow.claim(stage, wait_s) here is the same for tests and
//   Python workers (the GIL released while it waits)
//
// An exception from pull or dispatch leaves next() as it is (the flow is closed). The
// Flow holds no Python objects between calls: pull and dispatch are passed to each next().
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "gilfree/flow.hpp"
#include "gilfree/thread_pool.hpp"
#include "py_call.hpp"

namespace py = pybind11;

namespace gilfree::bindings {
namespace {

class PyFlowHost final : public FlowHost {
public:
    PyFlowHost(const py::object& pull, const py::object& dispatch, const py::object& start)
        : pull_(pull), dispatch_(dispatch), start_(start) {}

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

    void start(std::size_t stage, std::size_t n) override {
        if (start_.is_none()) FlowHost::start(stage, n);  // throws: nobody starts workers
        start_(stage, n);
    }

    // The signal handlers ran when the last wait took the GIL back; true: one raised
    // (KeyboardInterrupt) and its error is set.
    bool check_interrupt() override { return signalled_; }

    // Ctrl-C latency: one wait (<= 50 ms) plus one GIL switch interval. A driver that is
    // itself a pool worker (imap inside a node) stops counting against its pool while it
    // waits, so the stage's workers it started on that pool get threads.
    void unlocked(const std::function<void()>& wait) override {
        pycall::wait_without_gil(
            [&] {
                const bool excused = ThreadPool::begin_wait_current();
                wait();
                if (excused) ThreadPool::end_wait_current();
                return true;
            },
            signalled_);
    }

private:
    const py::object& pull_;
    const py::object& dispatch_;
    const py::object& start_;
    bool signalled_ = false;
};

py::list next(FlowScheduler& flow, const py::object& pull, const py::object& dispatch,
              const py::object& start) {
    PyFlowHost host(pull, dispatch, start);
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
        x["workers"] = s.workers;
        x["capacity"] = s.capacity;
        x["active_s"] = s.active_s;
        stages.append(x);
    }
    d["stages"] = stages;
    return d;
}

}  // namespace

void bind_flow(py::module_& m) {
    py::class_<FlowScheduler>(m, "Flow")
        .def(py::init([](const std::vector<py::tuple>& stages, std::size_t read_ahead,
                         bool ordered) {
                 // (capacity, queue_bound, batch_size, linger_s[, claimed])
                 std::vector<FlowStage> cfg;
                 for (const py::tuple& t : stages) {
                     if (t.size() != 4 && t.size() != 5)
                         throw py::value_error("Flow: a stage is (capacity, queue_bound, "
                                               "batch_size, linger_s[, claimed]), got " +
                                               std::string(py::repr(t)));
                     cfg.push_back(FlowStage{t[0].cast<std::size_t>(), t[1].cast<std::size_t>(),
                                             t[2].cast<std::size_t>(), t[3].cast<double>(),
                                             t.size() == 5 && t[4].cast<bool>()});
                 }
                 return new FlowScheduler(std::move(cfg), read_ahead, ordered);
             }),
             py::arg("stages"), py::arg("read_ahead"), py::arg("ordered") = true)
        .def("next", &next, py::arg("pull"), py::arg("dispatch"),
             py::arg("start") = py::none())
        .def(
            "claim",
            [](FlowScheduler& flow, std::size_t stage, double wait_s) -> py::object {
                std::uint64_t id = 0;
                bool got;
                {
                    py::gil_scoped_release nogil;
                    got = flow.claim(stage, std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                std::chrono::duration<double>(wait_s)),
                                     id);
                }
                return got ? py::object(py::int_(id)) : py::object(py::none());
            },
            py::arg("stage"), py::arg("wait_s") = 0.0)
        .def("worker_exit", &FlowScheduler::worker_exit, py::arg("stage"), py::arg("n") = 1)
        .def(
            "done",
            [](FlowScheduler& flow, std::size_t stage, const std::vector<std::uint64_t>& ids,
               const std::vector<bool>& failed) { flow.done(stage, ids, failed); },
            py::arg("stage"), py::arg("ids"), py::arg("failed") = std::vector<bool>{})
        .def("set_capacity", &FlowScheduler::set_capacity, py::arg("stage"),
             py::arg("capacity"))
        .def("set_batch_size", &FlowScheduler::set_batch_size, py::arg("stage"),
             py::arg("batch_size"))
        .def("set_read_ahead", &FlowScheduler::set_read_ahead, py::arg("read_ahead"))
        .def("drained", &FlowScheduler::drained, py::arg("stage"))
        .def("close", &FlowScheduler::close)
        .def("stats", &stats);
}

}  // namespace gilfree::bindings
