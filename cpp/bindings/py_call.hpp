// The one place where C++ threads call into Python.
//
// Everything here works on raw PyObject* with explicit reference counts instead of
// py::object: a py::object destroyed on a worker without the GIL, or after the
// interpreter is gone, corrupts memory. The rules:
//   - WorkerGil brackets every stretch of Python work on a pool worker thread;
//   - call() returns a new reference (result or exception) and never leaves an error set;
//   - references are dropped only here and only with the GIL held (drop());
//   - once the interpreter is exiting, workers stop touching Python altogether;
//   - every step that may run Python code or take the GIL goes through
//     finalization_safe(), on workers and on drivers alike.
#pragma once

#include <Python.h>
#include <cxxabi.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

namespace gilfree::pycall {

// Interpreter finalization kills any other thread that takes the GIL (CPython <= 3.13:
// pthread_exit, i.e. a forced unwind through our frames). Unwinding would run destructors
// up the stack, pybind11's included, that drop Python references without the GIL:
// a crash at exit. So a thread being torn down parks here, forever, without unwinding;
// process exit reaps it. (CPython 3.14 parks such threads itself.)
// Never call it inside a catch handler: libstdc++ terminates when a forced unwind is
// caught while another exception is being handled.
[[noreturn]] inline void park_forever() noexcept {
    for (;;) std::this_thread::sleep_for(std::chrono::hours(24));
}

template <class F>
decltype(auto) finalization_safe(F&& f) {
    try {
        return std::forward<F>(f)();
    } catch (abi::__forced_unwind&) {
        park_forever();
    }
}

inline void restore_thread(PyThreadState* state) {
    finalization_safe([&] { PyEval_RestoreThread(state); });
}

// For Python threads (map/submit/shutdown callers) that wait without the GIL.
class GilRelease {
public:
    GilRelease() : state_(PyEval_SaveThread()) {}
    ~GilRelease() { restore_thread(state_); }
    GilRelease(const GilRelease&) = delete;
    GilRelease& operator=(const GilRelease&) = delete;

private:
    PyThreadState* state_;
};

// Set by our atexit hook (after pools are shut down): from then on, a worker that still
// needs the GIL gives up instead, because finalization may start at any moment.
inline std::atomic<bool> interpreter_exiting{false};

inline bool interpreter_alive() noexcept {
#if PY_VERSION_HEX >= 0x030D0000
    const bool finalizing = Py_IsFinalizing();
#else
    const bool finalizing = _Py_IsFinalizing();
#endif
    return !interpreter_exiting.load(std::memory_order_acquire) && Py_IsInitialized() &&
           !finalizing;
}

// Drivers (threads waiting in map() for a batch) go ahead of pool workers for the GIL.
// CPython hands a released GIL to an arbitrary waiter, so a driver competing with 64
// workers for it could wait 64 switch intervals before it sees Ctrl-C. Workers we control
// therefore step aside while a driver asks: they do not start a run (enter) and leave the
// GIL between items. Workers inside a long call cannot be stopped; with many of those the
// driver still waits its turn. The gate is process-wide because the GIL is.
class DriverGate {
public:
    static bool driver_waiting() noexcept { return waiting().load(std::memory_order_relaxed) > 0; }

    // A driver has been asking for the GIL for longer than `patience` (see between_items).
    static bool driver_waiting_longer_than(std::chrono::steady_clock::duration patience) noexcept {
        if (!driver_waiting()) return false;
        const auto since = std::chrono::steady_clock::duration(
            asked_since().load(std::memory_order_relaxed));
        return std::chrono::steady_clock::now().time_since_epoch() - since > patience;
    }

    // Worker, without the GIL: block while a driver asks for the GIL.
    static void pass() {
        if (!driver_waiting()) return;
        std::unique_lock<std::mutex> lk(*mu());
        cv()->wait(lk, [] { return !driver_waiting(); });
    }

