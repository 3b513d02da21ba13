// gilfree::MapScheduler: the process pool's dispatch and fault policy, in plain C++.
//
// Who sends what to whom
//
//   MapHost (the caller: the binding,     MapScheduler::run()                    WorkerSet
//   holding the GIL; a fake in tests)     (the caller's thread)                  (ProcessPool)
//   unlocked(fill) ◀───────────────────── work left: replace dead workers ─────▶ fill()
//   make_batch(a, b) -> body, fds ◀────── per worker with room (< depth batches):
//                                         a batch of a dead worker first, else
//                                         ChunkPlanner -> [a, b)
//                                         BATCH, with a process-unique id ─────▶ send_batch()
//   wait_unlocked(poll) ◀──────────────── nothing to send: wait <= one tick ◀─── wait_event()
//     (Ctrl-C: interrupted) ───────────▶  abandon: kill the busy workers ──────▶ kill()
//   on_result(a, b, frame) ◀───────────── RESULT of a batch of this map (its time per item
//                                         sizes the tail chunks); a stale one is dropped
//   on_lost(a, b, why) ◀───────────────── exited: see "Faults" below
//                                         status page item overdue ────────────▶ kill()
//                                         INIT_FAILED / early exits: broken()
//
// Faults (each input item ends as exactly one on_result or on_lost, or the map returns
// broken / shut down / interrupted and the caller reports what did not finish):
//   - a worker dies running an item (status page): that item alone is lost,
//     on_lost(item, exit info), and the rest of its batch runs again (done or not: the
//     results died with it), as around an overdue item; each death costs one item. If
//     a batch call ran beside it (a DualNode's), or its page names no item of the
//     batch, the whole batch it was running is lost. The batches queued behind it never
//     started and run again on another worker, once (a batch whose payload kills every
//     worker that loads it must not go round for ever);
//   - an item overruns the per-item timeout: its worker is killed; that item alone is
//     lost (why.timeout_s > 0) and the rest of its batch runs again; if the item
//     finished just before the kill landed, everything the worker held runs again;
//   - a worker's initializer fails (INIT_FAILED), or kMaxEarlyExits workers in a row
//     exit before READY: the pool is broken (broken() says why), run() returns at once;
//   - shutdown() from another thread: run() returns shut_down; exits it caused are not
//     reported as lost;
//   - a result whose map was abandoned (Ctrl-C, an exception from a MapHost call) is
//     dropped by id; its worker's in-flight count still goes down.
//
// Sub-maps (a node's own map, made in a worker while it runs an item of this map):
//   the worker sends SUBMAP (its payload, and where the worker is: batch, item, step,
//   since when) and SUBBATCH frames (the batches, which it encoded), then waits for the
//   answers, running any SUBBATCH it is sent meanwhile. The scheduler sends those batches before new
//   chunks (up to `depth` per worker) to the waiting workers, even one that takes no new
//   chunk (retiring), and to the workers that hold no map batch (behind one, a sub-map
//   batch could wait for a long item while its asker idles). Each RESULT goes back to the asker as SUBRESULT; SUBEND
//   closes the sub-map (what is queued is dropped, what comes back later too). Nothing
//   of it is the host's: the bytes only pass through. Faults:
//   - the worker running a sub-map batch dies: SUBLOST to the asker (the status page's
//     batch), or the batch is sent round again once (queued behind, never started);
//   - the asker dies: its sub-maps are dropped; its map batch is lost as the one it was
//     running (its status page may show a sub-map batch it ran while waiting: the place
//     it gave in SUBMAP names the node and item);
//   - the asker's item overruns the per-item timeout while it waits: it is killed, as
//     any overdue item's worker (the place it gave in SUBMAP says since when);
//   - Ctrl-C / abandon: the workers holding sub-map batches are killed too.
//
// GIL: the scheduler knows nothing of Python. Every MapHost call except unlocked()
// and wait_unlocked() runs in the caller's context as it was when it called run() (with
// the GIL, for the binding); those two run their function with the GIL released. An
// exception from a MapHost call leaves run() as it is: the map is over, its batches in
// flight come back as stale results.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>

#include "gilfree/frame.hpp"
#include "gilfree/process_pool.hpp"

namespace gilfree {

// Why items [start, stop) are lost: their worker's exit.
struct LostItems {
    pid_t pid = 0;
    bool expected = false;  // we asked it to go (a kill for a timeout, a retirement)
    int wait_status = -1;   // as from waitpid; -1 if unknown
    WorkerProgress progress;  // its status page at death; for a timeout, item = that item
    double timeout_s = 0;     // > 0: killed because item progress.item ran longer than this
    // The plan step that ran beside the lost batch in that worker, -1: none (a batch's
    // batch calls and the next batch's items run at once: either may have killed it).
    std::int64_t beside_step = -1;
};

// What run() needs from its caller. Called on the thread that called run().
class MapHost {
public:
    virtual ~MapHost() = default;
    // Body and descriptors of the BATCH frame for items [start, stop). `origin`: the
    // start of the batch these items were first sent in (a batch sent again, whole or in
    // part, keeps it; a streaming host tells its batches apart by it).
    virtual void make_batch(std::size_t start, std::size_t stop, std::size_t origin,
                            Frame& batch) = 0;
    // The RESULT frame of [start, stop) (its body and descriptors may be taken). False:
    // stop dispatching; the batches in flight still come back and are reported.
    virtual bool on_result(std::size_t start, std::size_t stop, std::size_t origin,
                           Frame& result) = 0;
    // Items [start, stop) are lost. False: stop dispatching, as above.
    virtual bool on_lost(std::size_t start, std::size_t stop, std::size_t origin,
                         const LostItems& why) = 0;
    // Runs `f` (it may block briefly: start processes) with the caller's lock released.
    virtual void unlocked(const std::function<void()>& f) { f(); }
    // Runs `poll` (it blocks up to one tick) with the caller's lock released, returns
    // its result; sets `interrupted` if the caller must stop now (Ctrl-C).
    virtual bool wait_unlocked(const std::function<bool()>& poll, bool& interrupted) {
        interrupted = false;
        return poll();
    }

