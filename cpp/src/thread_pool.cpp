// See cpp/include/gilfree/thread_pool.hpp for the diagram of who talks to whom.
#include "gilfree/thread_pool.hpp"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cxxabi.h>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace gilfree {
namespace detail {

struct PoolState {
    PoolState(std::size_t cap, std::chrono::nanoseconds idle, ThreadPool::WorkerExitHook hook)
        : max_workers(cap), idle_timeout(idle), on_worker_exit(std::move(hook)) {}

    const std::size_t max_workers;
    const std::chrono::nanoseconds idle_timeout;
    const ThreadPool::WorkerExitHook on_worker_exit;

    mutable std::mutex mu;
    std::condition_variable work_cv;  // tickets arrived or stopping
    std::condition_variable exit_cv;  // a worker thread finished
    std::deque<std::shared_ptr<Job>> tickets;
    bool stopping = false;
    // `alive` counts workers that may still take tickets (drives spawning); `threads`
    // counts OS threads not yet finished (drives shutdown's wait). They differ while a
    // retiring worker runs its exit hook, which may block on the GIL.
    std::size_t alive = 0;
    std::size_t threads = 0;
    std::size_t idle = 0;
    std::size_t busy = 0;
    // Lock-free view for the spinning worker (see spin_while_burst).
    std::atomic<std::size_t> queued{0};     // == tickets.size()
    std::atomic<std::size_t> runs_done{0};  // tickets finished, ever
    std::atomic<bool> spinning{false};      // one worker spins at a time
};

namespace {

thread_local const PoolState* tls_pool = nullptr;

constexpr std::chrono::microseconds kSpinWindow{100};

// A worker that just finished a ticket while other workers are finishing theirs (a burst
// of blocking calls returning together) stays on its CPU, yielding, instead of parking:
// while a burst lasts each finishing worker must take the GIL in turn, and every hand-over
// to a thread on an idle (halted) CPU costs tens of microseconds on a VM. One spinner
// is enough to keep a CPU awake; it stops once no ticket has finished for kSpinWindow.
void spin_while_burst(PoolState& s) {
    bool expected = false;
    if (!s.spinning.compare_exchange_strong(expected, true)) return;
    using Clock = std::chrono::steady_clock;
    std::size_t seen = s.runs_done.load(std::memory_order_relaxed);
    auto progress_at = Clock::now();
    while (s.queued.load(std::memory_order_relaxed) == 0) {
        const auto now = Clock::now();
        const std::size_t c = s.runs_done.load(std::memory_order_relaxed);
        if (c != seen) {
            seen = c;
            progress_at = now;
        } else if (now - progress_at > kSpinWindow) {
            break;
        }
        std::this_thread::yield();
    }
    s.spinning.store(false, std::memory_order_relaxed);
}

void run_one(Job& job) {
    try {
        job.run_ticket();
    } catch (abi::__forced_unwind&) {
        throw;  // pthread_exit/cancel unwinding through us: must not be swallowed
    } catch (...) {
        // A Job contract violation; the job's own state tells its driver what happened.
    }
}

void worker_main(std::shared_ptr<PoolState> s) {
    tls_pool = s.get();
    std::unique_lock<std::mutex> lk(s->mu);
    for (;;) {
        if (s->tickets.empty()) {
            if (s->stopping) break;
            ++s->idle;
            const bool woke = s->work_cv.wait_for(
                lk, s->idle_timeout, [&] { return s->stopping || !s->tickets.empty(); });
            --s->idle;
            if (!woke) break;  // idle timeout: retire
            continue;
        }
        std::shared_ptr<Job> job = std::move(s->tickets.front());
        s->tickets.pop_front();
        s->queued.store(s->tickets.size(), std::memory_order_relaxed);
        ++s->busy;
        lk.unlock();
        run_one(*job);
        job.reset();  // Job destructors are plain C++ (no interpreter needed)
        s->runs_done.fetch_add(1, std::memory_order_relaxed);
        spin_while_burst(*s);
        lk.lock();
        --s->busy;
    }
    --s->alive;
    lk.unlock();
    if (s->on_worker_exit) s->on_worker_exit();
    lk.lock();
    --s->threads;
    s->exit_cv.notify_all();
}

// Every live ThreadPool, for shutdown_all() and for fork handling.
std::mutex registry_mu;
std::vector<ThreadPool*>& registry() {
    static auto* pools = new std::vector<ThreadPool*>();  // leaked: used during exit
    return *pools;
}

}  // namespace

// After fork() only the forking thread exists in the child: the pools' worker counts are
// lies and their mutexes may be held by threads that are gone. Give every pool a fresh
// state in the child and leak the old one (destroying a possibly-locked mutex is UB).
struct ForkHandler {
    static void prepare() { registry_mu.lock(); }
    static void parent() { registry_mu.unlock(); }
    static void child() {
        for (ThreadPool* pool : registry()) {
            auto& old = pool->state_;
            new std::shared_ptr<PoolState>(old);  // deliberate leak, see above
            pool->state_ = std::make_shared<PoolState>(old->max_workers, old->idle_timeout,
                                                       old->on_worker_exit);
        }
        registry_mu.unlock();
    }
    ForkHandler() { pthread_atfork(&prepare, &parent, &child); }
};

}  // namespace detail

