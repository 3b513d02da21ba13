// gilfree::IndexBatch: a batch of N items that any number of pool workers claim by index.
//
// Who sends what to whom
//
//   driver                                  IndexBatch                        workers (tickets)
//   ThreadPool::submit(batch, N) ──────────────────────────────────────────▶ run_ticket():
//                                           next_   ◀── fetch_add: claim i     enter()
//                                           completions_ ◀── push(i)           run_item(i) ...
//   wait_for(tick): park on done_cv_ ◀─ notify ─ finished_ ◀── last worker out    leave()
//     or spin while items complete  ◀─────── completed_ ◀── every item
//   pop_completion() ◀───────────────────── completions_ (if tracked)
//   cancel()/abandon() ────────────────────▶ cancelled_: no new claims
//
// Items are claimed one index at a time in input order, so every item below a failed
// index has been claimed and will complete: after the batch finishes, the lowest failed
// index is the one a sequential run would have failed on first.
//
// GIL: the batch never touches it. The enter()/leave() hooks of a subclass bracket a run
// of consecutive items on one worker (the Python binding takes the GIL once per run, and
// callables that block release it inside the call, letting the next worker claim).
//
// Waiting: the driver parks on done_cv_ until an item completes, then spins (yielding the
// CPU) for as long as items keep completing less than kSpinWindow apart. Why: when 200
// blocking calls return together, each needs the GIL in turn, and every hand-over wakes
// a sleeping thread. On a virtual machine an idle vCPU halts, and waking a thread onto it
// costs tens of microseconds, 200 times in a row: measured, the last of 200 x 10 ms
// sleeps returned at 13.5 ms with the driver parked and at 11.3 ms with one thread
// spinning. A spinning driver keeps one CPU out of idle; sched_yield lets every runnable
// thread go first, and parking again after kSpinWindow without progress bounds the cost
// when completions are sparse.
//
// Ownership: the driver and every ticket hold a shared_ptr, so a driver that gives up
// (Ctrl-C) leaves a batch that late workers can still finish safely. Resources that need
// a context to free (Python references need the GIL) are released exactly once, either by
// the driver after finished, or, if the driver abandoned the batch first, by the last
// worker through release_abandoned(), still inside its enter()/leave() bracket.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>

#include <oneapi/tbb/concurrent_queue.h>

#include "gilfree/thread_pool.hpp"

namespace gilfree {

class IndexBatch : public Job {
public:
    IndexBatch(std::size_t size, bool stop_on_error, bool track_completions);

    std::size_t size() const noexcept { return size_; }

    // Job
    void run_ticket() final;
    void cancel() noexcept final;

    // Driver side. Blocks at most `timeout`; returns true once every worker is done with
    // the batch (all items ran, or it was cancelled and the running items finished).
    bool wait_for(std::chrono::nanoseconds timeout);
    // Blocks until every worker is done with the batch, parked (no spinning): for a
    // worker that waits for a batch of its own pool (a nested map), among many such.
    void wait_finished();
    bool finished() const;
    // Completion order of the items, if tracked. Safe to call while workers run.
    bool pop_completion(std::size_t& index) { return completions_.try_pop(index); }
    // The driver stops caring (it is unwinding). Returns true if no worker is left and the
    // caller must release the batch's resources itself; otherwise the last worker will.
    bool abandon() noexcept;

protected:
    // Hooks, called on a worker thread. enter() and after_item() return false if items
    // cannot run any more (e.g. the interpreter is exiting): the batch is then cancelled.
    virtual bool enter() = 0;
    virtual bool run_item(std::size_t index) = 0;  // false: the item failed
    virtual bool after_item(std::size_t items_in_run) = 0;
    virtual void release_abandoned() noexcept = 0;
    virtual void leave() = 0;

private:
    void note_completion();

    const std::size_t size_;
    const bool stop_on_error_;
    const bool track_;

    // Relaxed is enough for next_: claims only need uniqueness, and result data is
    // published through completions_ (release/acquire inside tbb) or mu_.
    std::atomic<std::size_t> next_{0};
    std::atomic<bool> cancelled_{false};
    std::atomic<std::size_t> completed_{0};  // items that ran, any outcome
    std::atomic<bool> parked_{false};        // the driver waits on done_cv_ for completed_
    tbb::concurrent_queue<std::size_t> completions_;  // many workers push, the driver pops

    mutable std::mutex mu_;
    std::condition_variable done_cv_;
    std::size_t active_ = 0;  // workers between enter() and leave()
    // Written under mu_; read without it by the spinning driver (acquire pairs with the
    // release store, which follows every worker's exit from the batch).
    std::atomic<bool> finished_{false};
    bool abandoned_ = false;
};

}  // namespace gilfree
