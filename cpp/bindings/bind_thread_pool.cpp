// _core.ThreadPool: runs a Python callable over a batch of items on native threads.
//
// Who sends what to whom, and who holds the GIL
//
//   driver (caller of map, holds GIL)
//     snapshot items into a tuple, build PyMapBatch          [GIL]
//     release GIL; ThreadPool::submit(batch, n)              [no GIL] spawns workers if needed
//     loop: batch.wait_for(25 ms) on a condvar               [no GIL]
//           take GIL ahead of the workers (DriverGate),
//           PyErr_CheckSignals (Ctrl-C)                      [GIL]
//           on_complete(i, result, ok) for items completed since last wakeup   [GIL]
//     when finished: lowest failure -> raise, else results -> list   [GIL]
//
//   worker thread (one ticket of the batch)
//     take GIL once (WorkerGil::acquire)                     [GIL]
//     repeat: claim i; result[i] = fn(items[i]); push i on the completion queue
//             (fn may drop the GIL inside, e.g. time.sleep: another worker then takes it
//              and claims the next item, which is how blocking items overlap)
//     release GIL when nothing is left to claim              [no GIL]
//
//   serve(fn, flow, stage, n) (imap's thread stage; caller holds GIL, inside Flow.next's
//   start): build PyFlowWorkers (refs to fn and the Flow), release GIL,
//     ThreadPool::submit(n tickets), return at once         [no GIL while submitting]
//   worker thread (one ticket of a PyFlowWorkers)
//     take GIL; repeat: FlowScheduler::try_claim(stage) -> id; fn(id); done(stage, {id},
//     {result is not True}) directly in C++ (only the flow's mutex, no Python callback);
//     nothing to claim: release GIL, wait in FlowScheduler::claim (50 ms), retake GIL
//     on an id or end (the flow counts the worker out)       [no GIL while waiting]
//   shutdown()/cancel (any thread): no new calls; a claimed id is reported failed;
//     tickets that never started are counted out of the flow. The last ticket drops fn
//     and the Flow with the GIL; if cancel() ends the job, the pool's graveyard does
//     (emptied under the GIL by the next serve/shutdown/dealloc).
//
// Ctrl-C: the driver abandons the batch (no new claims) and raises at once; running items
// finish later and the last worker drops the batch's references with the GIL held. The
// pool is told (ThreadPool::abandon), so their threads do not count against max_workers.
//
// shutdown() during a map: the batch claims no new item; items that never ran raise
// PoolShutDown (a RuntimeError), or with stop_on_error=False each holds one.
//
// submit(fn, done) returns a PoolCall: abandon() on it (the caller stopped waiting, e.g.
// a timeout) drops the call if it has not started, else tells the pool that its thread
// no longer counts against max_workers. begin_wait()/end_wait() do the same for a worker
// that blocks on other work of this pool (a nested map on the same engine).
//
// Re-entrancy: map() called on a worker thread of the same pool (a callable that maps
// again: a node that maps on its own engine) hands its items to the pool like any map
// (map_nested), so the inner items of every outer item share the pool's threads. It
// cannot deadlock when every worker waits for items that need a worker: the waiting
// worker first runs items of its own batch itself (one ticket is its own) until none is
// left to claim, and then waits only for items other threads claimed, which they run
// (or wait for deeper maps of their own, which end the same way). Maps into another
// pool run normally.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "gilfree/flow.hpp"
#include "gilfree/index_batch.hpp"
#include "gilfree/thread_pool.hpp"
#include "flow_workers.hpp"
#include "py_call.hpp"

namespace py = pybind11;

namespace gilfree::bindings {
namespace {

// How often a waiting driver wakes to check for Ctrl-C and to deliver on_complete
// events. Bounds Ctrl-C latency (plus up to one GIL switch interval) and callback lag.
constexpr std::chrono::milliseconds kDriverTick{25};

enum class ItemState : unsigned char { pending, ok, failed };

// Raised as _core.PoolShutDown (a RuntimeError subclass): work given to a pool that is,
// or was meanwhile, shut down.
struct PoolShutDownError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
PyObject* g_pool_shut_down = nullptr;  // the Python type; the module keeps it alive

class PyMapBatch final : public IndexBatch {
public:
    // Takes new references to fn and items (a tuple). GIL held.
    PyMapBatch(PyObject* fn, PyObject* items, bool stop_on_error, bool track)
        : IndexBatch(static_cast<std::size_t>(PyTuple_GET_SIZE(items)), stop_on_error, track),
          fn_(Py_NewRef(fn)),
          items_(Py_NewRef(items)),
          results_(size(), nullptr),
          states_(size(), ItemState::pending) {}