using detail::PoolState;

ThreadPool::ThreadPool(std::size_t max_workers, std::chrono::nanoseconds idle_timeout,
                       WorkerExitHook on_worker_exit) {
    if (max_workers == 0) throw std::invalid_argument("max_workers must be at least 1");
    if (idle_timeout.count() <= 0) throw std::invalid_argument("idle_timeout must be > 0");
    static detail::ForkHandler fork_handler;
    state_ = std::make_shared<PoolState>(max_workers, idle_timeout, std::move(on_worker_exit));
    std::lock_guard<std::mutex> lk(detail::registry_mu);
    detail::registry().push_back(this);
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lk(detail::registry_mu);
        auto& pools = detail::registry();
        pools.erase(std::remove(pools.begin(), pools.end(), this), pools.end());
    }
    shutdown(false);
}

void ThreadPool::submit(std::shared_ptr<Job> job, std::size_t parallelism) {
    const std::shared_ptr<PoolState> s = state_;
    std::size_t spawn = 0;
    std::size_t wake = 0;
    {
        std::lock_guard<std::mutex> lk(s->mu);
        if (s->stopping) throw std::runtime_error("ThreadPool is shut down");
        const std::size_t tickets = std::max<std::size_t>(1, std::min(parallelism, s->max_workers));
        for (std::size_t i = 0; i < tickets; ++i) s->tickets.push_back(job);
        s->queued.store(s->tickets.size(), std::memory_order_relaxed);
        // Every item may block (I/O), so each queued ticket deserves its own thread.
        const std::size_t queued = s->tickets.size();
        if (queued > s->idle) spawn = std::min(queued - s->idle, s->max_workers - s->alive);
        wake = std::min(tickets, s->idle);
        s->alive += spawn;  // reserved before the threads exist, so racing submits agree
        s->threads += spawn;
    }
    for (std::size_t i = 0; i < wake; ++i) s->work_cv.notify_one();
    std::size_t started = 0;
    std::string failure;
    for (; started < spawn; ++started) {
        try {
            std::thread(detail::worker_main, s).detach();
        } catch (const std::system_error& e) {
            failure = e.what();
            break;
        }
    }
    if (started == spawn) return;
    std::deque<std::shared_ptr<Job>> orphaned;
    {
        std::lock_guard<std::mutex> lk(s->mu);
        s->alive -= spawn - started;
        s->threads -= spawn - started;
        if (s->alive == 0) {
            orphaned.swap(s->tickets);
            s->queued.store(0, std::memory_order_relaxed);
        }
    }
    if (orphaned.empty()) return;  // the threads we have will work through the tickets
    for (auto& j : orphaned) j->cancel();
    throw std::runtime_error("ThreadPool could not start a worker thread: " + failure);
}

bool ThreadPool::shutdown(bool wait, std::optional<std::chrono::nanoseconds> timeout) {
    const std::shared_ptr<PoolState> s = state_;
    std::deque<std::shared_ptr<Job>> dropped;
    {
        std::lock_guard<std::mutex> lk(s->mu);
        if (!s->stopping) {
            s->stopping = true;
            dropped.swap(s->tickets);
            s->queued.store(0, std::memory_order_relaxed);
        }
    }
    s->work_cv.notify_all();
    for (auto& j : dropped) j->cancel();
    dropped.clear();
    if (!wait) return true;
    const std::size_t self = detail::tls_pool == s.get() ? 1 : 0;
    std::unique_lock<std::mutex> lk(s->mu);
    auto done = [&] { return s->threads <= self; };
    if (!timeout) {
        s->exit_cv.wait(lk, done);
        return true;
    }
    return s->exit_cv.wait_for(lk, *timeout, done);
}

void ThreadPool::shutdown_all(std::chrono::nanoseconds timeout) {
    std::vector<std::shared_ptr<PoolState>> states;
    {
        std::lock_guard<std::mutex> lk(detail::registry_mu);
        for (ThreadPool* p : detail::registry()) states.push_back(p->state_);
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (auto& s : states) {
        std::deque<std::shared_ptr<Job>> dropped;
        {
            std::lock_guard<std::mutex> lk(s->mu);
            s->stopping = true;
            dropped.swap(s->tickets);
            s->queued.store(0, std::memory_order_relaxed);
        }
        s->work_cv.notify_all();
        for (auto& j : dropped) j->cancel();
    }
    for (auto& s : states) {
        std::unique_lock<std::mutex> lk(s->mu);
        s->exit_cv.wait_until(lk, deadline, [&] { return s->threads <= s->busy; });
    }
}

bool ThreadPool::is_shut_down() const {
    std::lock_guard<std::mutex> lk(state_->mu);
    return state_->stopping;
}

std::size_t ThreadPool::max_workers() const noexcept { return state_->max_workers; }

std::chrono::nanoseconds ThreadPool::idle_timeout() const noexcept { return state_->idle_timeout; }

std::size_t ThreadPool::num_threads() const {
    std::lock_guard<std::mutex> lk(state_->mu);
    return state_->threads;
}

bool ThreadPool::is_current_thread_worker() const noexcept {
    return detail::tls_pool == state_.get();
}

}  // namespace gilfree
