// gilfree frames: the one wire format between the driver and its worker processes.
//
//   +------------------------- 32-byte header -------------------------+-----+------+
//   | magic u32 | kind u32 | id u64 | key_len u32 | nfds u32 | body_len u64 | key | body |
//   +-------------------------------------------------------------------+-----+------+
//   file descriptors (memfd segments with large buffers) ride along with the header
//   as SCM_RIGHTS ancillary data, so a frame and its shared memory arrive together.
//
// Why a Unix stream socket and not a pipe: pipes cannot carry file descriptors, and the
// large-buffer path (pickle protocol 5 out-of-band buffers in memfd segments) needs to
// hand segments over without a name in /dev/shm that could leak when a process dies.
// A memfd lives exactly as long as some process holds its fd or a mapping of it.
//
// Plain C++ (no Python): both the driver's reader/writer threads and the worker's
// Python main loop (through the binding) use these two functions, so framing exists
// in one place. Both block; callers release the GIL around them.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace gilfree {

enum class FrameKind : std::uint32_t {
    init = 1,         // driver -> worker, first frame: sys.path, initializer (pickled)
    ready = 2,        // worker -> driver: initializer ran
    init_failed = 3,  // worker -> driver: body is the initializer's traceback (text)
    payload = 4,      // driver -> worker: key = content hash, body = pickled plan + inputs
    drop = 5,         // driver -> worker: forget payload `key`
    batch = 6,        // driver -> worker: id = batch id, key = payload key, body = rows
    result = 7,       // worker -> driver: id = batch id, body = pickled results + events
    quit = 8,         // driver -> worker: tear down and exit
    spawn = 9,        // driver -> zygote: fork a worker on these two fds (socket, status)
    spawned = 10,     // zygote -> driver: id = the new worker's pid (0: body says why not)
    exited = 11,      // zygote -> driver: id = pid, body = its wait status (int32)
    // A node's own map in a worker, spread over the pool (map_scheduler.hpp, "Sub-maps"):
    submap = 12,     // worker -> driver: id = sub-map id (the worker's), key = payload key,
                     // body = payload (a PAYLOAD body)
    subbatch = 13,   // worker -> driver: id = sub-map id, key = batch index (decimal),
                     // body = a BATCH body; driver -> worker: a BATCH of someone's sub-map
                     // (id = batch id, key = payload key): run it now, even while waiting
    subend = 14,     // worker -> driver: id = sub-map id: it needs nothing more of it
    subresult = 15,  // driver -> worker: id = sub-map id, key = batch index, body = RESULT
    sublost = 16,    // driver -> worker: id = sub-map id, key = batch index, body = why
                     // ("pid signal exitcode step item", decimal, -1: none)
};

// Owns a file descriptor; closes it on destruction.
class UniqueFd {
public:
    UniqueFd() = default;
    explicit UniqueFd(int fd) noexcept : fd_(fd) {}
    UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    UniqueFd& operator=(UniqueFd&& o) noexcept {
        if (this != &o) reset(std::exchange(o.fd_, -1));
        return *this;
    }
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    ~UniqueFd() { reset(); }

    int get() const noexcept { return fd_; }
    int release() noexcept { return std::exchange(fd_, -1); }
    void reset(int fd = -1) noexcept;
    explicit operator bool() const noexcept { return fd_ >= 0; }

private:
    int fd_ = -1;
};

struct Frame {
    std::uint32_t kind = 0;
    std::uint64_t id = 0;
    std::string key;
    std::string body;
    std::vector<UniqueFd> fds;
};

// At most this many descriptors per frame (the kernel's SCM_MAX_FD is 253).
constexpr std::size_t kMaxFrameFds = 64;

// Reads one frame. Returns false on a clean end of stream before a header started.
// Throws std::system_error on I/O errors and std::runtime_error on a corrupt stream
// (wrong magic, EOF inside a frame). Received descriptors are close-on-exec.
bool read_frame(int sock, Frame& out);

// Writes one frame (the kernel duplicates the descriptors; the caller keeps its own).
// Throws std::system_error (EPIPE included: SIGPIPE is never raised).
void write_frame(int sock, const Frame& frame);

// A copy of a frame with its own descriptors (dup'ed, close-on-exec): a frame sent to
// several workers, or kept to be sent again. Throws std::system_error.
Frame clone_frame(const Frame& f);

}  // namespace gilfree
