// See cpp/include/gilfree/index_batch.hpp for the diagram and the ownership rules.
#include "gilfree/index_batch.hpp"

#include <thread>

namespace gilfree {

namespace {
// Longest gap between two completions that keeps the driver spinning. Item hand-overs
// in a burst come every 5-20 us; anything slower than this is not a burst.
constexpr std::chrono::microseconds kSpinWindow{100};
}  // namespace

IndexBatch::IndexBatch(std::size_t size, bool stop_on_error, bool track_completions)
    : size_(size), stop_on_error_(stop_on_error), track_(track_completions) {}

void IndexBatch::run_ticket() {
    // Cheap early-out for surplus tickets: most tickets of a short batch arrive after
    // the first worker has claimed everything, and must not take the GIL for nothing.
    if (cancelled_.load(std::memory_order_relaxed) ||
        next_.load(std::memory_order_relaxed) >= size_)
        return;
    {
        // Entry and exit are under mu_ so that "active_ == 0 and nothing claimable" is a
        // stable fact for abandon()/cancel(): no worker can slip in after it was observed.
        std::lock_guard<std::mutex> lk(mu_);
        if (finished_.load(std::memory_order_relaxed) ||
            cancelled_.load(std::memory_order_relaxed) ||
            next_.load(std::memory_order_relaxed) >= size_)
            return;
        ++active_;
    }
    bool entered = enter();
    if (!entered) {
        cancelled_.store(true, std::memory_order_relaxed);
    } else {
        std::size_t in_run = 0;
        while (!cancelled_.load(std::memory_order_relaxed)) {
            const std::size_t i = next_.fetch_add(1, std::memory_order_relaxed);
            if (i >= size_) break;
            const bool ok = run_item(i);
            if (track_) completions_.push(i);
            note_completion();
            if (!ok && stop_on_error_) cancelled_.store(true, std::memory_order_relaxed);
            if (!after_item(++in_run)) cancelled_.store(true, std::memory_order_relaxed);
        }
    }
    bool release = false;
    bool last = false;
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (--active_ == 0) {
            finished_.store(true, std::memory_order_release);
            last = true;
            release = abandoned_;
        }
    }
    // Still inside the enter()/leave() bracket: the GIL is held for the release.
    if (release && entered) release_abandoned();
    if (entered) leave();
    // Notify after leave(): the driver's next step is to take the GIL we just dropped.
    if (last) done_cv_.notify_all();
}

void IndexBatch::cancel() noexcept {
    cancelled_.store(true, std::memory_order_relaxed);
    bool now_done = false;
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (active_ == 0 && !finished_.load(std::memory_order_relaxed)) {
            finished_.store(true, std::memory_order_release);
            now_done = true;
        }
    }
    if (now_done) done_cv_.notify_all();
}

void IndexBatch::note_completion() {
    // seq_cst pairs with the driver's store to parked_ then load of completed_: one of the
    // two sides sees the other, so a parked driver is never left sleeping on a completion.
    completed_.fetch_add(1);
    if (parked_.load()) {
        // Taking mu_ orders us after the driver's wait has begun (it parks under mu_).
        { std::lock_guard<std::mutex> lk(mu_); }
        done_cv_.notify_all();
    }
}

bool IndexBatch::wait_for(std::chrono::nanoseconds timeout) {
    using Clock = std::chrono::steady_clock;
    const auto deadline = Clock::now() + timeout;
    std::size_t seen = completed_.load();
    for (;;) {
        {
            std::unique_lock<std::mutex> lk(mu_);
            parked_.store(true);
            const bool woke = done_cv_.wait_until(lk, deadline, [&] {
                return finished_.load(std::memory_order_relaxed) || completed_.load() != seen;
            });
            parked_.store(false);
            if (finished_.load(std::memory_order_relaxed)) return true;
            if (!woke) return false;
        }
        // Items are completing: spin while they keep coming (see the header).
        seen = completed_.load();
        auto progress_at = Clock::now();
        for (;;) {
            if (finished_.load(std::memory_order_acquire)) return true;
            const auto now = Clock::now();
            if (now >= deadline) return false;
            const std::size_t c = completed_.load(std::memory_order_relaxed);
            if (c != seen) {
                seen = c;
                progress_at = now;
            } else if (now - progress_at > kSpinWindow) {
                break;  // no burst any more: park again
            }
            std::this_thread::yield();
        }
    }
}

void IndexBatch::wait_finished() {
    // finished_ is set under mu_ (run_ticket, cancel, abandon) and done_cv_ notified
    // after: waiting on it under mu_ cannot miss the last worker.
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [&] { return finished_.load(std::memory_order_relaxed); });
}

bool IndexBatch::finished() const { return finished_.load(std::memory_order_acquire); }

bool IndexBatch::abandon() noexcept {
    cancelled_.store(true, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lk(mu_);
    if (active_ == 0) {
        finished_.store(true, std::memory_order_release);
        return true;
    }
    abandoned_ = true;
    return false;
}

}  // namespace gilfree
