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

// What a worker thread is doing, for abandon() and begin_wait(). Guarded by PoolState::mu.
struct WorkerSlot {
    std::shared_ptr<Job> job;   // the job whose ticket it runs, or null
    bool abandoned = false;     // the job's caller gave up on it (ThreadPool::abandon)
    std::size_t waiting = 0;    // open begin_wait() scopes
};

struct PoolState {
    PoolState(std::size_t cap, std::chrono::nanoseconds idle, ThreadPool::WorkerExitHook hook,
              std::size_t abandon_cap)
        : max_workers(cap), idle_timeout(idle), on_worker_exit(std::move(hook)),
          max_abandoned(abandon_cap) {}

    const std::size_t max_workers;
    const std::chrono::nanoseconds idle_timeout;
    const ThreadPool::WorkerExitHook on_worker_exit;
    const std::size_t max_abandoned;

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
    // Workers excused from max_workers: a slot counts as waiting if it has an open
    // begin_wait scope, else as abandoned if its job was abandoned (see count()).
    std::vector<WorkerSlot*> slots;
    std::size_t waiting = 0;
    std::size_t abandoned = 0;
    std::string spawn_error;  // why the last thread start failed
    // Lock-free view for the spinning worker (see spin_while_burst).
    std::atomic<std::size_t> queued{0};     // == tickets.size()
    std::atomic<std::size_t> runs_done{0};  // tickets finished, ever
    std::atomic<bool> spinning{false};      // one worker spins at a time
};

namespace {

thread_local const PoolState* tls_pool = nullptr;
thread_local WorkerSlot* tls_slot = nullptr;
thread_local const std::shared_ptr<PoolState>* tls_state = nullptr;  // worker_main's own

// Under mu: a slot's share of the excused counters. Change a slot between uncount and count.
void uncount(PoolState& s, const WorkerSlot& w) {
    if (w.waiting) --s.waiting;
    else if (w.abandoned) --s.abandoned;
}
void count(PoolState& s, const WorkerSlot& w) {
    if (w.waiting) ++s.waiting;
    else if (w.abandoned) ++s.abandoned;
}

// Under mu: how many threads to start for the queued tickets; reserves them in alive and
// threads (so racing callers agree). Every queued ticket may block (I/O), so each
// deserves its own thread, up to the cap less the excused workers.
std::size_t reserve_spawn(PoolState& s) {
    const std::size_t queued = s.tickets.size();
    if (queued <= s.idle) return 0;
    const std::size_t cap =
        s.max_workers + s.waiting + std::min(s.abandoned, s.max_abandoned);
    if (cap <= s.alive) return 0;
    const std::size_t spawn = std::min(queued - s.idle, cap - s.alive);
    s.alive += spawn;
    s.threads += spawn;
    return spawn;
}

void worker_main(std::shared_ptr<PoolState> s);

// Starts `spawn` reserved threads; returns how many started. The rest are unreserved,
// and why they failed is kept in spawn_error. Never throws.
std::size_t start_threads(const std::shared_ptr<PoolState>& s, std::size_t spawn) {
    std::size_t started = 0;
    std::string failure;
    for (; started < spawn; ++started) {
        try {
            std::thread(worker_main, s).detach();
        } catch (const std::system_error& e) {
            failure = e.what();
            break;
        }
    }
    if (started < spawn) {
        std::lock_guard<std::mutex> lk(s->mu);
        s->alive -= spawn - started;
        s->threads -= spawn - started;
        s->spawn_error = failure.empty() ? "unknown error" : failure;
    }
    return started;
}

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
    WorkerSlot slot;
    tls_slot = &slot;
    tls_state = &s;
    std::unique_lock<std::mutex> lk(s->mu);
    s->slots.push_back(&slot);
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
        slot.job = std::move(s->tickets.front());
        s->tickets.pop_front();
        s->queued.store(s->tickets.size(), std::memory_order_relaxed);
        ++s->busy;
        lk.unlock();
        // slot.job is only written by this thread, under mu: reading it here is safe.
        run_one(*slot.job);
        s->runs_done.fetch_add(1, std::memory_order_relaxed);
        lk.lock();
        --s->busy;
        uncount(*s, slot);
        std::shared_ptr<Job> finished = std::move(slot.job);
        slot = WorkerSlot{};
        lk.unlock();
        finished.reset();  // Job destructors are plain C++ (no interpreter needed)
        spin_while_burst(*s);
        lk.lock();
    }
    --s->alive;
    s->slots.erase(std::find(s->slots.begin(), s->slots.end(), &slot));
    tls_slot = nullptr;
    tls_state = nullptr;
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
                                                       old->on_worker_exit, old->max_abandoned);
        }
        registry_mu.unlock();
    }
    ForkHandler() { pthread_atfork(&prepare, &parent, &child); }
};

}  // namespace detail

using detail::PoolState;

