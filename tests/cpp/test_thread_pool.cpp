// Unit tests of gilfree::ThreadPool and gilfree::IndexBatch without Python.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "check.hpp"
#include "gilfree/index_batch.hpp"
#include "gilfree/thread_pool.hpp"

using namespace std::chrono_literals;

namespace {

// Runs `body(i)` for each item; a global mutex stands in for the GIL.
class FnBatch final : public gilfree::IndexBatch {
public:
    FnBatch(std::size_t n, std::function<bool(std::size_t)> body, bool stop_on_error = true)
        : IndexBatch(n, stop_on_error, true), ran_(n), body_(std::move(body)) {}
    std::vector<std::atomic<int>> ran_;
    std::atomic<int> released{0};

protected:
    bool enter() override { return true; }
    bool run_item(std::size_t i) override {
        ran_[i]++;
        return body_(i);
    }
    bool after_item(std::size_t) override { return true; }
    void release_abandoned() noexcept override { released++; }
    void leave() override {}

private:
    std::function<bool(std::size_t)> body_;
};

bool wait_done(FnBatch& b, std::chrono::seconds limit = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!b.wait_for(10ms))
        if (std::chrono::steady_clock::now() > deadline) return false;
    return true;
}

template <class Pred>
bool eventually(Pred p, std::chrono::seconds limit = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!p()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

void every_item_runs_once_and_completions_are_reported() {
    gilfree::ThreadPool pool(8, 10s);
    auto b = std::make_shared<FnBatch>(10000, [](std::size_t) { return true; });
    pool.submit(b, b->size());
    CHECK(wait_done(*b));
    for (auto& r : b->ran_) CHECK(r == 1);
    std::set<std::size_t> seen;
    std::size_t i;
    while (b->pop_completion(i)) seen.insert(i);
    CHECK(seen.size() == 10000);
}

void blocking_items_overlap_up_to_the_cap() {
    gilfree::ThreadPool pool(32, 10s);
    auto start = std::chrono::steady_clock::now();
    auto b = std::make_shared<FnBatch>(32, [](std::size_t) {
        std::this_thread::sleep_for(50ms);
        return true;
    });
    pool.submit(b, b->size());
    CHECK(wait_done(*b));
    CHECK(std::chrono::steady_clock::now() - start < 1s);
    CHECK(pool.num_threads() <= 32);
}

void stop_on_error_stops_claiming() {
    gilfree::ThreadPool pool(1, 10s);
    auto b = std::make_shared<FnBatch>(1000, [](std::size_t i) { return i != 5; });
    pool.submit(b, b->size());
    CHECK(wait_done(*b));
    CHECK(b->ran_[5] == 1 && b->ran_[6] == 0);
}

void abandoned_batch_is_released_by_last_worker() {
    gilfree::ThreadPool pool(2, 10s);
    std::atomic<bool> go{false};
    auto b = std::make_shared<FnBatch>(4, [&](std::size_t) {
        while (!go) std::this_thread::sleep_for(1ms);
        return true;
    });
    pool.submit(b, b->size());
    CHECK(eventually([&] { return b->ran_[0] + b->ran_[1] == 2; }));
    CHECK(!b->abandon());  // two workers are inside: they release
    go = true;
    CHECK(wait_done(*b));
    CHECK(eventually([&] { return b->released == 1; }));  // after finished_, see run_ticket
    CHECK(b->ran_[2] == 0 && b->ran_[3] == 0);
}

void idle_workers_retire() {
    gilfree::ThreadPool pool(4, 50ms);
    auto b = std::make_shared<FnBatch>(4, [](std::size_t) {
        std::this_thread::sleep_for(20ms);
        return true;
    });
    pool.submit(b, b->size());
    CHECK(wait_done(*b));
    CHECK(eventually([&] { return pool.num_threads() == 0; }));
}

void exit_hook_runs_and_shutdown_cancels_queued_work() {
    std::atomic<int> exited{0};
    gilfree::ThreadPool pool(1, 10s, [&] { exited++; });
    std::atomic<bool> go{false};
    auto blocker = std::make_shared<FnBatch>(1, [&](std::size_t) {
        while (!go) std::this_thread::sleep_for(1ms);
        return true;
    });
    pool.submit(blocker, 1);
    auto queued = std::make_shared<FnBatch>(3, [](std::size_t) { return true; });
    CHECK(eventually([&] { return blocker->ran_[0] == 1; }));
    pool.submit(queued, 3);
    CHECK(!pool.shutdown(true, 20ms));  // the blocker is still running
    CHECK(queued->finished() && queued->ran_[0] == 0);
    go = true;
    CHECK(pool.shutdown(true));
    CHECK(exited == 1 && pool.num_threads() == 0);
    bool threw = false;
    try {
        pool.submit(queued, 1);
    } catch (const std::runtime_error&) {
        threw = true;
    }
    CHECK(threw);
}

// A job with one ticket that blocks until `go`, for abandon()/begin_wait() tests.
class BlockingJob final : public gilfree::Job {
public:
    explicit BlockingJob(std::atomic<bool>& go) : go_(go) {}
    std::atomic<int> started{0};
    std::atomic<int> cancelled{0};
    void run_ticket() override {
        started++;
        while (!go_) std::this_thread::sleep_for(1ms);
    }
    void cancel() noexcept override { cancelled++; }

private:
    std::atomic<bool>& go_;
};

void abandoned_jobs_do_not_hold_slots_up_to_the_ceiling() {
    std::atomic<bool> go{false};
    gilfree::ThreadPool pool(1, 10s, {}, /*max_abandoned=*/1);
    auto stuck1 = std::make_shared<BlockingJob>(go);
    pool.submit(stuck1, 1);
    CHECK(eventually([&] { return stuck1->started == 1; }));
    // Queued behind the stuck job: abandoning the stuck one lets it start.
    auto quick = std::make_shared<FnBatch>(1, [](std::size_t) { return true; });
    pool.submit(quick, 1);
    pool.abandon(*stuck1);
    CHECK(wait_done(*quick) && quick->ran_[0] == 1);
    CHECK(pool.stats().abandoned == 1 && pool.num_threads() == 2);
    // A second stuck job, abandoned: past max_abandoned, no thread replaces it.
    auto stuck2 = std::make_shared<BlockingJob>(go);
    pool.submit(stuck2, 1);
    CHECK(eventually([&] { return stuck2->started == 1; }));
    pool.abandon(*stuck2);
    CHECK(pool.stats().abandoned == 2);
    auto starved = std::make_shared<FnBatch>(1, [](std::size_t) { return true; });
    pool.submit(starved, 1);
    CHECK(starved->ran_[0] == 0 && pool.num_threads() == 2);  // submit decides spawning
    // Abandoning a queued job drops its ticket: it never runs (and is not cancelled).
    auto dropped = std::make_shared<BlockingJob>(go);
    pool.submit(dropped, 1);
    pool.abandon(*dropped);
    go = true;  // the stuck calls return: they count again, and run what is queued
    CHECK(wait_done(*starved) && starved->ran_[0] == 1);
    CHECK(eventually([&] { return pool.stats().abandoned == 0 && pool.stats().busy == 0; }));
    CHECK(dropped->started == 0 && dropped->cancelled == 0);
    pool.shutdown(true);
}

void a_waiting_worker_gives_its_slot_to_the_work_it_waits_for() {
    gilfree::ThreadPool pool(1, 10s);
    std::shared_ptr<FnBatch> inner;
    std::atomic<bool> outer_saw_inner{false};
    auto outer = std::make_shared<FnBatch>(1, [&](std::size_t) {
        // A nested "map": the only worker waits for work that needs a worker.
        inner = std::make_shared<FnBatch>(4, [](std::size_t) { return true; });
        CHECK(pool.begin_wait());
        pool.submit(inner, inner->size());
        outer_saw_inner = wait_done(*inner);
        pool.end_wait();
        return true;
    });
    pool.submit(outer, 1);
    CHECK(wait_done(*outer) && outer_saw_inner);
    CHECK(pool.stats().waiting == 0);
    CHECK(!pool.begin_wait());  // not a worker: a no-op
    pool.shutdown(true);
}

void a_worker_that_runs_its_own_nested_batch_needs_no_other_thread() {
    // As map_nested does: the only worker maps again, keeps its slot, runs one ticket of
    // the inner batch itself and parks until the batch is finished.
    gilfree::ThreadPool pool(1, 10s);
    std::shared_ptr<FnBatch> inner;
    auto outer = std::make_shared<FnBatch>(1, [&](std::size_t) {
        inner = std::make_shared<FnBatch>(6, [](std::size_t) { return true; });
        pool.submit(inner, inner->size() - 1);  // queued: no thread is free for them
        inner->run_ticket();
        inner->wait_finished();
        return true;
    });
    pool.submit(outer, 1);
    CHECK(wait_done(*outer));
    for (auto& r : inner->ran_) CHECK(r == 1);
    CHECK(pool.num_threads() == 1);
    pool.shutdown(true);
}

void wait_finished_returns_once_other_workers_are_done() {
    gilfree::ThreadPool pool(4, 10s);
    auto b = std::make_shared<FnBatch>(40, [](std::size_t) {
        std::this_thread::sleep_for(1ms);
        return true;
    });
    pool.submit(b, 3);
    b->run_ticket();  // this thread helps, then waits for the items the others claimed
    b->wait_finished();
    CHECK(b->finished());
    for (auto& r : b->ran_) CHECK(r == 1);
    auto cancelled = std::make_shared<FnBatch>(5, [](std::size_t) { return true; });
    cancelled->cancel();
    cancelled->wait_finished();  // nobody inside: finished at once
    pool.shutdown(true);
}

void shutdown_stops_a_running_batch_from_claiming() {
    gilfree::ThreadPool pool(1, 10s);
    std::atomic<bool> go{false};
    auto b = std::make_shared<FnBatch>(5, [&](std::size_t) {
        while (!go) std::this_thread::sleep_for(1ms);
        return true;
    });
    pool.submit(b, b->size());
    CHECK(eventually([&] { return b->ran_[0] == 1; }));
    CHECK(!pool.shutdown(true, 20ms));
    go = true;
    CHECK(wait_done(*b));
    CHECK(b->ran_[0] == 1 && b->ran_[1] == 0);  // the running item finished, no new one
    CHECK(pool.shutdown(true));
}

}  // namespace

int main() {
    every_item_runs_once_and_completions_are_reported();
    blocking_items_overlap_up_to_the_cap();
    stop_on_error_stops_claiming();
    abandoned_batch_is_released_by_last_worker();
    idle_workers_retire();
    exit_hook_runs_and_shutdown_cancels_queued_work();
    abandoned_jobs_do_not_hold_slots_up_to_the_ceiling();
    a_waiting_worker_gives_its_slot_to_the_work_it_waits_for();
    a_worker_that_runs_its_own_nested_batch_needs_no_other_thread();
    wait_finished_returns_once_other_workers_are_done();
    shutdown_stops_a_running_batch_from_claiming();
    std::puts("test_thread_pool: all passed");
    return 0;
}
