// See cpp/include/gilfree/index_batch.hpp for the diagram and the ownership rules.
#include "gilfree/index_batch.hpp"

namespace gilfree {

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
        if (finished_ || cancelled_.load(std::memory_order_relaxed) ||
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
            if (!ok && stop_on_error_) cancelled_.store(true, std::memory_order_relaxed);
            if (!after_item(++in_run)) cancelled_.store(true, std::memory_order_relaxed);
        }
    }
    bool release = false;
    bool last = false;
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (--active_ == 0) {
            finished_ = true;
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
        if (active_ == 0 && !finished_) finished_ = now_done = true;
    }
    if (now_done) done_cv_.notify_all();
}

bool IndexBatch::wait_for(std::chrono::nanoseconds timeout) {
    std::unique_lock<std::mutex> lk(mu_);
    return done_cv_.wait_for(lk, timeout, [&] { return finished_; });
}

bool IndexBatch::finished() const {
    std::lock_guard<std::mutex> lk(mu_);
    return finished_;
}

bool IndexBatch::abandon() noexcept {
    cancelled_.store(true, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lk(mu_);
    if (active_ == 0) {
        finished_ = true;
        return true;
    }
    abandoned_ = true;
    return false;
}

}  // namespace gilfree