    static void announce() noexcept {
        if (waiting().fetch_add(1, std::memory_order_relaxed) == 0)
            asked_since().store(std::chrono::steady_clock::now().time_since_epoch().count(),
                                std::memory_order_relaxed);
    }
    static void withdraw() noexcept {
        {
            // Under mu(): a worker between its predicate check and its sleep must see the
            // decrement or receive the notify, not neither.
            std::lock_guard<std::mutex> lk(*mu());
            waiting().fetch_sub(1, std::memory_order_relaxed);
        }
        cv()->notify_all();
    }

    // In a forked child, no driver of the parent exists (its count would gate our
    // workers forever) and the mutex may have been held by a thread that is gone.
    static void reset_after_fork() noexcept {
        waiting().store(0, std::memory_order_relaxed);
        mu() = new std::mutex();  // the old ones are leaked on purpose
        cv() = new std::condition_variable();
    }

private:
    static std::atomic<int>& waiting() {
        static std::atomic<int> n{0};
        return n;
    }
    // When the waiting count last rose from 0 (steady_clock ticks).
    static std::atomic<std::int64_t>& asked_since() {
        static std::atomic<std::int64_t> t{0};
        return t;
    }
    // Leaked, not static objects: workers may still use them during interpreter exit.
    static std::mutex*& mu() {
        static std::mutex* m = new std::mutex();
        return m;
    }
    static std::condition_variable*& cv() {
        static std::condition_variable* c = new std::condition_variable();
        return c;
    }
};

// Driver side (a Python thread in map()): runs `wait` without the GIL, takes the GIL back
// ahead of the pool workers (DriverGate) and, still ahead of them, runs the Python signal
// handlers, so that Ctrl-C is seen within one wait. The gate opens again before any user
// callback runs: a callback that blocks on work of a gated worker must not deadlock.
// Returns wait()'s result; `signalled` means a handler raised and the error is set.
template <class Wait>
bool wait_without_gil(Wait&& wait, bool& signalled) {
    PyThreadState* state = PyEval_SaveThread();
    bool result = false;
    std::exception_ptr error;
    try {
        result = wait();
    } catch (...) {
        error = std::current_exception();
    }
    if (error) {  // outside the handler, see finalization_safe
        restore_thread(state);
        std::rethrow_exception(error);
    }
    DriverGate::announce();
    restore_thread(state);
    signalled = finalization_safe([] { return PyErr_CheckSignals(); }) != 0;
    DriverGate::withdraw();
    return result;
}

// GIL handling for threads the interpreter did not create (pool workers). Each worker
// creates its PyThreadState once, keeps it for its whole life (creating one per call would
// cost microseconds per item) and deletes it when it retires.
class WorkerGil {
public:
    // Takes the GIL. False means the interpreter is exiting: do not touch Python.
    static bool acquire() {
        Tls& t = tls();
        DriverGate::pass();
        if (!interpreter_alive()) return false;
        if (t.state == nullptr) {
            // GILState-created, so C extensions calling PyGILState_Ensure inside the
            // callable find this thread's state instead of making a second one. The
            // matching PyGILState_Release happens in forget_thread().
            finalization_safe([] { PyGILState_Ensure(); });
            t.state = PyThreadState_Get();
        } else {
            restore_thread(t.state);
        }
        t.since = std::chrono::steady_clock::now();
        return true;
    }

    static void release() { PyEval_SaveThread(); }