    // Plain C++ on purpose: the last shared_ptr may go away on a worker without the GIL,
    // or after finalization. If release() never ran, the references leak, which is safe.
    ~PyMapBatch() override = default;

    // GIL held, no worker inside the batch (finished, or abandon() returned true).
    void release() noexcept {
        pycall::drop(fn_);
        pycall::drop(items_);
        for (PyObject*& r : results_) pycall::drop(r);
    }

    // Driver, GIL held: results (or exceptions) are stable once an index was popped from
    // the completion queue, because the worker wrote them before pushing it.
    PyObject* result(std::size_t i) const { return results_[i]; }
    ItemState state(std::size_t i) const { return states_[i]; }
    PyObject* steal_result(std::size_t i) {
        PyObject* r = results_[i];
        results_[i] = nullptr;
        return r;
    }

protected:
    bool enter() override { return pycall::WorkerGil::acquire(); }

    bool run_item(std::size_t i) override {
        pycall::Outcome o = pycall::call(fn_, PyTuple_GET_ITEM(items_, static_cast<Py_ssize_t>(i)));
        results_[i] = o.value;  // each index is claimed by exactly one worker
        states_[i] = o.ok ? ItemState::ok : ItemState::failed;
        return o.ok;
    }

    bool after_item(std::size_t items_in_run) override {
        return pycall::WorkerGil::between_items(items_in_run);
    }

    void release_abandoned() noexcept override { release(); }

    void leave() override { pycall::WorkerGil::release(); }

private:
    PyObject* fn_;
    PyObject* items_;
    std::vector<PyObject*> results_;
    std::vector<ItemState> states_;
};

// Unwinding out of map() (Ctrl-C, on_complete error, anything) must neither wait for
// running items nor leak or double-drop the batch's references.
struct AbandonOnUnwind {
    std::shared_ptr<PyMapBatch> batch;
    ThreadPool& pool;
    ~AbandonOnUnwind() {
        if (!batch) return;
        if (batch->abandon()) batch->release();
        else pool.abandon(*batch);  // its running items no longer hold slots
    }
};

// A finished batch's references are dropped (under the GIL) however the map returns.
struct ReleaseOnExit {
    PyMapBatch& batch;
    ~ReleaseOnExit() { batch.release(); }
};

void notify(PyObject* on_complete, std::size_t index, PyObject* value, bool ok) {
    PyObject* idx = PyLong_FromSize_t(index);
    if (idx == nullptr) throw py::error_already_set();
    PyObject* args[3] = {idx, value, ok ? Py_True : Py_False};
    pycall::Outcome o = pycall::call(on_complete, args, 3);
    Py_DECREF(idx);
    if (!o.ok) {
        pycall::restore_exception(o.value);
        pycall::drop(o.value);
        throw py::error_already_set();
    }
    pycall::drop(o.value);
}

// submit(fn, done): one call of fn() on a worker, then done(result_or_exception, ok) on
// that same worker with the GIL held (for event-loop bridges: done typically calls
// loop.call_soon_threadsafe). A call dropped by shutdown() before it started is answered
// by shutdown() itself, in its caller's thread, with a PoolShutDown error; a call
// withdrawn through its PoolCall handle is not answered (its caller stopped waiting).
class PyCallJob final : public Job {
public:
    struct Dropped {  // jobs cancelled by the pool, answered later under the GIL
        std::mutex mu;
        std::vector<std::shared_ptr<PyCallJob>> jobs;
    };

    // New references to fn and done. GIL held.
    PyCallJob(PyObject* fn, PyObject* done, std::shared_ptr<Dropped> dropped)
        : fn_(Py_NewRef(fn)), done_(Py_NewRef(done)), dropped_(std::move(dropped)) {}
    ~PyCallJob() override = default;  // plain C++, see PyMapBatch

