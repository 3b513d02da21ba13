// See cpp/include/gilfree/launcher.hpp for who starts what, and why.
#include "gilfree/launcher.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <system_error>
#include <thread>

#include "gilfree/frame.hpp"

extern char** environ;

namespace gilfree {
namespace {

[[noreturn]] void throw_errno(const char* what) {
    throw std::system_error(errno, std::generic_category(), what);
}

// The launcher thread. Leaked and never stopped: PR_SET_PDEATHSIG fires when the thread
// that started a child exits, so it must live as long as the process.
struct Launcher {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::packaged_task<pid_t()>> queue;

    Launcher() {
        std::thread([this] {
            std::unique_lock<std::mutex> lk(mu);
            for (;;) {
                cv.wait(lk, [&] { return !queue.empty(); });
                auto task = std::move(queue.front());
                queue.pop_front();
                lk.unlock();
                task();
                lk.lock();
            }
        }).detach();
    }
};

Launcher& launcher() {
    static Launcher* l = new Launcher();  // leaked: used until process exit
    return *l;
}

}  // namespace

pid_t on_launcher_thread(std::function<pid_t()> fn) {
    std::packaged_task<pid_t()> task(std::move(fn));
    std::future<pid_t> fut = task.get_future();
    Launcher& l = launcher();
    {
        std::lock_guard<std::mutex> lk(l.mu);
        l.queue.push_back(std::move(task));
    }
    l.cv.notify_one();
    return fut.get();
}

pid_t spawn_with_fds(const std::vector<std::string>& args,
                     const std::vector<std::pair<int, int>>& fds) {
    std::vector<std::string> copy = args;
    std::vector<char*> argv;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&at);
    for (auto [src, dst] : fds) posix_spawn_file_actions_adddup2(&fa, src, dst);
    // The calling thread may block signals (embedders do); the child starts with an
    // empty mask and default dispositions for the usual ones.
    sigset_t mask, defaults;
    sigemptyset(&mask);
    sigemptyset(&defaults);
    for (int sig : {SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCHLD}) sigaddset(&defaults, sig);
    posix_spawnattr_setsigmask(&at, &mask);
    posix_spawnattr_setsigdefault(&at, &defaults);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid = 0;
    const int rc = ::posix_spawn(&pid, argv[0], &fa, &at, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    if (rc != 0) {
        errno = rc;
        throw_errno("posix_spawn of a gilfree process");
    }
    return pid;
}

struct Zygote::State {
    std::mutex mu;
    std::condition_variable cv;
    std::mutex request_mu;  // one fork request at a time: replies come in order
    int ctl = -1;
    pid_t pid = 0;
    bool alive = false;
    std::deque<Frame> replies;
    std::map<pid_t, int> exits;
    std::set<pid_t> reaped;
};

Zygote& Zygote::instance() {
    static Zygote* z = new Zygote();  // leaked: its reader thread may outlive statics
    return *z;
}

Zygote::State& Zygote::state() {
    static State* s = new State();
    return *s;
}

pid_t Zygote::fork_worker(const std::vector<std::string>& argv, int sock_fd, int status_fd) {
    State& s = state();
    std::lock_guard<std::mutex> one_at_a_time(s.request_mu);
    bool alive;
    {
        std::lock_guard<std::mutex> lk(s.mu);
        alive = s.alive;
    }
    if (!alive) {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw_errno("socketpair");
        UniqueFd mine(sv[0]);
        const int high = ::fcntl(sv[1], F_DUPFD_CLOEXEC, 10);
        ::close(sv[1]);
        if (high < 0) throw_errno("fcntl");
        UniqueFd theirs(high);
        std::vector<std::string> args = argv;
        args.push_back("3");
        args.push_back(std::to_string(::getpid()));
        const pid_t zpid = on_launcher_thread(
            [&] { return spawn_with_fds(args, {{theirs.get(), 3}}); });
        theirs.reset();
        const int ctl = mine.release();
        {
            std::lock_guard<std::mutex> lk(s.mu);
            s.ctl = ctl;
            s.pid = zpid;
            s.alive = true;
            s.replies.clear();
        }
        std::thread([&s, ctl, zpid] {
            for (;;) {
                Frame f;
                bool ok = false;
                try {
                    ok = read_frame(ctl, f);
                } catch (...) {
                    ok = false;
                }
                if (!ok) break;
                std::lock_guard<std::mutex> lk(s.mu);
                if (f.kind == static_cast<std::uint32_t>(FrameKind::exited)) {
                    int st = -1;
                    if (f.body.size() == sizeof st) std::memcpy(&st, f.body.data(), sizeof st);
                    s.exits[static_cast<pid_t>(f.id)] = st;
                    s.reaped.insert(static_cast<pid_t>(f.id));
                } else {
                    s.replies.push_back(std::move(f));
                }
                s.cv.notify_all();
            }
            int st;
            while (::waitpid(zpid, &st, 0) < 0 && errno == EINTR) {
            }
            std::lock_guard<std::mutex> lk(s.mu);
            s.alive = false;  // its workers died with it (PDEATHSIG)
            ::close(ctl);
            s.cv.notify_all();
        }).detach();
    }
    Frame req;
    req.kind = static_cast<std::uint32_t>(FrameKind::spawn);
    req.fds.emplace_back(::fcntl(sock_fd, F_DUPFD_CLOEXEC, 0));
    req.fds.emplace_back(::fcntl(status_fd, F_DUPFD_CLOEXEC, 0));
    int ctl;
    {
        std::lock_guard<std::mutex> lk(s.mu);
        ctl = s.ctl;
    }
    write_frame(ctl, req);
    std::unique_lock<std::mutex> lk(s.mu);
    if (!s.cv.wait_for(lk, std::chrono::seconds(30), [&] { return !s.replies.empty() || !s.alive; }))
        throw std::runtime_error("the gilfree zygote did not answer a fork request in 30 s");
    if (s.replies.empty()) throw std::runtime_error("the gilfree zygote process exited");
    Frame reply = std::move(s.replies.front());
    s.replies.pop_front();
    if (reply.id == 0) throw std::runtime_error("the gilfree zygote could not fork: " + reply.body);
    return static_cast<pid_t>(reply.id);
}

bool Zygote::wait_exit(pid_t pid, std::chrono::nanoseconds timeout, int& status) {
    State& s = state();
    std::unique_lock<std::mutex> lk(s.mu);
    const bool done = s.cv.wait_for(lk, timeout, [&] { return s.exits.count(pid) || !s.alive; });
    auto it = s.exits.find(pid);
    if (it != s.exits.end()) {
        status = it->second;
        s.exits.erase(it);
        return true;
    }
    if (done) {  // the zygote died: its children were killed with it
        status = SIGKILL;  // a wait status meaning "killed by SIGKILL"
        s.reaped.insert(pid);
        return true;
    }
    return false;
}

bool Zygote::reaped(pid_t pid) {
    State& s = state();
    std::lock_guard<std::mutex> lk(s.mu);
    return s.reaped.count(pid) > 0;
}

}  // namespace gilfree
