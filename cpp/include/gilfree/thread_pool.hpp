// gilfree::ThreadPool: native worker threads that grow on demand and retire when idle.
//
// Who sends what to whom
//
//   driver thread                      ThreadPool (mu + work_cv)              worker threads
//   submit(job, k) ──── k tickets ───▶ deque<shared_ptr<Job>> ──── pop ─────▶ job->run_ticket()
//     spawns threads while tickets                                             claims and runs items
//     outnumber idle workers (≤ cap)                                           until the job has none
//   job-specific wait (IndexBatch) ◀──────────── notify when the job is done ──┘
//   shutdown() ─ drains tickets, cancels their jobs, wakes idle workers; wait=true joins
//   idle worker ─ no ticket for idle_timeout ─▶ retires (on_worker_exit hook, then exits)
//   finished worker ─ while other tickets keep finishing (< 100 us apart), one of them
//     spins on its CPU, yielding, before it parks (see spin_while_burst in the .cpp)
//
// GIL: this file knows nothing about Python. A Job decides if and when to take the GIL
// (the Python binding takes it once per run of consecutive items, see
// cpp/bindings/py_call.hpp). No pool lock is ever held while a Job runs, so a worker
// blocked in Python cannot stall the pool.
//
// Why plain std::thread and not a tbb::task_arena: the callables we run block in I/O
// (sockets, sleep, disk) for long periods. A work-stealing arena is sized to the cores
// and assumes tasks that compute; 200 blocked HTTP calls need 200 threads, not 2.
//
// Why a std::mutex + condvar deque and not tbb::concurrent_bounded_queue: an idle worker
// must wake after idle_timeout to retire, and concurrent_bounded_queue::pop has no
// timeout. Tickets are one per worker per batch, not one per item, so this lock is cold;
// the per-item hot path (IndexBatch) is lock-free.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>

namespace gilfree {

// Work handed to the pool. One Job may receive several tickets so that several workers
// help with it at once.
class Job {
public:
    virtual ~Job() = default;
    // Runs on a worker thread, once per ticket. Returns when the job has nothing left to
    // claim. May throw nothing but abi::__forced_unwind (thread cancellation).
    virtual void run_ticket() = 0;
    // The pool dropped this job's queued tickets (shutdown). Must not block.
    virtual void cancel() noexcept = 0;
};

namespace detail {
struct PoolState;
struct ForkHandler;
}  // namespace detail

class ThreadPool {
public:
    // Runs on each worker thread just before it exits (idle retirement or shutdown), e.g.
    // to drop per-thread interpreter state. Not run for a thread killed by its runtime.
    using WorkerExitHook = std::function<void()>;

    ThreadPool(std::size_t max_workers, std::chrono::nanoseconds idle_timeout,
               WorkerExitHook on_worker_exit = {});
    // Shuts down without waiting: workers hold the shared state and exit when idle.
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    // Queues min(parallelism, max_workers) tickets for `job` and starts threads while
    // tickets outnumber idle workers (up to max_workers). Throws std::runtime_error if the
    // pool is shut down or no worker thread exists and none can be started.
    void submit(std::shared_ptr<Job> job, std::size_t parallelism);

    // Idempotent. Queued tickets are dropped and their jobs cancelled; running tickets
    // finish. With wait, blocks until every worker thread (except the caller, if it is
    // one) has exited, or the timeout passes; returns false on timeout.
    bool shutdown(bool wait, std::optional<std::chrono::nanoseconds> timeout = std::nullopt);

    bool is_shut_down() const;
    std::size_t max_workers() const noexcept;
    std::chrono::nanoseconds idle_timeout() const noexcept;
    std::size_t num_threads() const;            // started and not yet exited
    bool is_current_thread_worker() const noexcept;

    // Shuts down every pool in the process; waits until each has no *idle* worker left
    // (busy ones cannot be interrupted and are not waited for) or the timeout passes.
    // For interpreter exit: it must not hang on a worker stuck in a long call.
    static void shutdown_all(std::chrono::nanoseconds timeout);

private:
    friend struct detail::ForkHandler;
    std::shared_ptr<detail::PoolState> state_;
};

}  // namespace gilfree
