// Test helpers shared by the MapScheduler tests: a MapHost that records what the
// scheduler reports item by item, and a MapRequest builder. Batch bodies are "a:b", so a
// result can be checked against the range it was reported for.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "check.hpp"
#include "gilfree/map_scheduler.hpp"

namespace test_support {

using gilfree::Frame;
using gilfree::FrameKind;
using gilfree::LostItems;
using gilfree::MapHost;
using gilfree::MapRequest;

// Records what the scheduler reports, item by item.
class Host : public MapHost {
public:
    explicit Host(std::size_t n) : results(n, 0), lost(n, 0) {}

    std::vector<int> results, lost;  // per item: times reported
    std::vector<std::pair<std::size_t, std::size_t>> batches_made, lost_ranges;
    std::vector<LostItems> lost_why;
    std::function<bool(std::size_t, std::size_t)> on_result_hook;
    std::function<bool()> interrupt_hook;

    void make_batch(std::size_t a, std::size_t b, std::size_t, Frame& f) override {
        CHECK(a < b && b <= results.size());
        batches_made.emplace_back(a, b);
        f.body = std::to_string(a) + ":" + std::to_string(b);
    }
    bool on_result(std::size_t a, std::size_t b, std::size_t, Frame& f) override {
        CHECK(f.body == std::to_string(a) + ":" + std::to_string(b));  // the right range
        for (std::size_t i = a; i < b; ++i) ++results[i];
        return on_result_hook ? on_result_hook(a, b) : true;
    }
    bool on_lost(std::size_t a, std::size_t b, std::size_t, const LostItems& why) override {
        for (std::size_t i = a; i < b; ++i) ++lost[i];
        lost_ranges.emplace_back(a, b);
        lost_why.push_back(why);
        return true;
    }
    bool wait_unlocked(const std::function<bool()>& poll, bool& interrupted) override {
        interrupted = interrupt_hook && interrupt_hook();
        return interrupted ? false : poll();
    }

    // Every item reported exactly once (a result or a loss).
    bool each_once() const {
        for (std::size_t i = 0; i < results.size(); ++i)
            if (results[i] + lost[i] != 1) {
                std::fprintf(stderr, "item %zu: %d results, %d losses\n", i, results[i], lost[i]);
                return false;
            }
        return true;
    }
    std::size_t lost_count() const {
        std::size_t n = 0;
        for (int l : lost) n += static_cast<std::size_t>(l);
        return n;
    }
};

inline MapRequest request(std::size_t n, std::string key = "k", std::size_t chunk = 0,
                          std::size_t depth = 2, double timeout = 0) {
    MapRequest r;
    r.items = n;
    r.key = std::move(key);
    r.payload.kind = static_cast<std::uint32_t>(FrameKind::payload);
    r.payload.key = r.key;
    r.chunk = chunk;
    r.depth = depth;
    r.item_timeout = timeout;
    return r;
}

}  // namespace test_support
