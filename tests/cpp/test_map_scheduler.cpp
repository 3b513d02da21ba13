// Unit tests of gilfree::MapScheduler (the process pool's dispatch and fault policy)
// against fake workers: no processes, no Python, no timing. The fake runs batches when
// the scheduler waits for an event, one script step at a time, so every test is
// deterministic.
#include <sys/wait.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "gilfree/map_scheduler.hpp"
#include "gilfree/process_pool.hpp"
#include "fake_workers.hpp"
#include "recording_host.hpp"

using namespace std::chrono_literals;
using gilfree::Frame;
using gilfree::FrameKind;
using gilfree::LostItems;
using gilfree::MapHost;
using gilfree::MapRequest;
using gilfree::MapScheduler;
using gilfree::WorkerEvent;
using gilfree::WorkerPhase;
using gilfree::WorkerProgress;

namespace {

using test_support::FakeWorkers;
using test_support::Host;
using test_support::kExitedWithCode1;
using test_support::kKilled;
using test_support::request;
using test_support::Sent;

// Normal path: every item exactly once, in several chunks per worker, at most `depth`
// batches queued per worker, the payload once per worker and key.
void test_every_item_once_in_chunks() {
    FakeWorkers pool(3);
    MapScheduler sched(pool, 0, 1ms);
    Host host(1000);
    CHECK(sched.run(request(1000), host) == MapScheduler::End::done);
    CHECK(host.each_once());
    CHECK(host.lost_count() == 0);
    CHECK(host.batches_made.size() > 6);  // chunked, not one batch per worker
    CHECK(pool.max_in_flight <= 2);
    CHECK(pool.payloads_sent == 3);
    for (auto& [id, w] : pool.workers) CHECK(w.in_flight == 0);
    // Guided chunks shrink: the first is larger than the last.
    CHECK(host.batches_made.front().second - host.batches_made.front().first >
          host.batches_made.back().second - host.batches_made.back().first);

    // Same key again: no payload resent; another key: once per worker.
    Host again(50);
    CHECK(sched.run(request(50), again) == MapScheduler::End::done);
    CHECK(again.each_once() && pool.payloads_sent == 3);
    Host other(50);
    CHECK(sched.run(request(50, "k2", 7, 1), other) == MapScheduler::End::done);
    CHECK(other.each_once() && pool.payloads_sent == 6);
    CHECK(pool.max_in_flight <= 2);
    for (auto& [a, b] : other.batches_made) CHECK(b - a == 7 || b == 50);  // fixed chunks
    CHECK(sched.broken().empty());
    CHECK(pool.spawned == 3);  // no worker was replaced
}

// A worker dies while running a batch, with another queued behind it: the item its status
// page names is lost, the rest of its batch runs again, the queued one runs on another
// worker.
void test_dead_workers_batch_runs_elsewhere() {
    FakeWorkers pool(2);
    bool died = false;
    std::size_t victim_a = 0, victim_b = 0, queued_a = 0, queued_b = 0;
    pool.script = [&](FakeWorkers& f) {
        if (!died && f.workers.at(1).queue.size() == 2) {
            const Sent run = f.workers.at(1).queue[0], queued = f.workers.at(1).queue[1];
            victim_a = run.start, victim_b = run.stop;
            queued_a = queued.start, queued_b = queued.stop;
            f.start_front(1, run.start + 1);
            f.die(1, SIGSEGV, false);
            died = true;
            return;
        }
        f.finish_all_fronts();
    };
    MapScheduler sched(pool, 0, 1ms);
    Host host(400);
    CHECK(sched.run(request(400, "k", 10), host) == MapScheduler::End::done);
    CHECK(died);
    CHECK(host.each_once());
    // Exactly the item it was running is lost, once, with what the status page said;
    // the items around it in its batch ran again (the one before it had run already).
    CHECK(host.lost_ranges.size() == 1);
    CHECK(host.lost_ranges[0] == std::make_pair(victim_a + 1, victim_a + 2));
    CHECK(victim_b > victim_a + 2);  // (items after it, too)
    CHECK(host.lost_why[0].progress.item == static_cast<std::int64_t>(victim_a + 1));
    CHECK(host.results[victim_a] == 1 && host.results[victim_b - 1] == 1);
    bool before = false, after = false;
    for (auto& r : host.batches_made) {
        before = before || r == std::make_pair(victim_a, victim_a + 1);
        after = after || r == std::make_pair(victim_a + 2, victim_b);
    }
    CHECK(before && after);
    CHECK(host.lost_why[0].pid == 1001 && host.lost_why[0].wait_status == SIGSEGV);
    CHECK(!host.lost_why[0].expected && host.lost_why[0].timeout_s == 0);
    // The queued batch was made twice: once for the dead worker, once again.
    std::size_t made = 0;
    for (auto& r : host.batches_made) made += r == std::make_pair(queued_a, queued_b);
    CHECK(made == 2);
    CHECK(host.results[queued_a] == 1);
    CHECK(pool.spawned == 3);  // replaced
    CHECK(sched.broken().empty());  // it had been ready: not an early exit
}

// A worker runs one batch's batch calls (a DualNode that waits) beside the next batch's
// items, and dies: either may have killed it, so both are lost, each told which step
// ran beside it; the one whose batch calls ran names no item. The rest complete.
void test_batch_calls_beside_the_next_items_lose_both() {
    FakeWorkers pool(1);
    bool died = false;
    Sent calls{}, items{};
    pool.script = [&](FakeWorkers& f) {
        auto& w = f.workers.at(f.workers.rbegin()->first);
        if (!died && w.live && w.queue.size() == 2) {
            calls = w.queue[0], items = w.queue[1];
            f.start_front(f.workers.rbegin()->first, items.start, -1, 1);
            w.page.tail_batch = static_cast<std::int64_t>(calls.id);
            w.page.tail_step = 1;
            f.die(f.workers.rbegin()->first, SIGSEGV, false);
            died = true;
            return;
        }
        f.finish_all_fronts();
    };
    MapScheduler sched(pool, 0, 1ms);
    Host host(40);
    CHECK(sched.run(request(40, "k", 4), host) == MapScheduler::End::done);
    CHECK(died);
    CHECK(host.each_once());
    CHECK(host.lost_ranges.size() == 2);
    for (std::size_t k = 0; k < host.lost_ranges.size(); ++k) {
        const LostItems& why = host.lost_why[k];
        if (host.lost_ranges[k] == std::make_pair(calls.start, calls.stop)) {
            CHECK(why.progress.step == 1 && why.progress.item == -1 && why.beside_step == 0);
        } else {
            CHECK(host.lost_ranges[k] == std::make_pair(items.start, items.stop));
            CHECK(why.progress.step == 0 && why.beside_step == 1);
            CHECK(why.progress.item == static_cast<std::int64_t>(items.start));
        }
    }
}

// One worker, depth 2, batches of one item. The first two times `when` says so (it is
// given the batches the worker holds), the worker dies: inside its oldest batch if
// `running`, else before it started one (its status page names none: e.g. while it
// loads the payload). Returns the number of deaths.
std::size_t run_with_two_crashes(Host& host, std::function<bool(const std::deque<Sent>&)> when,
                                 bool running) {
    FakeWorkers pool(1);
    std::size_t deaths = 0;
    pool.script = [&](FakeWorkers& f) {
        for (std::uint64_t id : f.busy()) {
            const auto& q = f.workers.at(id).queue;
            if (deaths < 2 && when(q)) {
                if (running) f.start_front(id, q.front().start);
                f.die(id, SIGSEGV, false);
                ++deaths;
                return;
            }
        }
        f.finish_all_fronts();
    };
    MapScheduler sched(pool, 0, 1ms);
    CHECK(sched.run(request(host.results.size(), "k", 1), host) == MapScheduler::End::done);
    return deaths;
}

// Each crash loses the batch its worker was running, and only that one: a batch that
// had been queued behind one crash and then crashed while running is lost like any other.
void test_crash_loses_only_the_running_batch() {
    Host host(4);
    // [0] dies running with [1] queued; [1] runs again on the replacement and dies
    // running with [2] queued; [2], [3] complete.
    CHECK(run_with_two_crashes(host, [](const std::deque<Sent>& q) { return q.size() == 2; },
                               true) == 2);
    CHECK(host.each_once());
    CHECK(host.lost[0] == 1 && host.lost[1] == 1 && host.lost_count() == 2);
}

// Batches queued behind a crash run again once; queued behind a second crash they are
// reported lost, not sent round for ever (a payload that kills every worker that loads
// it would otherwise loop).
void test_retried_batch_goes_round_only_once() {
    Host host(5);
    // [2] and [3] are queued when the first worker dies: both run again, on the
    // replacement, which dies too: now both are reported; [4] completes.
    auto holds3 = [](const std::deque<Sent>& q) {
        return std::any_of(q.begin(), q.end(), [](const Sent& s) { return s.start == 3; });
    };
    CHECK(run_with_two_crashes(host, holds3, false) == 2);
    CHECK(host.each_once());
    CHECK(host.lost[2] == 1 && host.lost[3] == 1 && host.lost_count() == 2);
}

// An item runs past the per-item timeout: its worker is killed, that item alone is lost
// (as a timeout), and the rest of its batch runs again on the other workers.
void test_overdue_item_is_killed_and_rest_rerun() {
    FakeWorkers pool(2);
    std::size_t first_a = 0, first_b = 0;
    bool stuck = false;
    pool.script = [&](FakeWorkers& f) {
        if (!stuck) {  // worker 1 hangs on the second item of its first batch
            const Sent s = f.workers.at(1).queue.front();
            first_a = s.start, first_b = s.stop;
            f.start_front(1, s.start + 1, /*started_ns=*/1);  // long ago
            stuck = true;
        }
        for (std::uint64_t id : f.busy())
            if (id != 1) f.finish_front(id);
    };
    MapScheduler sched(pool, 0, 1ms);
    Host host(100);
    CHECK(sched.run(request(100, "k", 10, 2, 0.5), host) == MapScheduler::End::done);
    CHECK(first_b - first_a == 10);
    CHECK(pool.kills == 1);
    CHECK(host.each_once());
    CHECK(host.lost_ranges.size() == 1);
    CHECK(host.lost_ranges[0] == std::make_pair(first_a + 1, first_a + 2));
    CHECK(host.lost_why[0].timeout_s == 0.5);
    CHECK(host.lost_why[0].progress.item == static_cast<std::int64_t>(first_a + 1));
    CHECK(host.lost_why[0].expected);
    // Item first_a (before the overdue one) and the items after it ran again.
    CHECK(host.results[first_a] == 1 && host.results[first_b - 1] == 1);
}

// An item within its time is not killed, however long the map waits.
void test_item_within_timeout_is_not_killed() {
    FakeWorkers pool(1);
    int steps = 0;
    pool.script = [&](FakeWorkers& f) {
        const std::int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
            std::chrono::steady_clock::now().time_since_epoch()).count();
        for (std::uint64_t id : f.busy()) {
            f.start_front(id, f.workers.at(id).queue.front().start, now);
            if (++steps % 5 == 0) f.finish_front(id);  // a few waits per batch
        }
    };
    MapScheduler sched(pool, 0, 1ms);
    Host host(10);
    CHECK(sched.run(request(10, "k", 2, 1, 3600.0), host) == MapScheduler::End::done);
    CHECK(host.each_once() && host.lost_count() == 0 && pool.kills == 0);
}