ThreadPool::ThreadPool(std::size_t max_workers, std::chrono::nanoseconds idle_timeout,
                       WorkerExitHook on_worker_exit, std::size_t max_abandoned) {
    if (max_workers == 0) throw std::invalid_argument("max_workers must be at least 1");
    if (idle_timeout.count() <= 0) throw std::invalid_argument("idle_timeout must be > 0");
    static detail::ForkHandler fork_handler;
    state_ = std::make_shared<PoolState>(max_workers, idle_timeout, std::move(on_worker_exit),
                                         max_abandoned);
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
        spawn = detail::reserve_spawn(*s);
        wake = std::min(tickets, s->idle);
    }
    for (std::size_t i = 0; i < wake; ++i) s->work_cv.notify_one();
    if (detail::start_threads(s, spawn) == spawn) return;
    std::deque<std::shared_ptr<Job>> orphaned;
    std::string failure;
    {
        std::lock_guard<std::mutex> lk(s->mu);
        if (s->alive == 0) {
            orphaned.swap(s->tickets);
            s->queued.store(0, std::memory_order_relaxed);
        }
        failure = s->spawn_error;
    }
    if (orphaned.empty()) return;  // the threads we have will work through the tickets
    for (auto& j : orphaned) j->cancel();
    throw std::runtime_error("ThreadPool could not start a worker thread: " + failure);
}

void ThreadPool::abandon(const Job& job) {
    const std::shared_ptr<PoolState> s = state_;
    std::deque<std::shared_ptr<Job>> dropped;  // destroyed outside the lock
    std::size_t spawn = 0;
    {
        std::lock_guard<std::mutex> lk(s->mu);
        auto& t = s->tickets;
        for (auto it = t.begin(); it != t.end();) {
            if (it->get() == &job) {
                dropped.push_back(std::move(*it));
                it = t.erase(it);
            } else {
                ++it;
            }
        }
        s->queued.store(t.size(), std::memory_order_relaxed);
        for (detail::WorkerSlot* w : s->slots) {
            if (w->job.get() != &job || w->abandoned) continue;
            detail::uncount(*s, *w);
            w->abandoned = true;
            detail::count(*s, *w);
        }
        if (!s->stopping) spawn = detail::reserve_spawn(*s);
    }
    detail::start_threads(s, spawn);
}

bool ThreadPool::begin_wait() {
    return detail::tls_pool == state_.get() && begin_wait_current();
}

void ThreadPool::end_wait() {
    if (detail::tls_pool == state_.get()) end_wait_current();
}

bool ThreadPool::begin_wait_current() {
    if (detail::tls_state == nullptr || detail::tls_slot == nullptr) return false;
    const std::shared_ptr<PoolState> s = *detail::tls_state;
    std::size_t spawn = 0;
    {
        std::lock_guard<std::mutex> lk(s->mu);
        detail::WorkerSlot& w = *detail::tls_slot;
        detail::uncount(*s, w);
        ++w.waiting;
        detail::count(*s, w);
        if (!s->stopping) spawn = detail::reserve_spawn(*s);
    }
    detail::start_threads(s, spawn);
    return true;
}

void ThreadPool::end_wait_current() {
    if (detail::tls_state == nullptr || detail::tls_slot == nullptr) return;
    PoolState& s = **detail::tls_state;
    std::lock_guard<std::mutex> lk(s.mu);
    detail::WorkerSlot& w = *detail::tls_slot;
    if (w.waiting == 0) return;
    detail::uncount(s, w);
    --w.waiting;
    detail::count(s, w);
}

ThreadPool::Stats ThreadPool::stats() const {
    std::lock_guard<std::mutex> lk(state_->mu);
    return Stats{state_->threads, state_->busy, state_->abandoned, state_->waiting};
}

std::size_t ThreadPool::max_abandoned() const noexcept { return state_->max_abandoned; }

std::string ThreadPool::spawn_error() const {
    std::lock_guard<std::mutex> lk(state_->mu);
    return state_->spawn_error;
}

namespace detail {
namespace {
// Stops a pool (idempotent): queued tickets are dropped and their jobs cancelled, and the
// jobs workers are running are cancelled too, so that a batch claims no new item; the
// items already running finish.
void stop(PoolState& s) {
    std::deque<std::shared_ptr<Job>> cancel;
    {
        std::lock_guard<std::mutex> lk(s.mu);
        if (s.stopping) return;
        s.stopping = true;
        cancel.swap(s.tickets);
        s.queued.store(0, std::memory_order_relaxed);
        for (WorkerSlot* w : s.slots)
            if (w->job) cancel.push_back(w->job);
    }
    s.work_cv.notify_all();
    for (auto& j : cancel) j->cancel();  // idempotent, so a job met twice is fine
}
}  // namespace
}  // namespace detail

bool ThreadPool::shutdown(bool wait, std::optional<std::chrono::nanoseconds> timeout) {
    const std::shared_ptr<PoolState> s = state_;
    detail::stop(*s);
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
    for (auto& s : states) detail::stop(*s);
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
