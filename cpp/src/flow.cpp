// FlowScheduler: see flow.hpp for who calls what and why it is a hand-written state machine.
//
// Where an item is, from pull to exit (all under mu_):
//
//   pull ──▶ queue[0] ──dispatch──▶ in flight[0] ──done──▶ queue[1] ... ──done──▶ exit
//                                                 └─ no room in queue[1]: parked[0]
//                                                    (holds stage 0's capacity until
//                                                    next() moves it on)
//            done(failed) at any stage, or done at the last stage ──────────────▶ exit
//
// Only next() (the driver) dispatches, pulls and moves parked items; done() (any thread)
// only moves a finished item one step: into the next queue, parked, or to the exit. So
// between two next() rounds "stage k has parked items" implies "queue k+1 is full": the
// round that made room in queue k+1 also moved parked items in, lowest id first.
#include "gilfree/flow.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <unordered_set>

namespace gilfree {

namespace {

std::string stage_name(std::size_t k) { return "stage " + std::to_string(k); }

// A non-urgent event (an item done, with others still running) reaches the driver this
// long after it happened at the latest: the driver then moves every item that finished
// meanwhile in one round, with one GIL acquisition, instead of one round per item.
constexpr std::chrono::milliseconds kCoalesce{1};

}  // namespace

FlowScheduler::FlowScheduler(std::vector<FlowStage> stages, std::size_t read_ahead,
                             bool ordered, std::chrono::nanoseconds tick)
    : read_ahead_(read_ahead), ordered_(ordered), tick_(tick) {
    if (read_ahead == 0) throw std::invalid_argument("Flow: read_ahead must be >= 1");
    for (std::size_t k = 0; k < stages.size(); ++k) {
        const FlowStage& c = stages[k];
        if (c.capacity == 0)
            throw std::invalid_argument("Flow: " + stage_name(k) + ": capacity must be >= 1");
        if (c.queue_bound == 0)
            throw std::invalid_argument("Flow: " + stage_name(k) +
                                        ": queue_bound must be >= 1");
        if (!(c.linger_s >= 0) || !std::isfinite(c.linger_s))
            throw std::invalid_argument("Flow: " + stage_name(k) +
                                        ": linger_s must be a finite number >= 0");
        if (c.claimed && c.batch_size > 1)
            throw std::invalid_argument("Flow: " + stage_name(k) +
                                        ": a claimed stage cannot be a batch stage");
        Stage s;
        s.cfg = c;
        if (c.claimed) s.claim_cv = std::make_unique<std::condition_variable>();
        // A linger of years means "never": cap it so the deadline arithmetic cannot overflow.
        s.linger = std::chrono::duration_cast<Clock::duration>(
            std::chrono::duration<double>(std::min(c.linger_s, 1e7)));
        stages_.push_back(std::move(s));
    }
}

// ---- transitions (mu_ held) --------------------------------------------------------

void FlowScheduler::enter(std::uint64_t id, Item& item, std::size_t stage,
                          Clock::time_point now) {
    if (stage == stages_.size()) {  // no stages at all
        finish(id, false);
        return;
    }
    item.stage = stage;
    item.where = Where::queued;
    Stage& s = stages_[stage];
    s.queue.push_back({id, now});
    if (s.claim_cv) s.claim_cv->notify_one();
}

// The item stops holding its stage's capacity (it was in flight or parked, and is done).
void FlowScheduler::leave_stage(Item& item) {
    Stage& s = stages_[item.stage];
    if (!s.batched()) {
        --s.busy;
        // A parked item made room: a worker waiting for capacity may claim now.
        if (s.claim_cv && !s.queue.empty()) s.claim_cv->notify_one();
        return;
    }
    auto it = s.unit_left.find(item.unit);
    if (--it->second == 0) {  // the whole batch has moved on: its slot is free
        s.unit_left.erase(it);
        --s.busy;
    }
}

void FlowScheduler::finish(std::uint64_t id, bool failed) {
    items_.erase(id);
    if (ordered_)
        finished_sorted_.emplace(id, failed);
    else
        finished_fifo_.emplace_back(id, failed);
}

// Parked items of stage k-1 into queue k while it has room.
void FlowScheduler::move_parked(std::size_t k, Clock::time_point now) {
    Stage& from = stages_[k - 1];
    Stage& to = stages_[k];
    while (!from.parked.empty() && to.queue.size() < to.cfg.queue_bound) {
        const std::uint64_t id = *from.parked.begin();
        from.parked.erase(from.parked.begin());
        Item& item = items_.at(id);
        leave_stage(item);
        enter(id, item, k, now);
    }
}

// No more items can reach stage k: the input is exhausted and every earlier stage (queue,
// in flight, parked) is empty.
bool FlowScheduler::upstream_empty(std::size_t k) const {
    if (!exhausted_) return false;
    for (std::size_t j = 0; j < k; ++j)
        if (!stages_[j].queue.empty() || stages_[j].busy != 0) return false;
    return true;
}

void FlowScheduler::dispatch_ready(std::size_t k, Clock::time_point now,
                                   std::vector<Dispatch>& out) {
    Stage& s = stages_[k];
    if (s.cfg.claimed) {
        // As many workers as items to run (queued or running), within the capacity that
        // parked items do not hold; they claim the items themselves.
        const std::size_t parked = s.busy - s.in_flight;
        const std::size_t want =
            std::min(s.cfg.capacity - std::min(s.cfg.capacity, parked),
                     s.queue.size() + s.in_flight);
        if (s.workers < want) {
            out.push_back({k, {}, want - s.workers});
            s.workers = want;
        }
        return;
    }
    if (!s.batched()) {
        std::vector<std::uint64_t> ids;
        while (s.busy < s.cfg.capacity && !s.queue.empty()) {
            const std::uint64_t id = s.queue.front().id;
            s.queue.pop_front();
            items_.at(id).where = Where::in_flight;
            ++s.busy;
            add_in_flight(s, 1, now);
            ids.push_back(id);
        }
        if (!ids.empty()) out.push_back({k, std::move(ids)});
        return;
    }
    while (s.busy < s.cfg.capacity && !s.queue.empty()) {
        const bool full = s.queue.size() >= s.cfg.batch_size;
        const bool lingered = now - s.queue.front().since >= s.linger;
        if (!full && !lingered && !upstream_empty(k)) break;
        const std::size_t n = std::min(s.cfg.batch_size, s.queue.size());
        const std::uint64_t unit = next_unit_++;
        std::vector<std::uint64_t> ids;
        ids.reserve(n);
        for (std::size_t i = 0; i < n; ++i) {
            const std::uint64_t id = s.queue.front().id;
            s.queue.pop_front();
            Item& item = items_.at(id);
            item.where = Where::in_flight;
            item.unit = unit;
            ids.push_back(id);
        }
        s.unit_left.emplace(unit, n);
        ++s.busy;
        add_in_flight(s, static_cast<std::ptrdiff_t>(n), now);
        out.push_back({k, std::move(ids)});
    }
}

std::size_t FlowScheduler::pull_room() const {
    const std::uint64_t in_flow = pulled_ - left_;
    std::size_t room = in_flow >= read_ahead_ ? 0 : read_ahead_ - static_cast<std::size_t>(in_flow);
    if (!stages_.empty()) {
        const Stage& s = stages_.front();
        room = std::min(room, s.cfg.queue_bound - std::min(s.cfg.queue_bound, s.queue.size()));
    }
    return room;
}

std::vector<FlowScheduler::Exit> FlowScheduler::take_exits() {
    std::vector<Exit> out;
    if (ordered_) {
        auto it = finished_sorted_.begin();
        while (it != finished_sorted_.end() && it->first == next_exit_) {
            out.emplace_back(it->first, it->second);
            it = finished_sorted_.erase(it);
            ++next_exit_;
        }
    } else {
        out.assign(finished_fifo_.begin(), finished_fifo_.end());
        finished_fifo_.clear();
    }
    left_ += out.size();
    return out;
}

// One tick from now, or sooner where a batch stage with room has a linger deadline.
FlowScheduler::Clock::time_point FlowScheduler::wake_at(Clock::time_point now) const {
    Clock::time_point t = now + std::chrono::duration_cast<Clock::duration>(tick_);
    for (const Stage& s : stages_)
        if (s.batched() && !s.queue.empty() && s.busy < s.cfg.capacity)
            t = std::min(t, s.queue.front().since + s.linger);
    return t;
}

// ---- the driver ---------------------------------------------------------------------

std::vector<FlowScheduler::Exit> FlowScheduler::next(FlowHost& host) {
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (driving_)
            throw std::logic_error(
                "Flow.next: already running (from another thread, or from inside pull/dispatch)");
        driving_ = true;
    }
    struct Release {
        FlowScheduler& f;
        ~Release() {
            std::lock_guard<std::mutex> lk(f.mu_);
            f.driving_ = false;
        }
    } release{*this};
    try {
        bool may_pull = true;  // false after pull() read nothing: wait for an event first
        // The last pull() read fewer items than it was asked for, and the input goes on:
        // the source is slower than the flow (a generator over a queue, a socket). What
        // has finished goes to the consumer before the next pull, which may block.
        bool source_lags = false;
        for (;;) {
            std::vector<Dispatch> plan;
            std::size_t room = 0;
            Clock::time_point wake;
            {
                std::lock_guard<std::mutex> lk(mu_);
                if (closed_) return {};
                urgent_ = pending_ = false;  // this round sees every event so far
                const Clock::time_point now = Clock::now();
                // Back to front: room made in queue k lets stage k-1's parked items in,
                // which frees stage k-1's capacity for its own queue, and so on.
                for (std::size_t k = stages_.size(); k-- > 0;) {
                    dispatch_ready(k, now, plan);
                    if (k > 0) {
                        move_parked(k, now);
                        dispatch_ready(k, now, plan);
                    }
                }
                if (plan.empty()) {
                    // Feed the stages before returning results: returning first would
                    // let the flow run dry while items keep finishing (the consumer's
                    // next call would find results again, and again skip the input).
                    room = (exhausted_ || !may_pull) ? 0 : pull_room();
                    if (room > 0 && source_lags) {
                        std::vector<Exit> exits = take_exits();
                        if (!exits.empty()) return exits;
                    }
                    if (room == 0) {
                        std::vector<Exit> exits = take_exits();
                        if (!exits.empty()) return exits;
                        if (exhausted_ && left_ == pulled_) return {};
                        wake = wake_at(now);
                    }
                }
            }
            if (!plan.empty()) {
                for (const Dispatch& d : plan) {
                    if (is_closed()) return {};
                    if (d.start > 0)
                        start_workers(host, d.stage, d.start);
                    else
                        host.dispatch(d.stage, d.ids);
                }
                continue;
            }
            if (room > 0) {
                if (is_closed()) return {};
                const auto [n, exhausted] = host.pull(room);
                if (n > room)
                    throw std::invalid_argument("Flow: pull(" + std::to_string(room) +
                                                ") returned " + std::to_string(n) + " items");
                std::lock_guard<std::mutex> lk(mu_);
                const Clock::time_point now = Clock::now();
                for (std::size_t i = 0; i < n; ++i) {
                    const std::uint64_t id = pulled_++;
                    enter(id, items_[id], 0, now);
                }
                exhausted_ = exhausted_ || exhausted;
                may_pull = n > 0 || exhausted_;
                source_lags = n < room && !exhausted_;
                if (exhausted_) release_idle_workers();
                continue;
            }
            host.unlocked([&] {
                std::unique_lock<std::mutex> lk(mu_);
                driver_waiting_ = true;
                for (;;) {
                    if (closed_ || urgent_) break;
                    Clock::time_point until = wake;
                    if (pending_) until = std::min(until, pending_since_ + kCoalesce);
                    if (Clock::now() >= until) break;
                    cv_.wait_until(lk, until);
                }
                driver_waiting_ = false;
            });
            may_pull = true;
            if (host.check_interrupt()) throw FlowInterrupted();
        }
    } catch (...) {
        close();
        throw;
    }
}