    void run_ticket() override {
        if (!claim(kRunning)) return;
        self_.reset();  // our ticket keeps us alive until we return
        if (!pycall::WorkerGil::acquire()) return;  // interpreter exiting: leak, never touch
        pycall::Outcome o = pycall::call(fn_, nullptr, 0);
        answer(o.value, o.ok);
        pycall::drop(o.value);
        pycall::WorkerGil::release();
    }

    void cancel() noexcept override {
        if (!claim(kDropped)) return;
        try {
            std::lock_guard<std::mutex> lk(dropped_->mu);
            dropped_->jobs.push_back(self_);
        } catch (...) {  // out of memory: the references leak, which is safe
        }
        self_.reset();
    }

    // GIL held: the caller no longer wants the call. Returns true if it had started
    // (it runs on; its done() is still called); otherwise it never will run.
    bool withdraw() {
        if (!claim(kDropped)) return true;
        pycall::drop(fn_);
        pycall::drop(done_);
        self_.reset();
        return false;
    }

    bool started() const noexcept { return state_.load() == kRunning; }

    // GIL held: tells done() that the call never ran.
    void answer_dropped() {
        PyObject* exc = PyObject_CallFunction(g_pool_shut_down, "s",
                                              "ThreadPool was shut down before the call ran");
        if (exc == nullptr) exc = pycall::take_exception();
        answer(exc, false);
        pycall::drop(exc);
    }

    std::shared_ptr<PyCallJob> self_;  // set by submit; lets cancel() hand itself over

private:
    static constexpr int kQueued = 0, kRunning = 1, kDropped = 2;

    // Run, cancel and withdraw race for a queued job; exactly one wins.
    bool claim(int to) noexcept {
        int expected = kQueued;
        return state_.compare_exchange_strong(expected, to);
    }

    // GIL held. Calls done(value, ok) once and drops the job's references.
    void answer(PyObject* value, bool ok) {
        PyObject* args[2] = {value, ok ? Py_True : Py_False};
        pycall::Outcome d = pycall::call(done_, args, 2);
        if (!d.ok) {
            pycall::restore_exception(d.value);
            pycall::write_unraisable(done_);  // nobody to raise to
        }
        pycall::drop(d.value);
        pycall::drop(fn_);
        pycall::drop(done_);
    }

    PyObject* fn_;
    PyObject* done_;
    std::shared_ptr<Dropped> dropped_;
    std::atomic<int> state_{kQueued};
};

// What submit() returns: lets the caller give up on the call.
class PyCall {
public:
    PyCall(std::shared_ptr<PyCallJob> job, ThreadPool& pool, py::object owner)
        : job_(std::move(job)), pool_(pool), owner_(std::move(owner)) {}

    // GIL held. Drops the call if it has not started; returns whether it had.
    bool withdraw() { return job_->withdraw(); }

    // GIL held. Returns whether the call had started (then it runs on, unobserved).
    bool abandon() {
        const bool started = job_->withdraw();
        pool_.abandon(*job_);  // short, never blocks on the GIL
        return started;
    }
    bool started() const noexcept { return job_->started(); }

private:
    std::shared_ptr<PyCallJob> job_;
    ThreadPool& pool_;  // lives as long as owner_, the Python pool object
    py::object owner_;
};

class PyThreadPool {
public:
    PyThreadPool(std::size_t max_workers, double idle_timeout, std::size_t max_abandoned)
        : pool_(max_workers, to_duration(idle_timeout), [] { pycall::WorkerGil::forget_thread(); },
                max_abandoned) {}

    // Python's dealloc, GIL held. Workers keep the pool's shared state and exit when idle.
    ~PyThreadPool() {
        pool_.shutdown(false);
        answer_dropped_calls();
    }

    PyCall submit(const py::object& self, const py::object& fn, const py::object& done) {
        if (pool_.is_shut_down()) throw PoolShutDownError("ThreadPool is shut down");
        auto job = std::make_shared<PyCallJob>(fn.ptr(), done.ptr(), dropped_);
        job->self_ = job;
        try {
            pycall::GilRelease nogil;
            pool_.submit(job, 1);
        } catch (const std::runtime_error&) {
            job->self_.reset();
            // the job's references leak only if it was cancelled meanwhile
            if (pool_.is_shut_down()) throw PoolShutDownError("ThreadPool is shut down");
            throw;
        } catch (...) {
            job->self_.reset();
            throw;
        }
        return PyCall(std::move(job), pool_, self);
    }

