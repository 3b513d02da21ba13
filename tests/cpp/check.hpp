// What the C++ unit tests share: CHECK (a failed check prints where and exits 1, so
// ctest reports the test failed) and a runner that names each test as it runs.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
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
    for (const auto& [name, fn] : tests) {
        std::printf("%s ... ", name);
        std::fflush(stdout);
        fn();
        std::printf("ok\n");
    }
    return 0;
}

// `binary NAME...`: only the tests named; no names: all of them.
inline int run_tests(const std::vector<NamedTest>& tests, int argc, char** argv) {
    if (argc <= 1) return run_tests(tests);
    std::vector<NamedTest> chosen;
    for (const NamedTest& t : tests)
        for (int a = 1; a < argc; ++a)
            if (std::string(argv[a]) == t.first) chosen.push_back(t);
    return run_tests(chosen);
}

}  // namespace test_support
