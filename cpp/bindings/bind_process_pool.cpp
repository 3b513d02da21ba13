// _core.ProcessPool (driver side) and _core.Channel (worker side): conversions only.
//
// Who sends what to whom, and who holds the GIL
//
//   Python caller (processes.py)       PyProcessPool / PyMapHost           MapScheduler (plain C++)
//   map(n, key, payload, make_batch, ─▶ [GIL] MapRequest ─────────────────▶ run(): dispatch and
//       on_result, on_lost, ...)                                              fault policy, see
//   make_batch(a, b, origin) ◀───────── [GIL] host.make_batch ◀───────────── map_scheduler.hpp
//       -> (bytes, fds)
//   on_result(a, b, origin, body, fds) ◀ [GIL] host.on_result ◀──────────────
//   on_lost(a, b, origin, info dict) ◀─ [GIL] host.on_lost (exit info) ◀────
//   stream(...): also next_range(most, ◀ [GIL] host.next_range / open ◀─────── (streaming)
//       share), open(); wake() ───────▶ [no GIL] pool.wake: look again now
//                                       [no GIL] host.unlocked(fill) ◀────── start workers
//                                       [no GIL] host.wait_unlocked ◀─────── wait <= 50 ms,
//                                       [GIL] PyErr_CheckSignals ─────────▶ interrupted: Ctrl-C
//   raises KeyboardInterrupt ◀───────── End::interrupted                     (busy workers killed)
//   reads .broken / .is_shut_down ◀──── End::broken / End::shut_down: returns normally
//
//   worker process: Channel.recv() / Channel.send() release the GIL around the frame I/O
//   (the worker is single-threaded; releasing lets its own Python threads run).
//
// Everything the pool decides (which batch goes where, what a dead worker or an overdue
// item costs, when the pool is broken, stale results) is MapScheduler's, tested without
// Python in tests/cpp/test_map_scheduler.cpp. Callbacks run in the map() caller's thread
// with the GIL held; an exception from one leaves map() (its batches in flight come back
// later as stale results and are dropped).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "gilfree/frame.hpp"
#include "gilfree/map_scheduler.hpp"
#include "gilfree/process_pool.hpp"
#include "py_call.hpp"

namespace py = pybind11;

namespace gilfree::bindings {
namespace {

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

// The `info` dict of on_lost (processes.py reads it).
py::dict exit_info(const LostItems& why) {
    py::dict info;
    info["pid"] = why.pid;
    info["expected"] = why.expected;
    const int st = why.wait_status;
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
    info["batch"] = why.progress.batch;
    info["item"] = why.progress.item;
    info["step"] = why.progress.step;
    info["phase"] = why.progress.phase;
    info["beside_step"] = why.beside_step;
    if (why.timeout_s > 0) info["timeout"] = why.timeout_s;
    return info;
}

// The Python callbacks of one map() call. Called by MapScheduler::run() in the map()
// caller's thread, GIL held, except unlocked()/wait_unlocked(), which release it.
class PyMapHost final : public MapHost {
public:
    PyMapHost(const py::object& make_batch, const py::object& on_result,
              const py::object& on_lost, const py::object* next_range = nullptr,
              const py::object* open = nullptr)
        : make_batch_(make_batch), on_result_(on_result), on_lost_(on_lost),
          next_range_(next_range), open_(open) {}

    // A streaming map: next_range(most, share) -> (start, stop), or None (none ready),
    // or a float (items held back: ask again within that many seconds); open() -> bool.
    bool next_range(std::size_t most, std::size_t share, std::size_t& start,
                    std::size_t& stop, double& ask_again_s) override {
        py::object r = (*next_range_)(most, share);
        if (r.is_none()) return false;
        if (PyFloat_Check(r.ptr())) {
            ask_again_s = r.cast<double>();
            return false;
        }
        auto t = r.cast<std::pair<std::size_t, std::size_t>>();
        start = t.first;
        stop = t.second;
        return true;
    }
    bool open() override { return open_ != nullptr && (*open_)().cast<bool>(); }

    void make_batch(std::size_t start, std::size_t stop, std::size_t origin,
                    Frame& batch) override {
        py::tuple made = make_batch_(start, stop, origin);
        batch.body = std::string(py::bytes(made[0]));
        batch.fds = adopt_fds(made[1].cast<std::vector<int>>());
    }

    bool on_result(std::size_t start, std::size_t stop, std::size_t origin,
                   Frame& result) override {
        py::bytes body(result.body);
        result.body.clear();
        py::list fds = release_fds(result.fds);
        return on_result_(start, stop, origin, body, fds).cast<bool>();
    }

    bool on_lost(std::size_t start, std::size_t stop, std::size_t origin,
                 const LostItems& why) override {
        return on_lost_(start, stop, origin, exit_info(why)).cast<bool>();
    }

    void unlocked(const std::function<void()>& f) override {
        pycall::GilRelease nogil;  // a first start may wait ~0.1 s for the zygote
        f();
    }