// host.start, and if it throws none of the n workers started: they are counted out.
void FlowScheduler::start_workers(FlowHost& host, std::size_t stage, std::size_t n) {
    try {
        host.start(stage, n);
    } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        Stage& s = stages_[stage];
        s.workers -= std::min(s.workers, n);
        throw;
    }
}

bool FlowScheduler::is_closed() const {
    std::lock_guard<std::mutex> lk(mu_);
    return closed_;
}

// ---- executor side --------------------------------------------------------------------

void FlowScheduler::done(std::size_t stage, const std::vector<std::uint64_t>& ids,
                         const std::vector<bool>& failed) {
    std::unique_lock<std::mutex> lk(mu_);
    if (closed_) return;
    if (!failed.empty() && failed.size() != ids.size())
        throw std::invalid_argument("Flow.done(" + stage_name(stage) + "): " +
                                    std::to_string(ids.size()) + " ids but " +
                                    std::to_string(failed.size()) + " failed flags");
    if (stage >= stages_.size())
        throw std::invalid_argument("Flow.done: no " + stage_name(stage) + " (the flow has " +
                                    std::to_string(stages_.size()) + ")");
    // Check everything first: a bad call changes nothing.
    std::unordered_set<std::uint64_t> seen_ids;
    for (std::uint64_t id : ids) {
        auto it = items_.find(id);
        if (it == items_.end() || it->second.stage != stage ||
            it->second.where != Where::in_flight || !seen_ids.insert(id).second)
            throw std::invalid_argument("Flow.done(" + stage_name(stage) + "): item " +
                                        std::to_string(id) + " is not in flight on " +
                                        stage_name(stage));
    }
    Stage& s = stages_[stage];
    const bool last = stage + 1 == stages_.size();
    const Clock::time_point now = Clock::now();
    for (std::size_t i = 0; i < ids.size(); ++i) {
        const std::uint64_t id = ids[i];
        const bool bad = !failed.empty() && failed[i];
        Item& item = items_.at(id);
        add_in_flight(s, -1, now);
        ++s.done_total;
        if (bad || last) {
            leave_stage(item);
            finish(id, bad);
        } else if (stages_[stage + 1].queue.size() < stages_[stage + 1].cfg.queue_bound) {
            leave_stage(item);
            enter(id, item, stage + 1, now);
        } else {
            item.where = Where::parked;
            s.parked.insert(id);
        }
    }
    if (exhausted_) release_idle_workers();
    wake_driver(urgent());
}

