// What the flow scheduler's unit tests share (test_flow.cpp, test_flow_claimed.cpp): a
// host with hooks for the executors, and drain() to run a flow to its end.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "check.hpp"
#include "gilfree/flow.hpp"

using namespace std::chrono_literals;
using gilfree::FlowHost;
using gilfree::FlowInterrupted;
using gilfree::FlowScheduler;
using gilfree::FlowStage;
using Ids = std::vector<std::uint64_t>;
using Exits = std::vector<FlowScheduler::Exit>;

namespace flow_test {

constexpr auto kTick = 5ms;  // short ticks: a stuck test reaches its deadline quickly

inline FlowStage stage(std::size_t capacity, std::size_t queue_bound, std::size_t batch = 1,
                double linger = 0) {
    return FlowStage{capacity, queue_bound, batch, linger};
}

inline FlowStage claimed(std::size_t capacity, std::size_t queue_bound) {
    FlowStage s{capacity, queue_bound, 1, 0};
    s.claimed = true;
    return s;
}

// A source of `total` items (default: endless) and hooks for the executors.
struct Host final : FlowHost {
    std::uint64_t total = UINT64_MAX;
    std::uint64_t given = 0;
    std::function<std::pair<std::size_t, bool>(std::size_t)> on_pull;
    std::function<void(std::size_t, const Ids&)> on_dispatch;
    std::function<void(std::size_t, std::size_t)> on_start;  // a claimed stage's workers
    std::vector<std::pair<std::size_t, std::size_t>> started;  // (stage, n), driver only
    std::function<void()> before_wait;  // runs in the driver thread, lock "released"
    std::function<bool()> interrupt;
    std::vector<std::pair<std::size_t, Ids>> dispatched;  // driver thread only
    std::vector<std::size_t> pulls;                      // each pull's k
    std::size_t waits = 0;
    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::now() + 60s;

    std::pair<std::size_t, bool> pull(std::size_t k) override {
        CHECK(k >= 1);
        pulls.push_back(k);
        if (on_pull) return on_pull(k);
        const std::uint64_t n = std::min<std::uint64_t>(k, total - given);
        given += n;
        return {static_cast<std::size_t>(n), given == total};
    }
    void dispatch(std::size_t stage, const Ids& ids) override {
        CHECK(!ids.empty());
        dispatched.emplace_back(stage, ids);
        if (on_dispatch) on_dispatch(stage, ids);
    }
    void start(std::size_t stage, std::size_t n) override {
        CHECK(n >= 1);
        started.emplace_back(stage, n);
        if (on_start) on_start(stage, n);
    }
    std::size_t started_on(std::size_t stage) const {
        std::size_t n = 0;
        for (auto& [k, m] : started) n += k == stage ? m : 0;
        return n;
    }
    bool check_interrupt() override {
        if (interrupt) return interrupt();
        return std::chrono::steady_clock::now() > deadline;  // a hang: stop, the test fails
    }
    void unlocked(const std::function<void()>& wait) override {
        ++waits;
        if (before_wait) before_wait();
        wait();
    }
    Ids ids_on(std::size_t stage) const {
        Ids out;
        for (auto& [k, ids] : dispatched)
            if (k == stage) out.insert(out.end(), ids.begin(), ids.end());
        return out;
    }
};

// One next(); a FlowInterrupted (the deadline) fails the test.
inline Exits next_or_fail(FlowScheduler& flow, FlowHost& host) {
    try {
        return flow.next(host);
    } catch (const FlowInterrupted&) {
        CHECK(!"the flow hung: deadline reached");
    }
    return {};
}

// next() until the end.
inline Exits drain(FlowScheduler& flow, FlowHost& host) {
    Exits all;
    for (;;) {
        const Exits got = next_or_fail(flow, host);
        if (got.empty()) return all;
        all.insert(all.end(), got.begin(), got.end());
    }
}

// True if flow.next(host) throws an E whose message is `what` (a host call's exception
// going through unchanged).
template <class E>
bool next_throws(FlowScheduler& flow, FlowHost& host, const std::string& what) {
    try {
        flow.next(host);
    } catch (const E& e) {
        return std::string(e.what()) == what;
    }
    return false;
}

}  // namespace flow_test
