// See cpp/include/gilfree/map_scheduler.hpp for the diagram and the fault policy.
#include "gilfree/map_scheduler.hpp"

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <utility>
#include <vector>

namespace gilfree {

std::uint64_t next_batch_id() noexcept {
    static std::atomic<std::uint64_t> next{1};
    return next.fetch_add(1, std::memory_order_relaxed);
}

struct MapScheduler::MapState {
    MapState(MapRequest r, std::size_t workers, std::size_t max_items)
        : req(std::move(r)), planner(req.items, workers, req.chunk, max_items) {}

    MapRequest req;
    ChunkPlanner planner;
    std::map<std::uint64_t, InFlight> inflight;  // batch id -> what it holds
    // Ranges to send before new chunks: batches of a dead worker that never started,
    // the rest of a batch around an overdue item.
    std::deque<InFlight> retry;
    std::set<std::size_t> retried;  // starts of batches already sent round again
    bool stopping = false;          // a MapHost call said stop: no new batches
    // Stopping: the end of the first range a host call said stop for (an item there
    // failed); in-flight batches from here on hold only later items (cancel them).
    std::size_t cancel_from = std::numeric_limits<std::size_t>::max();
    std::set<std::uint64_t> cancelled;  // batch ids the workers were asked to stop

    // `go`: what a host call answered for items before `stop` (false: stop).
    bool answered(bool go, std::size_t stop) {
        if (!go) cancel_from = std::min(cancel_from, stop);
        return go;
    }
    // Streaming: next_range() said nothing is ready (asked again in the next round).
    bool host_dry = false;
    double ask_again_s = 0;   // streaming: the host holds items back until then, at most
    double item_seconds = 0;  // streaming: what an item took, recent batches (0: unknown)
    double timed_seconds = 0, timed_items = 0;  // their decaying sums

    bool more() const {
        return !retry.empty() || (req.streaming ? !host_dry : !planner.exhausted());
    }

