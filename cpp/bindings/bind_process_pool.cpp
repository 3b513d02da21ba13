// _core.ProcessPool (driver side) and _core.Channel (worker side).
//
// Who sends what to whom, and who holds the GIL
//
//   driver thread in map()                                        ProcessPool threads
//     [GIL]    fill(): replace dead/retired workers (spawn runs without the GIL)
//     [GIL]    for each worker with room (< depth batches): ChunkPlanner -> (start, stop),
//              make_batch(start, stop) -> (rows bytes, memfds)  -- Python pickles
//     [GIL]    send_batch(): queue PAYLOAD (first time this worker sees the key), BATCH ─▶ writer
//     [no GIL] wait_event(<= 50 ms) ◀──────────────────────────────────────────── reader
//     [GIL]    PyErr_CheckSignals (Ctrl-C: kill the busy workers, raise)
//     [GIL]    RESULT  -> on_result(start, stop, body, fds) -> keep going?   (callbacks,
//                         progress and result decoding happen in Python, in this thread);
//                         the batch's time per item sizes the tail chunks (ChunkPlanner)
//              exited  -> on_lost(start, stop, info) for each batch the worker held
//     [no GIL] item_timeout: a worker whose status page shows its current item running
//              for longer is killed; its exit fails that item alone (info["timeout"]) and
//              the rest of its batch runs again elsewhere
//              INIT_FAILED / exit before READY -> the pool is broken: stop, report
//              shutdown() from another thread -> return at once, the items that did
//              not finish are the caller's to report (is_shut_down)
//
//   worker process: Channel.recv() / Channel.send() release the GIL around the frame I/O
//   (the worker is single-threaded; releasing lets its own Python threads run).
//
// Every batch has a process-unique id, so a result that arrives after its map was
// abandoned (Ctrl-C, an exception in a callback) is recognised as stale and dropped; its
// worker's in-flight count is still decremented.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "gilfree/frame.hpp"
#include "gilfree/process_pool.hpp"
#include "py_call.hpp"

namespace py = pybind11;

namespace gilfree::bindings {
namespace {

// Ctrl-C latency bound (plus one GIL switch interval), and how often a waiting driver
// replaces dead workers.
constexpr std::chrono::milliseconds kDriverTick{50};

std::atomic<std::uint64_t> next_batch_id{1};

std::vector<UniqueFd> adopt_fds(const std::vector<int>& fds) {
    std::vector<UniqueFd> out;
    out.reserve(fds.size());
    for (int fd : fds) out.emplace_back(fd);
    return out;
}

py::list release_fds(std::vector<UniqueFd>& fds) {
    py::list out;
    for (auto& fd : fds) out.append(fd.release());
    fds.clear();
    return out;
}

py::dict exit_info(const ProcessPool::Event& ev) {
    py::dict info;
    info["pid"] = ev.pid;
    info["expected"] = ev.expected;
    const int st = ev.wait_status;
    if (st == -1) {
        info["exitcode"] = py::none();
        info["signal"] = py::none();
    } else if (WIFSIGNALED(st)) {
        info["exitcode"] = py::none();
        info["signal"] = WTERMSIG(st);
    } else {
        info["exitcode"] = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        info["signal"] = py::none();
    }
    info["batch"] = ev.progress.batch;
    info["item"] = ev.progress.item;
    info["step"] = ev.progress.step;
    info["phase"] = ev.progress.phase;
    return info;
}

using Clock = std::chrono::steady_clock;

struct InFlight {
    std::uint64_t worker;
    std::size_t start, stop;
    Clock::time_point sent{};
};

class PyProcessPool {
public:
    PyProcessPool(std::vector<std::string> argv, std::size_t workers, std::size_t payload_slots,
                  std::size_t max_items_per_worker, std::vector<std::string> zygote_argv)
        : pool_(ProcessPool::Config{std::move(argv), workers, payload_slots, max_items_per_worker,
                                    std::move(zygote_argv)}),
          max_items_(max_items_per_worker) {}

    ~PyProcessPool() {
        pycall::GilRelease nogil;
        pool_.shutdown(std::chrono::milliseconds(500));
    }

    void set_init(const py::bytes& body) { pool_.set_init(std::string(body)); }

