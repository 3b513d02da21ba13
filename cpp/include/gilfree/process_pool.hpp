// gilfree::ProcessPool: long-lived worker processes, spawned safely, fed with frames.
//
// Who sends what to whom
//
//   MapScheduler (driver thread)      ProcessPool                        worker process
//   fill() ── start request ────────▶ launcher.hpp: posix_spawn, or ───▶ gilfree.remote.process_worker.main
//                                       fork by the zygote (forkserver)    3 = socket, 4 = status page
//                                                                          reads INIT, runs initializer
//   send_batch(w, key, payload, b) ─▶ writer thread (per worker) ──────▶ PAYLOAD once per key, BATCH
//                                       queue of frames, blocking I/O      runs the rows, writes RESULT
//   wait_event(timeout) ◀── events ── reader thread (per worker) ◀───── RESULT / READY / INIT_FAILED
//                                       EOF ─▶ waitpid ─▶ `exited` event   (status page: batch, item,
//                                       with wait status + status page      step it was running)
//   kill(w) ─ SIGKILL (Ctrl-C, shutdown: busy workers at once, idle ones after the grace),
//             guarded against pid reuse
//
// Nothing here knows Python, and nothing here decides what to send where: the map loop
// and its fault policy (which batch goes to which worker, what a death or an overdue
// item costs, when the pool is broken) are MapScheduler's (map_scheduler.hpp), which
// drives a WorkerSet: this pool, or a fake one in tests/cpp.
//
// Why posix_spawn of a fresh interpreter and not fork: the driver has native threads
// (this pool's, the thread pool's, TBB's, the user's); a forked child inherits locks held
// by threads that do not exist in it. posix_spawn (vfork + exec) is safe at any time.
// Why start from one long-lived thread (launcher.hpp): PR_SET_PDEATHSIG fires when the
// *thread* that created the child exits, so spawning from a driver thread that later
// exits (a ThreadPoolExecutor worker calling map) would kill healthy workers.
// Why one reader and one writer thread per worker: a worker busy on a batch does not
// read; a blocking write to it must never stall the driver or the other workers, and a
// worker writing a large result must always find its reader draining the socket.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gilfree/frame.hpp"

namespace gilfree {

namespace detail {
struct PoolShared;
}

// The status page: one shared page of int64 slots per worker, written by the worker
// (python/gilfree/remote/process_worker.py, the same names as SLOT_* and PHASE_* there), read by the
// driver for a per-item timeout and, after a death, to say what the worker was running.
enum class StatusSlot : std::size_t {
    batch = 0,            // id of the batch it runs (-1: none)
    item = 1,             // map index of the item it runs
    step = 2,             // index of the plan step it runs
    phase = 3,            // a WorkerPhase
    item_started_ns = 4,  // CLOCK_MONOTONIC ns when the item started
    // A batch whose batch calls (DualNodes that wait) run on another thread of the
    // worker while `batch`'s items run (-1: none), and the plan step of its first call.
    tail_batch = 5,
    tail_step = 6,
    // Written by the driver: the batch it asks this worker to stop (its map failed at
    // an earlier item, so its results would be dropped). The worker stops it between
    // two items, or skips it, and answers at once (-1: none).
    cancel = 7,
    count = 8,
};
enum class WorkerPhase : std::int64_t { idle = 0, payload = 1, batch = 2, send = 3 };
constexpr std::size_t slot(StatusSlot s) noexcept { return static_cast<std::size_t>(s); }

// What the status page of a worker says it was doing (-1: unknown/none).
struct WorkerProgress {
    std::int64_t batch = -1;
    std::int64_t item = -1;
    std::int64_t step = -1;
    std::int64_t phase = -1;  // a WorkerPhase: loading a payload, running a batch, ...
    // CLOCK_MONOTONIC ns when the current item started (-1: not recorded). The worker
    // records it only for maps with a per-item timeout.
    std::int64_t item_started_ns = -1;
    std::int64_t tail_batch = -1;  // see StatusSlot::tail_batch
    std::int64_t tail_step = -1;

    bool in_phase(WorkerPhase p) const noexcept { return phase == static_cast<std::int64_t>(p); }
};

// Something a worker did: sent a frame, or exited.
struct WorkerEvent {
    enum class Type { frame, exited };
    Type type = Type::frame;
    std::uint64_t worker = 0;  // unique per process incarnation, never reused
    pid_t pid = 0;
    Frame frame;               // Type::frame
    int wait_status = -1;      // Type::exited: as from waitpid; -1 if unknown
    WorkerProgress progress;   // Type::exited: the status page at death
    bool expected = false;     // Type::exited: we asked it to go (retire, kill, shutdown)
    // Type::frame: when the frame was read (its batch's time is not the time its event
    // waited for the driver); the epoch if unknown.
    std::chrono::steady_clock::time_point received{};
};

// The workers as MapScheduler sees them: ProcessPool below, a fake in tests/cpp.
// Documented on ProcessPool.
class WorkerSet {
public:
    virtual ~WorkerSet() = default;
    virtual std::vector<std::uint64_t> fill() = 0;
    virtual std::vector<std::uint64_t> live() const = 0;
    virtual std::size_t size() const = 0;
    virtual std::size_t in_flight(std::uint64_t worker) const = 0;
    virtual bool accepts(std::uint64_t worker) const = 0;
    virtual bool send_batch(std::uint64_t worker, const std::string& key, const Frame& payload,
                            Frame batch, std::size_t items) = 0;
    virtual void batch_done(std::uint64_t worker) = 0;
    virtual void send_frame(std::uint64_t worker, Frame frame) = 0;
    virtual void forget(std::uint64_t worker) = 0;
    virtual WorkerProgress progress(std::uint64_t worker) const = 0;
    virtual bool wait_event(WorkerEvent& out, std::chrono::nanoseconds timeout) = 0;
    // Any thread: a wait_event() in progress, or the next one, returns false at once.
    virtual void wake() = 0;
    virtual void clear_events() = 0;
    virtual void kill(std::uint64_t worker) = 0;
    // Asks `worker` to stop `batch` (StatusSlot::cancel); it still answers for it.
    virtual void cancel(std::uint64_t worker, std::uint64_t batch) = 0;
    virtual bool is_shut_down() const = 0;
};

class ProcessPool final : public WorkerSet {
public:
    struct Config {
        std::vector<std::string> argv;  // worker command; the pool appends "3 4 <parent pid>"
        std::size_t workers = 1;
        std::size_t payload_slots = 8;          // payloads a worker keeps (LRU)
        std::size_t max_items_per_worker = 0;   // 0: unlimited; else retire after this many
        // Non-empty: workers are forked by the process-wide zygote started with this
        // command (see launcher.hpp); empty: each worker is a posix_spawn of argv.
        std::vector<std::string> zygote_argv;
    };

