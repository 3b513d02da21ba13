// PyFlowWorkers: the workers ThreadPool.serve starts for a claimed stage of a streaming
// map (bind_thread_pool.cpp binds serve; the flow side is cpp/src/flow.cpp). Python is
// touched only with the GIL held, as everywhere in the bindings (py_call.hpp).
#pragma once

#include <pybind11/pybind11.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "gilfree/flow.hpp"
#include "gilfree/thread_pool.hpp"
#include "py_call.hpp"

namespace gilfree::bindings {

// serve(fn, flow, stage, n): n workers for a claimed stage of a streaming map (flow.hpp).
// A ticket takes the GIL once and keeps it while items come: claim an id (the flow's
// mutex only), fn(id), flow.done(stage, [id], [failed]) in C++, claim the next. When the
// stage's queue is empty it lets the GIL go and waits in claim() for more (kServeIdle);
// none came: the ticket ends and the flow counts its worker out. Every claimed id is
// reported exactly once, as failed when the job was cancelled (shutdown, interpreter
// exit) before fn ran. Tickets a shutdown dropped before they started are counted out by
// cancel(). The last ticket to end drops the references (fn, the Flow object) with the
// GIL; cancel() leaves them to the pool's graveyard (emptied under the GIL by the next
// serve/shutdown/dealloc, or leaked after exit) when it ends the job itself.
class PyFlowWorkers final : public Job {
public:
    struct Graveyard {
        std::mutex mu;
        std::vector<std::shared_ptr<PyFlowWorkers>> jobs;
    };
    // How long a worker with nothing to claim waits for more before it ends.
    static constexpr std::chrono::milliseconds kServeIdle{50};

    // New references to fn and flow. GIL held.
    PyFlowWorkers(PyObject* fn, PyObject* flow_obj, FlowScheduler& flow, std::size_t stage,
                  std::size_t tickets, std::shared_ptr<Graveyard> graveyard)
        : fn_(Py_NewRef(fn)), flow_obj_(Py_NewRef(flow_obj)), flow_(flow), stage_(stage),
          graveyard_(std::move(graveyard)), unstarted_(tickets), live_(tickets) {}
    ~PyFlowWorkers() override = default;  // plain C++, see PyMapBatch

    void run_ticket() override {
        if (!take_ticket()) return;  // cancel() counted this worker out already
        bool gil = false;
        std::size_t in_run = 0;
        try {
            for (;;) {
                std::uint64_t id = 0;
                if (cancelled_.load(std::memory_order_relaxed)) {  // no new claims
                    flow_.worker_exit(stage_);
                    break;
                }
                if (!(gil && flow_.try_claim(stage_, id))) {
                    if (gil) {
                        pycall::WorkerGil::release();
                        gil = false;
                    }
                    if (!flow_.claim(stage_, kServeIdle, id, &cancelled_)) break;
                    if (!pycall::WorkerGil::acquire()) {  // interpreter exiting
                        cancelled_.store(true, std::memory_order_relaxed);
                        report(id, true);
                        flow_.worker_exit(stage_);
                        break;
                    }
                    gil = true;
                    in_run = 0;
                }
                if (cancelled_.load(std::memory_order_relaxed)) {  // claimed as it came
                    report(id, true);
                    continue;
                }
                pycall::Outcome o = call_id(id);
                // The result is only a flag; an exception is fn's to record (imap's does).
                const bool failed = !o.ok || o.value != Py_True;
                pycall::drop(o.value);
                report(id, failed);
                if (!pycall::WorkerGil::between_items(++in_run, /*patient=*/true))
                    cancelled_.store(true, std::memory_order_relaxed);
            }
        } catch (...) {  // the flow refused (not a claimed stage): end this worker
            try {
                flow_.worker_exit(stage_);
            } catch (...) {
            }
        }
        end_ticket(gil);
    }