    void start() {
        check_usable();
        pycall::GilRelease nogil;  // a first start may wait ~0.1 s for the zygote
        pool_.fill();
    }

    // Returns normally when every chunk completed, or once dispatching stopped (a
    // callback said so) and the batches in flight came back. If the pool breaks (an
    // initializer failed) it returns early; `broken` then says why.
    void map(std::size_t n, const py::bytes& key_obj, const py::bytes& payload_body,
             const std::vector<int>& payload_fds, const py::object& make_batch,
             const py::object& on_result, const py::object& on_lost, std::size_t chunk,
             std::size_t depth, double item_timeout) {
        // Shut down (by another thread) before this map began, or while it runs: it
        // returns early, and the caller sees is_shut_down and says which items did not
        // finish (processes.py). Nothing here raises a bare "shut down".
        if (pool_.is_shut_down()) return;
        timed_out_.clear();
        const auto deadline_ns = static_cast<std::int64_t>(item_timeout * 1e9);
        Frame payload;
        payload.kind = static_cast<std::uint32_t>(FrameKind::payload);
        payload.key = std::string(key_obj);
        payload.body = std::string(payload_body);
        // Borrowed: Python closes them after map(); the pool dups them per worker.
        for (int fd : payload_fds) payload.fds.emplace_back(::dup(fd));
        const std::string key = payload.key;
        ChunkPlanner planner(n, pool_.size(), chunk, max_items_);
        std::map<std::uint64_t, InFlight> inflight;
        // Batches a dead worker held but had not started: they run again, once.
        std::deque<InFlight> retry;
        std::set<std::size_t> retried;
        bool stopping = false;
        depth = std::max<std::size_t>(1, depth);

        for (;;) {
            if (pool_.is_shut_down()) return;  // batches in flight died with the workers
            // Work left (new chunks, or batches of a dead worker to run again): replace
            // dead workers first. Retries count too: when every worker was killed (all
            // held overdue items), nothing else would start a worker to run them.
            if (!stopping && (!planner.exhausted() || !retry.empty())) {
                pycall::GilRelease nogil;
                try {
                    pool_.fill();
                } catch (const std::runtime_error&) {
                    if (pool_.is_shut_down()) return;  // between the check and fill()
                    throw;
                }
            }
            if (!stopping) {
                const auto workers = pool_.live();
                auto more = [&] { return !retry.empty() || !planner.exhausted(); };
                for (std::size_t round = 1; round <= depth && more(); ++round) {
                    for (std::uint64_t w : workers) {
                        if (!more()) break;
                        if (!pool_.accepts(w)) continue;
                        if (pool_.in_flight(w) >= round) continue;
                        std::size_t a = 0, b = 0;
                        if (!retry.empty()) {
                            a = retry.front().start;
                            b = retry.front().stop;
                            retry.pop_front();
                        } else {
                            planner.next(a, b);
                        }
                        py::tuple made = make_batch(a, b);
                        Frame f;
                        f.kind = static_cast<std::uint32_t>(FrameKind::batch);
                        f.id = next_batch_id.fetch_add(1, std::memory_order_relaxed);
                        f.key = key;
                        f.body = std::string(py::bytes(made[0]));
                        f.fds = adopt_fds(made[1].cast<std::vector<int>>());
                        const std::uint64_t id = f.id;
                        // Only queues the frames for the worker's writer thread: cheap,
                        // never blocks on the worker. The worker may have died since
                        // accepts() (make_batch ran Python): then the range goes back to
                        // the front of the queue, not counted as a retry (it never ran).
                        if (!pool_.send_batch(w, key, payload, std::move(f), b - a)) {
                            retry.push_front(InFlight{w, a, b});
                            continue;
                        }
                        inflight[id] = InFlight{w, a, b, Clock::now()};
                    }
                }
            }
            if (inflight.empty() && (stopping || (planner.exhausted() && retry.empty()))) return;

            ProcessPool::Event ev;
            bool got = false, signalled = false;
            pycall::wait_without_gil(
                [&] {
                    got = pool_.wait_event(ev, kDriverTick);
                    return got;
                },
                signalled);
            if (signalled) {
                abandon(inflight);
                throw py::error_already_set();
            }
            while (got) {
                if (!handle(ev, inflight, retry, retried, planner, on_result, on_lost,
                            item_timeout))
                    stopping = true;
                if (!broken_.empty()) {
                    abandon(inflight);
                    return;
                }
                got = pool_.wait_event(ev, std::chrono::nanoseconds(0));
            }
            if (deadline_ns > 0) kill_overdue(inflight, deadline_ns);
        }
    }

