// Unit tests of gilfree::FlowScheduler (the streaming map's flow between stages): no
// Python. "Executors" are either a script the host runs in the driver thread just
// before each wait (deterministic), code inside dispatch (an inline executor), or
// worker threads completing items in random order (the stress tests, also for TSan).
// No timing assertions: a flow that hangs is stopped by check_interrupt after a
// generous deadline and the test fails on what it then sees.
#include "flow_test_host.hpp"

using namespace flow_test;

namespace {

// ---- stress: every item leaves exactly once, limits hold, from several threads -------

// Executors: worker threads completing dispatched work in random order, sometimes a
// batch in two done() calls, ~2% of items failing.
struct RandomWorkers {
    FlowScheduler& flow;
    std::vector<FlowStage> cfg;
    std::mutex mu;
    std::condition_variable cv;
    std::vector<std::pair<std::size_t, Ids>> work;
    bool stop = false;
    // Units dispatched and not yet reported done, per stage (decremented before done(),
    // so it never exceeds what the scheduler counts).
    std::vector<std::size_t> units;
    std::map<std::uint64_t, std::size_t> failed_at;  // id -> stage it failed on
    std::vector<std::thread> threads;

    RandomWorkers(FlowScheduler& f, std::vector<FlowStage> c, int n, unsigned seed)
        : flow(f), cfg(std::move(c)), units(cfg.size(), 0) {
        for (int t = 0; t < n; ++t) threads.emplace_back([this, seed, t] { run(seed + t); });
    }
    ~RandomWorkers() {
        {
            std::lock_guard<std::mutex> lk(mu);
            stop = true;
        }
        cv.notify_all();
        for (auto& t : threads) t.join();
    }
    void add(std::size_t stage, const Ids& ids) {
        std::lock_guard<std::mutex> lk(mu);
        const std::size_t n = cfg[stage].batch_size > 1 ? 1 : ids.size();
        CHECK(cfg[stage].batch_size <= 1 || ids.size() <= cfg[stage].batch_size);
        units[stage] += n;
        CHECK(units[stage] <= cfg[stage].capacity);
        work.emplace_back(stage, ids);
        cv.notify_one();
    }
    void run(unsigned seed) {
        std::mt19937 rng(seed);
        for (;;) {
            std::pair<std::size_t, Ids> w;
            std::vector<bool> failed;
            {
                std::unique_lock<std::mutex> lk(mu);
                cv.wait(lk, [&] { return stop || !work.empty(); });
                if (stop) return;
                const std::size_t i = rng() % work.size();
                w = std::move(work[i]);
                work.erase(work.begin() + static_cast<std::ptrdiff_t>(i));
                units[w.first] -= cfg[w.first].batch_size > 1 ? 1 : w.second.size();
                for (std::uint64_t id : w.second) {
                    failed.push_back(rng() % 50 == 0);
                    if (failed.back()) failed_at[id] = w.first;
                }
            }
            std::this_thread::yield();
            if (w.second.size() > 1 && rng() % 2 == 0) {  // report in two parts
                const std::size_t half = w.second.size() / 2;
                flow.done(w.first, Ids(w.second.begin(), w.second.begin() + half),
                          std::vector<bool>(failed.begin(), failed.begin() + half));
                flow.done(w.first, Ids(w.second.begin() + half, w.second.end()),
                          std::vector<bool>(failed.begin() + half, failed.end()));
            } else {
                flow.done(w.first, w.second, failed);
            }
        }
    }
};

void stress(bool ordered, unsigned seed) {
    const std::vector<FlowStage> cfg = {stage(4, 8), stage(2, 32, 16, 0.001), stage(3, 4)};
    const std::size_t read_ahead = 64;
    const std::uint64_t n = 5000;
    FlowScheduler flow(cfg, read_ahead, ordered, kTick);
    Host host;
    host.total = n;
    std::uint64_t left = 0;
    host.on_pull = [&](std::size_t k) -> std::pair<std::size_t, bool> {
        CHECK(host.given - left + k <= read_ahead);  // read-ahead bound
        const std::uint64_t got = std::min<std::uint64_t>(k, n - host.given);
        host.given += got;
        return {static_cast<std::size_t>(got), host.given == n};
    };
    RandomWorkers workers(flow, cfg, 4, seed);
    host.on_dispatch = [&](std::size_t k, const Ids& ids) {
        const auto st = flow.stats();
        for (std::size_t j = 0; j < cfg.size(); ++j) {
            CHECK(st.stages[j].busy <= cfg[j].capacity);
            CHECK(st.stages[j].queued <= cfg[j].queue_bound);
        }
        workers.add(k, ids);
    };
    std::vector<int> seen(n, 0);
    std::uint64_t last = 0;
    for (;;) {
        const Exits got = next_or_fail(flow, host);
        if (got.empty()) break;
        for (auto [id, failed] : got) {
            CHECK(id < n);
            CHECK(++seen[id] == 1);
            if (ordered) CHECK(id == last);  // input order, no gaps
            last = id + 1;
            std::lock_guard<std::mutex> lk(workers.mu);
            CHECK(failed == (workers.failed_at.count(id) == 1));
        }
        left += got.size();
    }
    for (std::uint64_t id = 0; id < n; ++id) CHECK(seen[id] == 1);
    // A failed item was never dispatched on a later stage.
    for (std::size_t k = 0; k < cfg.size(); ++k)
        for (std::uint64_t id : host.ids_on(k)) {
            auto it = workers.failed_at.find(id);
            CHECK(it == workers.failed_at.end() || it->second >= k);
        }
    const auto st = flow.stats();
    CHECK(st.pulled == n && st.left == n && st.exhausted && !st.closed);
    for (auto& s : st.stages) CHECK(s.queued == 0 && s.in_flight == 0 && s.parked == 0 && s.busy == 0);
}

void test_stress_ordered() { stress(true, 1); }
void test_stress_unordered() { stress(false, 100); }

// ---- backpressure ------------------------------------------------------------------

// Stage 1 never completes; stage 0 completes inline (inside dispatch). Pulling stops
// once stage 1 (capacity 1, queue 2), stage 0's parked items (capacity 2) and stage 0's
// queue (3) are full: 1 + 2 + 2 + 3 = 8 items, far below read_ahead.
void test_backpressure_queue_bounds() {
    FlowScheduler flow({stage(2, 3), stage(1, 2)}, 100, true, kTick);
    Host host;
    host.on_dispatch = [&](std::size_t k, const Ids& ids) {
        if (k == 0) flow.done(0, ids, {});
    };
    host.interrupt = [&] { return host.waits >= 5; };
    host.before_wait = [&] { CHECK(host.waits <= 10); };  // an ignored interrupt fails here
    bool interrupted = false;
    try {
        flow.next(host);
    } catch (const FlowInterrupted&) {
        interrupted = true;
    }
    CHECK(interrupted);
    const auto st = flow.stats();
    CHECK(st.pulled == 8);
    CHECK(st.stages[1].in_flight == 1 && st.stages[1].queued == 2);
    CHECK(st.stages[0].parked == 2 && st.stages[0].busy == 2 && st.stages[0].queued == 3);
    CHECK(host.ids_on(1) == Ids{0});
}

// Nothing completes: read_ahead bounds the items pulled, whatever the queues allow.
void test_backpressure_read_ahead() {
    FlowScheduler flow({stage(100, 100)}, 5, false, kTick);
    Host host;
    host.interrupt = [&] { return host.waits >= 5; };
    host.before_wait = [&] { CHECK(host.waits <= 10); };
    try {
        flow.next(host);
        CHECK(!"next() returned");
    } catch (const FlowInterrupted&) {
    }
    CHECK(flow.stats().pulled == 5);
    CHECK(host.ids_on(0).size() == 5);
}

// set_read_ahead: the flow reads on to the larger bound at its next round, and a stage
// queue bounded by the old read-ahead follows (stage 1's bound 3 stays); smaller refused.
void test_read_ahead_grows() {
    FlowScheduler flow({stage(1, 5), stage(1, 3)}, 5, false, kTick);
    Host host;
    host.interrupt = [&] { return host.waits >= 8; };
    host.before_wait = [&] {
        if (host.waits == 3) {
            CHECK(flow.stats().pulled == 5);  // read_ahead 5: stage 0 holds them all
            flow.set_read_ahead(9);
        }
    };
    try {
        flow.next(host);
        CHECK(!"next() returned");
    } catch (const FlowInterrupted&) {
    }
    CHECK(flow.stats().pulled == 9);  // its queue's bound grew with it
    bool refused = false;
    try {
        flow.set_read_ahead(4);
    } catch (const std::invalid_argument&) {
        refused = true;
    }
    CHECK(refused);
}

// Finished items not yet returned count for read_ahead: with an ordered exit blocked by
// item 0, the flow holds read_ahead items and pulls no more until 0 is done.
void test_read_ahead_counts_finished_items() {
    FlowScheduler flow({stage(10, 10)}, 4, true, kTick);
    Host host;
    host.total = 6;
    host.before_wait = [&] {
        if (host.waits == 1) flow.done(0, {1, 2, 3}, {});
        if (host.waits == 3) {
            CHECK(flow.stats().pulled == 4);
            flow.done(0, {0}, {});
        }
        if (host.waits == 4) flow.done(0, {4, 5}, {});
    };
    CHECK((flow.next(host) == Exits{{0, false}, {1, false}, {2, false}, {3, false}}));
    CHECK((flow.next(host) == Exits{{4, false}, {5, false}}));
    CHECK(flow.next(host).empty());
}

// next() returns only once the input cannot be read further (read_ahead or stage 0's
// queue full, or input exhausted): results ready early must not keep the stages unfed.
void test_input_read_while_items_leave() {
    FlowScheduler flow({stage(4, 4)}, 8, false, kTick);
    Host host;
    host.total = 100;
    host.on_dispatch = [&](std::size_t k, const Ids& ids) { flow.done(k, ids, {}); };
    std::uint64_t left = 0;
    for (;;) {
        const Exits got = flow.next(host);
        if (got.empty()) break;
        const auto st = flow.stats();
        CHECK(st.exhausted || st.pulled - left == 8 || st.stages[0].queued == 4);
        left += got.size();
    }
    CHECK(left == 100);
}

// A source that hands over fewer items than asked for (it is slow: a generator over a
// queue) is not read again before the items that finished go to the consumer.
void test_lagging_source_results_first() {
    FlowScheduler flow({stage(4, 4)}, 64, true, kTick);
    Host host;
    host.on_pull = [&](std::size_t) -> std::pair<std::size_t, bool> {
        ++host.given;
        return {1, host.given == 5};  // one item per pull, five in all
    };
    host.on_dispatch = [&](std::size_t k, const Ids& ids) { flow.done(k, ids, {}); };
    std::uint64_t left = 0;
    for (;;) {
        const std::size_t pulls = host.pulls.size();
        const Exits got = flow.next(host);
        if (got.empty()) break;
        CHECK(host.pulls.size() - pulls <= 2);  // not read up to the read-ahead first
        left += got.size();
    }
    CHECK(left == 5);
}

// ---- exit order ----------------------------------------------------------------------

void exit_order(bool ordered, const std::vector<Exits>& expected) {
    FlowScheduler flow({stage(3, 3)}, 8, ordered, kTick);
    Host host;
    host.total = 3;
    // One item completes per wait: 2, then 1, then 0.
    host.before_wait = [&] {
        CHECK(host.waits <= 3);
        flow.done(0, {3 - host.waits}, {});
    };
    for (const Exits& e : expected) CHECK(flow.next(host) == e);
    CHECK(flow.next(host).empty());
}

void test_ordered_exit() { exit_order(true, {{{0, false}, {1, false}, {2, false}}}); }
void test_unordered_exit() { exit_order(false, {{{2, false}}, {{1, false}}, {{0, false}}}); }

// ---- batch stages --------------------------------------------------------------------

std::vector<std::size_t> sizes_on(const Host& host, std::size_t stage) {
    std::vector<std::size_t> out;
    for (auto& [k, ids] : host.dispatched)
        if (k == stage) out.push_back(ids.size());
    return out;
}

// Full batches, then the final partial batch at the end of input (the linger is far off);
// the source gives one item per pull, so a batch sent before it is full would show.
void test_batch_full_and_final_partial() {
    FlowScheduler flow({stage(1, 16, 4, 1000.0)}, 100, true, kTick);
    Host host;
    host.on_pull = [&](std::size_t) -> std::pair<std::size_t, bool> {  // one item a pull
        CHECK(host.given < 10);
        ++host.given;
        return {1, host.given == 10};
    };
    host.on_dispatch = [&](std::size_t k, const Ids& ids) {
        CHECK(flow.stats().stages[0].busy == 1);  // one batch in flight at a time
        flow.done(k, ids, {});
    };
    const Exits out = drain(flow, host);
    CHECK(out.size() == 10);
    CHECK((sizes_on(host, 0) == std::vector<std::size_t>{4, 4, 2}));
}

// set_batch_size: batches sent after it have the new size (smaller, then larger); a size
// that is not a batch stage's (< 2, over the queue bound, an item stage) is refused.
void test_batch_size_changes_while_running() {
    FlowScheduler flow({stage(1, 16, 4, 1000.0), stage(1, 16)}, 100, true, kTick);
    Host host;
    host.total = 20;
    host.on_dispatch = [&](std::size_t k, const Ids& ids) {
        if (k == 0) {
            const std::size_t sent = sizes_on(host, 0).size();
            if (sent == 1) flow.set_batch_size(0, 2);   // after the first batch: 2
            if (sent == 4) flow.set_batch_size(0, 8);   // after three more: 8
        }
        flow.done(k, ids, {});
    };
    CHECK(drain(flow, host).size() == 20);
    CHECK((sizes_on(host, 0) == std::vector<std::size_t>{4, 2, 2, 2, 8, 2}));
    bool refused = false;
    for (auto [k, n] : {std::pair<std::size_t, std::size_t>{0, 1}, {0, 17}, {1, 4}}) {
        try {
            flow.set_batch_size(k, n);
        } catch (const std::invalid_argument&) {
            refused = true;
            continue;
        }
        CHECK(false);  // each of these must be refused
    }
    CHECK(refused);
}

// Stage 0's items wait in `held` (its dispatch puts them there); the host finishes one of
// them per wait of the driver.
void finish_one_per_wait(FlowScheduler& flow, Host& host, Ids& held) {
    host.before_wait = [&flow, &held] {
        CHECK(!held.empty());
        const std::uint64_t id = held.front();
        held.erase(held.begin());
        flow.done(0, {id}, {});
    };
}

// A stage behind a batch stage sees its final partial batch only once the earlier stage
// is empty (not while items can still arrive).
void test_batch_final_partial_waits_for_upstream() {
    FlowScheduler flow({stage(4, 4), stage(1, 16, 8, 1000.0)}, 100, true, kTick);
    Host host;
    host.total = 3;
    Ids stage0;
    host.on_dispatch = [&](std::size_t k, const Ids& ids) {
        if (k == 0) stage0.insert(stage0.end(), ids.begin(), ids.end());
        else flow.done(k, ids, {});
    };
    finish_one_per_wait(flow, host, stage0);
    CHECK(drain(flow, host).size() == 3);
    CHECK((sizes_on(host, 1) == std::vector<std::size_t>{3}));
}

// drained(k): no more items can reach stage k (a process stage then sends what it holds
// instead of lingering): only once the input is exhausted and earlier stages are empty.
void test_drained_once_nothing_more_can_come() {
    FlowScheduler flow({stage(4, 4), stage(4, 4)}, 100, true, kTick);
    Host host;
    host.total = 3;
    Ids stage0;
    std::vector<bool> seen;  // drained(1) at each stage-1 dispatch
    host.on_dispatch = [&](std::size_t k, const Ids& ids) {
        if (k == 0) {
            stage0.insert(stage0.end(), ids.begin(), ids.end());
            CHECK(!flow.drained(1));  // stage 0 holds items
            return;
        }
        seen.push_back(flow.drained(1));
        flow.done(k, ids, {});
    };
    finish_one_per_wait(flow, host, stage0);
    CHECK(drain(flow, host).size() == 3);
    CHECK((seen == std::vector<bool>{false, false, true}));
    CHECK(flow.drained(0) && flow.drained(1));
    bool threw = false;
    try {
        flow.drained(2);
    } catch (const std::out_of_range&) {
        threw = true;
    }
    CHECK(threw);
}

// active_s: the time some item of the stage was in flight, spells joined: it grows while
// items run and stops when none does (AutoEngine's items/s per stage of a stream).
void test_active_time_counts_only_while_items_run() {
    FlowScheduler flow({stage(2, 4), stage(2, 4)}, 100, true, kTick);
    Host host;
    host.total = 4;
    host.on_dispatch = [&](std::size_t k, const Ids& ids) {
        if (k == 0) std::this_thread::sleep_for(20ms);  // stage 0's items run 20 ms
        flow.done(k, ids, {});
    };
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(drain(flow, host).size() == 4);
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                            .count();
    const auto st = flow.stats();
    // Stage 0 dispatched its items in two rounds of 2 (capacity 2), each done after its
    // 20 ms: in flight >= 40 ms. Stage 1's were done inside their dispatch: ~0.
    CHECK(st.stages[0].active_s >= 0.039 && st.stages[0].active_s <= wall);
    CHECK(st.stages[1].active_s < st.stages[0].active_s);
    CHECK(st.stages[0].done_total == 4 && st.stages[1].done_total == 4);
    std::this_thread::sleep_for(10ms);
    CHECK(flow.stats().stages[0].active_s == st.stages[0].active_s);  // nothing runs now
}

// The source gives 3 items, then nothing (not exhausted) until a batch was sent: only the
// linger deadline can send that partial batch.
void test_batch_linger() {
    FlowScheduler flow({stage(1, 16, 8, 0.02)}, 100, true, kTick);
    Host host;
    host.on_pull = [&](std::size_t k) -> std::pair<std::size_t, bool> {
        if (host.dispatched.empty()) {
            const std::size_t n = std::min<std::size_t>(k, 3 - host.given);
            host.given += n;
            return {n, false};
        }
        return {0, true};
    };
    host.on_dispatch = [&](std::size_t k, const Ids& ids) {
        CHECK(!flow.stats().exhausted);  // sent before the end of input: the linger did it
        flow.done(k, ids, {});
    };
    host.deadline = std::chrono::steady_clock::now() + 10s;  // 500x the linger
    CHECK(drain(flow, host).size() == 3);
    CHECK((sizes_on(host, 0) == std::vector<std::size_t>{3}));
}

// ---- failures ------------------------------------------------------------------------

// Even ids fail on stage 0: they never reach stages 1 and 2 and leave marked failed.
void test_failed_items_skip_later_stages() {
    FlowScheduler flow({stage(2, 2), stage(2, 2), stage(1, 1, 2, 0.0)}, 6, true, kTick);
    Host host;
    host.total = 20;
    host.on_dispatch = [&](std::size_t k, const Ids& ids) {
        std::vector<bool> failed;
        for (std::uint64_t id : ids) failed.push_back(k == 0 && id % 2 == 0);
        flow.done(k, ids, failed);
    };
    const Exits out = drain(flow, host);
    CHECK(out.size() == 20);
    for (std::uint64_t id = 0; id < 20; ++id) CHECK(out[id] == FlowScheduler::Exit(id, id % 2 == 0));
    for (std::size_t k : {1, 2})
        for (std::uint64_t id : host.ids_on(k)) CHECK(id % 2 == 1);
    CHECK(host.ids_on(2).size() == 10);
}

// ---- close, interrupt, errors ----------------------------------------------------------

// close() from another thread while next() waits: next() returns [] and never calls the
// host again; later done() calls are ignored.
void test_close_mid_run() {
    FlowScheduler flow({stage(2, 2)}, 4, true, kTick);
    Host host;
    std::atomic<bool> waiting{false};
    host.before_wait = [&] { waiting = true; };
    std::thread closer([&] {
        while (!waiting) std::this_thread::yield();
        flow.close();
    });
    const Exits got = flow.next(host);  // nothing completes: only close() ends this
    closer.join();
    CHECK(got.empty());
    // Pulled 2 (stage 0's queue), dispatched them, pulled 2 more into the queue.
    CHECK(host.pulls.size() == 2 && host.dispatched.size() == 1);
    flow.done(0, {0, 1}, {});  // ignored, no error
    CHECK(flow.next(host).empty());
    CHECK(host.pulls.size() == 2 && host.dispatched.size() == 1);
    const auto st = flow.stats();
    CHECK(st.closed && st.left == 0 && st.stages[0].in_flight == 2);
}

// close() from inside dispatch (an executor giving up), in a round that has one more
// dispatch planned: no further host call.
void test_close_from_dispatch() {
    FlowScheduler flow({stage(1, 1), stage(1, 1)}, 4, true, kTick);
    Host host;
    // Item 0 finishes stage 0 during the first wait; the next round then starts 0 on
    // stage 1 and 1 on stage 0, and the first of those two dispatches closes the flow.
    host.before_wait = [&] {
        CHECK(host.waits == 1);
        flow.done(0, {0}, {});
    };
    host.on_dispatch = [&](std::size_t k, const Ids&) {
        if (k == 1) flow.close();
    };
    CHECK(flow.next(host).empty());
    CHECK((host.dispatched == std::vector<std::pair<std::size_t, Ids>>{{0, {0}}, {1, {0}}}));
    CHECK(flow.next(host).empty());
    CHECK(host.pulls.size() == 2 && host.dispatched.size() == 2);
}

void test_check_interrupt_stops_next() {
    FlowScheduler flow({stage(2, 2)}, 4, true, kTick);
    Host host;
    int checks = 0;
    host.interrupt = [&] { return ++checks == 3; };
    host.before_wait = [&] { CHECK(host.waits <= 10); };  // an ignored interrupt fails here
    bool interrupted = false;
    try {
        flow.next(host);
    } catch (const FlowInterrupted&) {
        interrupted = true;
    }
    CHECK(interrupted && checks == 3);
    CHECK(flow.stats().closed);
    CHECK(flow.next(host).empty());
    CHECK(checks == 3);
}

void test_host_exceptions_close_the_flow() {
    {
        FlowScheduler flow({stage(2, 2)}, 4, true, kTick);
        Host host;
        host.on_pull = [](std::size_t) -> std::pair<std::size_t, bool> {
            throw std::runtime_error("source broke");
        };
        CHECK(next_throws<std::runtime_error>(flow, host, "source broke") && flow.stats().closed);
        CHECK(flow.next(host).empty() && host.pulls.size() == 1);
    }
    {
        FlowScheduler flow({stage(2, 2)}, 4, true, kTick);
        Host host;
        host.on_dispatch = [](std::size_t, const Ids&) { throw std::logic_error("no executor"); };
        CHECK(next_throws<std::logic_error>(flow, host, "no executor") && flow.stats().closed);
    }
    {  // a pull that reads more than asked is an error, not a silent overrun
        FlowScheduler flow({stage(2, 2)}, 4, true, kTick);
        Host host;
        host.on_pull = [](std::size_t k) -> std::pair<std::size_t, bool> { return {k + 1, false}; };
        bool thrown = false;
        try {
            flow.next(host);
        } catch (const std::invalid_argument&) {
            thrown = true;
        }
        CHECK(thrown && flow.stats().closed && flow.stats().pulled == 0);
    }
}

// done() for an item not in flight on that stage is refused and changes nothing.
void test_done_rejects_unknown_items() {
    FlowScheduler flow2({stage(1, 2), stage(2, 2)}, 4, true, kTick);
    Host host2;
    host2.total = 2;  // 0 in flight on stage 0, 1 queued there
    host2.before_wait = [&] {
        auto bad = [&](std::size_t k, const Ids& ids, std::vector<bool> failed) {
            try {
                flow2.done(k, ids, failed);
            } catch (const std::invalid_argument&) {
                return true;
            }
            return false;
        };
        CHECK(bad(0, {0, 7}, {}));            // 7 was never pulled; 0 must not move
        CHECK(bad(0, {1}, {}));               // queued, not dispatched
        CHECK(bad(1, {0}, {}));               // wrong stage
        CHECK(bad(0, {0, 0}, {}));            // twice in one call
        CHECK(bad(0, {0}, {true, false}));    // flags do not match
        CHECK(bad(5, {0}, {}));               // no such stage
        CHECK(flow2.stats().stages[0].in_flight == 1 && flow2.stats().stages[0].queued == 1);
        flow2.close();
    };
    CHECK(flow2.next(host2).empty());
}

// One driver at a time: next() from inside dispatch is refused and changes nothing.
void test_next_is_not_reentrant() {
    FlowScheduler flow({stage(1, 1)}, 2, true, kTick);
    Host host;
    host.total = 2;
    int refused = 0;
    host.on_dispatch = [&](std::size_t k, const Ids& ids) {
        try {
            flow.next(host);
        } catch (const std::logic_error&) {
            ++refused;
        }
        flow.done(k, ids, {});
    };
    CHECK(drain(flow, host).size() == 2);
    CHECK(refused == 2 && !flow.stats().closed);
}

void test_invalid_config() {
    auto refused = [](std::vector<FlowStage> stages, std::size_t read_ahead) {
        try {
            FlowScheduler flow(std::move(stages), read_ahead, true);
        } catch (const std::invalid_argument&) {
            return true;
        }
        return false;
    };
    CHECK(refused({stage(1, 1)}, 0));
    CHECK(refused({stage(0, 1)}, 1));
    CHECK(refused({stage(1, 0)}, 1));
    CHECK(refused({stage(1, 1, 4, -1.0)}, 1));
    CHECK(!refused({stage(1, 1)}, 1));
}

// No stages: pulled items leave at once, bounded by read_ahead per round.
void test_no_stages() {
    FlowScheduler flow({}, 3, true, kTick);
    Host host;
    host.total = 7;
    const Exits out = drain(flow, host);
    CHECK(out.size() == 7);
    for (std::size_t i = 0; i < out.size(); ++i) CHECK(out[i].first == i);
    for (std::size_t k : host.pulls) CHECK(k <= 3);
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<test_support::NamedTest> tests({
        {"stress_ordered", test_stress_ordered},
        {"stress_unordered", test_stress_unordered},
        {"backpressure_queue_bounds", test_backpressure_queue_bounds},
        {"backpressure_read_ahead", test_backpressure_read_ahead},
        {"read_ahead_counts_finished_items", test_read_ahead_counts_finished_items},
        {"read_ahead_grows", test_read_ahead_grows},
        {"lagging_source_results_first", test_lagging_source_results_first},
        {"input_read_while_items_leave", test_input_read_while_items_leave},
        {"ordered_exit", test_ordered_exit},
        {"unordered_exit", test_unordered_exit},
        {"batch_full_and_final_partial", test_batch_full_and_final_partial},
        {"batch_final_partial_waits_for_upstream", test_batch_final_partial_waits_for_upstream},
        {"batch_linger", test_batch_linger},
        {"batch_size_changes_while_running", test_batch_size_changes_while_running},
        {"drained_once_nothing_more_can_come", test_drained_once_nothing_more_can_come},
        {"active_time_counts_only_while_items_run",
         test_active_time_counts_only_while_items_run},
        {"failed_items_skip_later_stages", test_failed_items_skip_later_stages},
        {"close_mid_run", test_close_mid_run},
        {"close_from_dispatch", test_close_from_dispatch},
        {"check_interrupt_stops_next", test_check_interrupt_stops_next},
        {"host_exceptions_close_the_flow", test_host_exceptions_close_the_flow},
        {"done_rejects_unknown_items", test_done_rejects_unknown_items},
        {"next_is_not_reentrant", test_next_is_not_reentrant},
        {"invalid_config", test_invalid_config},
        {"no_stages", test_no_stages},
    });
    return test_support::run_tests(tests, argc, argv);
}
