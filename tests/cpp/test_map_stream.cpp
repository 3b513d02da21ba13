// Unit tests of gilfree::MapScheduler's streaming maps (MapRequest::streaming: the host
// hands out ranges of the items it has ready while the map runs) against fake workers:
// no processes, no Python, no timing.
#include <algorithm>
#include <cstddef>
#include <map>
#include <set>
#include <tuple>
#include <vector>

#include "fake_workers.hpp"
#include "recording_host.hpp"

using namespace std::chrono_literals;
using gilfree::Frame;
using gilfree::LostItems;
using gilfree::MapRequest;
using gilfree::MapScheduler;
using test_support::FakeWorkers;
using test_support::Host;
using test_support::Sent;

namespace {

// A streaming host: `ready` ids go out lowest first, `take` (or `most`) at a time, as the
// range from the first to the last; the ids of the range that are not the batch's are
// its placeholders. Items count as reported only for the batch (origin) they belong to.
class StreamHost : public Host {
public:
    explicit StreamHost(std::size_t n) : Host(n) {}

    std::set<std::size_t> ready;
    std::map<std::size_t, std::set<std::size_t>> members;  // origin -> its ids
    std::vector<std::size_t> mosts, shares;
    std::vector<std::tuple<std::size_t, std::size_t, std::size_t>> made;  // a, b, origin
    bool is_open = true;
    double hold_s = 0;      // > 0: items ready are held back (ask again in hold_s)
    std::size_t take = 0;   // > 0: at most this many per batch (else `most`)
    std::size_t asked = 0;  // next_range calls