// Workers that keep exiting before READY break the pool after kMaxEarlyExits in a row;
// one that exits early between healthy ones does not.
void test_broken_after_repeated_start_failures() {
    {
        FakeWorkers pool(2);
        pool.starts_ok = [](std::uint64_t) { return false; };
        MapScheduler sched(pool, 0, 1ms);
        Host host(10);
        CHECK(sched.run(request(10), host) == MapScheduler::End::broken);
        CHECK(sched.broken().find("3 worker processes in a row exited before they were ready") !=
              std::string::npos);
        CHECK(sched.broken().find("exit code 1") != std::string::npos);
        CHECK(pool.spawned < 10);  // gave up, did not respawn for ever
        // Broken stays broken: the next map does not pretend otherwise.
        CHECK(!sched.broken().empty());
    }
    {
        FakeWorkers pool(1);
        // Every other start fails: never three in a row.
        pool.starts_ok = [](std::uint64_t id) { return id % 2 == 0; };
        pool.script = [](FakeWorkers& f) {
            // Each worker finishes what it holds, then exits (code 0, unasked).
            for (std::uint64_t id : f.busy()) {
                while (!f.workers.at(id).queue.empty()) f.finish_front(id);
                f.die(id, 0, false);
            }
        };
        MapScheduler sched(pool, 0, 1ms);
        Host host(20);
        CHECK(sched.run(request(20, "k", 5), host) == MapScheduler::End::done);
        CHECK(sched.broken().empty());
        CHECK(host.each_once() && host.lost_count() == 0);
    }
    {
        FakeWorkers pool(2);
        pool.starts_ok = [](std::uint64_t id) { return id != 2; };
        pool.script = [](FakeWorkers& f) {  // worker 1's initializer raises
            WorkerEvent ev;
            ev.worker = 1;
            ev.frame.kind = static_cast<std::uint32_t>(FrameKind::init_failed);
            ev.frame.body = "Traceback: ValueError: bad init";
            f.events.push_back(std::move(ev));
        };
        MapScheduler sched(pool, 0, 1ms);
        Host host(10);
        CHECK(sched.run(request(10), host) == MapScheduler::End::broken);
        CHECK(sched.broken().find("initializer failed") != std::string::npos);
        CHECK(sched.broken().find("ValueError: bad init") != std::string::npos);
        CHECK(pool.kills >= 1);  // the worker holding batches was killed
    }
}

