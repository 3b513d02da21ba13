// FakeWorkers: a WorkerSet with no processes for the MapScheduler tests
// (test_map_scheduler.cpp, test_map_stream.cpp). Its workers run when the scheduler
// waits, one script step at a time, so every test is deterministic. Batch bodies are
// "a:b" (recording_host.hpp makes them so).
#pragma once

#include <algorithm>
#include <chrono>
#include <csignal>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "check.hpp"
#include "gilfree/map_scheduler.hpp"
#include "gilfree/process_pool.hpp"

namespace test_support {

using namespace std::chrono_literals;
using gilfree::Frame;
using gilfree::FrameKind;
using gilfree::WorkerEvent;
using gilfree::WorkerPhase;
using gilfree::WorkerProgress;

constexpr int kExitedWithCode1 = 1 << 8;  // a waitpid status: exit(1)
constexpr int kKilled = SIGKILL;          // a waitpid status: killed by SIGKILL

struct Sent {
    std::uint64_t id;
    std::size_t start, stop;
};

// A WorkerSet whose workers run when the scheduler waits: wait_event() with no event
// queued calls `script` (default: every busy worker finishes its oldest batch).
class FakeWorkers final : public gilfree::WorkerSet {
public:
    struct Worker {
        std::deque<Sent> queue;  // batches sent, oldest first
        std::size_t in_flight = 0;
        std::set<std::string> keys;  // payloads it holds
        WorkerProgress page;
        bool live = true;
        bool exit_queued = false;
    };

    explicit FakeWorkers(std::size_t size) : size_(size) {}

    // How a started worker behaves: false = it exits (code 1) before READY.
    std::function<bool(std::uint64_t)> starts_ok = [](std::uint64_t) { return true; };
    std::function<void(FakeWorkers&)> script = [](FakeWorkers& f) { f.finish_all_fronts(); };

    std::map<std::uint64_t, Worker> workers;
    std::deque<WorkerEvent> events;
    std::map<std::uint64_t, std::string> sub_bodies;            // sub-map batch id -> body
    std::vector<std::pair<std::uint64_t, Frame>> relayed;       // send_frame: (worker, frame)
    std::size_t spawned = 0, payloads_sent = 0, max_in_flight = 0, kills = 0, waits = 0;
    std::size_t wakes = 0;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> cancels;  // (worker, batch id)
    std::vector<std::chrono::nanoseconds> waited;  // the timeout of each wait that ran script
    bool shut = false, woken = false;

    // --- script helpers ---
    std::vector<std::uint64_t> busy() const {
        std::vector<std::uint64_t> out;
        for (auto& [id, w] : workers)
            if (w.live && !w.queue.empty()) out.push_back(id);
        return out;
    }
    void finish_front(std::uint64_t id) {
        Worker& w = workers.at(id);
        const Sent s = w.queue.front();
        w.queue.pop_front();
        WorkerEvent ev;
        ev.worker = id;
        ev.pid = static_cast<pid_t>(1000 + id);
        ev.frame.kind = static_cast<std::uint32_t>(FrameKind::result);
        ev.frame.id = s.id;
        ev.frame.body = std::to_string(s.start) + ":" + std::to_string(s.stop);
        events.push_back(std::move(ev));
    }
    void finish_all_fronts() {
        for (std::uint64_t id : busy()) finish_front(id);
    }
    // The status page says: running the oldest batch (or the `nth` oldest), at `item`,
    // since `started_ns`.
    void start_front(std::uint64_t id, std::size_t item, std::int64_t started_ns = -1,
                     std::size_t nth = 0) {
        Worker& w = workers.at(id);
        w.page.batch = static_cast<std::int64_t>(w.queue.at(nth).id);
        w.page.item = static_cast<std::int64_t>(item);
        w.page.step = 0;
        w.page.phase = static_cast<std::int64_t>(WorkerPhase::batch);
        w.page.item_started_ns = started_ns;
    }
    // Exits now: the pool's reader saw EOF and took it out of the live set.
    void die(std::uint64_t id, int wait_status, bool expected) {
        Worker& w = workers.at(id);
        const bool exit_queued = w.exit_queued;
        w.live = false;
        if (!exit_queued) push_exit(id, wait_status, expected);
    }
    // The exit is queued, but the worker still looks live (batches may still be sent to
    // it) until the scheduler forgets it: a process that dies while it starts.
    void push_exit(std::uint64_t id, int wait_status, bool expected) {
        Worker& w = workers.at(id);
        w.exit_queued = true;  // a process exits once
        WorkerEvent ev;
        ev.type = WorkerEvent::Type::exited;
        ev.worker = id;
        ev.pid = static_cast<pid_t>(1000 + id);
        ev.wait_status = wait_status;
        ev.progress = w.page;
        ev.expected = expected;
        events.push_back(std::move(ev));
    }
    std::size_t live_count() const {
        std::size_t n = 0;
        for (auto& [id, w] : workers) n += w.live;
        return n;
    }