// The input has ended: workers of a claimed stage that nothing more can reach end now
// rather than after their wait.
void FlowScheduler::release_idle_workers() {
    for (std::size_t k = 0; k < stages_.size(); ++k) {
        Stage& s = stages_[k];
        if (s.claim_cv && s.workers > 0 && s.queue.empty() && upstream_empty(k))
            s.claim_cv->notify_all();
    }
}

// ---- when the driver is woken (mu_ held) ----------------------------------------------

// Only the driver can make progress, or a stage waits for it: wake it now. Anything else
// (an item moved on, others still running) waits for the coalescing delay.
bool FlowScheduler::urgent() const {
    if (items_.empty()) return true;  // every pulled item finished: exits, or pull more
    if (!exhausted_ && pull_room() >= std::max<std::size_t>(1, read_ahead_ / 2)) return true;
    for (const Stage& s : stages_) {
        if (s.queue.empty()) continue;
        if (s.cfg.claimed ? s.workers == 0 : s.busy == 0) return true;  // an idle stage
    }
    return false;
}

void FlowScheduler::wake_driver(bool urgent) {
    if (urgent) {
        if (urgent_) return;
        urgent_ = true;
    } else {
        if (pending_ || urgent_) return;
        pending_ = true;
        pending_since_ = Clock::now();
    }
    if (driver_waiting_) cv_.notify_one();
}

