// See cpp/include/gilfree/process_pool.hpp for the diagram of who talks to whom.
#include "gilfree/process_pool.hpp"

#include "gilfree/launcher.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>

namespace gilfree {
namespace detail {
namespace {

[[noreturn]] void throw_errno(const char* what) {
    throw std::system_error(errno, std::generic_category(), what);
}

// Moves a descriptor above the range posix_spawn dup2()s into (3, 4): dup2(fd, fd) would
// leave close-on-exec set on it in the child.
UniqueFd high_fd(int fd) {
    const int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, 10);
    if (moved < 0) throw_errno("fcntl(F_DUPFD_CLOEXEC)");
    ::close(fd);
    return UniqueFd(moved);
}

}  // namespace

struct WorkerProc {
    std::uint64_t id = 0;
    pid_t pid = 0;
    UniqueFd sock;
    std::int64_t* status = nullptr;  // mmap'd status page (StatusSlot::count x int64)
    std::thread reader;
    std::thread writer;

    std::mutex out_mu;  // the writer's queue
    std::condition_variable out_cv;
    std::deque<Frame> outq;
    bool closing = false;  // after the queue drains: shut the socket's write side

    std::mutex reap_mu;  // kill() vs waitpid(): never signal a pid that was reaped
    bool reaped = false;
    bool forked = false;  // a child of the zygote, not ours

    // Guarded by PoolShared::mu.
    std::size_t in_flight = 0;
    std::size_t items = 0;
    std::list<std::string> payloads;  // most recent first
    bool retiring = false;
    bool expected_exit = false;

    ~WorkerProc() {
        if (status != nullptr) ::munmap(status, 4096);
    }

    WorkerProgress progress() const {
        WorkerProgress p;
        if (status == nullptr) return p;
        // The worker writes these with plain stores while running; it is dead (or we are
        // reading a snapshot for a message), so torn values only make a message vaguer.
        volatile std::int64_t* v = status;
        p.batch = v[slot(StatusSlot::batch)];
        p.item = v[slot(StatusSlot::item)];
        p.step = v[slot(StatusSlot::step)];
        p.phase = v[slot(StatusSlot::phase)];
        p.item_started_ns = v[slot(StatusSlot::item_started_ns)];
        p.tail_batch = v[slot(StatusSlot::tail_batch)];
        p.tail_step = v[slot(StatusSlot::tail_step)];
        return p;
    }

    void enqueue(Frame f) {
        {
            std::lock_guard<std::mutex> lk(out_mu);
            outq.push_back(std::move(f));
        }
        out_cv.notify_one();
    }

    void close_output() {
        {
            std::lock_guard<std::mutex> lk(out_mu);
            closing = true;
        }
        out_cv.notify_one();
    }

    bool signal(int sig) {
        std::lock_guard<std::mutex> lk(reap_mu);
        if (reaped || pid <= 0) return false;
        if (forked && Zygote::instance().reaped(pid)) return false;
        return ::kill(pid, sig) == 0;
    }
};

struct PoolShared {
    explicit PoolShared(ProcessPool::Config c) : cfg(std::move(c)) {}

    const ProcessPool::Config cfg;
    mutable std::mutex mu;
    std::condition_variable ev_cv;    // events arrived
    std::condition_variable exit_cv;  // a reader finished (worker reaped)
    std::deque<ProcessPool::Event> events;
    bool woken = false;  // wake(): the next wait_event returns at once
    std::map<std::uint64_t, std::shared_ptr<WorkerProc>> live;     // accepting work
    std::vector<std::shared_ptr<WorkerProc>> all;                   // not yet reaped
    std::string init_body;
    std::uint64_t next_id = 1;
    bool shut = false;

    void push_event(ProcessPool::Event ev) {
        {
            std::lock_guard<std::mutex> lk(mu);
            events.push_back(std::move(ev));
        }
        ev_cv.notify_all();
    }