    // submit() for several calls with one GIL release: a streaming map hands a stage
    // every item that may start at once, and each release would make the driver queue
    // for the GIL behind the workers again (~50 us a call with hundreds of them busy).
    void submit_each(const py::list& fns, const py::list& dones) {
        if (pool_.is_shut_down()) throw PoolShutDownError("ThreadPool is shut down");
        if (fns.size() != dones.size()) throw py::value_error("fns and dones differ in length");
        std::vector<std::shared_ptr<PyCallJob>> jobs;
        jobs.reserve(fns.size());
        for (std::size_t k = 0; k < fns.size(); ++k) {
            auto job = std::make_shared<PyCallJob>(fns[k].ptr(), dones[k].ptr(), dropped_);
            job->self_ = job;
            jobs.push_back(std::move(job));
        }
        std::size_t sent = 0;
        try {
            pycall::GilRelease nogil;
            for (; sent < jobs.size(); ++sent) pool_.submit(jobs[sent], 1);
        } catch (...) {
            // GIL held again: the calls never handed over drop their references.
            for (std::size_t k = sent; k < jobs.size(); ++k) jobs[k]->withdraw();
            if (pool_.is_shut_down()) throw PoolShutDownError("ThreadPool is shut down");
            throw;
        }
    }

    // Workers for a claimed stage: see PyFlowWorkers. Returns at once. Raising, it started
    // none (the flow counts them out: FlowScheduler::start_workers).
    void serve(const py::object& fn, const py::object& flow_obj, std::size_t stage,
               std::size_t n) {
        FlowScheduler& flow = flow_obj.cast<FlowScheduler&>();
        if (pool_.is_shut_down()) throw PoolShutDownError("ThreadPool is shut down");
        bury_released();
        const std::size_t tickets = std::min(n, pool_.max_workers());
        if (tickets == 0) return;
        auto job = std::make_shared<PyFlowWorkers>(fn.ptr(), flow_obj.ptr(), flow, stage,
                                                   tickets, graveyard_);
        job->weak_self_ = job;
        bool refused = false;
        {
            pycall::GilRelease nogil;
            try {
                pool_.submit(job, tickets);
            } catch (const std::runtime_error&) {
                refused = true;
            }
        }
        if (refused) {
            job->refused();  // GIL held: drops its references; counts nobody out
            if (pool_.is_shut_down()) throw PoolShutDownError("ThreadPool is shut down");
            throw std::runtime_error("ThreadPool: no worker thread could start: " +
                                     pool_.spawn_error());
        }
        job->submitted();
        if (tickets < n) flow.worker_exit(stage, n - tickets);  // the pool runs no more
        bury_released();
    }

    bool begin_wait() { return pool_.begin_wait(); }
    bool on_worker_thread() const noexcept { return pool_.is_current_thread_worker(); }
    void end_wait() { pool_.end_wait(); }