    using Event = WorkerEvent;

    explicit ProcessPool(Config cfg);
    ~ProcessPool() override;  // shutdown with a short grace
    ProcessPool(const ProcessPool&) = delete;
    ProcessPool& operator=(const ProcessPool&) = delete;

    // The INIT frame body every new worker receives first.
    void set_init(std::string body);
    // Spawns workers until Config::workers are alive; returns the ids of the new ones.
    // Throws std::system_error if a process cannot be started.
    std::vector<std::uint64_t> fill() override;
    std::vector<std::uint64_t> live() const override;
    std::vector<pid_t> pids() const;
    std::size_t size() const override;

    // Dispatch bookkeeping for the map loop.
    std::size_t in_flight(std::uint64_t worker) const override;
    // False while a worker is retiring, or once it reached max_items_per_worker.
    bool accepts(std::uint64_t worker) const override;
    // Queues (DROP of an evicted key, PAYLOAD if the worker lacks `key`) and the batch.
    // `payload` is duplicated per worker (descriptors included); the batch is moved.
    // False, and nothing queued, if the worker left the live set since the caller chose
    // it (it died: its reader thread forgot it); the caller sends the batch elsewhere.
    bool send_batch(std::uint64_t worker, const std::string& key, const Frame& payload,
                    Frame batch, std::size_t items) override;
    // A batch of this worker completed. Retires the worker once it is idle and over its
    // item budget (the next fill() replaces it).
    void batch_done(std::uint64_t worker) override;
    // Queues one frame for a live worker (an answer to its sub-map); nothing if it is gone.
    void send_frame(std::uint64_t worker, Frame frame) override;
    // Forget everything a worker holds (it died): it leaves the live set at once.
    void forget(std::uint64_t worker) override;
    // What a live worker's status page says now (all -1 for an unknown worker).
    WorkerProgress progress(std::uint64_t worker) const override;

    // Blocks at most `timeout` for the next event; false if none came (or wake()).
    bool wait_event(Event& out, std::chrono::nanoseconds timeout) override;
    void wake() override;
    // Drops queued events (after a map was abandoned), closing their descriptors.
    void clear_events() override;

    // SIGKILL; the `exited` event that follows has expected = true.
    void kill(std::uint64_t worker) override;
    // A store into the worker's status page, which it reads before each item.
    void cancel(std::uint64_t worker, std::uint64_t batch) override;
    // Kills the workers holding batches (their map ends with the pool), asks the idle
    // ones to quit, waits up to `grace` for them to exit (their teardown), kills the
    // rest, reaps everything and stops the pool's threads. Idempotent. A map running in
    // another thread sees is_shut_down() and returns (map_scheduler.hpp).
    void shutdown(std::chrono::nanoseconds grace);
    bool is_shut_down() const override;

private:
    std::shared_ptr<detail::PoolShared> s_;
};

// Guided self-scheduling: each chunk is a share of what is left (big chunks first for
// low overhead, small ones at the end so that no worker idles while another finishes a
// big tail). A fixed chunk size overrides it.
class ChunkPlanner {
public:
    // The smallest chunk worth a round trip to a worker, in seconds of work: the tail
    // chunks shrink towards this once the time an item takes is known.
    static constexpr double kTailChunkSeconds = 0.001;

    ChunkPlanner(std::size_t items, std::size_t workers, std::size_t fixed, std::size_t cap);
    bool next(std::size_t& start, std::size_t& stop);
    bool exhausted() const noexcept { return next_ >= items_; }
    // What an item took (seconds, measured on a finished chunk): slow items get smaller
    // tail chunks, down to one item, so that when one worker runs out of items the
    // others hold a tail chunk or two of about kTailChunkSeconds (or one item) each.
    // The slowest time seen counts; never coarser than at the start.
    void observe_item_seconds(double seconds);
    std::size_t min_chunk() const noexcept { return min_; }

private:
    std::size_t items_, workers_, fixed_, cap_, min_, first_min_, next_ = 0;
    double slowest_ = 0;
};

// Linux: the calling process gets `sig` when its parent thread exits (0: never).
// Returns false where unsupported.
bool set_parent_death_signal(int sig);

}  // namespace gilfree