    // Ctrl-C latency: one tick (plus one GIL switch interval).
    bool wait_unlocked(const std::function<bool()>& poll, bool& interrupted) override {
        return pycall::wait_without_gil(poll, interrupted);
    }

private:
    const py::object& make_batch_;
    const py::object& on_result_;
    const py::object& on_lost_;
    const py::object* next_range_;
    const py::object* open_;
};

class PyProcessPool {
public:
    PyProcessPool(std::vector<std::string> argv, std::size_t workers, std::size_t payload_slots,
                  std::size_t max_items_per_worker, std::vector<std::string> zygote_argv)
        : pool_(ProcessPool::Config{std::move(argv), workers, payload_slots, max_items_per_worker,
                                    std::move(zygote_argv)}),
          scheduler_(pool_, max_items_per_worker) {}

    ~PyProcessPool() {
        pycall::GilRelease nogil;
        pool_.shutdown(std::chrono::milliseconds(500));
    }

    void set_init(const py::bytes& body) { pool_.set_init(std::string(body)); }

    void start() {
        if (pool_.is_shut_down()) throw std::runtime_error("ProcessPool is shut down");
        pycall::GilRelease nogil;  // a first start may wait ~0.1 s for the zygote
        pool_.fill();
    }

    // Returns normally when every chunk completed, or once dispatching stopped (a
    // callback said so) and the batches in flight came back. If the pool breaks (an
    // initializer failed) it returns early; `broken` then says why. Shut down (by another
    // thread) before or while it runs: it returns early, the caller sees is_shut_down
    // and says which items did not finish (processes.py). Nothing here raises a bare
    // "shut down".
    void map(std::size_t n, const py::bytes& key, const py::bytes& payload_body,
             const std::vector<int>& payload_fds, const py::object& make_batch,
             const py::object& on_result, const py::object& on_lost, std::size_t chunk,
             std::size_t depth, double item_timeout) {
        MapRequest req = request(key, payload_body, payload_fds);
        req.items = n;
        req.chunk = chunk;
        req.depth = depth;
        req.item_timeout = item_timeout;
        PyMapHost host(make_batch, on_result, on_lost);
        run(std::move(req), host);
    }

    // A streaming map: batches of the items next_range(most, share) hands out, until
    // open() says no more will come and the batches sent are back (map_scheduler.hpp).
    // Items are numbered by the caller (item i is item i on the workers' status pages).
    void stream(const py::bytes& key, const py::bytes& payload_body,
                const std::vector<int>& payload_fds, const py::object& make_batch,
                const py::object& on_result, const py::object& on_lost,
                const py::object& next_range, const py::object& open, std::size_t chunk,
                std::size_t depth, double item_timeout) {
        MapRequest req = request(key, payload_body, payload_fds);
        req.streaming = true;
        req.chunk = chunk;
        req.depth = depth;
        req.item_timeout = item_timeout;
        PyMapHost host(make_batch, on_result, on_lost, &next_range, &open);
        run(std::move(req), host);
    }

    // Any thread: a stream() waiting for its next items looks again at once.
    void wake() { pool_.wake(); }

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
    py::object broken() const {
        const std::string& why = scheduler_.broken();
        return why.empty() ? py::object(py::none()) : py::str(why);
    }
    bool is_shut_down() const { return pool_.is_shut_down(); }

private:
    static MapRequest request(const py::bytes& key, const py::bytes& payload_body,
                              const std::vector<int>& payload_fds) {
        MapRequest req;
        req.key = std::string(key);
        req.payload.kind = static_cast<std::uint32_t>(FrameKind::payload);
        req.payload.key = req.key;
        req.payload.body = std::string(payload_body);
        // Borrowed: Python closes them after map(); the pool dups them per worker.
        for (int fd : payload_fds) req.payload.fds.emplace_back(::dup(fd));
        return req;
    }

    void run(MapRequest req, PyMapHost& host) {
        if (scheduler_.run(std::move(req), host) == MapScheduler::End::interrupted)
            throw py::error_already_set();  // PyErr_CheckSignals set it
    }

    ProcessPool pool_;
    MapScheduler scheduler_;  // drives pool_; declared after it
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
        .def("stream", &PyProcessPool::stream, "key"_a, "payload"_a, "payload_fds"_a,
             "make_batch"_a, "on_result"_a, "on_lost"_a, "next_range"_a, "open"_a,
             py::kw_only(), "chunk"_a = 0, "depth"_a = 2, "item_timeout"_a = 0.0)
        .def("wake", &PyProcessPool::wake, py::call_guard<py::gil_scoped_release>())
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
                           {"exited", FrameKind::exited}, {"submap", FrameKind::submap},
                           {"subbatch", FrameKind::subbatch}, {"subend", FrameKind::subend},
                           {"subresult", FrameKind::subresult},
                           {"sublost", FrameKind::sublost}})
        kinds[name] = static_cast<std::uint32_t>(k);
    m.attr("FRAME_KINDS") = kinds;
}

}  // namespace gilfree::bindings