// ---- claimed stages (their workers' side) ---------------------------------------------

FlowScheduler::Stage& FlowScheduler::claimed_stage(std::size_t stage, const char* what) {
    if (stage >= stages_.size() || !stages_[stage].cfg.claimed)
        throw std::invalid_argument(std::string("Flow.") + what + ": " + stage_name(stage) +
                                    " is not a claimed stage");
    return stages_[stage];
}

bool FlowScheduler::take_claim(Stage& s, std::uint64_t& id) {
    if (s.queue.empty() || s.busy >= s.cfg.capacity) return false;
    id = s.queue.front().id;
    s.queue.pop_front();
    items_.at(id).where = Where::in_flight;
    ++s.busy;
    add_in_flight(s, 1, Clock::now());
    wake_driver(urgent());  // room to pull into, maybe
    return true;
}

bool FlowScheduler::try_claim(std::size_t stage, std::uint64_t& id) {
    std::lock_guard<std::mutex> lk(mu_);
    Stage& s = claimed_stage(stage, "try_claim");
    return !closed_ && take_claim(s, id);
}

bool FlowScheduler::claim(std::size_t stage, std::chrono::nanoseconds wait, std::uint64_t& id,
                          const std::atomic<bool>* stop) {
    std::unique_lock<std::mutex> lk(mu_);
    Stage& s = claimed_stage(stage, "claim");
    const Clock::time_point until =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(wait);
    const auto stopped = [&] {
        return closed_ || (stop != nullptr && stop->load(std::memory_order_relaxed));
    };
    for (;;) {
        if (stopped()) break;
        if (take_claim(s, id)) return true;
        if (s.queue.empty() && upstream_empty(stage)) break;  // nothing more can come
        if (s.claim_cv->wait_until(lk, until) == std::cv_status::timeout) {
            if (!stopped() && take_claim(s, id)) return true;
            break;
        }
    }
    if (s.workers > 0) --s.workers;
    if (!closed_ && !s.queue.empty()) wake_driver(true);  // it may need workers again
    return false;
}

