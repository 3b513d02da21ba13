// gilfree::ProcessPool driven by MapScheduler with real worker processes, without
// Python: the workers are this executable again (`--worker <mode>`), speaking frames and
// writing the status page as gilfree/remote/process_worker.py does. What the fakes of
// test_map_scheduler.cpp cannot show: real exits reach the scheduler with their wait
// status and the status page as the process left it, and a real overdue worker is
// killed.
//
//   test (driver)                               worker process (this binary, --worker)
//   ProcessPool::fill() ── posix_spawn ───────▶ INIT ─▶ READY (or exit 1: "init-fails")
//   MapScheduler::run(): BATCH "a:b" ─────────▶ for each item: status page (batch, item,
//                                               phase, start time), maybe crash or hang
//   Host::on_result ◀──────────────────────── RESULT "a:b"
//   Host::on_lost ◀── exited (wait status, status page)
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include "gilfree/frame.hpp"
#include "gilfree/map_scheduler.hpp"
#include "gilfree/process_pool.hpp"
#include "recording_host.hpp"

using namespace std::chrono_literals;
using gilfree::Frame;
using gilfree::FrameKind;
using gilfree::MapScheduler;
using gilfree::ProcessPool;
using gilfree::slot;
using gilfree::StatusSlot;
using gilfree::WorkerPhase;
using test_support::Host;
using test_support::request;

namespace {

// --- the worker side --------------------------------------------------------------------

// Modes: "ok"; "crash-13" (SIGKILLs itself on item 13); "hang-7" (never finishes item 7);
// "init-fails" (exits with code 1 before READY).
[[noreturn]] void worker_main(const std::string& mode, int sock, int status_fd) {
    gilfree::set_parent_death_signal(SIGKILL);  // a failed test leaves no processes
    void* page = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, status_fd, 0);
    if (page == MAP_FAILED) ::_exit(2);
    volatile std::int64_t* st = static_cast<std::int64_t*>(page);
    auto set = [&](StatusSlot s, std::int64_t v) { st[slot(s)] = v; };
    Frame f;
    if (!gilfree::read_frame(sock, f) || f.kind != static_cast<std::uint32_t>(FrameKind::init))
        ::_exit(3);
    if (mode == "init-fails") ::_exit(1);
    Frame ready;
    ready.kind = static_cast<std::uint32_t>(FrameKind::ready);
    gilfree::write_frame(sock, ready);
    for (;;) {
        Frame in;
        if (!gilfree::read_frame(sock, in) || in.kind == static_cast<std::uint32_t>(FrameKind::quit))
            ::_exit(0);
        if (in.kind != static_cast<std::uint32_t>(FrameKind::batch)) continue;  // PAYLOAD, DROP
        const auto colon = in.body.find(':');
        const std::size_t a = std::stoul(in.body.substr(0, colon));
        const std::size_t b = std::stoul(in.body.substr(colon + 1));
        set(StatusSlot::batch, static_cast<std::int64_t>(in.id));
        set(StatusSlot::phase, static_cast<std::int64_t>(WorkerPhase::batch));
        for (std::size_t i = a; i < b; ++i) {
            timespec now{};
            ::clock_gettime(CLOCK_MONOTONIC, &now);
            set(StatusSlot::item, static_cast<std::int64_t>(i));
            set(StatusSlot::step, 0);
            set(StatusSlot::item_started_ns, now.tv_sec * 1000000000LL + now.tv_nsec);
            if (mode == "crash-13" && i == 13) ::kill(::getpid(), SIGKILL);
            if (mode == "hang-7" && i == 7)
                for (;;) ::pause();
        }
        set(StatusSlot::phase, static_cast<std::int64_t>(WorkerPhase::send));
        Frame out;
        out.kind = static_cast<std::uint32_t>(FrameKind::result);
        out.id = in.id;
        out.body = in.body;
        gilfree::write_frame(sock, out);
        set(StatusSlot::batch, -1);
        set(StatusSlot::item, -1);
        set(StatusSlot::item_started_ns, -1);
        set(StatusSlot::phase, static_cast<std::int64_t>(WorkerPhase::idle));
    }
}

// --- the driver side --------------------------------------------------------------------