    // --- WorkerSet ---
    std::vector<std::uint64_t> fill() override {
        if (shut) throw std::runtime_error("ProcessPool is shut down");
        std::vector<std::uint64_t> started;
        while (live_count() < size_) {
            const std::uint64_t id = ++spawned;
            workers[id];
            started.push_back(id);
            if (starts_ok(id)) {
                WorkerEvent ready;
                ready.worker = id;
                ready.frame.kind = static_cast<std::uint32_t>(FrameKind::ready);
                events.push_back(std::move(ready));
            } else {
                push_exit(id, kExitedWithCode1, false);
            }
        }
        return started;
    }
    std::vector<std::uint64_t> live() const override {
        std::vector<std::uint64_t> out;
        for (auto& [id, w] : workers)
            if (w.live) out.push_back(id);
        return out;
    }
    std::size_t size() const override { return size_; }
    std::size_t in_flight(std::uint64_t id) const override {
        auto it = workers.find(id);
        return it == workers.end() || !it->second.live ? 0 : it->second.in_flight;
    }
    bool accepts(std::uint64_t id) const override {
        auto it = workers.find(id);
        return it != workers.end() && it->second.live;
    }
    bool send_batch(std::uint64_t id, const std::string& key, const Frame& payload, Frame batch,
                    std::size_t items) override {
        auto it = workers.find(id);
        if (it == workers.end() || !it->second.live) return false;
        Worker& w = it->second;
        CHECK(payload.kind == static_cast<std::uint32_t>(FrameKind::payload));
        CHECK(batch.key == key);
        if (w.keys.insert(key).second) ++payloads_sent;
        if (batch.kind == static_cast<std::uint32_t>(FrameKind::subbatch)) {
            CHECK(items == 0);  // a sub-map's batch: its body is the asker's
            sub_bodies[batch.id] = batch.body;
            w.queue.push_back(Sent{batch.id, 0, 0});
            max_in_flight = std::max(max_in_flight, ++w.in_flight);
            return true;
        }
        CHECK(batch.kind == static_cast<std::uint32_t>(FrameKind::batch));
        const auto colon = batch.body.find(':');
        const Sent s{batch.id, std::stoul(batch.body.substr(0, colon)),
                     std::stoul(batch.body.substr(colon + 1))};
        CHECK(s.stop - s.start == items);
        w.queue.push_back(s);
        max_in_flight = std::max(max_in_flight, ++w.in_flight);
        return true;
    }
    void batch_done(std::uint64_t id) override {
        auto it = workers.find(id);
        if (it == workers.end() || !it->second.live) return;
        CHECK(it->second.in_flight > 0);
        --it->second.in_flight;
    }
    void send_frame(std::uint64_t id, Frame f) override {
        relayed.emplace_back(id, std::move(f));
    }
    void forget(std::uint64_t id) override { workers.at(id).live = false; }
    WorkerProgress progress(std::uint64_t id) const override {
        auto it = workers.find(id);
        return it == workers.end() || !it->second.live ? WorkerProgress{} : it->second.page;
    }
    bool wait_event(WorkerEvent& out, std::chrono::nanoseconds timeout) override {
        if (events.empty() && woken) {  // wake(): back at once, the workers did nothing
            woken = false;
            return false;
        }
        if (events.empty() && timeout > 0ns) {
            waited.push_back(timeout);
            // A scheduler that waits for ever (nothing can happen) fails, never hangs.
            CHECK(++waits < 100000);
            script(*this);
        }
        if (events.empty()) return false;
        out = std::move(events.front());
        events.pop_front();
        return true;
    }
    void wake() override {
        ++wakes;
        woken = true;
    }
    void clear_events() override {
        std::deque<WorkerEvent> kept;
        for (auto& ev : events)
            if (ev.type == WorkerEvent::Type::exited) kept.push_back(std::move(ev));
        events.swap(kept);
    }
    void kill(std::uint64_t id) override {
        ++kills;
        die(id, kKilled, true);
    }
    // Recorded only: the scripts decide when a batch answers.
    void cancel(std::uint64_t id, std::uint64_t batch) override { cancels.emplace_back(id, batch); }
    bool is_shut_down() const override { return shut; }

private:
    std::size_t size_;
};

}  // namespace test_support
