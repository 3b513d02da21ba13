// gilfree::FlowScheduler: moves the items of a streaming map between stages, in plain C++.
//
// Who calls what, from which thread, and who holds the GIL ("lock" below: the caller's
// lock, which the binding makes the GIL; a test host has none)
//
//   the driver thread (Python: imap's     FlowScheduler                 executor threads
//   consumer; holds the GIL)              (state under mu_ + cv_)       (pool workers, the
//                                                                        loop, inline code)
//   next(host) ──────────────────────────▶ plan under mu_, then with mu_ released:
//   host.pull(k) -> (n, exhausted) ◀────── room for k more items: ids pulled..pulled+n-1
//                                          enter stage 0's queue
//   host.dispatch(stage, ids) ◀─────────── ids may start on `stage` (capacity, batch rules)
//                                          ──▶ the executor runs them ──▶ done(stage, ids,
//                                          ◀────────────────────────────── failed) [any
//                                          thread, any lock: takes mu_ only, briefly]
//                                          done: into stage+1's queue if it has room, else
//                                          parked (still counts against stage's capacity);
//                                          last stage or failed: to the exit
//   host.start(stage, n) ◀──────────────── a claimed stage (below) needs n more workers
//   host.unlocked(wait) ◀───────────────── nothing to do: wait on cv_ (lock released) until
//                                          something urgent (see wake_driver), 1 ms after
//                                          a first non-urgent done(), the earliest linger
//                                          deadline, or one tick (50 ms)
//   host.check_interrupt() ◀────────────── after each wait; true: close, FlowInterrupted
//   ◀── [(id, failed), ...] ────────────── items that may leave (input order if ordered)
//   close() [any thread] ─────────────────▶ next() returns [] from then on; done() ignored
//
// A *claimed* stage (a thread pool's): the driver does not hand it ids; it starts workers
// (host.start, as many as the stage has items, up to its capacity) and each worker takes
// items itself, one at a time, from the stage's queue (claim(), waiting on the stage's
// own condition variable without the caller's lock), runs it and reports done(). A worker
// that finds nothing for a while ends, and says so through claim() returning false (or
// worker_exit()). Why: a worker that finishes an item starts the next at once, instead of
// waiting for the driver to wake, take the GIL and hand it more; and the driver, woken
// only for urgent work or once a millisecond, moves items in bulk.
//
// Locks: mu_ is never held while calling the host (pull, dispatch and check_interrupt
// run Python; an executor may call done() from inside dispatch, on the same thread) and
// never held while taking the caller's lock: wait() releases mu_ before it returns, and
// the host takes its lock back afterwards. So done() may be called with the GIL held.
//
// Why a hand-written state machine and not oneTBB's flow::graph (async_node, limiter_node,
// sequencer_node): every step that touches Python (reading the input, starting items on
// an executor) must run in the driver thread with the GIL, and TBB's worker threads must
// never wait for the GIL; in a graph those steps are node bodies that TBB runs on its
// workers. What is left for a graph to do is a few counter updates per item, which cost
// less than handing a message to a TBB worker. The rest of the contract has no graph
// node either: items parked at a full stage while still holding its capacity, a batch
// sent on a linger deadline, Ctrl-C checks every 50 ms while the driver waits. One mutex
// and one condition variable give all of it with no thread of its own, and the tests can
// drive it step by step.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace gilfree {

struct FlowStage {
    std::size_t capacity = 1;     // items (batch_size <= 1) or batches in flight, >= 1
    std::size_t queue_bound = 1;  // items waiting in the stage's queue, >= 1
    std::size_t batch_size = 1;   // > 1: a batch stage
    double linger_s = 0;          // batch stage: send a partial batch after this wait
    bool claimed = false;         // workers take items themselves (claim()); not batched
};

// What next() needs from its caller; called only in the thread that called next().
class FlowHost {
public:
    virtual ~FlowHost() = default;
    // Read up to k (>= 1) more items; returns (n_read <= k, input exhausted). Reading
    // fewer while the input goes on says the source is slow: next() then returns the
    // items that finished before it reads again.
    virtual std::pair<std::size_t, bool> pull(std::size_t k) = 0;
    // Start `ids` on `stage`; must return quickly (done() may be called from inside).
    virtual void dispatch(std::size_t stage, const std::vector<std::uint64_t>& ids) = 0;
    // Start n more workers on claimed `stage`; each claims until claim() returns false.
    // Must return quickly. An exception means none of them started; it closes the flow
    // (as from dispatch).
    virtual void start(std::size_t stage, std::size_t n) {
        (void)n;
        throw std::logic_error("Flow: stage " + std::to_string(stage) +
                               " is claimed but the host starts no workers");
    }
    // After each wait: true means stop now (Ctrl-C); next() closes the flow and throws
    // FlowInterrupted.
    virtual bool check_interrupt() { return false; }
    // Runs `wait` (it blocks up to one tick) with the caller's lock released.
    virtual void unlocked(const std::function<void()>& wait) { wait(); }
};

