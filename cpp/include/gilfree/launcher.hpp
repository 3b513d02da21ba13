// Starting worker processes: posix_spawn, or a forkserver ("zygote").
//
//   ProcessPool::fill()                launcher thread (one per process,     zygote (one per
//     ── spawn request ──────────────▶ lives until exit: the PDEATHSIG ──▶ process, spawned
//                                      parent of what it starts)            once, imports
//   spawn mode:    posix_spawn(python -c worker 3 4 <ppid>)                 gilfree & co.)
//   forkserver:    SPAWN frame + (socket, status page) fds ───────────────▶ fork(): the child
//                  ◀──────────────────────────────────────── SPAWNED pid ── is a worker at
//                  ◀─────── EXITED pid + wait status (it reaps its children)   once
//
// Why a forkserver: a fresh interpreter spends ~35 ms starting and importing what a
// worker needs (gilfree's execution core, cloudpickle) before it can run an item; a
// child forked from a process that already did is ready in ~3 ms. Every pool after the first, and every replacement of a dead worker,
// starts that fast. It is safe because the zygote is itself a fresh, single-threaded
// interpreter started with posix_spawn: the driver's threads (ours, TBB's, the user's)
// are never forked.
// Death chain: the zygote gets SIGKILL when the launcher thread (the driver) dies; each
// worker gets SIGKILL when the zygote dies. Workers also exit on end of stream.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace gilfree {

// Runs `fn` on the process-wide launcher thread and returns its result (rethrows).
pid_t on_launcher_thread(std::function<pid_t()> fn);

// posix_spawn(argv[0], argv) with `fds` mapped {source fd -> target fd} in the child,
// an empty signal mask and default dispositions. Sources must not be in the target range.
pid_t spawn_with_fds(const std::vector<std::string>& argv,
                     const std::vector<std::pair<int, int>>& fds);

// The process-wide forkserver. Started on first use with `argv` + "3 <driver pid>"
// (fd 3: its control socket); later callers share it, whatever argv they pass.
class Zygote {
public:
    static Zygote& instance();
    // Forks a worker whose fd 3 is `sock_fd` and fd 4 `status_fd`, starting the zygote
    // with `argv` first if none runs. Throws on failure.
    pid_t fork_worker(const std::vector<std::string>& argv, int sock_fd, int status_fd);
    // The wait status of a worker it forked, once the zygote reaped it; false on timeout.
    bool wait_exit(pid_t pid, std::chrono::nanoseconds timeout, int& status);
    // Whether `pid` was reaped (and must not be signalled any more: its pid is free).
    bool reaped(pid_t pid);

private:
    Zygote() = default;
    struct State;
    State& state();
};

}  // namespace gilfree