    // Sub-maps (map_scheduler.hpp), by (asking worker, its sub-map id).
    struct SubMap {
        Frame payload;                  // the PAYLOAD frame its batches need
        std::set<std::size_t> retried;  // batch indexes already sent round again
    };
    struct SubBatch {
        std::uint64_t asker = 0, sub = 0;
        std::size_t index = 0;
        Frame frame;               // the BATCH body, kept to be sent again
        std::uint64_t worker = 0;  // the worker holding it (in flight)
    };
    using SubKey = std::pair<std::uint64_t, std::uint64_t>;
    std::map<SubKey, SubMap> subs;
    std::deque<SubBatch> sub_queue;
    std::map<std::uint64_t, SubBatch> sub_inflight;       // batch id -> it
    std::map<std::uint64_t, std::size_t> waiting;         // worker -> its open sub-maps
    std::map<std::uint64_t, WorkerProgress> waiting_at;   // where it asked the first one
    std::map<std::uint64_t, std::size_t> sub_held;        // worker -> sub batches it holds
};

MapScheduler::MapScheduler(WorkerSet& workers, std::size_t max_items_per_worker,
                           std::chrono::nanoseconds tick)
    : workers_(workers), max_items_(max_items_per_worker), tick_(tick) {}

MapScheduler::End MapScheduler::run(MapRequest request, MapHost& host) {
    // Shut down (by another thread) before this map began, or while it runs: it returns
    // early and the caller says which items did not finish.
    if (workers_.is_shut_down()) return End::shut_down;
    timed_out_.clear();
    request.depth = std::max<std::size_t>(1, request.depth);
    MapState m(std::move(request), workers_.size(), max_items_);

    for (;;) {
        if (workers_.is_shut_down()) return End::shut_down;  // its batches died with it
        // Streaming: asked before dispatching, so that "not open and nothing ready"
        // after it means nothing more will come.
        const bool open = m.req.streaming && !m.stopping && host.open();
        m.host_dry = false;
        m.ask_again_s = 0;
        // Work left (new chunks, or batches of a dead worker to run again): replace dead
        // workers first. Retries count too: when every worker was killed (all held
        // overdue items), nothing else would start a worker to run them.
        // Only when one is missing: unlocked() lets the caller's lock (the GIL) go, and
        // taking it back can cost a switch interval while other threads hold it.
        if (!m.stopping && (m.more() || open || !m.sub_queue.empty()) &&
            workers_.live().size() < workers_.size()) {
            bool shut = false;
            host.unlocked([&] {
                try {
                    workers_.fill();
                } catch (const std::runtime_error&) {
                    // Shut down between the check above and fill().
                    if (!workers_.is_shut_down()) throw;
                    shut = true;
                }
            });
            if (shut) return End::shut_down;
        }
        dispatch_subs(m);  // even when stopping: the items waiting for them are in flight
        if (!m.stopping) dispatch(m, host);
        if (m.inflight.empty() && (m.stopping || (!m.more() && !open))) return End::done;

        WorkerEvent ev;
        bool got = false, interrupted = false;
        // A host holding items back for a fuller batch is asked again when it said.
        auto wait = tick_;
        if (m.ask_again_s > 0)
            wait = std::min<std::chrono::nanoseconds>(
                wait, std::chrono::nanoseconds(static_cast<std::int64_t>(m.ask_again_s * 1e9) + 1));
        host.wait_unlocked(
            [&] {
                got = workers_.wait_event(ev, wait);
                return got;
            },
            interrupted);
        if (interrupted) {
            abandon(m);
            return End::interrupted;
        }
        while (got) {
            if (!handle(ev, m, host)) m.stopping = true;
            if (!broken_.empty()) {
                abandon(m);
                return End::broken;
            }
            got = workers_.wait_event(ev, std::chrono::nanoseconds(0));
        }
        if (m.stopping && !m.req.streaming) cancel_later_batches(m);
        if (m.req.item_timeout > 0) kill_overdue(m);
    }
}

// Round-robin by depth: every worker gets its first batch before any gets a second, so
// a short map spreads over all workers.
void MapScheduler::dispatch(MapState& m, MapHost& host) {
    const auto live = workers_.live();
    for (std::size_t round = 1; round <= m.req.depth && m.more(); ++round) {
        for (std::uint64_t w : live) {
            if (!m.more()) break;
            if (!workers_.accepts(w) || m.waiting.count(w)) continue;
            if (workers_.in_flight(w) >= round) continue;
            std::size_t a = 0, b = 0, origin = 0;
            if (!m.retry.empty()) {
                a = m.retry.front().start;
                b = m.retry.front().stop;
                origin = m.retry.front().origin;
                m.retry.pop_front();
            } else if (m.req.streaming) {
                // Idle workers share what is ready (a busy one has its next batch queued
                // behind the running one: it needs items, not a share of them now).
                std::size_t idle = 0;
                for (std::uint64_t v : live)
                    idle += workers_.accepts(v) && workers_.in_flight(v) == 0;
                if (!host.next_range(stream_batch(m), std::max<std::size_t>(1, idle), a, b,
                                     m.ask_again_s) ||
                    b <= a) {
                    m.host_dry = true;
                    return;
                }
                origin = a;
            } else {
                m.planner.next(a, b);
                origin = a;
            }
            Frame f;
            host.make_batch(a, b, origin, f);
            f.kind = static_cast<std::uint32_t>(FrameKind::batch);
            f.id = next_batch_id();
            f.key = m.req.key;
            const std::uint64_t id = f.id;
            // Only queues the frames for the worker's writer thread: cheap, never blocks
            // on the worker. The worker may have died since accepts() (make_batch ran
            // the caller's code): then the range goes back to the front of the queue,
            // not counted as a retry (it never ran).
            if (!workers_.send_batch(w, m.req.key, m.req.payload, std::move(f), b - a)) {
                m.retry.push_front(InFlight{w, a, b, {}, origin});
                continue;
            }
            m.inflight[id] = InFlight{w, a, b, Clock::now(), origin};
        }
    }
}

// Sub-map batches go before new chunks, round-robin by depth like them, to the workers
// waiting for a sub-map and those holding no map batch.
void MapScheduler::dispatch_subs(MapState& m) {
    if (m.sub_queue.empty()) return;
    const auto live = workers_.live();
    for (std::size_t round = 1; round <= m.req.depth && !m.sub_queue.empty(); ++round) {
        for (std::uint64_t w : live) {
            if (m.sub_queue.empty()) break;
            // A worker holding map batches (not waiting) would run a sub-map batch only
            // after them, perhaps long after: the asker would wait for it, idle.
            const std::size_t held = m.sub_held[w];
            if (!m.waiting.count(w) && (!workers_.accepts(w) || workers_.in_flight(w) > held))
                continue;
            if (held >= round) continue;
            MapState::SubBatch sb = std::move(m.sub_queue.front());
            m.sub_queue.pop_front();
            const auto sub = m.subs.find({sb.asker, sb.sub});
            if (sub == m.subs.end()) continue;  // closed: nobody waits for it
            const Frame& payload = sub->second.payload;
            Frame f = clone_frame(sb.frame);
            f.kind = static_cast<std::uint32_t>(FrameKind::subbatch);
            f.id = next_batch_id();
            f.key = payload.key;
            const std::uint64_t id = f.id;
            if (!workers_.send_batch(w, payload.key, payload, std::move(f), 0)) {
                m.sub_queue.push_front(std::move(sb));
                continue;
            }
            sb.worker = w;
            ++m.sub_held[w];
            m.sub_inflight.emplace(id, std::move(sb));
        }
    }
}

// A sub-map's frame (SUBMAP, SUBBATCH, SUBEND), or a RESULT of a sub-map batch: true if
// it was one of those.
bool MapScheduler::handle_sub(WorkerEvent& ev, MapState& m) {
    const auto kind = static_cast<FrameKind>(ev.frame.kind);
    const MapState::SubKey key{ev.worker, ev.frame.id};
    if (kind == FrameKind::submap) {
        // body: "<batch> <item> <step> <item started ns>\n" (where the worker is, from
        // its status page) + the payload
        std::string& body = ev.frame.body;
        const auto eol = body.find('\n');  // (none: no place given, all payload)
        if (m.waiting[ev.worker]++ == 0) {
            WorkerProgress at = workers_.progress(ev.worker);
            long long batch = -1, item = -1, step = -1, started = -1;
            if (std::sscanf(body.c_str(), "%lld %lld %lld %lld", &batch, &item, &step,
                            &started) == 4) {
                at.batch = batch;
                at.item = item;
                at.step = step;
                at.item_started_ns = started;
                at.phase = static_cast<std::int64_t>(WorkerPhase::batch);
            }
            m.waiting_at[ev.worker] = at;
        }
        MapState::SubMap sub;
        sub.payload.kind = static_cast<std::uint32_t>(FrameKind::payload);
        sub.payload.key = ev.frame.key;
        sub.payload.body = eol == std::string::npos ? std::move(body) : body.substr(eol + 1);
        sub.payload.fds = std::move(ev.frame.fds);
        m.subs[key] = std::move(sub);
        return true;
    }
    if (kind == FrameKind::subbatch) {
        if (!m.subs.count(key)) return true;
        MapState::SubBatch sb;
        sb.asker = ev.worker;
        sb.sub = ev.frame.id;
        sb.index = static_cast<std::size_t>(std::strtoull(ev.frame.key.c_str(), nullptr, 10));
        sb.frame.body = std::move(ev.frame.body);
        sb.frame.fds = std::move(ev.frame.fds);
        m.sub_queue.push_back(std::move(sb));
        return true;
    }
    if (kind == FrameKind::subend) {
        if (m.subs.erase(key) == 0) return true;
        m.sub_queue.erase(std::remove_if(m.sub_queue.begin(), m.sub_queue.end(),
                                         [&](const MapState::SubBatch& sb) {
                                             return sb.asker == key.first && sb.sub == key.second;
                                         }),
                          m.sub_queue.end());
        if (--m.waiting[ev.worker] == 0) {
            m.waiting.erase(ev.worker);
            m.waiting_at.erase(ev.worker);
        }
        return true;
    }
    if (kind != FrameKind::result) return false;
    const auto it = m.sub_inflight.find(ev.frame.id);
    if (it == m.sub_inflight.end()) return false;
    workers_.batch_done(ev.worker);
    MapState::SubBatch sb = std::move(it->second);
    m.sub_inflight.erase(it);
    --m.sub_held[sb.worker];
    if (m.subs.count({sb.asker, sb.sub})) {
        Frame out;
        out.kind = static_cast<std::uint32_t>(FrameKind::subresult);
        out.id = sb.sub;
        out.key = std::to_string(sb.index);
        out.body = std::move(ev.frame.body);
        out.fds = std::move(ev.frame.fds);
        workers_.send_frame(sb.asker, std::move(out));
    }
    return true;
}

// A worker exited: the sub-maps it asked for end with it; the sub-map batches it held
// are lost (the one its status page says it ran) or go round again (once).
void MapScheduler::sub_worker_exited(const WorkerEvent& ev, MapState& m) {
    const std::uint64_t dead = ev.worker;
    for (auto it = m.subs.begin(); it != m.subs.end();)
        it = it->first.first == dead ? m.subs.erase(it) : std::next(it);
    m.sub_queue.erase(std::remove_if(m.sub_queue.begin(), m.sub_queue.end(),
                                     [&](const MapState::SubBatch& sb) { return sb.asker == dead; }),
                      m.sub_queue.end());
    m.waiting.erase(dead);
    m.sub_held.erase(dead);
    std::vector<std::uint64_t> held;
    for (const auto& [id, sb] : m.sub_inflight)
        if (sb.worker == dead) held.push_back(id);
    for (std::uint64_t id : held) {
        MapState::SubBatch sb = std::move(m.sub_inflight[id]);
        m.sub_inflight.erase(id);
        const auto sub = m.subs.find({sb.asker, sb.sub});
        if (sub == m.subs.end()) continue;
        const bool ran = static_cast<std::int64_t>(id) == ev.progress.batch;
        if (!ran && sub->second.retried.insert(sb.index).second) {
            sb.worker = 0;
            m.sub_queue.push_front(std::move(sb));
            continue;
        }
        const int st = ev.wait_status;
        const int sig = st != -1 && WIFSIGNALED(st) ? WTERMSIG(st) : -1;
        const int code = st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        Frame out;
        out.kind = static_cast<std::uint32_t>(FrameKind::sublost);
        out.id = sb.sub;
        out.key = std::to_string(sb.index);
        out.body = std::to_string(ev.pid) + " " + std::to_string(sig) + " " +
                   std::to_string(code) + " " + std::to_string(ran ? ev.progress.step : -1) +
                   " " + std::to_string(ran ? ev.progress.item : -1);
        workers_.send_frame(sb.asker, std::move(out));
    }
}

// Per-item timeout: a worker whose current item has run longer than the limit is killed
// (the only way to stop Python code in another process). Its `exited` event then fails
// that one item and sends the rest of its batch round again (handle_exit()).
void MapScheduler::kill_overdue(MapState& m) {
    const auto limit_ns = static_cast<std::int64_t>(m.req.item_timeout * 1e9);
    const std::int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
        Clock::now().time_since_epoch()).count();  // CLOCK_MONOTONIC, as the worker's
    for (const auto& [id, f] : m.inflight) {
        if (timed_out_.count(f.worker)) continue;
        // A worker waiting for a sub-map runs its item still, whatever batch of the
        // sub-map its status page shows meanwhile: the place it asked from counts.
        const auto asked = m.waiting_at.find(f.worker);
        const WorkerProgress p =
            asked != m.waiting_at.end() ? asked->second : workers_.progress(f.worker);
        if (!p.in_phase(WorkerPhase::batch) || p.batch != static_cast<std::int64_t>(id) ||
            p.item_started_ns <= 0 || now - p.item_started_ns <= limit_ns)
            continue;
        if (p.item < static_cast<std::int64_t>(f.start) ||
            p.item >= static_cast<std::int64_t>(f.stop))
            continue;
        timed_out_[f.worker] = static_cast<std::size_t>(p.item);
        workers_.kill(f.worker);
    }
}