    py::list map(const py::object& fn, const py::object& items, const py::object& on_complete,
                  bool stop_on_error, std::size_t parallelism) {
        // A snapshot: the caller may mutate its list while we run.
        auto snapshot = py::reinterpret_steal<py::tuple>(pycall::to_tuple(items.ptr()));
        if (!snapshot) throw py::error_already_set();
        PyObject* callback = on_complete.is_none() ? nullptr : on_complete.ptr();
        if (pool_.is_shut_down()) throw PoolShutDownError("ThreadPool is shut down");
        if (snapshot.empty()) return py::list();
        if (pool_.is_current_thread_worker())  // a worker mapping again: top of the file
            return map_nested(fn.ptr(), snapshot, callback, stop_on_error, parallelism);

        auto batch = std::make_shared<PyMapBatch>(fn.ptr(), snapshot.ptr(), stop_on_error,
                                                  callback != nullptr);
        AbandonOnUnwind guard{batch, pool_};
        std::optional<py::error_already_set> callback_error;
        bool submitted = false;
        for (;;) {
            bool signalled = false;
            // Submit in the first GIL-free stretch: taking the GIL back in between would
            // mean queueing for it behind the workers we just started.
            const bool done = pycall::wait_without_gil(
                [&] {
                    if (!submitted) {
                        try {
                            // Fewer tickets than items: each ticket claims items
                            // until none are left, so at most `parallelism` run at once.
                            pool_.submit(batch, parallelism ? std::min(parallelism, batch->size())
                                                            : batch->size());
                        } catch (const std::runtime_error&) {
                            if (pool_.is_shut_down())  // by another thread, just now
                                throw PoolShutDownError("ThreadPool is shut down");
                            throw;
                        }
                        submitted = true;
                    }
                    return batch->wait_for(kDriverTick);
                },
                signalled);
            if (signalled) throw py::error_already_set();
            if (callback != nullptr && !callback_error) {
                try {
                    std::size_t i = 0;
                    while (batch->pop_completion(i))
                        notify(callback, i, batch->result(i), batch->state(i) == ItemState::ok);
                } catch (py::error_already_set& e) {
                    // Stop like a failed item would: no new items, wait for running ones.
                    callback_error.emplace(std::move(e));
                    batch->cancel();
                }
            }
            if (done) break;
        }
        guard.batch.reset();  // finished: from here on we own the references
        ReleaseOnExit release{*batch};
        if (callback_error) throw *callback_error;
        return collect(*batch, stop_on_error);
    }

    // map() on one of this pool's workers (see the top of the file). Not a driver: it
    // waits parked, and takes the GIL back as a worker does (behind a waiting driver),
    // since hundreds of such waits at once (400 outer items, each mapping) announcing
    // themselves as drivers kept every worker stepping aside: 200 of them took 41 s.
    // on_complete events come when the map has ended, in completion order.
    py::list map_nested(PyObject* fn, const py::tuple& items, PyObject* callback,
                        bool stop_on_error, std::size_t parallelism) {
        auto batch = std::make_shared<PyMapBatch>(fn, items.ptr(), stop_on_error,
                                                  callback != nullptr);
        // This worker runs one ticket itself: the others go to the pool, for its idle
        // threads or new ones up to max_workers. The worker keeps its slot (it helps):
        // with every slot taken by outer items (400 calls of 5 items of pure Python),
        // each runs its own items, as if inline, where excusing it (begin_wait) started
        // hundreds more threads that fought for the GIL (0.61x the loop against ~1x).
        const std::size_t tickets =
            (parallelism ? std::min(parallelism, batch->size()) : batch->size()) - 1;
        PyThreadState* state = PyEval_SaveThread();
        try {
            if (tickets > 0) pool_.submit(batch, tickets);
        } catch (...) {  // shut down, or no thread could start: this worker runs them all
        }
        batch->run_ticket();  // its items until none are left (it takes the GIL per run)
        batch->wait_finished();
        pycall::DriverGate::pass();
        pycall::restore_thread(state);
        ReleaseOnExit release{*batch};
        if (callback != nullptr) {
            std::size_t i = 0;
            while (batch->pop_completion(i))
                notify(callback, i, batch->result(i), batch->state(i) == ItemState::ok);
        }
        return collect(*batch, stop_on_error);
    }

    bool shutdown(bool wait) {
        bool done;
        {
            pycall::GilRelease nogil;  // exiting workers take the GIL to drop their state
            done = pool_.shutdown(wait);
        }
        answer_dropped_calls();
        return done;
    }

    std::size_t max_workers() const { return pool_.max_workers(); }
    double idle_timeout() const { return std::chrono::duration<double>(pool_.idle_timeout()).count(); }
    std::size_t num_threads() const { return pool_.num_threads(); }
    py::dict stats() const {
        const ThreadPool::Stats st = pool_.stats();
        const std::string err = pool_.spawn_error();
        py::dict d;
        d["threads"] = st.threads;
        d["busy"] = st.busy;
        d["abandoned"] = st.abandoned;
        d["waiting"] = st.waiting;
        d["max_workers"] = pool_.max_workers();
        d["max_abandoned"] = pool_.max_abandoned();
        d["spawn_error"] = err.empty() ? py::object(py::none()) : py::object(py::str(err));
        return d;
    }
    bool is_shut_down() const { return pool_.is_shut_down(); }

private:
    static std::chrono::nanoseconds to_duration(double seconds) {
        if (!(seconds > 0)) throw py::value_error("idle_timeout must be > 0");
        return std::chrono::duration_cast<std::chrono::nanoseconds>(
            std::chrono::duration<double>(seconds));
    }