    // Per-item timeout: a worker whose current item has run longer than the deadline is
    // killed (the only way to stop Python code in another process). Its `exited` event
    // then fails that one item and sends the rest of its batch round again (handle()).
    void kill_overdue(const std::map<std::uint64_t, InFlight>& inflight, std::int64_t limit_ns) {
        const std::int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
            Clock::now().time_since_epoch()).count();  // CLOCK_MONOTONIC
        for (const auto& [id, f] : inflight) {
            if (timed_out_.count(f.worker)) continue;
            const WorkerProgress p = pool_.progress(f.worker);
            if (p.phase != 2 || p.batch != static_cast<std::int64_t>(id) ||
                p.item_started_ns <= 0 || now - p.item_started_ns <= limit_ns)
                continue;
            if (p.item < static_cast<std::int64_t>(f.start) ||
                p.item >= static_cast<std::int64_t>(f.stop))
                continue;
            timed_out_[f.worker] = static_cast<std::size_t>(p.item);
            pool_.kill(f.worker);
        }
    }

    void shutdown(double grace) {
        pycall::GilRelease nogil;
        pool_.shutdown(std::chrono::duration_cast<std::chrono::nanoseconds>(
            std::chrono::duration<double>(grace)));
    }

    void kill_all() {
        for (std::uint64_t w : pool_.live()) pool_.kill(w);
    }

    std::vector<int> pids() const {
        auto p = pool_.pids();
        return std::vector<int>(p.begin(), p.end());
    }
    std::size_t workers() const { return pool_.size(); }
    py::object broken() const { return broken_.empty() ? py::object(py::none()) : py::str(broken_); }
    bool is_shut_down() const { return pool_.is_shut_down(); }

private:
    void check_usable() const {
        if (pool_.is_shut_down()) throw std::runtime_error("ProcessPool is shut down");
    }

    // A map is being abandoned: workers holding its batches are killed (their work is
    // unwanted and could take arbitrarily long); the next map replaces them.
    void abandon(std::map<std::uint64_t, InFlight>& inflight) {
        std::set<std::uint64_t> busy;
        for (auto& [id, f] : inflight) busy.insert(f.worker);
        for (std::uint64_t w : busy) pool_.kill(w);
        inflight.clear();
        pool_.clear_events();
    }