// A map is being abandoned: workers holding its batches are killed (their work is
// unwanted and could take arbitrarily long); the next map replaces them.
void MapScheduler::abandon(MapState& m) {
    std::set<std::uint64_t> busy;
    for (auto& [id, f] : m.inflight) busy.insert(f.worker);
    for (auto& [id, sb] : m.sub_inflight) busy.insert(sb.worker);
    for (std::uint64_t w : busy) workers_.kill(w);
    m.inflight.clear();
    m.sub_inflight.clear();
    m.sub_queue.clear();
    m.subs.clear();
    workers_.clear_events();
}

// False: stop dispatching.
bool MapScheduler::handle(WorkerEvent& ev, MapState& m, MapHost& host) {
    if (ev.type == WorkerEvent::Type::exited) {
        // Killed or stopped by shutdown(): its items are not lost to a crash; run()
        // returns at the top of its loop and the caller reports the shutdown.
        if (workers_.is_shut_down()) return true;
        return handle_exit(ev, m, host);
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
    if (handle_sub(ev, m)) return true;
    if (kind != FrameKind::result) return true;
    workers_.batch_done(ev.worker);
    auto it = m.inflight.find(ev.frame.id);
    if (it == m.inflight.end()) return true;  // stale: its map was abandoned
    const InFlight f = it->second;
    m.inflight.erase(it);
    time_items(f, ev.received, m);
    return m.answered(host.on_result(f.start, f.stop, f.origin, ev.frame), f.stop);
}

bool MapScheduler::handle_exit(const WorkerEvent& ev, MapState& m, MapHost& host) {
    const bool was_ready = ready_.erase(ev.worker) > 0;
    workers_.forget(ev.worker);
    last_result_.erase(ev.worker);
    // A worker waiting for a sub-map was running the item that asked for it, whatever
    // its status page shows now (a sub-map batch it ran meanwhile).
    std::optional<WorkerProgress> asked_at;
    if (auto at = m.waiting_at.find(ev.worker); at != m.waiting_at.end()) {
        asked_at = at->second;
        m.waiting_at.erase(at);
    }
    sub_worker_exited(ev, m);
    std::vector<std::uint64_t> lost;
    for (auto& [id, f] : m.inflight)
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
    auto holds_overdue = [&](const InFlight& f) {
        return overdue && f.start <= *overdue && *overdue < f.stop;
    };
    // Item c of batch f alone is the victim: the items around it (done or not, their
    // results died with the worker) run again.
    auto retry_around = [&](const InFlight& f, std::size_t c) {
        if (f.start < c) m.retry.push_back(InFlight{0, f.start, c, {}, f.origin});
        if (c + 1 < f.stop) m.retry.push_back(InFlight{0, c + 1, f.stop, {}, f.origin});
    };
    if (overdue) {
        // The overdue item may have finished just before the kill landed (its result
        // came back, the worker had moved on): then nobody is overdue, and what the
        // worker held runs again instead of failing.
        bool held = false;
        for (std::uint64_t id : lost) held = held || holds_overdue(m.inflight[id]);
        if (!held) {
            for (std::uint64_t id : lost) {
                m.retry.push_back(m.inflight[id]);
                m.inflight.erase(id);
            }
            return true;
        }
    }
    LostItems why;
    why.pid = ev.pid;
    why.expected = ev.expected;
    why.wait_status = ev.wait_status;
    why.progress = ev.progress;
    if (asked_at) {
        why.progress.batch = asked_at->batch;
        why.progress.item = asked_at->item;
        why.progress.step = asked_at->step;
    }
    bool keep_going = true;
    for (std::uint64_t id : lost) {
        const InFlight f = m.inflight[id];
        m.inflight.erase(id);
        if (holds_overdue(f)) {
            // Killed for its timeout: only the overdue item fails.
            retry_around(f, *overdue);
            LostItems t = why;
            t.timeout_s = m.req.item_timeout;
            t.progress.item = static_cast<std::int64_t>(*overdue);
            keep_going = m.answered(host.on_lost(*overdue, *overdue + 1, f.origin, t),
                                    *overdue + 1) && keep_going;
            continue;
        }
        // Only the batches it was running are its victim's: the one whose items ran
        // and the one whose batch calls ran beside them (either may have killed it);
        // the ones queued behind never started. Those run again (once: a batch whose
        // payload kills every worker that loads it must not go round for ever).
        const WorkerProgress& p = why.progress;  // (where it asked, if it waited)
        const bool items = static_cast<std::int64_t>(id) == p.batch;
        const bool tail = p.tail_batch >= 0 && static_cast<std::int64_t>(id) == p.tail_batch;
        if (!items && !tail && m.retried.insert(f.start).second) {
            m.retry.push_back(f);
            continue;
        }
        const std::int64_t culprit = p.item;
        if (items && p.tail_batch < 0 && culprit >= static_cast<std::int64_t>(f.start) &&
            culprit < static_cast<std::int64_t>(f.stop)) {
            // It died running one item, with no batch call beside it: that item is the
            // victim, as an overdue one is. Each death costs one item.
            const auto c = static_cast<std::size_t>(culprit);
            retry_around(f, c);
            keep_going = m.answered(host.on_lost(c, c + 1, f.origin, why), c + 1) && keep_going;
            continue;
        }
        LostItems lost_why = why;
        if (tail) {  // its batch calls ran: no item of it in particular
            lost_why.progress.step = p.tail_step;
            lost_why.progress.item = -1;
            lost_why.beside_step = p.batch >= 0 ? p.step : -1;
        } else if (items && p.tail_batch >= 0) {
            lost_why.beside_step = p.tail_step;
        }
        keep_going =
            m.answered(host.on_lost(f.start, f.stop, f.origin, lost_why), f.stop) && keep_going;
    }
    return keep_going;
}

// A map that stops (a host call said so: under on_error="raise", an item failed) drops
// the results of batches that hold only later items: each worker is asked to stop the
// oldest batch it holds (the one it runs, or runs next: a worker takes them in the order
// sent, and ids grow with it) when that batch starts after the failed range. Batches
// with earlier items run on: one may hold an earlier error, the one the map raises.
void MapScheduler::cancel_later_batches(MapState& m) {
    std::map<std::uint64_t, std::uint64_t> oldest;  // worker -> its oldest batch in flight
    for (const auto& [id, f] : m.inflight) oldest.emplace(f.worker, id);
    for (const auto& [worker, id] : oldest) {
        if (m.inflight.at(id).start >= m.cancel_from && m.cancelled.insert(id).second)
            workers_.cancel(worker, id);
    }
}

// What an item of this map takes, from a finished batch: it ran from when it was sent,
// or from when the batch queued before it on the same worker came back.
void MapScheduler::time_items(const InFlight& f, Clock::time_point received, MapState& m) {
    // When the result was read, not when the driver got round to it (a driver waiting
    // for its lock would make items look slow, and batches small).
    const auto now = received == Clock::time_point{} ? Clock::now() : received;
    auto& previous = last_result_[f.worker];
    const auto began = std::max(f.sent, previous);
    previous = now;
    const double seconds = std::max(0.0, std::chrono::duration<double>(now - began).count());
    const auto items = static_cast<double>(f.stop - f.start);
    m.planner.observe_item_seconds(seconds / items);
    // Streaming: recent batches' time per item, weighted by their items, sizes the next
    // ones. A batch's time includes its round trip, so the first (one-item) batches
    // overestimate and the sizes grow over a few batches.
    m.timed_seconds = 0.5 * m.timed_seconds + seconds;
    m.timed_items = 0.5 * m.timed_items + items;
    m.item_seconds = m.timed_seconds / m.timed_items;
}

// Items per batch of a streaming map: the request's fixed chunk, else about
// kStreamBatchSeconds of measured work, one item while nothing was measured.
std::size_t MapScheduler::stream_batch(const MapState& m) {
    if (m.req.chunk > 0) return m.req.chunk;
    if (!(m.item_seconds > 0)) return 1;
    const double n = std::floor(kStreamBatchSeconds / m.item_seconds);
    return static_cast<std::size_t>(std::clamp(n, 1.0, static_cast<double>(kStreamBatchMax)));
}

std::string MapScheduler::describe_early_exit(const WorkerEvent& ev) {
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

}  // namespace gilfree