// A map abandoned by an exception from a callback leaves batches in flight; their
// results arrive during the next map and are dropped (not reported as that map's), and
// their workers' in-flight counts still go down.
void test_stale_results_of_an_abandoned_map_are_dropped() {
    FakeWorkers pool(2);
    bool hold = true;  // first map: only worker 1 finishes anything
    pool.script = [&](FakeWorkers& f) {
        for (std::uint64_t id : f.busy())
            if (!hold || id == 1) f.finish_front(id);
    };
    MapScheduler sched(pool, 0, 1ms);
    Host first(100);
    first.on_result_hook = [](std::size_t, std::size_t) -> bool {
        throw std::runtime_error("callback raised");
    };
    bool threw = false;
    try {
        sched.run(request(100, "k", 10), first);
    } catch (const std::runtime_error&) {
        threw = true;
    }
    CHECK(threw);
    CHECK(pool.workers.at(2).queue.size() == 2);  // still held: they come back later
    hold = false;
    Host second(30);
    CHECK(sched.run(request(30, "k", 5), second) == MapScheduler::End::done);
    CHECK(second.each_once());  // the old ranges (items < 30 too) were not counted
    for (auto& [id, w] : pool.workers) CHECK(w.queue.empty() && w.in_flight == 0);
}

// Ctrl-C: the map returns interrupted and the workers holding its batches are killed;
// the next map replaces them and runs normally.
void test_interrupt_kills_busy_workers() {
    FakeWorkers pool(3);
    pool.script = [](FakeWorkers&) {};  // nothing finishes
    MapScheduler sched(pool, 0, 1ms);
    Host host(2);  // two batches of one item: one worker stays idle
    int waits = 0;
    host.interrupt_hook = [&] { return ++waits == 3; };
    CHECK(sched.run(request(2, "k", 1), host) == MapScheduler::End::interrupted);
    CHECK(pool.kills == 2 && pool.live_count() == 1);
    pool.script = [](FakeWorkers& f) { f.finish_all_fronts(); };
    Host next(40);
    CHECK(sched.run(request(40), next) == MapScheduler::End::done);
    CHECK(next.each_once() && next.lost_count() == 0);  // the kills were not losses
    CHECK(sched.broken().empty());
}