    // -- a streaming map (MapRequest::streaming) --------------------------------------
    // The next batch to send: items [start, stop), start one of them and never sent
    // before (the batch's origin), about `most` of them ready, about a `share`-th of what
    // is ready (`share`: the idle workers, at least 1); the host may leave ids of the
    // range out (placeholders in its make_batch: not ready yet, or sent before). False
    // if none is ready, or if the host holds the ready ones back to gather a fuller
    // batch: then `ask_again_s` > 0 says when to ask again at the latest.
    virtual bool next_range(std::size_t most, std::size_t share, std::size_t& start,
                            std::size_t& stop, double& ask_again_s) {
        (void)most, (void)share, (void)start, (void)stop, (void)ask_again_s;
        return false;
    }
    // False once no more items will come (its input ended, it was closed, or it gives
    // the pool back to another map): run() returns when what was sent is back. Items
    // made ready meanwhile are still sent. Asked before each round of dispatching; the
    // host wakes a waiting run() with WorkerSet::wake() when it has new items.
    virtual bool open() { return false; }
};

struct MapRequest {
    std::size_t items = 0;
    std::string key;        // the payload's key: a worker gets PAYLOAD once per key
    Frame payload;          // the PAYLOAD frame (duplicated per worker)
    std::size_t chunk = 0;  // 0: guided chunks (ChunkPlanner), else a fixed size
    std::size_t depth = 2;  // batches queued per worker (at least 1)
    double item_timeout = 0;  // seconds; > 0: kill a worker whose item runs longer
    // Streaming: `items` is unused; the host hands out ranges of ready items
    // (MapHost::next_range) until it is no longer open(). A batch holds what is ready,
    // up to `chunk` items or (chunk 0) about kStreamBatchSeconds of measured work.
    bool streaming = false;
};

class MapScheduler {
public:
    enum class End {
        done,         // every item was reported, or dispatching stopped and what was in
                      // flight came back
        broken,       // the pool is broken (broken() says why); items may be unreported
        shut_down,    // the pool was shut down; items may be unreported
        interrupted,  // wait_unlocked() said so; the busy workers were killed
    };

    // Workers in a row that may exit before READY before the pool counts as broken (one
    // killed from outside while it started is no reason to give up; three are).
    static constexpr int kMaxEarlyExits = 3;
    // A streaming map's batches aim at this much work (seconds), once an item's time is
    // known: long enough that a round trip (~0.1 ms) is noise, short enough that a
    // later stage gets the items soon. Until then a batch holds one item.
    static constexpr double kStreamBatchSeconds = 0.05;
    static constexpr std::size_t kStreamBatchMax = 4096;

    // `max_items_per_worker` caps a chunk (0: no cap). `tick`: the longest wait for an
    // event, i.e. the Ctrl-C latency and how often overdue items are looked for.
    MapScheduler(WorkerSet& workers, std::size_t max_items_per_worker,
                 std::chrono::nanoseconds tick = std::chrono::milliseconds(50));

    End run(MapRequest request, MapHost& host);

    // Empty while the pool is usable; else why not (the pool must be replaced).
    const std::string& broken() const noexcept { return broken_; }

private:
    using Clock = std::chrono::steady_clock;
    struct InFlight {
        std::uint64_t worker = 0;
        std::size_t start = 0, stop = 0;
        Clock::time_point sent{};
        std::size_t origin = 0;  // the start of the batch this range was first sent in
    };
    struct MapState;

    void dispatch(MapState& m, MapHost& host);
    void dispatch_subs(MapState& m);
    bool handle_sub(WorkerEvent& ev, MapState& m);
    void sub_worker_exited(const WorkerEvent& ev, MapState& m);
    bool handle(WorkerEvent& ev, MapState& m, MapHost& host);
    bool handle_exit(const WorkerEvent& ev, MapState& m, MapHost& host);
    void kill_overdue(MapState& m);
    void cancel_later_batches(MapState& m);
    void abandon(MapState& m);
    void time_items(const InFlight& f, Clock::time_point received, MapState& m);
    static std::size_t stream_batch(const MapState& m);
    static std::string describe_early_exit(const WorkerEvent& ev);

    WorkerSet& workers_;
    const std::size_t max_items_;
    const std::chrono::nanoseconds tick_;
    // Kept across maps: the pool's workers outlive a map.
    std::map<std::uint64_t, std::size_t> timed_out_;  // worker -> item it was killed for
    std::set<std::uint64_t> ready_;                   // workers that sent READY
    std::map<std::uint64_t, Clock::time_point> last_result_;  // worker -> its last RESULT
    std::string broken_;
    int early_exits_ = 0;  // consecutive workers that exited before READY
};

// Next batch id, unique in this process (so a result is never mistaken for another
// map's, nor for another pool's).
std::uint64_t next_batch_id() noexcept;

}  // namespace gilfree