    std::shared_ptr<WorkerProc> find(std::uint64_t id) const {
        auto it = live.find(id);
        return it == live.end() ? nullptr : it->second;
    }
};

namespace {

// After EOF on the socket: the worker is exiting (or dead). Wait for it, but never for
// ever: a worker that closed its socket and hangs is killed after a grace period.
int reap(WorkerProc& w) {
    int status = -1;
    if (w.forked) {  // the zygote's child: the zygote reaps it and tells us the status
        Zygote& z = Zygote::instance();
        if (!z.wait_exit(w.pid, std::chrono::seconds(3), status)) {
            w.signal(SIGKILL);
            if (!z.wait_exit(w.pid, std::chrono::seconds(5), status)) status = -1;
        }
        std::lock_guard<std::mutex> lk(w.reap_mu);
        w.reaped = true;
        return status;
    }
    const auto start = std::chrono::steady_clock::now();
    auto pause = std::chrono::microseconds(200);
    bool killed = false;
    for (;;) {
        const pid_t r = ::waitpid(w.pid, &status, WNOHANG);
        if (r == w.pid) break;
        if (r < 0 && errno != EINTR) {  // ECHILD: someone else reaped it
            status = -1;
            break;
        }
        if (!killed && std::chrono::steady_clock::now() - start > std::chrono::seconds(3)) {
            ::kill(w.pid, SIGKILL);
            killed = true;
        }
        std::this_thread::sleep_for(pause);
        pause = std::min(pause * 2, std::chrono::microseconds(20000));
    }
    std::lock_guard<std::mutex> lk(w.reap_mu);
    w.reaped = true;
    return status;
}

void reader_main(std::shared_ptr<PoolShared> s, std::shared_ptr<WorkerProc> w) {
    for (;;) {
        ProcessPool::Event ev;
        bool ok = false;
        try {
            ok = read_frame(w->sock.get(), ev.frame);
        } catch (...) {
            ok = false;  // a corrupt stream or I/O error: treat the worker as gone
        }
        if (!ok) break;
        ev.received = std::chrono::steady_clock::now();
        ev.type = ProcessPool::Event::Type::frame;
        ev.worker = w->id;
        ev.pid = w->pid;
        s->push_event(std::move(ev));
    }
    // Wake the writer so it stops; then the process.
    w->close_output();
    ::shutdown(w->sock.get(), SHUT_RDWR);
    ProcessPool::Event ev;
    ev.type = ProcessPool::Event::Type::exited;
    ev.worker = w->id;
    ev.pid = w->pid;
    ev.wait_status = reap(*w);
    ev.progress = w->progress();
    {
        std::lock_guard<std::mutex> lk(s->mu);
        ev.expected = w->expected_exit || s->shut;
        s->live.erase(w->id);
        s->all.erase(std::remove(s->all.begin(), s->all.end(), w), s->all.end());
        s->events.push_back(std::move(ev));
    }
    s->ev_cv.notify_all();
    s->exit_cv.notify_all();
}

void writer_main(std::shared_ptr<WorkerProc> w) {
    std::unique_lock<std::mutex> lk(w->out_mu);
    for (;;) {
        w->out_cv.wait(lk, [&] { return w->closing || !w->outq.empty(); });
        if (w->outq.empty()) break;  // closing and drained
        Frame f = std::move(w->outq.front());
        w->outq.pop_front();
        lk.unlock();
        try {
            write_frame(w->sock.get(), f);
        } catch (...) {
            // The worker is gone (EPIPE) or the socket broke: the reader reports the
            // exit; frames still queued die with the queue.
            lk.lock();
            w->outq.clear();
            break;
        }
        lk.lock();
    }
    // EOF for the worker: its loop ends and it exits, even if a QUIT got lost.
    ::shutdown(w->sock.get(), SHUT_WR);
}

}  // namespace
}  // namespace detail

using detail::PoolShared;
using detail::WorkerProc;

ProcessPool::ProcessPool(Config cfg) : s_(std::make_shared<PoolShared>(std::move(cfg))) {
    if (s_->cfg.workers == 0) throw std::invalid_argument("workers must be at least 1");
    if (s_->cfg.argv.empty()) throw std::invalid_argument("argv must name the worker command");
}

ProcessPool::~ProcessPool() { shutdown(std::chrono::milliseconds(500)); }