// shutdown() while mapping: the map returns shut_down; the exits it caused are not
// reported as lost items (the caller reports the shutdown).
void test_shutdown_during_map() {
    FakeWorkers pool(2);
    int steps = 0;
    pool.script = [&](FakeWorkers& f) {
        if (++steps == 3) {  // each worker is inside a batch when shutdown() kills it
            f.shut = true;
            for (std::uint64_t id : f.busy()) f.start_front(id, f.workers.at(id).queue.front().start);
            for (std::uint64_t id : f.live()) f.die(id, kKilled, true);
            return;
        }
        f.finish_all_fronts();
    };
    MapScheduler sched(pool, 0, 1ms);
    Host host(200);
    CHECK(sched.run(request(200, "k", 10), host) == MapScheduler::End::shut_down);
    CHECK(host.lost_count() == 0);
    Host after(5);
    CHECK(sched.run(request(5), after) == MapScheduler::End::shut_down);
    CHECK(after.batches_made.empty());
}

// A callback says stop: no new batches, but those in flight still come back.
void test_stop_dispatching_drains_in_flight() {
    FakeWorkers pool(2);
    MapScheduler sched(pool, 0, 1ms);
    Host host(1000);
    host.on_result_hook = [](std::size_t, std::size_t) { return false; };
    CHECK(sched.run(request(1000, "k", 10), host) == MapScheduler::End::done);
    // Four batches were in flight (2 workers x depth 2); all came back, no more went out.
    CHECK(host.batches_made.size() == 4);
    std::size_t reported = 0;
    for (std::size_t i = 0; i < 1000; ++i) reported += host.results[i];
    CHECK(reported == 40);
    for (auto& [id, w] : pool.workers) CHECK(w.in_flight == 0);
}