void FlowScheduler::worker_exit(std::size_t stage, std::size_t n) {
    std::lock_guard<std::mutex> lk(mu_);
    Stage& s = claimed_stage(stage, "worker_exit");
    s.workers -= std::min(s.workers, n);
    if (!closed_ && !s.queue.empty()) wake_driver(true);
}

void FlowScheduler::set_capacity(std::size_t stage, std::size_t capacity) {
    std::lock_guard<std::mutex> lk(mu_);
    Stage& s = claimed_stage(stage, "set_capacity");
    if (capacity == 0)
        throw std::invalid_argument("Flow.set_capacity: " + stage_name(stage) +
                                    ": capacity must be >= 1");
    const bool grew = capacity > s.cfg.capacity;
    s.cfg.capacity = capacity;
    if (grew && !closed_ && !s.queue.empty()) {
        s.claim_cv->notify_all();  // workers waiting for capacity
        wake_driver(true);         // and more of them, for the queued items
    }
}

void FlowScheduler::set_batch_size(std::size_t stage, std::size_t batch_size) {
    std::lock_guard<std::mutex> lk(mu_);
    if (stage >= stages_.size())
        throw std::invalid_argument("Flow.set_batch_size: no stage " + std::to_string(stage));
    Stage& s = stages_[stage];
    if (!s.batched() || batch_size < 2 || batch_size > s.cfg.queue_bound)
        throw std::invalid_argument("Flow.set_batch_size: " + stage_name(stage) +
                                    ": a batch stage's size is >= 2 and <= its queue bound");
    const bool smaller = batch_size < s.cfg.batch_size;
    s.cfg.batch_size = batch_size;
    if (smaller && !closed_ && !s.queue.empty()) wake_driver(true);  // a batch may be full now
}

void FlowScheduler::set_read_ahead(std::size_t read_ahead) {
    std::lock_guard<std::mutex> lk(mu_);
    if (read_ahead < read_ahead_)
        throw std::invalid_argument("Flow.set_read_ahead: the read-ahead only grows (" +
                                    std::to_string(read_ahead) + " < " +
                                    std::to_string(read_ahead_) + ")");
    for (Stage& s : stages_)
        if (s.cfg.queue_bound == read_ahead_) s.cfg.queue_bound = read_ahead;
    const bool grew = read_ahead > read_ahead_;
    read_ahead_ = read_ahead;
    if (grew && !closed_ && !exhausted_) wake_driver(true);  // room to read on
}

void FlowScheduler::notify_claimers(std::size_t stage) {
    std::lock_guard<std::mutex> lk(mu_);
    claimed_stage(stage, "notify_claimers").claim_cv->notify_all();
}

void FlowScheduler::close() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (closed_) return;
        closed_ = true;
        for (Stage& s : stages_)
            if (s.claim_cv) s.claim_cv->notify_all();
    }
    cv_.notify_all();
}

bool FlowScheduler::drained(std::size_t stage) const {
    std::lock_guard<std::mutex> lk(mu_);
    if (stage >= stages_.size())
        throw std::out_of_range("Flow.drained: no stage " + std::to_string(stage));
    return upstream_empty(stage);
}

// Items start or stop running on stage s (mu_ held): its active time is the union of the
// spells with some item in flight (explain()'s items/s per stage of a stream).
void FlowScheduler::add_in_flight(Stage& s, std::ptrdiff_t n, Clock::time_point now) {
    const bool was = s.in_flight > 0;
    s.in_flight = static_cast<std::size_t>(static_cast<std::ptrdiff_t>(s.in_flight) + n);
    if (!was && s.in_flight > 0)
        s.active_since = now;
    else if (was && s.in_flight == 0)
        s.active += now - s.active_since;
}

FlowStats FlowScheduler::stats() const {
    std::lock_guard<std::mutex> lk(mu_);
    const Clock::time_point now = Clock::now();
    FlowStats st;
    st.pulled = pulled_;
    st.left = left_;
    st.exhausted = exhausted_;
    st.closed = closed_;
    for (const Stage& s : stages_) {
        FlowStageStats x;
        x.queued = s.queue.size();
        x.in_flight = s.in_flight;
        x.parked = s.parked.size();
        x.busy = s.busy;
        x.done_total = s.done_total;
        x.workers = s.workers;
        x.capacity = s.cfg.capacity;
        x.active_s = std::chrono::duration<double>(
                         s.active + (s.in_flight > 0 ? now - s.active_since : Clock::duration{}))
                         .count();
        st.stages.push_back(x);
    }
    return st;
}

}  // namespace gilfree