void ProcessPool::set_init(std::string body) {
    std::lock_guard<std::mutex> lk(s_->mu);
    s_->init_body = std::move(body);
}

std::vector<std::uint64_t> ProcessPool::fill() {
    std::vector<std::uint64_t> started;
    for (;;) {
        std::string init;
        {
            std::lock_guard<std::mutex> lk(s_->mu);
            if (s_->shut) throw std::runtime_error("ProcessPool is shut down");
            if (s_->live.size() >= s_->cfg.workers) break;
            init = s_->init_body;
        }
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) detail::throw_errno("socketpair");
        UniqueFd mine(sv[0]);
        UniqueFd theirs = detail::high_fd(sv[1]);
        const int mfd = ::memfd_create("gilfree-worker-status", MFD_CLOEXEC);
        if (mfd < 0) detail::throw_errno("memfd_create");
        UniqueFd status_fd = detail::high_fd(mfd);
        if (::ftruncate(status_fd.get(), 4096) != 0) detail::throw_errno("ftruncate");
        void* page = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, status_fd.get(), 0);
        if (page == MAP_FAILED) detail::throw_errno("mmap");
        auto w = std::make_shared<WorkerProc>();
        w->status = static_cast<std::int64_t*>(page);
        for (std::size_t i = 0; i < slot(StatusSlot::count); ++i) w->status[i] = -1;
        w->sock = std::move(mine);

        if (!s_->cfg.zygote_argv.empty()) {
            w->pid = Zygote::instance().fork_worker(s_->cfg.zygote_argv, theirs.get(),
                                                    status_fd.get());
            w->forked = true;
        } else {
            std::vector<std::string> args = s_->cfg.argv;
            args.push_back("3");
            args.push_back("4");
            args.push_back(std::to_string(::getpid()));
            w->pid = on_launcher_thread([&] {
                return spawn_with_fds(args, {{theirs.get(), 3}, {status_fd.get(), 4}});
            });
        }
        theirs.reset();      // the child has its copy; EOF must reach it when we close ours
        status_fd.reset();

        Frame init_frame;
        init_frame.kind = static_cast<std::uint32_t>(FrameKind::init);
        init_frame.body = std::move(init);
        w->enqueue(std::move(init_frame));
        {
            std::lock_guard<std::mutex> lk(s_->mu);
            w->id = s_->next_id++;
            s_->live[w->id] = w;
            s_->all.push_back(w);
        }
        w->writer = std::thread(detail::writer_main, w);
        w->reader = std::thread(detail::reader_main, s_, w);
        // Threads are joined by nobody: they own shared_ptrs and end with the process's
        // socket; shutdown() waits for the readers through exit_cv.
        w->writer.detach();
        w->reader.detach();
        started.push_back(w->id);
    }
    return started;
}

std::vector<std::uint64_t> ProcessPool::live() const {
    std::lock_guard<std::mutex> lk(s_->mu);
    std::vector<std::uint64_t> ids;
    for (auto& [id, w] : s_->live) ids.push_back(id);
    return ids;
}

std::vector<pid_t> ProcessPool::pids() const {
    std::lock_guard<std::mutex> lk(s_->mu);
    std::vector<pid_t> out;
    for (auto& [id, w] : s_->live) out.push_back(w->pid);
    return out;
}

std::size_t ProcessPool::size() const { return s_->cfg.workers; }

WorkerProgress ProcessPool::progress(std::uint64_t worker) const {
    std::lock_guard<std::mutex> lk(s_->mu);
    auto w = s_->find(worker);
    return w ? w->progress() : WorkerProgress{};
}

std::size_t ProcessPool::in_flight(std::uint64_t worker) const {
    std::lock_guard<std::mutex> lk(s_->mu);
    auto w = s_->find(worker);
    return w ? w->in_flight : 0;
}

bool ProcessPool::accepts(std::uint64_t worker) const {
    std::lock_guard<std::mutex> lk(s_->mu);
    auto w = s_->find(worker);
    if (!w || w->retiring) return false;
    const std::size_t cap = s_->cfg.max_items_per_worker;
    return cap == 0 || w->items < cap;
}