// A map that stops (an item failed under on_error="raise") asks each worker to stop the
// batch it runs or runs next once that batch holds only items after the failed range; a
// batch with earlier items runs on (it may hold the error the map must raise).
void test_stop_cancels_only_later_batches() {
    FakeWorkers pool(2);
    MapScheduler sched(pool, 0, 1ms);
    Host host(1000);
    std::map<std::size_t, std::uint64_t> ids;  // batch start -> its id
    int step = 0;
    pool.script = [&](FakeWorkers& f) {
        for (auto& [w, worker] : f.workers)
            for (const Sent& s : worker.queue) ids[s.start] = s.id;
        if (step++ > 0) return f.finish_all_fronts();
        for (auto& [w, worker] : f.workers)  // first, [10, 20) fails
            if (!worker.queue.empty() && worker.queue.front().start == 10) f.finish_front(w);
    };
    host.on_result_hook = [](std::size_t a, std::size_t) { return a != 10; };
    CHECK(sched.run(request(1000, "k", 10), host) == MapScheduler::End::done);
    // In flight when it failed: [0, 10) then [20, 30) on one worker, [30, 40) on the
    // other. [30, 40) is stopped at once; [20, 30) once [0, 10), before it, is done.
    CHECK(pool.cancels.size() == 2);
    CHECK(pool.cancels.at(0).second == ids.at(30) && pool.cancels.at(1).second == ids.at(20));
    CHECK(pool.cancels.at(0).first != pool.cancels.at(1).first);
    std::size_t reported = 0;
    for (std::size_t i = 0; i < 1000; ++i) reported += host.results[i];
    CHECK(reported == 40);  // (every batch still answers)
}

}  // namespace