// Thrown by next() when host.check_interrupt() said stop; the flow is closed.
class FlowInterrupted : public std::runtime_error {
public:
    FlowInterrupted() : std::runtime_error("flow interrupted") {}
};

struct FlowStageStats {
    std::size_t queued = 0;      // waiting in the stage's queue
    std::size_t in_flight = 0;   // dispatched, done() not yet called
    std::size_t parked = 0;      // done, waiting for room in the next stage's queue
    std::size_t busy = 0;        // capacity used: items (or batches) in flight or parked
    std::size_t done_total = 0;  // done() calls for items of this stage, failed included
    std::size_t workers = 0;     // claimed stage: workers started and not yet ended
    std::size_t capacity = 0;    // its capacity now (set_capacity may change it)
    // Seconds during which some item of the stage was in flight (until now): its items
    // per second while running (AutoEngine's explain() of a stream) is done_total / this.
    double active_s = 0;
};

struct FlowStats {
    std::uint64_t pulled = 0;
    std::uint64_t left = 0;
    bool exhausted = false;
    bool closed = false;
    std::vector<FlowStageStats> stages;
};

class FlowScheduler {
public:
    using Exit = std::pair<std::uint64_t, bool>;  // (id, failed)

    // Throws std::invalid_argument for a capacity, queue bound or read_ahead of 0.
    FlowScheduler(std::vector<FlowStage> stages, std::size_t read_ahead, bool ordered,
                  std::chrono::nanoseconds tick = std::chrono::milliseconds(50));

    // Runs the flow in the calling thread until at least one item can leave; returns
    // every item that can leave now. Empty: the end (input exhausted, every pulled item
    // left) or the flow is closed. An exception from the host closes the flow and
    // propagates. One driver at a time: a second next() meanwhile (another thread, or
    // from inside pull/dispatch) throws std::logic_error and changes nothing.
    std::vector<Exit> next(FlowHost& host);

    // Thread-safe. Items `ids` finished on `stage`; failed[i] says whether ids[i] failed
    // (empty `failed`: none did). Ignored once closed. Throws std::invalid_argument
    // (nothing applied) for an id that is not in flight on `stage`.
    void done(std::size_t stage, const std::vector<std::uint64_t>& ids,
              const std::vector<bool>& failed);

    // Thread-safe; for the workers of a claimed stage (std::invalid_argument otherwise).
    // try_claim: the next queued item, if there is one and the stage has capacity, without
    // waiting. claim: the same, waiting up to `wait` for one (call it without any lock the
    // driver's host takes); false: none came, or the flow is closed, or *stop became true
    // (checked at each wake-up; notify_claimers() wakes them): the worker has ended and is
    // counted out. worker_exit: a started worker ends without claim() saying so (n of
    // them: workers that never ran, e.g. their pool shut down).
    bool try_claim(std::size_t stage, std::uint64_t& id);
    bool claim(std::size_t stage, std::chrono::nanoseconds wait, std::uint64_t& id,
               const std::atomic<bool>* stop = nullptr);
    void worker_exit(std::size_t stage, std::size_t n = 1);
    void notify_claimers(std::size_t stage);

    // Thread-safe. A claimed stage's capacity from now on (>= 1; std::invalid_argument
    // otherwise): the caller re-sized it from what it measured (AutoEngine: Little's law
    // with the stage's latency of the moment). Larger: the driver starts workers for
    // queued items at its next round. Smaller: running items finish; workers over the
    // new capacity claim nothing more and end after their idle wait.
    void set_capacity(std::size_t stage, std::size_t capacity);
    // Thread-safe. A batch stage's batch size from now on (>= 2, and at most its queue
    // bound: a batch must be able to fill; std::invalid_argument otherwise, or for a
    // stage that is not a batch stage). Batches sent keep their size.
    void set_batch_size(std::size_t stage, std::size_t batch_size);
    // Thread-safe. A larger read-ahead from now on (>= the present one;
    // std::invalid_argument otherwise), and the same larger bound for every stage queue
    // that had the old read-ahead as its bound: the caller measured that its stages run
    // more items at once than it could tell at the start (a process stage of cheap items
    // takes thousands per batch). The driver reads on at its next round.
    void set_read_ahead(std::size_t read_ahead);

