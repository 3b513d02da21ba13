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
        Stage s;
        s.cfg = c;
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
    stages_[stage].queue.push_back({id, now});
}

// The item stops holding its stage's capacity (it was in flight or parked, and is done).
void FlowScheduler::leave_stage(Item& item) {
    Stage& s = stages_[item.stage];
    if (!s.batched()) {
        --s.busy;
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
    if (!s.batched()) {
        std::vector<std::uint64_t> ids;
        while (s.busy < s.cfg.capacity && !s.queue.empty()) {
            const std::uint64_t id = s.queue.front().id;
            s.queue.pop_front();
            items_.at(id).where = Where::in_flight;
            ++s.busy;
            ++s.in_flight;
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
        s.in_flight += n;
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
        for (;;) {
            std::vector<Dispatch> plan;
            std::size_t room = 0;
            std::uint64_t seen = 0;
            Clock::time_point wake;
            {
                std::lock_guard<std::mutex> lk(mu_);
                if (closed_) return {};
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
                    if (room == 0) {
                        std::vector<Exit> exits = take_exits();
                        if (!exits.empty()) return exits;
                        if (exhausted_ && left_ == pulled_) return {};
                        seen = events_;
                        wake = wake_at(now);
                    }
                }
            }
            if (!plan.empty()) {
                for (const Dispatch& d : plan) {
                    if (is_closed()) return {};
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
                continue;
            }
            host.unlocked([&] {
                std::unique_lock<std::mutex> lk(mu_);
                cv_.wait_until(lk, wake, [&] { return events_ != seen || closed_; });
            });
            may_pull = true;
            if (host.check_interrupt()) throw FlowInterrupted();
        }
    } catch (...) {
        close();
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
        --s.in_flight;
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
    ++events_;
    lk.unlock();
    cv_.notify_one();
}

void FlowScheduler::close() {
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (closed_) return;
        closed_ = true;
        ++events_;
    }
    cv_.notify_all();
}

FlowStats FlowScheduler::stats() const {
    std::lock_guard<std::mutex> lk(mu_);
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
        st.stages.push_back(x);
    }
    return st;
}

}  // namespace gilfree
