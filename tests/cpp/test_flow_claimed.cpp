// Unit tests of gilfree::FlowScheduler's claimed stages (a thread pool's: workers take
// items themselves with claim(), the driver only starts them): no Python. As in
// test_flow.cpp, no timing assertions; a flow that hangs is stopped at a deadline.
#include "flow_test_host.hpp"

using namespace flow_test;

namespace {

// ---- claimed stages: workers take items themselves ------------------------------------

// Worker threads for a claimed stage: each claims until claim() says it has ended.
struct ClaimWorkers {
    FlowScheduler& flow;
    std::size_t stage;
    std::chrono::nanoseconds idle;
    std::function<bool(std::uint64_t)> run;  // the item; false: it failed
    std::mutex mu;
    std::vector<std::thread> threads;
    std::atomic<std::size_t> running{0}, most{0}, ended{0};

    ClaimWorkers(FlowScheduler& f, std::size_t k, std::chrono::nanoseconds wait,
                 std::function<bool(std::uint64_t)> fn)
        : flow(f), stage(k), idle(wait), run(std::move(fn)) {}

    void start(std::size_t n) {
        std::lock_guard<std::mutex> lk(mu);
        for (std::size_t i = 0; i < n; ++i)
            threads.emplace_back([this] {
                std::uint64_t id = 0;
                while (flow.claim(stage, idle, id)) {
                    const std::size_t now = ++running;
                    std::size_t m = most.load();
                    while (now > m && !most.compare_exchange_weak(m, now)) {
                    }
                    const bool ok = run ? run(id) : true;
                    --running;
                    flow.done(stage, {id}, {!ok});
                }
                ++ended;
            });
    }
    ~ClaimWorkers() {
        flow.close();  // wakes any still waiting
        std::lock_guard<std::mutex> lk(mu);
        for (auto& t : threads) t.join();
    }
};

// A dispatched stage then a claimed one, 2,000 items, ~3% failing on the claimed stage:
// every item leaves once, in order; the claimed stage never runs more than its capacity,
// the driver starts no more workers than its capacity at once, and once the input has
// ended every worker ends (claim() returns false) without waiting out its idle time.
void test_claimed_stage_runs_every_item_once() {
    const std::size_t n = 2000;
    FlowScheduler flow({stage(8, 64), claimed(6, 64)}, 256, true, kTick);
    Host host;
    host.total = n;
    host.on_dispatch = [&](std::size_t k, const Ids& ids) { flow.done(k, ids, {}); };
    ClaimWorkers workers(flow, 1, 10s, [](std::uint64_t id) { return id % 31 != 5; });
    host.on_start = [&](std::size_t k, std::size_t m) {
        CHECK(k == 1);
        CHECK(flow.stats().stages[1].workers <= 6);
        workers.start(m);
    };
    const Exits out = drain(flow, host);
    CHECK(out.size() == n);
    for (std::size_t i = 0; i < n; ++i) CHECK(out[i] == FlowScheduler::Exit(i, i % 31 == 5));
    CHECK(workers.most.load() <= 6);
    CHECK(host.ids_on(1).empty());  // nothing dispatched to a claimed stage
    // The idle wait is 10 s: ending sooner shows the end of input released them.
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (workers.ended.load() < host.started_on(1) && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(1ms);
    CHECK(workers.ended.load() == host.started_on(1));
    CHECK(flow.stats().stages[1].workers == 0);
}

// Workers that find nothing for their idle time end and are counted out; the driver
// starts new ones when items come again. Parked items hold the claimed stage's capacity:
// claim() waits for it (the next stage's queue frees it).
void test_claimed_workers_end_when_idle_and_respect_capacity() {
    FlowScheduler flow({claimed(2, 10)}, 10, false, kTick);
    std::uint64_t id = 0;
    bool invalid = false;
    try {
        FlowScheduler other({stage(1, 1)}, 1, true, kTick);
        other.claim(0, 0ns, id);
    } catch (const std::invalid_argument&) {
        invalid = true;
    }
    CHECK(invalid);  // only a claimed stage can be claimed from
    Host host;
    host.total = 3;
    std::size_t exits_seen = 0;
    host.on_start = [&](std::size_t, std::size_t m) { CHECK(m <= 2); };
    host.before_wait = [&] {
        // The driver started 2 workers for 3 items; play them here, in the driver thread.
        auto st = flow.stats();
        if (st.stages[0].workers == 2 && st.stages[0].queued == 3) {
            std::uint64_t a = 0, b = 0, c = 0;
            CHECK(flow.try_claim(0, a) && flow.try_claim(0, b));
            CHECK(!flow.try_claim(0, c));  // capacity 2: both slots taken
            flow.done(0, {a}, {});
            CHECK(flow.claim(0, 0ns, c));  // a's slot is free again
            flow.done(0, {b, c}, {});
            CHECK(!flow.claim(0, 1ms, c));  // nothing left: this worker ends
            CHECK(flow.stats().stages[0].workers == 1);
            flow.worker_exit(0);  // and the other one, without claiming
            CHECK(flow.stats().stages[0].workers == 0);
        }
    };
    exits_seen = drain(flow, host).size();
    CHECK(exits_seen == 3);
    CHECK(host.started_on(0) == 2);
}

// close() wakes workers waiting to claim (their idle wait is long), and they end.
void test_close_wakes_claimers() {
    FlowScheduler flow({claimed(4, 4)}, 4, true, kTick);
    std::atomic<int> ended{0};
    std::vector<std::thread> ts;
    for (int i = 0; i < 3; ++i)
        ts.emplace_back([&] {
            std::uint64_t id = 0;
            CHECK(!flow.claim(0, 60s, id));
            ++ended;
        });
    std::this_thread::sleep_for(20ms);
    CHECK(ended.load() == 0);
    flow.close();
    for (auto& t : ts) t.join();
    CHECK(ended.load() == 3);
}

// A claimed stage whose workers the host cannot start: the exception closes the flow.
void test_claimed_stage_without_workers() {
    FlowScheduler flow({claimed(2, 4)}, 4, true, kTick);
    Host host;  // its start() records, then the base class throws
    host.on_start = [&](std::size_t, std::size_t) { throw std::runtime_error("no threads"); };
    CHECK(next_throws<std::runtime_error>(flow, host, "no threads") && flow.stats().closed);
    bool refused = false;
    try {
        FlowStage bad = claimed(2, 4);
        bad.batch_size = 4;
        FlowScheduler f({bad}, 4, true);
    } catch (const std::invalid_argument&) {
        refused = true;
    }
    CHECK(refused);  // a claimed stage cannot batch
}

// Stress: two claimed stages (each with worker threads) around a dispatched one, random
// item times, unordered; every item leaves exactly once. Also run under TSan.
void test_claimed_stress() {
    const std::size_t n = 20000;
    FlowScheduler flow({claimed(8, 32), stage(4, 16), claimed(5, 8)}, 64, false, kTick);
    Host host;
    host.total = n;
    host.on_dispatch = [&](std::size_t k, const Ids& ids) { flow.done(k, ids, {}); };
    auto jitter = [](std::uint64_t id) {
        if (id % 97 == 0) std::this_thread::sleep_for(50us);
        return id % 211 != 3;
    };
    ClaimWorkers w0(flow, 0, 5ms, jitter);
    ClaimWorkers w2(flow, 2, 5ms, [](std::uint64_t) { return true; });
    host.on_start = [&](std::size_t k, std::size_t m) { (k == 0 ? w0 : w2).start(m); };
    const Exits out = drain(flow, host);
    CHECK(out.size() == n);
    std::vector<int> seen(n, 0);
    for (auto [id, failed] : out) {
        CHECK(++seen[id] == 1);
        CHECK(failed == (id % 211 == 3));
    }
    CHECK(w0.most.load() <= 8 && w2.most.load() <= 5);
}

// set_capacity re-sizes a claimed stage while it runs (AutoEngine: Little's law with the
// latency of the moment): grown, the driver starts workers for the queued items and
// more run at once; shrunk, workers over the new capacity claim nothing more.
void test_set_capacity_resizes_a_claimed_stage() {
    const std::size_t n = 300;
    FlowScheduler flow({claimed(2, 300)}, 300, true, kTick);
    Host host;
    host.total = n;
    std::atomic<std::size_t> most_after_shrink{0};
    std::atomic<bool> shrunk{false};
    ClaimWorkers workers(flow, 0, 2ms, [&](std::uint64_t id) {
        if (id == 20) flow.set_capacity(0, 8);  // from a worker: thread-safe
        if (id == 200) {
            flow.set_capacity(0, 1);
            shrunk = true;
        }
        std::this_thread::sleep_for(1ms);
        return true;
    });
    host.on_start = [&](std::size_t, std::size_t m) {
        if (shrunk) {
            // Workers the driver starts after the shrink fit the new capacity.
            most_after_shrink = std::max<std::size_t>(most_after_shrink, m);
        }
        workers.start(m);
    };
    const Exits out = drain(flow, host);
    CHECK(out.size() == n);
    CHECK(workers.most.load() > 2 && workers.most.load() <= 8);
    CHECK(most_after_shrink.load() <= 1);
    CHECK(flow.stats().stages[0].capacity == 1);
    bool invalid = false;
    try {
        flow.set_capacity(0, 0);
    } catch (const std::invalid_argument&) {
        invalid = true;
    }
    CHECK(invalid);
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<test_support::NamedTest> tests({
        {"claimed_stage_runs_every_item_once", test_claimed_stage_runs_every_item_once},
        {"claimed_workers_end_when_idle_and_respect_capacity",
         test_claimed_workers_end_when_idle_and_respect_capacity},
        {"close_wakes_claimers", test_close_wakes_claimers},
        {"claimed_stage_without_workers", test_claimed_stage_without_workers},
        {"claimed_stress", test_claimed_stress},
        {"set_capacity_resizes_a_claimed_stage", test_set_capacity_resizes_a_claimed_stage},
    });
    return test_support::run_tests(tests, argc, argv);
}