    // Thread-safe, idempotent: next() returns [] from then on, the host is not called
    // again (a call already running finishes), later done() calls are ignored.
    void close();

    FlowStats stats() const;

    // Thread-safe. True once no more items can reach `stage`: the input is exhausted and
    // every earlier stage is empty. A stage that batches on its own (a process stage)
    // then sends what it holds instead of waiting for more.
    bool drained(std::size_t stage) const;

private:
    using Clock = std::chrono::steady_clock;
    enum class Where : std::uint8_t { queued, in_flight, parked };
    struct Item {
        std::size_t stage = 0;
        Where where = Where::queued;
        std::uint64_t unit = 0;  // batch stage: the batch it was dispatched in
    };
    struct Queued {
        std::uint64_t id;
        Clock::time_point since;
    };
    struct Stage {
        FlowStage cfg;
        Clock::duration linger{};
        std::deque<Queued> queue;
        std::set<std::uint64_t> parked;  // lowest id first: ordered exits come sooner
        std::size_t in_flight = 0;       // items
        Clock::duration active{};        // time with in_flight > 0, closed spells
        Clock::time_point active_since;  // start of the open spell (in_flight > 0)
        std::size_t busy = 0;            // capacity units (items or batches)
        std::size_t done_total = 0;
        std::size_t workers = 0;  // claimed: started, not ended
        // claimed: its workers wait here (a unique_ptr: a condition variable cannot move)
        std::unique_ptr<std::condition_variable> claim_cv;
        std::unordered_map<std::uint64_t, std::size_t> unit_left;  // batch -> items on stage
        bool batched() const { return cfg.batch_size > 1; }
    };
    struct Dispatch {
        std::size_t stage;
        std::vector<std::uint64_t> ids;
        std::size_t start = 0;  // claimed stage: workers to start (ids empty)
    };

    // All with mu_ held.
    void enter(std::uint64_t id, Item& item, std::size_t stage, Clock::time_point now);
    void leave_stage(Item& item);
    void add_in_flight(Stage& s, std::ptrdiff_t n, Clock::time_point now);
    void finish(std::uint64_t id, bool failed);
    void move_parked(std::size_t stage, Clock::time_point now);
    void dispatch_ready(std::size_t k, Clock::time_point now, std::vector<Dispatch>& out);
    bool upstream_empty(std::size_t k) const;
    std::size_t pull_room() const;
    std::vector<Exit> take_exits();
    Clock::time_point wake_at(Clock::time_point now) const;
    bool is_closed() const;  // takes mu_
    void start_workers(FlowHost& host, std::size_t stage, std::size_t n);  // takes mu_
    Stage& claimed_stage(std::size_t stage, const char* what);
    bool take_claim(Stage& s, std::uint64_t& id);
    bool urgent() const;
    void wake_driver(bool urgent);
    void release_idle_workers();

    std::vector<Stage> stages_;
    std::size_t read_ahead_;  // grows only (set_read_ahead)
    const bool ordered_;
    const std::chrono::nanoseconds tick_;

    mutable std::mutex mu_;
    std::condition_variable cv_;
    // The driver's wait (see wake_driver): whether it is waiting, whether something urgent
    // happened since, and when the first non-urgent event did (it then acts 1 ms later).
    bool driver_waiting_ = false, urgent_ = false, pending_ = false;
    Clock::time_point pending_since_{};
    std::unordered_map<std::uint64_t, Item> items_;  // pulled, not finished
    std::uint64_t pulled_ = 0, left_ = 0, next_unit_ = 0;
    bool exhausted_ = false, closed_ = false;
    bool driving_ = false;  // a next() is running
    // Finished, not yet returned: ordered, id -> failed (released from next_exit_ up);
    // unordered, in completion order.
    std::map<std::uint64_t, bool> finished_sorted_;
    std::deque<Exit> finished_fifo_;
    std::uint64_t next_exit_ = 0;
};

}  // namespace gilfree