    // Shutdown (any thread, maybe without the GIL): no new calls; tickets not started are
    // counted out; waiting workers wake and end.
    void cancel() noexcept override {
        cancelled_.store(true, std::memory_order_relaxed);
        std::lock_guard<std::mutex> lk(mu_);
        if (released_) return;  // every ticket ended: the flow may be gone
        const std::size_t never = unstarted_.exchange(0);
        try {
            // Still inside serve()'s submit: serve settles with the flow (submitted()).
            if (submitting_)
                dropped_while_submitting_ += never;
            else if (never > 0)
                flow_.worker_exit(stage_, never);
            flow_.notify_claimers(stage_);
        } catch (...) {
        }
        if (never > 0 && live_.fetch_sub(never) == never) bury();
    }

    // serve(): the pool took the tickets. A shutdown that dropped some meanwhile left
    // them to count out here.
    void submitted() noexcept {
        std::size_t dropped = 0;
        {
            std::lock_guard<std::mutex> lk(mu_);
            submitting_ = false;
            dropped = std::exchange(dropped_while_submitting_, 0);
        }
        try {
            if (dropped > 0) flow_.worker_exit(stage_, dropped);
        } catch (...) {
        }
    }

    // GIL held: the pool took none of its tickets; the caller counts its workers out.
    void refused() noexcept {
        cancelled_.store(true, std::memory_order_relaxed);
        {
            std::lock_guard<std::mutex> lk(mu_);
            if (released_) return;
            released_ = true;
            unstarted_.store(0);
            live_.store(0);
        }
        release();
    }

    // GIL held: drops fn and the Flow.
    void release() noexcept {
        pycall::drop(fn_);
        pycall::drop(flow_obj_);
    }

    std::weak_ptr<PyFlowWorkers> weak_self_;

private:
    bool take_ticket() noexcept {
        std::size_t u = unstarted_.load();
        while (u > 0 && !unstarted_.compare_exchange_weak(u, u - 1)) {
        }
        return u > 0;
    }

    pycall::Outcome call_id(std::uint64_t id) {
        PyObject* arg = PyLong_FromUnsignedLongLong(id);
        if (arg == nullptr) return {pycall::take_exception(), false};
        pycall::Outcome o = pycall::call(fn_, arg);
        Py_DECREF(arg);
        return o;
    }

    void report(std::uint64_t id, bool failed) noexcept {
        try {
            flow_.done(stage_, {id}, {failed});
        } catch (...) {  // closed flow ignores; an id not in flight: the flow's business
        }
    }

    // The ticket's end. The last one drops the references, with the GIL (taken for it if
    // need be; leaked if the interpreter is exiting).
    void end_ticket(bool gil) noexcept {
        bool last = false;
        {
            std::lock_guard<std::mutex> lk(mu_);
            last = live_.fetch_sub(1) == 1;
            if (last) released_ = true;
        }
        if (last && !gil) gil = pycall::WorkerGil::acquire();
        if (last && gil) release();
        if (gil) pycall::WorkerGil::release();
    }

    // mu_ held, no GIL maybe: the last reference holder is cancel(); the graveyard drops.
    void bury() noexcept {
        released_ = true;
        try {
            std::lock_guard<std::mutex> lk(graveyard_->mu);
            if (auto self = weak_self_.lock()) graveyard_->jobs.push_back(std::move(self));
        } catch (...) {  // out of memory: the references leak, which is safe
        }
    }

    PyObject* fn_;
    PyObject* flow_obj_;
    FlowScheduler& flow_;  // kept alive by flow_obj_ until the references are dropped
    const std::size_t stage_;
    std::shared_ptr<Graveyard> graveyard_;
    std::mutex mu_;             // released_ and submitting_ against cancel()
    bool released_ = false;     // every ticket ended (references dropped or buried)
    bool submitting_ = true;    // serve() has not settled the submit yet
    std::size_t dropped_while_submitting_ = 0;
    std::atomic<std::size_t> unstarted_;
    std::atomic<std::size_t> live_;  // tickets not ended (started or not)
    std::atomic<bool> cancelled_{false};
};


}  // namespace gilfree::bindings