    // GIL held. False: stop dispatching.
    bool handle(ProcessPool::Event& ev, std::map<std::uint64_t, InFlight>& inflight,
                std::deque<InFlight>& retry, std::set<std::size_t>& retried,
                ChunkPlanner& planner, const py::object& on_result,
                const py::object& on_lost, double item_timeout) {
        using Type = ProcessPool::Event::Type;
        if (ev.type == Type::exited && pool_.is_shut_down()) {
            // Killed or stopped by shutdown(): its items are not lost to a crash; the
            // map returns at the top of its loop and the caller reports the shutdown.
            return true;
        }
        if (ev.type == Type::exited) {
            const bool was_ready = ready_.erase(ev.worker) > 0;
            pool_.forget(ev.worker);
            last_result_.erase(ev.worker);
            bool keep_going = true;
            py::dict info = exit_info(ev);
            std::vector<std::uint64_t> lost;
            for (auto& [id, f] : inflight)
                if (f.worker == ev.worker) lost.push_back(id);
            if (was_ready) {
                early_exits_ = 0;
            } else if (!ev.expected && ++early_exits_ >= kMaxEarlyExits) {
                // Workers keep dying before their initializer finished: something in the
                // start-up is broken; respawning for ever would not fix it.
                broken_ = describe_early_exit(ev);
                return false;
            }
            std::optional<std::size_t> overdue;
            if (auto t = timed_out_.find(ev.worker); t != timed_out_.end()) {
                overdue = t->second;
                timed_out_.erase(t);
            }
            if (overdue) {
                // The overdue item may have finished just before the kill landed (its
                // result came back, the worker had moved on): then nobody is overdue, and
                // what the worker held runs again instead of failing.
                bool held = false;
                for (std::uint64_t id : lost) {
                    const InFlight& f = inflight[id];
                    held = held || (f.start <= *overdue && *overdue < f.stop);
                }
                if (!held) {
                    for (std::uint64_t id : lost) {
                        retry.push_back(inflight[id]);
                        inflight.erase(id);
                    }
                    return keep_going;
                }
            }
            for (std::uint64_t id : lost) {
                InFlight f = inflight[id];
                inflight.erase(id);
                if (overdue && f.start <= *overdue && *overdue < f.stop) {
                    // Killed for its timeout: only the overdue item fails; the items of
                    // the batch around it (done or not, their results died with it) run
                    // again on the other workers.
                    if (f.start < *overdue) retry.push_back(InFlight{0, f.start, *overdue});
                    if (*overdue + 1 < f.stop) retry.push_back(InFlight{0, *overdue + 1, f.stop});
                    info["timeout"] = item_timeout;
                    info["item"] = static_cast<std::int64_t>(*overdue);
                    keep_going = on_lost(*overdue, *overdue + 1, info).cast<bool>() && keep_going;
                    continue;
                }
                // Only the batch it was running is its victim's; the ones queued behind
                // it never started. Those run again (once: a batch whose payload kills
                // every worker that loads it must not go round for ever).
                const bool running = static_cast<std::int64_t>(id) == ev.progress.batch;
                if (!running && retried.insert(f.start).second) {
                    retry.push_back(f);
                    continue;
                }
                keep_going = on_lost(f.start, f.stop, info).cast<bool>() && keep_going;
            }
            return keep_going;
        }
        const auto kind = static_cast<FrameKind>(ev.frame.kind);
        if (kind == FrameKind::ready) {
            ready_.insert(ev.worker);
            early_exits_ = 0;
            return true;
        }
        if (kind == FrameKind::init_failed) {
            broken_ = "a worker process's initializer failed:\n" + ev.frame.body;
            return false;
        }
        if (kind != FrameKind::result) return true;
        pool_.batch_done(ev.worker);
        auto it = inflight.find(ev.frame.id);
        if (it == inflight.end()) return true;  // stale: its map was abandoned
        const InFlight f = it->second;
        inflight.erase(it);
        time_items(f, planner);
        py::bytes body(ev.frame.body);
        ev.frame.body.clear();
        py::list fds = release_fds(ev.frame.fds);
        return on_result(f.start, f.stop, body, fds).cast<bool>();
    }

    // What an item of this map takes, from a finished batch: it ran from when it was
    // sent, or from when the batch queued before it on the same worker came back.
    void time_items(const InFlight& f, ChunkPlanner& planner) {
        const auto now = Clock::now();
        auto& previous = last_result_[f.worker];
        const auto began = std::max(f.sent, previous);
        previous = now;
        planner.observe_item_seconds(std::chrono::duration<double>(now - began).count() /
                                     static_cast<double>(f.stop - f.start));
    }

    static std::string describe_early_exit(const ProcessPool::Event& ev) {
        std::string how;
        const int st = ev.wait_status;
        if (st == -1)
            how = "with an unknown status";
        else if (WIFSIGNALED(st))
            how = "killed by signal " + std::to_string(WTERMSIG(st)) + " (" + strsignal(WTERMSIG(st)) + ")";
        else
            how = "with exit code " + std::to_string(WEXITSTATUS(st));
        return std::to_string(kMaxEarlyExits) + " worker processes in a row exited before they "
               "were ready, the last (pid " + std::to_string(ev.pid) + ") " + how +
               "; their output (stderr) says why";
    }

    ProcessPool pool_;
    std::map<std::uint64_t, std::size_t> timed_out_;  // worker -> item it was killed for
    std::size_t max_items_;
    std::set<std::uint64_t> ready_;
    std::map<std::uint64_t, Clock::time_point> last_result_;  // worker -> its last RESULT
    std::string broken_;
    // Consecutive workers that exited before READY (one killed from outside while it
    // started is no reason to give up; three in a row are).
    int early_exits_ = 0;
    static constexpr int kMaxEarlyExits = 3;
};

// Worker side: one socket to the driver.
class PyChannel {
public:
    explicit PyChannel(int fd) : fd_(fd) {}