    // GIL held, batch finished. Items still pending were never claimed: the pool was
    // shut down during the map (or the interpreter is exiting).
    static py::list collect(PyMapBatch& batch, bool stop_on_error) {
        const std::size_t n = batch.size();
        std::size_t pending = 0;
        for (std::size_t i = 0; i < n; ++i) {
            if (batch.state(i) == ItemState::failed && stop_on_error) {
                pycall::restore_exception(batch.result(i));
                throw py::error_already_set();
            }
            pending += batch.state(i) == ItemState::pending ? 1 : 0;
        }
        if (pending && stop_on_error)
            throw PoolShutDownError("ThreadPool was shut down during map(): " +
                                    std::to_string(pending) + " of " + std::to_string(n) +
                                    " items did not run");
        py::list out(static_cast<Py_ssize_t>(n));
        for (std::size_t i = 0; i < n; ++i) {
            PyObject* r = batch.steal_result(i);
            if (batch.state(i) == ItemState::pending) {
                const std::string msg =
                    "ThreadPool was shut down during map(): item " + std::to_string(i) + " did not run";
                r = PyObject_CallFunction(g_pool_shut_down, "s", msg.c_str());
                if (r == nullptr) throw py::error_already_set();
            }
            PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), r);
        }
        return out;
    }

    // GIL held.
    void answer_dropped_calls() {
        std::vector<std::shared_ptr<PyCallJob>> jobs;
        {
            std::lock_guard<std::mutex> lk(dropped_->mu);
            jobs.swap(dropped_->jobs);
        }
        if (!pycall::interpreter_alive()) return;  // leak: nothing may run now
        for (auto& j : jobs) j->answer_dropped();
        bury_released();
    }

    // GIL held: drops the references of serve() jobs a shutdown ended.
    void bury_released() {
        std::vector<std::shared_ptr<PyFlowWorkers>> jobs;
        {
            std::lock_guard<std::mutex> lk(graveyard_->mu);
            jobs.swap(graveyard_->jobs);
        }
        if (!pycall::interpreter_alive()) return;
        for (auto& j : jobs) j->release();
    }

    ThreadPool pool_;
    std::shared_ptr<PyCallJob::Dropped> dropped_ = std::make_shared<PyCallJob::Dropped>();
    std::shared_ptr<PyFlowWorkers::Graveyard> graveyard_ =
        std::make_shared<PyFlowWorkers::Graveyard>();
};

}  // namespace

