// What the C++ unit tests share: CHECK (a failed check prints where and exits 1, so
// ctest reports the test failed) and a runner that names each test as it runs.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            std::exit(1);                                                          \
        }                                                                          \
    } while (0)

namespace test_support {

using NamedTest = std::pair<const char*, void (*)()>;

inline int run_tests(const std::vector<NamedTest>& tests) {
    for (auto& [name, fn] : tests) {
        std::printf("%s ... ", name);
        std::fflush(stdout);
        fn();
        std::printf("ok\n");
    }
    return 0;
}

}  // namespace test_support