// -- sub-maps (a node's own map, made in a worker: map_scheduler.hpp "Sub-maps") ----------
// The worker's frames of a sub-map: SUBMAP (where it is + payload), then its batches.
void ask_sub_map(FakeWorkers& f, std::uint64_t worker, std::size_t batches,
                 std::int64_t batch, std::int64_t item) {
    auto frame = [&](FrameKind kind, std::string key, std::string body) {
        WorkerEvent ev;
        ev.worker = worker;
        ev.pid = static_cast<pid_t>(1000 + worker);
        ev.frame.kind = static_cast<std::uint32_t>(kind);
        ev.frame.id = 1;  // the worker's sub-map id
        ev.frame.key = std::move(key);
        ev.frame.body = std::move(body);
        f.events.push_back(std::move(ev));
    };
    frame(FrameKind::submap, "sk",
          std::to_string(batch) + " " + std::to_string(item) + " 0 -1\npl");
    for (std::size_t i = 0; i < batches; ++i)
        frame(FrameKind::subbatch, std::to_string(i), "sub" + std::to_string(i));
}

// Finishes the oldest sub-map batch a worker holds (its map batch may be in front).
bool finish_sub_batch(FakeWorkers& f, std::uint64_t id) {
    auto& q = f.workers.at(id).queue;
    for (auto it = q.begin(); it != q.end(); ++it) {
        if (!f.sub_bodies.count(it->id)) continue;
        WorkerEvent ev;
        ev.worker = id;
        ev.frame.kind = static_cast<std::uint32_t>(FrameKind::result);
        ev.frame.id = it->id;
        ev.frame.body = "answer:" + f.sub_bodies.at(it->id);
        q.erase(it);
        f.events.push_back(std::move(ev));
        return true;
    }
    return false;
}

// Worker 1 asks for a sub-map of 6 batches while it runs its item: the batches go to
// both workers (worker 1 too, though it holds its map batch), before any new item; each
// answer goes back to worker 1 as SUBRESULT with its index; SUBEND closes it.
void test_sub_map_spreads_and_answers_the_asker() {
    FakeWorkers pool(2);
    bool asked = false, ended = false;
    std::set<std::uint64_t> ran_sub;  // workers that ran a sub-map batch
    pool.script = [&](FakeWorkers& f) {
        auto& one = f.workers.at(1);
        if (!asked && !one.queue.empty()) {
            f.start_front(1, one.queue.front().start);
            ask_sub_map(f, 1, 6, one.page.batch, one.page.item);
            asked = true;
            return;
        }
        for (std::uint64_t w : {std::uint64_t{1}, std::uint64_t{2}})
            if (finish_sub_batch(f, w)) ran_sub.insert(w);
        if (asked && !ended && f.relayed.size() == 6) {
            WorkerEvent end;
            end.worker = 1;
            end.frame.kind = static_cast<std::uint32_t>(FrameKind::subend);
            end.frame.id = 1;
            f.events.push_back(std::move(end));
            ended = true;
        }
        for (std::uint64_t w : f.busy())
            if (w != 1 || ended) {
                const auto front = f.workers.at(w).queue.front().id;
                if (!f.sub_bodies.count(front)) f.finish_front(w);
            }
    };
    MapScheduler sched(pool, 0, 1ms);
    Host host(4);
    CHECK(sched.run(request(4, "k", 1), host) == MapScheduler::End::done);
    CHECK(host.each_once() && ended);
    CHECK(ran_sub == (std::set<std::uint64_t>{1, 2}));
    std::set<std::string> indexes;
    for (auto& [to, frame] : pool.relayed) {
        CHECK(to == 1);
        CHECK(frame.kind == static_cast<std::uint32_t>(FrameKind::subresult) && frame.id == 1);
        CHECK(frame.body.rfind("answer:sub" + frame.key, 0) == 0);  // its own batch's answer
        indexes.insert(frame.key);
    }
    CHECK(indexes == (std::set<std::string>{"0", "1", "2", "3", "4", "5"}));
}