    // Between two items of a run. Steps aside for a waiting driver. Otherwise, for
    // callables that never run bytecode (builtins) and hence never see the interpreter's
    // drop-GIL request, gives the GIL up for a moment every 10 ms so that other threads
    // get in. 10 ms is longer than the default 5 ms switch interval on purpose: a waiter
    // only asks for the GIL after 5 ms, and yielding more often would wake it early,
    // reset its timer and let us win the race again every time.
    // Returns false when the interpreter is exiting: the run must stop.
    //
    // `patient` (a streaming map's stage workers): step aside only for a driver that has
    // waited more than 2 ms. Their items mostly release the GIL (I/O) and drivers then get
    // it soon anyway, while several drivers (the stream's, a process stage's) wake
    // thousands of times a second: stepping aside for each wake made every worker queue
    // for the GIL again behind all the others (a mean 4 ms between two items of a worker
    // in W9). A worker whose items hold the GIL still lets a driver in within ~2 ms.
    static bool between_items(std::size_t items_in_run, bool patient = false) {
        if (interpreter_exiting.load(std::memory_order_relaxed)) return false;
        Tls& t = tls();
        if (patient ? DriverGate::driver_waiting_longer_than(std::chrono::milliseconds(10))
                    : DriverGate::driver_waiting()) {
            PyEval_SaveThread();
            DriverGate::pass();
            restore_thread(t.state);
            t.since = std::chrono::steady_clock::now();
            return true;
        }
        if (items_in_run % 16 != 0) return true;
        const auto now = std::chrono::steady_clock::now();
        if (now - t.since < std::chrono::milliseconds(10)) return true;
        PyEval_SaveThread();
        restore_thread(t.state);
        t.since = std::chrono::steady_clock::now();
        return true;
    }

    // Worker exit. Without a live interpreter the state is leaked: finalization frees it.
    static void forget_thread() {
        Tls& t = tls();
        if (t.state == nullptr) return;
        if (interpreter_alive()) {
            restore_thread(t.state);
            // Deletes the state (which may run __del__ of thread-local objects), drops the GIL.
            finalization_safe([] { PyGILState_Release(PyGILState_UNLOCKED); });
        }
        t.state = nullptr;
    }

private:
    struct Tls {
        PyThreadState* state = nullptr;
        std::chrono::steady_clock::time_point since{};
    };
    static Tls& tls() {
        thread_local Tls t;
        return t;
    }
};

struct Outcome {
    PyObject* value;  // new reference: the result, or the exception instance if !ok
    bool ok;
};

// Takes the raised exception out of the error indicator as one object whose
// __traceback__ holds the frames of the failed call.
inline PyObject* take_exception() {
#if PY_VERSION_HEX >= 0x030C0000
    PyObject* exc = PyErr_GetRaisedException();
#else
    PyObject *type = nullptr, *exc = nullptr, *tb = nullptr;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (exc != nullptr && tb != nullptr) PyException_SetTraceback(exc, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
#endif
    if (exc == nullptr) {
        // A C callable returned NULL without setting an error.
        exc = PyObject_CallFunction(PyExc_SystemError, "s",
                                    "callable returned NULL without setting an exception");
        if (exc == nullptr) return take_exception();
    }
    return exc;
}

// GIL held.
inline Outcome call(PyObject* fn, PyObject* const* args, std::size_t nargs) {
    return finalization_safe([&]() -> Outcome {
        PyObject* r = PyObject_Vectorcall(fn, args, nargs, nullptr);
        if (r != nullptr) return {r, true};
        return {take_exception(), false};
    });
}

inline Outcome call(PyObject* fn, PyObject* arg) { return call(fn, &arg, 1); }

// Makes `exc` (borrowed) the current Python error, traceback included, so that the
// caller can throw pybind11::error_already_set. GIL held.
inline void restore_exception(PyObject* exc) {
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(Py_NewRef(exc));
#else
    PyErr_Restore(Py_NewRef(reinterpret_cast<PyObject*>(Py_TYPE(exc))), Py_NewRef(exc),
                  PyException_GetTraceback(exc));
#endif
}

// GIL held.
// GIL held. Dropping the last reference may run __del__, hence finalization_safe.
inline void drop(PyObject*& ref) noexcept {
    if (ref != nullptr) finalization_safe([&] { Py_CLEAR(ref); });
}

// GIL held. Reports an exception nobody can receive (set as current) to sys.unraisablehook.
inline void write_unraisable(PyObject* context) {
    finalization_safe([&] { PyErr_WriteUnraisable(context); });
}

// GIL held. A tuple snapshot of any iterable (which may run Python code); null + error set
// on failure.
inline PyObject* to_tuple(PyObject* iterable) {
    return finalization_safe([&] { return PySequence_Tuple(iterable); });
}

}  // namespace gilfree::pycall