void bind_thread_pool(py::module_& m) {
    using namespace pybind11::literals;
    g_pool_shut_down =
        py::register_exception<PoolShutDownError>(m, "PoolShutDown", PyExc_RuntimeError).ptr();
    py::class_<PyCall>(m, "PoolCall", R"doc(
A call handed to ThreadPool.submit(). abandon() says the caller stopped waiting for it.)doc")
        .def("abandon", &PyCall::abandon, R"doc(
Drop the call if it has not started (it then never runs and done is never called) and
return False; else return True: it runs on, its done still called, and its thread stops
counting against max_workers until it returns (see max_abandoned).)doc")
        .def("withdraw", &PyCall::withdraw, R"doc(
Drop the call if it has not started and return False; else return True (nothing else
changes). Withdraw every call first, then abandon() the started ones, when giving up on
many at once: a thread that abandon() starts could otherwise pick a call about to be
withdrawn.)doc")
        .def_property_readonly("started", &PyCall::started);
    py::class_<PyThreadPool>(m, "ThreadPool", R"doc(
Native thread pool for Python callables. Threads start on demand (up to max_workers)
and retire after idle_timeout seconds without work. See map().)doc")
        .def(py::init<std::size_t, double, std::size_t>(), "max_workers"_a,
             "idle_timeout"_a = 10.0, "max_abandoned"_a = ThreadPool::kDefaultMaxAbandoned)
        .def("map", &PyThreadPool::map, "fn"_a, "items"_a, py::kw_only(),
             "on_complete"_a = py::none(), "stop_on_error"_a = true, "parallelism"_a = 0,
             R"doc(
Call fn(item) for every item on the pool's threads; return the results in input order.
parallelism > 0: at most that many of the items run at once (0: up to max_workers).

on_complete(index, result_or_exception, ok) runs in the calling thread, in completion
order. With stop_on_error, the first failure (lowest index) is re-raised after running
items finish; otherwise the exception object takes the item's place in the result list.
Called from one of this pool's own workers (a nested map), that worker runs items of
the map itself; the others go to the pool's idle threads (or new ones, up to
max_workers).)doc")
        .def("submit",
             [](py::object self, const py::object& fn, const py::object& done) {
                 return self.cast<PyThreadPool&>().submit(self, fn, done);
             },
             "fn"_a, "done"_a, R"doc(
Call fn() on a worker thread, then done(result_or_exception, ok) on that same thread
with the GIL held. Returns a PoolCall at once. An exception raised by done goes to
sys.unraisablehook. If shutdown() drops the call before it starts, shutdown() calls
done(PoolShutDown(...), False) itself.)doc")
        .def("submit_each", &PyThreadPool::submit_each, "fns"_a, "dones"_a, R"doc(
submit(fns[k], dones[k]) for every k, with one GIL release; no PoolCall is returned
(the calls cannot be given up on). If the pool is shut down (or shuts down meanwhile),
raises PoolShutDown; calls already handed over run, or are answered by shutdown() as for
submit(); the others never run.)doc")
        .def("serve", &PyThreadPool::serve, "fn"_a, "flow"_a, "stage"_a, "n"_a, R"doc(
Return at once; start n workers (at most max_workers) for claimed stage `stage` of flow
(a _core.Flow): each claims ids from the flow, calls fn(id) and reports it from C++,
flow.done(stage, [id], [failed]), failed unless fn returned True (an exception fn raises
is dropped: fn records its own errors); a worker with nothing to claim for 50 ms ends
and the flow counts it out. Ids claimed after a shutdown are reported failed. Raises
PoolShutDown if the pool is shut down (the workers are counted out).)doc")
        .def("begin_wait", &PyThreadPool::begin_wait, R"doc(
On a worker of this pool about to block on other work of this pool (a nested map): it
stops counting against max_workers until end_wait(). False (a no-op) on other threads.)doc")
        .def("end_wait", &PyThreadPool::end_wait)
        .def("on_worker_thread", &PyThreadPool::on_worker_thread, R"doc(
Whether the calling thread is one of this pool's workers (engines use it to tell which
engine a node that maps is running on).)doc")
        .def("stats", &PyThreadPool::stats, R"doc(
A dict: threads, busy, abandoned (busy in calls given up on), waiting (in begin_wait),
max_workers, max_abandoned, spawn_error (why the last thread start failed, or None).)doc")
        .def_property_readonly("is_shut_down", &PyThreadPool::is_shut_down)
        .def("shutdown", &PyThreadPool::shutdown, "wait"_a = true)
        .def("__enter__", [](py::object self) { return self; })
        .def("__exit__",
             [](PyThreadPool& self, const py::args&) {
                 self.shutdown(true);
                 return false;
             })
        .def_property_readonly("max_workers", &PyThreadPool::max_workers)
        .def_property_readonly("idle_timeout", &PyThreadPool::idle_timeout)
        .def_property_readonly("num_threads", &PyThreadPool::num_threads);

    m.def("begin_pool_wait", &ThreadPool::begin_wait_current, R"doc(
On a worker thread of any ThreadPool, about to block for a while: the thread stops
counting against its pool's max_workers until end_pool_wait(). False (a no-op) on any
other thread.)doc");
    m.def("end_pool_wait", &ThreadPool::end_wait_current);

    // Interpreter exit: stop every pool before finalization so that no worker touches
    // Python afterwards, without waiting on workers stuck in long calls.
    m.def("_shutdown_all_pools", [] {
        {
            pycall::GilRelease nogil;
            ThreadPool::shutdown_all(std::chrono::milliseconds(500));
        }
        pycall::interpreter_exiting.store(true, std::memory_order_release);
    });
    py::module_::import("atexit").attr("register")(m.attr("_shutdown_all_pools"));
    pthread_atfork(nullptr, nullptr, [] { pycall::DriverGate::reset_after_fork(); });
}

}  // namespace gilfree::bindings