bool ProcessPool::send_batch(std::uint64_t worker, const std::string& key, const Frame& payload,
                             Frame batch, std::size_t items) {
    std::shared_ptr<WorkerProc> w;
    std::vector<Frame> frames;
    {
        std::lock_guard<std::mutex> lk(s_->mu);
        w = s_->find(worker);
        if (!w) return false;
        auto it = std::find(w->payloads.begin(), w->payloads.end(), key);
        if (it != w->payloads.end()) {
            w->payloads.splice(w->payloads.begin(), w->payloads, it);
        } else {
            if (w->payloads.size() >= std::max<std::size_t>(1, s_->cfg.payload_slots)) {
                Frame drop;
                drop.kind = static_cast<std::uint32_t>(FrameKind::drop);
                drop.key = w->payloads.back();
                w->payloads.pop_back();
                frames.push_back(std::move(drop));
            }
            w->payloads.push_front(key);
            frames.push_back(clone_frame(payload));
        }
        ++w->in_flight;
        w->items += items;
    }
    frames.push_back(std::move(batch));
    for (auto& f : frames) w->enqueue(std::move(f));
    return true;
}

void ProcessPool::send_frame(std::uint64_t worker, Frame frame) {
    std::shared_ptr<WorkerProc> w;
    {
        std::lock_guard<std::mutex> lk(s_->mu);
        w = s_->find(worker);
        if (!w) return;
    }
    w->enqueue(std::move(frame));
}

void ProcessPool::batch_done(std::uint64_t worker) {
    std::shared_ptr<WorkerProc> w;
    {
        std::lock_guard<std::mutex> lk(s_->mu);
        w = s_->find(worker);
        if (!w) return;
        if (w->in_flight > 0) --w->in_flight;
        const std::size_t cap = s_->cfg.max_items_per_worker;
        if (cap == 0 || w->items < cap || w->in_flight > 0) return;
        // Over budget and idle: retire it; fill() starts a replacement.
        w->retiring = true;
        w->expected_exit = true;
        s_->live.erase(worker);
    }
    Frame quit;
    quit.kind = static_cast<std::uint32_t>(FrameKind::quit);
    w->enqueue(std::move(quit));
    w->close_output();
}

void ProcessPool::forget(std::uint64_t worker) {
    std::lock_guard<std::mutex> lk(s_->mu);
    s_->live.erase(worker);
}

bool ProcessPool::wait_event(Event& out, std::chrono::nanoseconds timeout) {
    std::unique_lock<std::mutex> lk(s_->mu);
    if (!s_->ev_cv.wait_for(lk, timeout, [&] { return !s_->events.empty() || s_->woken; }))
        return false;
    if (s_->events.empty()) {
        s_->woken = false;
        return false;
    }
    out = std::move(s_->events.front());
    s_->events.pop_front();
    return true;
}

void ProcessPool::wake() {
    {
        std::lock_guard<std::mutex> lk(s_->mu);
        s_->woken = true;
    }
    s_->ev_cv.notify_all();
}

void ProcessPool::clear_events() {
    std::deque<Event> dropped;
    std::lock_guard<std::mutex> lk(s_->mu);
    // Exits must still be seen (the next map replaces those workers); frames are stale.
    for (auto& ev : s_->events)
        if (ev.type == Event::Type::exited) dropped.push_back(std::move(ev));
    s_->events.swap(dropped);
}

void ProcessPool::kill(std::uint64_t worker) {
    std::shared_ptr<WorkerProc> w;
    {
        std::lock_guard<std::mutex> lk(s_->mu);
        w = s_->find(worker);
        if (!w) return;
        w->expected_exit = true;
        s_->live.erase(worker);
    }
    w->signal(SIGKILL);
}

void ProcessPool::cancel(std::uint64_t worker, std::uint64_t batch) {
    std::lock_guard<std::mutex> lk(s_->mu);
    auto w = s_->find(worker);
    if (!w || w->status == nullptr) return;
    // A plain store: the worker polls it, and a stale read only costs it one more item.
    volatile std::int64_t* v = w->status;
    v[slot(StatusSlot::cancel)] = static_cast<std::int64_t>(batch);
}

