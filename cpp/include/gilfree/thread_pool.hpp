// gilfree::ThreadPool: native worker threads that grow on demand and retire when idle.
//
// Who sends what to whom
//
//   driver thread                      ThreadPool (mu + work_cv)              worker threads
//   submit(job, k) ──── k tickets ───▶ deque<shared_ptr<Job>> ──── pop ─────▶ job->run_ticket()
//     spawns threads while tickets                                             claims and runs items
//     outnumber idle workers (≤ cap)                                           until the job has none
//   job-specific wait (IndexBatch) ◀──────────── notify when the job is done ──┘
//   shutdown() ─ drains tickets, cancels their jobs and the running ones (no new items),
//     wakes idle workers; wait=true joins
//   idle worker ─ no ticket for idle_timeout ─▶ retires (on_worker_exit hook, then exits)
//   abandon(job) ─ a caller gave up on job (timeout, Ctrl-C): its queued tickets go, and
//     the workers still inside it stop counting against max_workers (up to max_abandoned)
//   begin_wait()/end_wait() ─ a worker blocks on other work of this pool (a nested map):
//     it does not count against max_workers meanwhile, so the work it waits for gets threads
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
// Why abandoned and waiting workers do not count: a call that hangs forever (a socket with
// no timeout) holds its thread forever. If it still counted, max_workers such calls would
// leave the pool with no thread for anything else, and a worker waiting for a nested map
// could hold the very slot the inner items need (deadlock). Each worker has a WorkerSlot
// (under mu) saying which job it runs and whether it is excused; spawning allows
// max_workers + waiting + min(abandoned, max_abandoned) threads.
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
#include <string>

namespace gilfree {

// Work handed to the pool. One Job may receive several tickets so that several workers
// help with it at once.
class Job {
public:
    virtual ~Job() = default;
    // Runs on a worker thread, once per ticket. Returns when the job has nothing left to
    // claim. May throw nothing but abi::__forced_unwind (thread cancellation).
    virtual void run_ticket() = 0;
    // The pool is shutting down: this job's queued tickets were dropped, or a worker is
    // running it. It must start no new work. Must not block; may be called repeatedly.
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

    // How many threads stuck in abandoned calls the pool works around, by default.
    static constexpr std::size_t kDefaultMaxAbandoned = 1024;

    ThreadPool(std::size_t max_workers, std::chrono::nanoseconds idle_timeout,
               WorkerExitHook on_worker_exit = {},
               std::size_t max_abandoned = kDefaultMaxAbandoned);
    // Shuts down without waiting: workers hold the shared state and exit when idle.
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    // Queues min(parallelism, max_workers) tickets for `job` and starts threads while
    // tickets outnumber idle workers (up to max_workers). Throws std::runtime_error if the
    // pool is shut down or no worker thread exists and none can be started.
    void submit(std::shared_ptr<Job> job, std::size_t parallelism);

    // The caller stopped waiting for `job` (a timeout, Ctrl-C). Its queued tickets are
    // dropped without cancel() (the caller settles the job), and workers still running it
    // stop counting against max_workers until they return, for at most max_abandoned
    // such workers at a time; threads are started for queued work accordingly. Never
    // throws: if no thread can be started the tickets wait (see spawn_error()).
    void abandon(const Job& job);

    // On a worker of this pool that is about to block until other work of this pool is
    // done (a nested map): until the matching end_wait(), the worker does not count
    // against max_workers (no ceiling: nesting depth bounds it). Returns false, doing
    // nothing, on any other thread. Scopes nest; the end of the job ends any left open.
    bool begin_wait();
    void end_wait();
    // The same for whichever pool the calling thread is a worker of (false: none).
    static bool begin_wait_current();
    static void end_wait_current();

    struct Stats {
        std::size_t threads;    // started and not yet exited
        std::size_t busy;       // running a ticket
        std::size_t abandoned;  // running a ticket whose caller gave up on it
        std::size_t waiting;    // between begin_wait and end_wait
    };
    Stats stats() const;
    std::size_t max_abandoned() const noexcept;
    // Why the last thread start failed (empty if none did): tickets may wait meanwhile.
    std::string spawn_error() const;

    // Idempotent. Queued tickets are dropped and their jobs cancelled; running jobs are
    // cancelled too (an IndexBatch claims no new item), their running items finish. With wait, blocks until every worker thread (except the caller, if it is
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