    py::object recv() {
        Frame f;
        bool ok;
        {
            pycall::GilRelease nogil;
            ok = read_frame(fd_, f);
        }
        if (!ok) return py::none();
        py::bytes key(f.key);
        py::bytes body(f.body);
        f.body.clear();
        return py::make_tuple(f.kind, f.id, key, body, release_fds(f.fds));
    }

    void send(std::uint32_t kind, std::uint64_t id, const py::bytes& key, const py::bytes& body,
              const std::vector<int>& fds) {
        Frame f;
        f.kind = kind;
        f.id = id;
        f.key = std::string(key);
        f.body = std::string(body);
        f.fds = adopt_fds(fds);  // closed after sending: the receiver has its own copies
        pycall::GilRelease nogil;
        write_frame(fd_, f);
    }

private:
    int fd_;
};

}  // namespace

void bind_process_pool(py::module_& m) {
    using namespace pybind11::literals;
    py::class_<PyProcessPool>(m, "ProcessPool", R"doc(
Long-lived worker processes (`argv` + "3 4 <parent pid>"), fed with framed batches.
See gilfree/engines/processes.py for the Python side of the protocol.)doc")
        .def(py::init<std::vector<std::string>, std::size_t, std::size_t, std::size_t,
                      std::vector<std::string>>(),
             "argv"_a, "workers"_a, "payload_slots"_a = 8, "max_items_per_worker"_a = 0,
             "zygote_argv"_a = std::vector<std::string>{})
        .def("set_init", &PyProcessPool::set_init, "body"_a)
        .def("start", &PyProcessPool::start)
        .def("map", &PyProcessPool::map, "n"_a, "key"_a, "payload"_a, "payload_fds"_a,
             "make_batch"_a, "on_result"_a, "on_lost"_a, py::kw_only(), "chunk"_a = 0,
             "depth"_a = 2, "item_timeout"_a = 0.0)
        .def("shutdown", &PyProcessPool::shutdown, "grace"_a = 2.0)
        .def("kill_all", &PyProcessPool::kill_all)
        .def_property_readonly("pids", &PyProcessPool::pids)
        .def_property_readonly("workers", &PyProcessPool::workers)
        .def_property_readonly("broken", &PyProcessPool::broken)
        .def_property_readonly("is_shut_down", &PyProcessPool::is_shut_down);

    py::class_<PyChannel>(m, "Channel", "Worker side of a driver connection (frames).")
        .def(py::init<int>(), "fd"_a)
        .def("recv", &PyChannel::recv)
        .def("send", &PyChannel::send, "kind"_a, "id"_a, "key"_a, "body"_a, "fds"_a);

    py::class_<ChunkPlanner>(m, "ChunkPlanner", R"doc(
How ProcessPool.map cuts `items` into batches: guided self-scheduling, with tail chunks
sized by the time an item takes once a batch has been timed.)doc")
        .def(py::init<std::size_t, std::size_t, std::size_t, std::size_t>(), "items"_a,
             "workers"_a, "fixed"_a = 0, "cap"_a = 0)
        .def("next",
             [](ChunkPlanner& p) -> py::object {
                 std::size_t a = 0, b = 0;
                 if (!p.next(a, b)) return py::none();
                 return py::make_tuple(a, b);
             })
        .def("observe_item_seconds", &ChunkPlanner::observe_item_seconds, "seconds"_a)
        .def_property_readonly("min_chunk", &ChunkPlanner::min_chunk);

    m.def("set_parent_death_signal", &set_parent_death_signal, "sig"_a,
          "Linux: get `sig` when the parent thread exits. False where unsupported.");
    py::dict kinds;
    for (auto [name, k] : {std::pair{"init", FrameKind::init}, {"ready", FrameKind::ready},
                           {"init_failed", FrameKind::init_failed}, {"payload", FrameKind::payload},
                           {"drop", FrameKind::drop}, {"batch", FrameKind::batch},
                           {"result", FrameKind::result}, {"quit", FrameKind::quit},
                           {"spawn", FrameKind::spawn}, {"spawned", FrameKind::spawned},
                           {"exited", FrameKind::exited}})
        kinds[name] = static_cast<std::uint32_t>(k);
    m.attr("FRAME_KINDS") = kinds;
}

}  // namespace gilfree::bindings