std::string self_exe() {
    char buf[4096];
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    CHECK(n > 0);
    return std::string(buf, static_cast<std::size_t>(n));
}

// A map that never ends fails (interrupted) instead of hanging the test.
Host& bounded(Host& host, std::chrono::seconds limit = 60s) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    host.interrupt_hook = [deadline] { return std::chrono::steady_clock::now() > deadline; };
    return host;
}

ProcessPool::Config config(const std::string& mode, std::size_t workers) {
    ProcessPool::Config c;
    c.argv = {self_exe(), "--worker", mode};
    c.workers = workers;
    return c;
}

void test_every_item_once() {
    ProcessPool pool(config("ok", 2));
    MapScheduler sched(pool, 0, 10ms);
    for (int round = 0; round < 2; ++round) {  // the second map reuses the workers
        Host host(500);
        CHECK(sched.run(request(500), bounded(host)) == MapScheduler::End::done);
        CHECK(host.each_once() && host.lost_count() == 0);
    }
    CHECK(sched.broken().empty());
    pool.shutdown(2s);
    CHECK(pool.live().empty());
}

// A worker dies (SIGKILL) on item 13: that item is reported with the signal, from the
// real status page and wait status; the rest of its batch runs again and completes.
void test_worker_death_is_reported_from_its_status_page() {
    ProcessPool pool(config("crash-13", 2));
    MapScheduler sched(pool, 0, 10ms);
    Host host(40);
    CHECK(sched.run(request(40, "k", 4), bounded(host)) == MapScheduler::End::done);
    CHECK(host.each_once());
    CHECK(host.lost_ranges.size() == 1);
    CHECK(host.lost_ranges[0] == std::make_pair(std::size_t{13}, std::size_t{14}));
    const auto& why = host.lost_why[0];
    CHECK(why.progress.item == 13);
    CHECK(why.progress.in_phase(WorkerPhase::batch));
    CHECK(WIFSIGNALED(why.wait_status) && WTERMSIG(why.wait_status) == SIGKILL);
    CHECK(!why.expected && why.pid > 0 && why.timeout_s == 0);
    CHECK(sched.broken().empty());
}

// Item 7 never finishes: its worker is killed after the timeout, item 7 alone is lost
// as a timeout, the other items of its batch run again on a new worker.
void test_overdue_worker_is_killed() {
    ProcessPool pool(config("hang-7", 2));
    MapScheduler sched(pool, 0, 10ms);
    Host host(20);
    CHECK(sched.run(request(20, "k", 5, 2, 0.2), bounded(host)) == MapScheduler::End::done);
    CHECK(host.each_once());
    CHECK(host.lost_ranges.size() == 1);
    CHECK(host.lost_ranges[0] == std::make_pair(std::size_t{7}, std::size_t{8}));
    CHECK(host.lost_why[0].timeout_s == 0.2 && host.lost_why[0].progress.item == 7);
    CHECK(host.lost_why[0].expected);  // we killed it
}

// Every worker exits before READY: after three in a row the pool is broken, with the
// exit code in the message, and no process is left.
void test_broken_after_start_failures() {
    ProcessPool pool(config("init-fails", 2));
    MapScheduler sched(pool, 0, 10ms);
    Host host(10);
    CHECK(sched.run(request(10), bounded(host)) == MapScheduler::End::broken);
    CHECK(sched.broken().find("exited before they were ready") != std::string::npos);
    CHECK(sched.broken().find("exit code 1") != std::string::npos);
    pool.shutdown(2s);
    CHECK(pool.live().empty());
}

}  // namespace

int main(int argc, char** argv) {
    // The pool starts workers as: <argv given> 3 4 <parent pid>.
    if (argc == 6 && std::strcmp(argv[1], "--worker") == 0)
        worker_main(argv[2], std::atoi(argv[3]), std::atoi(argv[4]));
    const std::vector<test_support::NamedTest> tests = {
        {"every_item_once", test_every_item_once},
        {"worker_death_is_reported_from_its_status_page",
         test_worker_death_is_reported_from_its_status_page},
        {"overdue_worker_is_killed", test_overdue_worker_is_killed},
        {"broken_after_start_failures", test_broken_after_start_failures},
    };
    return test_support::run_tests(tests);
}
