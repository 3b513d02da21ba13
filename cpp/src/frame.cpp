// See cpp/include/gilfree/frame.hpp for the wire format.
#include "gilfree/frame.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>

namespace gilfree {
namespace {

constexpr std::uint32_t kMagic = 0x67664631;  // "gfF1"

#pragma pack(push, 1)
struct Header {
    std::uint32_t magic;
    std::uint32_t kind;
    std::uint64_t id;
    std::uint32_t key_len;
    std::uint32_t nfds;
    std::uint64_t body_len;
};
#pragma pack(pop)
static_assert(sizeof(Header) == 32, "frame header layout");

[[noreturn]] void throw_errno(const char* what) {
    throw std::system_error(errno, std::generic_category(), what);
}

// Reads exactly n bytes; false if EOF came before the first byte.
bool read_exact(int fd, char* p, std::size_t n, bool eof_ok) {
    std::size_t got = 0;
    while (got < n) {
        const ssize_t r = ::recv(fd, p + got, n - got, 0);
        if (r > 0) {
            got += static_cast<std::size_t>(r);
        } else if (r == 0) {
            if (got == 0 && eof_ok) return false;
            throw std::runtime_error("gilfree frame: connection closed inside a frame");
        } else if (errno != EINTR) {
            throw_errno("gilfree frame: recv");
        }
    }
    return true;
}

}  // namespace

void UniqueFd::reset(int fd) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
}

bool read_frame(int sock, Frame& out) {
    Header h{};
    char* hp = reinterpret_cast<char*>(&h);
    std::size_t got = 0;
    // The descriptors are attached to the header's first byte: the first recvmsg that
    // returns data also returns them, even if it reads only part of the header.
    alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFrameFds)];
    out.fds.clear();
    while (got == 0) {
        iovec iov{hp, sizeof h};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        const ssize_t r = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (r == 0) return false;
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == ECONNRESET) return false;  // the peer died: same as EOF for us
            throw_errno("gilfree frame: recvmsg");
        }
        got = static_cast<std::size_t>(r);
        for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
            const std::size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (std::size_t i = 0; i < n; ++i) {
                int fd;
                std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                out.fds.emplace_back(fd);
            }
        }
        if (msg.msg_flags & MSG_CTRUNC)
            throw std::runtime_error("gilfree frame: descriptors were truncated");
    }
    read_exact(sock, hp + got, sizeof h - got, false);
    if (h.magic != kMagic) throw std::runtime_error("gilfree frame: bad magic (corrupt stream)");
    if (h.nfds != out.fds.size())
        throw std::runtime_error("gilfree frame: descriptor count does not match the header");
    out.kind = h.kind;
    out.id = h.id;
    out.key.resize(h.key_len);
    out.body.resize(h.body_len);
    if (h.key_len) read_exact(sock, out.key.data(), h.key_len, false);
    if (h.body_len) read_exact(sock, out.body.data(), h.body_len, false);
    return true;
}

void write_frame(int sock, const Frame& f) {
    if (f.fds.size() > kMaxFrameFds) throw std::runtime_error("gilfree frame: too many descriptors");
    Header h{kMagic, f.kind, f.id, static_cast<std::uint32_t>(f.key.size()),
             static_cast<std::uint32_t>(f.fds.size()), f.body.size()};
    iovec iov[3] = {{&h, sizeof h},
                    {const_cast<char*>(f.key.data()), f.key.size()},
                    {const_cast<char*>(f.body.data()), f.body.size()}};
    alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFrameFds)];
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = 3;
    if (!f.fds.empty()) {
        msg.msg_control = control;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * f.fds.size());
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * f.fds.size());
        for (std::size_t i = 0; i < f.fds.size(); ++i) {
            const int fd = f.fds[i].get();
            std::memcpy(CMSG_DATA(c) + i * sizeof(int), &fd, sizeof fd);
        }
    }
    std::size_t idx = 0;
    while (idx < 3) {
        const ssize_t r = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EINTR) continue;
            throw_errno("gilfree frame: sendmsg");
        }
        // Descriptors went with the first chunk; never send them twice.
        msg.msg_control = nullptr;
        msg.msg_controllen = 0;
        std::size_t sent = static_cast<std::size_t>(r);
        while (idx < 3 && sent >= iov[idx].iov_len) {
            sent -= iov[idx].iov_len;
            ++idx;
        }
        if (idx < 3) {
            iov[idx].iov_base = static_cast<char*>(iov[idx].iov_base) + sent;
            iov[idx].iov_len -= sent;
        }
        msg.msg_iov = iov + idx;
        msg.msg_iovlen = 3 - idx;
    }
}

Frame clone_frame(const Frame& f) {
    Frame c;
    c.kind = f.kind;
    c.id = f.id;
    c.key = f.key;
    c.body = f.body;
    for (const UniqueFd& fd : f.fds) {
        const int d = ::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0);
        if (d < 0) throw_errno("fcntl(F_DUPFD_CLOEXEC)");
        c.fds.emplace_back(d);
    }
    return c;
}

}  // namespace gilfree
