/*
 * test.h - the C unit tests' whole framework, in the spirit of redis'
 * testhelp.h and libuv's task.h.
 *
 *   static void test_cron_parses_steps(void) { ASSERT_EQ(5, x); }
 *   int main(void) { RUN(test_cron_parses_steps); return test_report(); }
 *
 * Each binary prints "ok NAME" / "FAIL NAME: file:line: detail" lines and
 * ends with "N passed, N failed"; spec/run-all.sh sums them.
 */
#ifndef ZKF_TEST_H
#define ZKF_TEST_H

#include <stdio.h>
#include <string.h>
#include <stdlib.h>

static int test_passed_, test_failed_, test_cur_failed_;

#define TEST_FAIL_(...) do { \
        fprintf(stdout, "  %s:%d: ", __FILE__, __LINE__); \
        fprintf(stdout, __VA_ARGS__); fputc('\n', stdout); \
        test_cur_failed_ = 1; return; } while (0)

#define ASSERT(cond) do { if (!(cond)) TEST_FAIL_("assertion failed: %s", #cond); } while (0)
#define ASSERT_EQ(expected, actual) do { \
        long long e_ = (long long)(expected), a_ = (long long)(actual); \
        if (e_ != a_) TEST_FAIL_("%s == %s: expected %lld, got %lld", \
                                 #expected, #actual, e_, a_); } while (0)
#define ASSERT_STR_EQ(expected, actual) do { \
        const char *e_ = (expected), *a_ = (actual); \
        if (!a_ || strcmp(e_, a_) != 0) TEST_FAIL_("expected \"%s\", got \"%s\"", \
                                 e_, a_ ? a_ : "(null)"); } while (0)

#define RUN(fn) do { \
        test_cur_failed_ = 0; fn(); \
        if (test_cur_failed_) { test_failed_++; printf("FAIL %s\n", #fn); } \
        else { test_passed_++; printf("ok %s\n", #fn); } \
        fflush(stdout); } while (0)

static inline int test_report(void)
{
    printf("%d passed, %d failed\n", test_passed_, test_failed_);
    return test_failed_ ? 1 : 0;
}

#endif