    bool next_range(std::size_t most, std::size_t share, std::size_t& a, std::size_t& b,
                    double& ask_again_s) override {
        ++asked;
        mosts.push_back(most);
        shares.push_back(share);
        if (ready.empty()) return false;
        if (hold_s > 0) {
            ask_again_s = hold_s;
            return false;
        }
        const std::size_t n = take ? std::min(take, most) : most;
        a = *ready.begin();
        auto& own = members[a];
        while (!ready.empty() && own.size() < n) {
            own.insert(*ready.begin());
            ready.erase(ready.begin());
        }
        b = *own.rbegin() + 1;
        return true;
    }
    bool open() override { return is_open; }
    void make_batch(std::size_t a, std::size_t b, std::size_t origin, Frame& f) override {
        made.emplace_back(a, b, origin);
        CHECK(members.count(origin) == 1);  // an origin the host handed out
        Host::make_batch(a, b, origin, f);
    }
    bool on_result(std::size_t a, std::size_t b, std::size_t origin, Frame& f) override {
        CHECK(f.body == std::to_string(a) + ":" + std::to_string(b));
        for (std::size_t i = a; i < b; ++i) results[i] += members.at(origin).count(i);
        return on_result_hook ? on_result_hook(a, b) : true;
    }
    bool on_lost(std::size_t a, std::size_t b, std::size_t origin, const LostItems& why) override {
        for (std::size_t i = a; i < b; ++i) lost[i] += members.at(origin).count(i);
        lost_ranges.emplace_back(a, b);
        lost_why.push_back(why);
        return true;
    }
};

MapRequest stream_request(std::size_t chunk = 0, double timeout = 0) {
    MapRequest r = test_support::request(0, "k", chunk, 2, timeout);
    r.streaming = true;
    return r;
}

// Items become ready ten at a time while the map runs (the script releases them and
// wakes the scheduler, as the stream's dispatch does); each runs exactly once, and the
// map ends once the host is closed and what was sent is back.
void test_items_run_once_as_they_become_ready() {
    FakeWorkers pool(2);
    StreamHost host(60);
    std::size_t released = 0;
    pool.script = [&](FakeWorkers& f) {
        f.finish_all_fronts();
        if (released < 60) {
            for (std::size_t i = released; i < released + 10; ++i) host.ready.insert(i);
            released += 10;
            f.wake();
        } else {
            host.is_open = false;
        }
    };
    MapScheduler sched(pool, 0, 1ms);
    CHECK(sched.run(stream_request(), host) == MapScheduler::End::done);
    CHECK(host.each_once());
    CHECK(host.lost_count() == 0);
    CHECK(pool.max_in_flight <= 2);
    for (auto& [id, w] : pool.workers) CHECK(w.in_flight == 0);
    // Nothing measured yet (the fakes answer at once, in no time): one item per batch
    // is asked for until a batch has been timed; never more than the cap.
    CHECK(!host.mosts.empty() && host.mosts.front() == 1);
    for (std::size_t m : host.mosts) CHECK(m >= 1 && m <= MapScheduler::kStreamBatchMax);
}

// A batch's range holds placeholders (ids ready later, or sent in another batch): each
// id is reported once, for the batch it belongs to, whatever the ranges overlap.
void test_overlapping_ranges_report_each_item_once() {
    FakeWorkers pool(1);
    StreamHost host(8);
    host.take = 3;
    host.ready = {0, 2, 4};  // 1, 3: still in an earlier stage
    bool second = false;
    pool.script = [&](FakeWorkers& f) {
        f.finish_all_fronts();
        if (!second) {
            host.ready.insert({1, 3, 5, 6, 7});
            second = true;
        } else {
            host.is_open = false;
        }
    };
    MapScheduler sched(pool, 0, 1ms);
    MapRequest req = stream_request(3);
    CHECK(sched.run(std::move(req), host) == MapScheduler::End::done);
    CHECK(host.each_once());
    CHECK(std::get<0>(host.made[0]) == 0 && std::get<1>(host.made[0]) == 5);
    CHECK(std::get<0>(host.made[1]) == 1 && std::get<1>(host.made[1]) == 6);  // 1, 3, 5
    for (auto& [a, b, origin] : host.made) CHECK(a == origin);  // nothing was sent again
}

// A worker dies with a batch queued behind the one it runs: the queued batch is sent
// again with its origin; of the running one, the item it ran is lost, and the rest is
// sent again with the running batch's origin (its own items stay its own).
void test_batch_sent_again_keeps_its_origin() {
    FakeWorkers pool(2);
    StreamHost host(40);
    host.take = 4;
    for (std::size_t i = 0; i < 40; ++i) host.ready.insert(i);
    bool died = false;
    std::size_t queued_origin = 0, running_origin = 0;
    pool.script = [&](FakeWorkers& f) {
        if (!died && f.workers.at(1).queue.size() == 2) {
            queued_origin = f.workers.at(1).queue[1].start;
            running_origin = f.workers.at(1).queue.front().start;
            f.start_front(1, f.workers.at(1).queue.front().start);
            f.die(1, SIGSEGV, false);
            died = true;
            return;
        }
        f.finish_all_fronts();
        if (host.ready.empty()) host.is_open = false;
    };
    MapScheduler sched(pool, 0, 1ms);
    CHECK(sched.run(stream_request(4), host) == MapScheduler::End::done);
    CHECK(died);
    CHECK(host.each_once());
    CHECK(host.lost_count() == 1);  // the item it ran
    CHECK(host.lost[running_origin] == 1);
    std::size_t made = 0, remade = 0;
    for (auto& [a, b, origin] : host.made) {
        made += origin == queued_origin;
        remade += origin == running_origin && a == running_origin + 1;
    }
    CHECK(made == 2);  // made for the dead worker, then again with the same origin
    CHECK(remade == 1);  // the running batch's other items, with its origin
}

// An overdue item in a streaming batch: it alone is lost; the rest of its batch is sent
// again in two parts, each keeping the batch's origin (so its own ids stay its own).
void test_overdue_item_split_keeps_the_origin() {
    FakeWorkers pool(2);
    StreamHost host(20);
    host.take = 5;
    host.ready = {0, 2, 3, 4, 6, 7, 8, 9, 10, 11};  // 1 and 5 never come: placeholders
    bool stuck = false;
    std::size_t origin = 0;
    pool.script = [&](FakeWorkers& f) {
        if (!stuck) {  // worker 1 hangs on the third item of its first batch (id 3)
            const Sent s = f.workers.at(1).queue.front();
            origin = s.start;
            f.start_front(1, 3, /*started_ns=*/1);  // long ago
            stuck = true;
        }
        for (std::uint64_t id : f.busy())
            if (id != 1 || f.workers.at(1).page.item != 3) f.finish_front(id);
        if (host.ready.empty()) host.is_open = false;
    };
    MapScheduler sched(pool, 0, 1ms);
    CHECK(sched.run(stream_request(5, 0.5), host) == MapScheduler::End::done);
    CHECK(origin == 0 && pool.kills == 1);
    CHECK(host.lost_ranges.size() == 1 && host.lost_ranges[0] == std::make_pair(3ul, 4ul));
    CHECK(host.lost[3] == 1 && host.lost_count() == 1);
    for (std::size_t i : {0, 2, 4, 6, 7, 8, 9, 10, 11}) CHECK(host.results[i] == 1);
    CHECK(host.results[1] == 0 && host.results[5] == 0);  // placeholders: nobody's item
    std::set<std::pair<std::size_t, std::size_t>> again;
    for (auto& [a, b, o] : host.made)
        if (o == 0 && a != 0) again.emplace(a, b);
    CHECK(again.count({4, 7}) == 1);  // after the overdue item: 4 (and 5, 6 not its own)
}

// A host holding its items back (for a fuller batch) is asked again no later than it
// said: the next wait is that short, not a whole tick.
void test_held_items_are_asked_for_again_in_time() {
    FakeWorkers pool(1);
    StreamHost host(3);
    host.ready = {0, 1, 2};
    host.hold_s = 0.002;
    pool.script = [&](FakeWorkers& f) {
        host.hold_s = 0;  // the time has passed: the host lets them go
        f.finish_all_fronts();
        if (host.ready.empty()) host.is_open = false;
    };
    MapScheduler sched(pool, 0, 1s);  // a long tick: the hold must shorten the wait
    CHECK(sched.run(stream_request(), host) == MapScheduler::End::done);
    CHECK(host.each_once());
    CHECK(!pool.waited.empty() && pool.waited.front() <= 3ms);
}

// Closed with items in flight: no new batch goes out (items made ready after are for
// the next map), what was sent comes back, and run() returns.
void test_closed_stream_drains_what_was_sent() {
    FakeWorkers pool(2);
    StreamHost host(20);
    host.take = 2;
    for (std::size_t i = 0; i < 8; ++i) host.ready.insert(i);
    host.on_result_hook = [&](std::size_t, std::size_t) {
        host.is_open = false;  // the consumer closed the stream
        return false;          // and the callback says stop, as the stream's does
    };
    MapScheduler sched(pool, 0, 1ms);
    CHECK(sched.run(stream_request(2), host) == MapScheduler::End::done);
    CHECK(host.made.size() == 4);  // 2 workers x depth 2, nothing after the stop
    std::size_t reported = 0;
    for (int r : host.results) reported += static_cast<std::size_t>(r);
    CHECK(reported == 8);
    CHECK(host.lost_count() == 0);
    for (auto& [id, w] : pool.workers) CHECK(w.in_flight == 0);
}

// A fixed chunk is what the host is asked for; idle workers share what is ready.
void test_fixed_chunk_and_idle_share() {
    FakeWorkers pool(3);
    StreamHost host(30);
    for (std::size_t i = 0; i < 30; ++i) host.ready.insert(i);
    pool.script = [&](FakeWorkers& f) {
        f.finish_all_fronts();
        if (host.ready.empty()) host.is_open = false;
    };
    MapScheduler sched(pool, 0, 1ms);
    CHECK(sched.run(stream_request(7), host) == MapScheduler::End::done);
    CHECK(host.each_once());
    for (std::size_t m : host.mosts) CHECK(m == 7);
    CHECK(host.shares.front() == 3);  // three idle workers at the first ask
    for (std::size_t s : host.shares) CHECK(s >= 1 && s <= 3);
}

// An empty stream that closes: no batch, no hang.
void test_empty_stream_ends() {
    FakeWorkers pool(2);
    StreamHost host(1);
    host.is_open = false;
    MapScheduler sched(pool, 0, 1ms);
    CHECK(sched.run(stream_request(), host) == MapScheduler::End::done);
    CHECK(host.made.empty() && host.asked >= 1);
}

}  // namespace

int main(int argc, char** argv) {
    const std::vector<test_support::NamedTest> tests = {
        {"items_run_once_as_they_become_ready", test_items_run_once_as_they_become_ready},
        {"overlapping_ranges_report_each_item_once",
         test_overlapping_ranges_report_each_item_once},
        {"batch_sent_again_keeps_its_origin", test_batch_sent_again_keeps_its_origin},
        {"overdue_item_split_keeps_the_origin", test_overdue_item_split_keeps_the_origin},
        {"held_items_are_asked_for_again_in_time", test_held_items_are_asked_for_again_in_time},
        {"closed_stream_drains_what_was_sent", test_closed_stream_drains_what_was_sent},
        {"fixed_chunk_and_idle_share", test_fixed_chunk_and_idle_share},
        {"empty_stream_ends", test_empty_stream_ends},
    };
    return test_support::run_tests(tests, argc, argv);
}