// The asker dies while another worker runs its sub-map's batches: its map batch is lost
// with the place it gave (not the sub-map batch its status page shows), nothing is sent
// to it any more, and the map ends with every item reported once.
void test_asker_dying_loses_its_item_where_it_asked() {
    FakeWorkers pool(2);
    bool asked = false, died = false;
    std::size_t asked_item = 0;
    pool.script = [&](FakeWorkers& f) {
        auto& one = f.workers.at(1);
        if (!asked && !one.queue.empty()) {
            asked_item = one.queue.front().start;
            f.start_front(1, asked_item);
            ask_sub_map(f, 1, 4, one.page.batch, one.page.item);
            asked = true;
            return;
        }
        if (asked && !died && one.live) {
            for (auto& s : one.queue)
                if (f.sub_bodies.count(s.id)) {  // it runs a sub-map batch: and dies
                    one.page.batch = static_cast<std::int64_t>(s.id);
                    one.page.item = 0;
                    f.die(1, kKilled, false);
                    died = true;
                    return;
                }
        }
        finish_sub_batch(f, 2);
        for (std::uint64_t w : f.busy())
            if (!f.sub_bodies.count(f.workers.at(w).queue.front().id)) f.finish_front(w);
    };
    MapScheduler sched(pool, 0, 1ms);
    Host host(4);
    CHECK(sched.run(request(4, "k", 1), host) == MapScheduler::End::done);
    CHECK(died && host.each_once());
    CHECK(host.lost_ranges.size() == 1);
    CHECK(host.lost_ranges[0] == std::make_pair(asked_item, asked_item + 1));
    CHECK(host.lost_why[0].progress.item == static_cast<std::int64_t>(asked_item));
    for (auto& [to, frame] : pool.relayed) CHECK(to == 1);  // only before it died
}


int main() {
    const std::vector<test_support::NamedTest> tests = {
        {"every_item_once_in_chunks", test_every_item_once_in_chunks},
        {"dead_workers_batch_runs_elsewhere", test_dead_workers_batch_runs_elsewhere},
        {"batch_calls_beside_the_next_items_lose_both",
         test_batch_calls_beside_the_next_items_lose_both},
        {"crash_loses_only_the_running_batch", test_crash_loses_only_the_running_batch},
        {"retried_batch_goes_round_only_once", test_retried_batch_goes_round_only_once},
        {"overdue_item_is_killed_and_rest_rerun", test_overdue_item_is_killed_and_rest_rerun},
        {"item_within_timeout_is_not_killed", test_item_within_timeout_is_not_killed},
        {"broken_after_repeated_start_failures", test_broken_after_repeated_start_failures},
        {"stale_results_of_an_abandoned_map_are_dropped",
         test_stale_results_of_an_abandoned_map_are_dropped},
        {"interrupt_kills_busy_workers", test_interrupt_kills_busy_workers},
        {"shutdown_during_map", test_shutdown_during_map},
        {"stop_dispatching_drains_in_flight", test_stop_dispatching_drains_in_flight},
        {"stop_cancels_only_later_batches", test_stop_cancels_only_later_batches},
        {"sub_map_spreads_and_answers_the_asker", test_sub_map_spreads_and_answers_the_asker},
        {"asker_dying_loses_its_item_where_it_asked",
         test_asker_dying_loses_its_item_where_it_asked},
    };
    return test_support::run_tests(tests);
}