void ProcessPool::shutdown(std::chrono::nanoseconds grace) {
    std::vector<std::shared_ptr<WorkerProc>> workers, busy;
    {
        std::lock_guard<std::mutex> lk(s_->mu);
        if (!s_->shut) {
            s_->shut = true;
            s_->live.clear();
        }
        workers = s_->all;
        for (auto& w : workers) {
            w->expected_exit = true;
            if (w->in_flight > 0) busy.push_back(w);
        }
    }
    // A worker holding batches works for a map that this shutdown ends (another thread
    // is mapping, or a map was abandoned), and a batch may take arbitrarily long: it is
    // killed now, not waited for (a QUIT would wait behind its batches, then the grace
    // ran out: shutdown took `grace` and killed it anyway). Idle workers get QUIT and
    // up to `grace` to run their teardown (@stateful release hooks).
    for (auto& w : busy) w->signal(SIGKILL);
    for (auto& w : workers) {
        Frame quit;
        quit.kind = static_cast<std::uint32_t>(FrameKind::quit);
        w->enqueue(std::move(quit));
        w->close_output();
    }
    {
        std::unique_lock<std::mutex> lk(s_->mu);
        s_->exit_cv.wait_for(lk, grace, [&] { return s_->all.empty(); });
        workers = s_->all;
    }
    for (auto& w : workers) w->signal(SIGKILL);
    {
        // SIGKILLed workers are reaped by their readers within milliseconds.
        std::unique_lock<std::mutex> lk(s_->mu);
        s_->exit_cv.wait_for(lk, std::chrono::seconds(5), [&] { return s_->all.empty(); });
    }
    clear_events();
}

bool ProcessPool::is_shut_down() const {
    std::lock_guard<std::mutex> lk(s_->mu);
    return s_->shut;
}

ChunkPlanner::ChunkPlanner(std::size_t items, std::size_t workers, std::size_t fixed,
                           std::size_t cap)
    : items_(items), workers_(std::max<std::size_t>(1, workers)), fixed_(fixed), cap_(cap) {
    // The tail, until an item's time is known: about 1/64 of a worker's share, so the
    // last chunks cost little waiting (W3: 400 items on 2 workers -> chunks of >= 4
    // items). observe_item_seconds() then lowers it for slow items (W3's 4 ms: one item).
    min_ = first_min_ = std::max<std::size_t>(1, (items_ + 64 * workers_ - 1) / (64 * workers_));
}

void ChunkPlanner::observe_item_seconds(double seconds) {
    if (!(seconds > 0)) return;  // also NaN
    // The slowest item time seen counts: a batch timed short (its start is when the
    // driver saw the previous result, which may have been late) must not make the tail
    // coarser, and a tail finer than needed costs only a few more round trips.
    slowest_ = std::max(slowest_, seconds);
    // Clamped in double: for very fast items the quotient does not fit a size_t.
    const double items = std::min(std::ceil(kTailChunkSeconds / slowest_),
                                  static_cast<double>(first_min_));
    min_ = std::max<std::size_t>(1, static_cast<std::size_t>(items));
}

bool ChunkPlanner::next(std::size_t& start, std::size_t& stop) {
    if (next_ >= items_) return false;
    const std::size_t left = items_ - next_;
    std::size_t n;
    if (fixed_ > 0) {
        n = fixed_;
    } else {
        // Half of a fair share of what is left: big chunks while much is left, a smooth
        // decrease towards min_ at the end.
        n = std::max(min_, (left + 2 * workers_ - 1) / (2 * workers_));
    }
    if (cap_ > 0) n = std::min(n, cap_);
    n = std::max<std::size_t>(1, std::min(n, left));
    start = next_;
    stop = next_ + n;
    next_ = stop;
    return true;
}

bool set_parent_death_signal(int sig) {
#ifdef __linux__
    return ::prctl(PR_SET_PDEATHSIG, sig) == 0;
#else
    (void)sig;
    return false;
#endif
}

}  // namespace gilfree
