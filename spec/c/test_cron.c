/*
 * test_cron.c - core/cron/cron.c: parsing, errors, and next fire times across
 * month, year and leap-year ends.  spec/croniter_check.py compares many
 * more answers with croniter.
 */
#include <stdint.h>

#include "cron/cron.h"
#include "test.h"

/* Epoch seconds of a UTC date and time, through cron.c's own calendar. */
static int64_t utc(int64_t y, unsigned mo, unsigned d, int h, int mi)
{
    return zkf_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60;
}

/* The next fire time of `expr` after `t`, or -2 when it does not parse. */
static int64_t next_after(const char *expr, int64_t t)
{
    zkf_cron c;
    char err[256];

    if (zkf_cron_parse(&c, expr, err, sizeof err) != 0)
        return -2;
    return zkf_cron_next(&c, t);
}

/* The error text for `expr`, or "" when it parses. */
static const char *parse_error(const char *expr, char *err, size_t len)
{
    zkf_cron c;

    if (zkf_cron_parse(&c, expr, err, len) == 0)
        return "";
    return err;
}

static void test_calendar_round_trips(void)
{
    int64_t days, y;
    unsigned m, d;

    ASSERT_EQ(0, zkf_days_from_civil(1970, 1, 1));
    ASSERT_EQ(-1, zkf_days_from_civil(1969, 12, 31));
    ASSERT_EQ(11016, zkf_days_from_civil(2000, 2, 29));
    for (days = -800000; days <= 800000; days += 37) {
        zkf_civil_from_days(days, &y, &m, &d);
        ASSERT_EQ(days, zkf_days_from_civil(y, m, d));
    }
    zkf_civil_from_days(zkf_days_from_civil(2100, 3, 1) - 1, &y, &m, &d);
    ASSERT_EQ(2100, y);
    ASSERT_EQ(2, m);
    ASSERT_EQ(28, d);       /* 2100 is not a leap year */
}

static void test_cron_parses_fields_into_masks(void)
{
    zkf_cron c;

    ASSERT_EQ(0, zkf_cron_parse(&c, "*/15 9-17/4 1,15 JAN-mar mon-FRI",
                                NULL, 0));
    ASSERT_EQ((1ULL << 0) | (1ULL << 15) | (1ULL << 30) | (1ULL << 45),
              c.minutes);
    ASSERT_EQ((1u << 9) | (1u << 13) | (1u << 17), c.hours);
    ASSERT_EQ((1u << 1) | (1u << 15), c.dom);
    ASSERT_EQ(0xe, c.months);
    ASSERT_EQ(0x3e, c.dow);
    ASSERT_EQ(0, c.flags);
}

static void test_cron_parses_steps_from_a_start(void)
{
    zkf_cron c;

    ASSERT_EQ(0, zkf_cron_parse(&c, "5/15 1-10/2 * * *", NULL, 0));
    ASSERT_EQ((1ULL << 5) | (1ULL << 20) | (1ULL << 35) | (1ULL << 50),
              c.minutes);
    ASSERT_EQ((1u << 1) | (1u << 3) | (1u << 5) | (1u << 7) | (1u << 9),
              c.hours);
    ASSERT_EQ(ZKF_CRON_DOM_STAR | ZKF_CRON_DOW_STAR, c.flags);
}

static void test_cron_treats_7_as_sunday(void)
{
    zkf_cron c;

    ASSERT_EQ(0, zkf_cron_parse(&c, "0 0 * * 7", NULL, 0));
    ASSERT_EQ(1, c.dow);
    ASSERT_EQ(0, zkf_cron_parse(&c, "0 0 * * FRI-SUN", NULL, 0));
    ASSERT_EQ((1 << 5) | (1 << 6) | 1, c.dow);
    ASSERT_EQ(0, zkf_cron_parse(&c, "0 0 * * 5-7", NULL, 0));
    ASSERT_EQ((1 << 5) | (1 << 6) | 1, c.dow);
    /* 2026-01-04 is a Sunday */
    ASSERT_EQ(utc(2026, 1, 4, 0, 0), next_after("0 0 * * 7",
                                                utc(2026, 1, 1, 12, 0)));
    ASSERT_EQ(utc(2026, 1, 4, 0, 0), next_after("0 0 * * sun",
                                                utc(2026, 1, 1, 12, 0)));
}

static void test_cron_expands_presets(void)
{
    int64_t t = utc(2026, 5, 17, 10, 30);     /* a Sunday */

    ASSERT_EQ(utc(2026, 5, 17, 11, 0), next_after("@hourly", t));
    ASSERT_EQ(utc(2026, 5, 18, 0, 0), next_after("@daily", t));
    ASSERT_EQ(utc(2026, 5, 18, 0, 0), next_after("@midnight", t));
    ASSERT_EQ(utc(2026, 5, 24, 0, 0), next_after("@weekly", t));
    ASSERT_EQ(utc(2026, 6, 1, 0, 0), next_after("@monthly", t));
    ASSERT_EQ(utc(2027, 1, 1, 0, 0), next_after("@yearly", t));
    ASSERT_EQ(utc(2027, 1, 1, 0, 0), next_after("@ANNUALLY", t));
    ASSERT_EQ(utc(2026, 5, 17, 11, 0), next_after("  @Hourly ", t));
}

static void test_cron_next_is_strictly_after(void)
{
    int64_t t = utc(2026, 3, 10, 12, 0);

    ASSERT_EQ(t + 60, next_after("* * * * *", t));
    ASSERT_EQ(t + 60, next_after("* * * * *", t + 59));
    ASSERT_EQ(t + 300, next_after("*/5 * * * *", t));
    ASSERT_EQ(utc(2026, 3, 11, 12, 0), next_after("0 12 * * *", t));
    ASSERT_EQ(utc(2026, 3, 10, 12, 0), next_after("0 12 * * *", t - 1));
    /* before the epoch too */
    ASSERT_EQ(utc(1969, 12, 31, 23, 59), next_after("* * * * *",
                                                   utc(1969, 12, 31, 23, 58)
                                                   + 30));
}

static void test_cron_next_crosses_month_and_year_ends(void)
{
    ASSERT_EQ(utc(2027, 1, 1, 0, 0),
              next_after("0 0 * * *", utc(2026, 12, 31, 23, 59)));
    ASSERT_EQ(utc(2026, 5, 1, 0, 0),
              next_after("0 0 1 * *", utc(2026, 4, 30, 23, 59)));
    ASSERT_EQ(utc(2026, 5, 31, 0, 0),
              next_after("0 0 31 * *", utc(2026, 4, 1, 0, 0)));
    ASSERT_EQ(utc(2027, 1, 31, 9, 0),
              next_after("0 9 31 1 *", utc(2026, 1, 31, 9, 0)));
    ASSERT_EQ(utc(2026, 3, 1, 0, 0),
              next_after("0 0 1,15,30 * *", utc(2026, 2, 16, 0, 0)));
    ASSERT_EQ(utc(2026, 3, 1, 0, 0),
              next_after("0 0 */10 * *", utc(2026, 2, 21, 0, 0)));
}

static void test_cron_next_handles_leap_years(void)
{
    ASSERT_EQ(utc(2028, 2, 29, 0, 0),
              next_after("0 0 29 2 *", utc(2024, 2, 29, 0, 0)));
    /* 2100 is not a leap year: eight years from 2096 to 2104 */
    ASSERT_EQ(utc(2104, 2, 29, 0, 0),
              next_after("0 0 29 2 *", utc(2096, 3, 1, 0, 0)));
    ASSERT_EQ(utc(2000, 2, 29, 0, 0),
              next_after("0 0 29 2 *", utc(1999, 1, 1, 0, 0)));
}

static void test_cron_l_is_the_last_day_of_the_month(void)
{
    ASSERT_EQ(utc(2024, 2, 29, 0, 0),
              next_after("0 0 L * *", utc(2024, 2, 1, 0, 0)));
    ASSERT_EQ(utc(2023, 2, 28, 0, 0),
              next_after("0 0 l * *", utc(2023, 2, 1, 0, 0)));
    ASSERT_EQ(utc(2026, 4, 30, 0, 0),
              next_after("0 0 L * *", utc(2026, 3, 31, 0, 0)));
    ASSERT_EQ(utc(2026, 4, 15, 12, 0),
              next_after("0 12 15,L * *", utc(2026, 3, 31, 12, 0)));
    ASSERT_EQ(utc(2026, 4, 30, 12, 0),
              next_after("0 12 15,L * *", utc(2026, 4, 15, 12, 0)));
    ASSERT_EQ(utc(2026, 2, 28, 0, 0),
              next_after("0 0 20-L * *", utc(2026, 2, 27, 0, 0)));
}

static void test_cron_ors_day_of_month_and_day_of_week(void)
{
    /* 2026-02-01 is a Sunday: the 13th or any Friday */
    ASSERT_EQ(utc(2026, 2, 6, 0, 0),
              next_after("0 0 13 * 5", utc(2026, 2, 1, 0, 0)));
    ASSERT_EQ(utc(2026, 2, 13, 0, 0),
              next_after("0 0 13 * 5", utc(2026, 2, 6, 0, 0)));
    ASSERT_EQ(utc(2026, 2, 20, 0, 0),
              next_after("0 0 13 * 5", utc(2026, 2, 13, 0, 0)));
    /* only one restricted: AND with the unrestricted one */
    ASSERT_EQ(utc(2026, 3, 13, 0, 0),
              next_after("0 0 13 * *", utc(2026, 2, 13, 0, 0)));
    ASSERT_EQ(utc(2026, 2, 27, 0, 0),
              next_after("0 0 * * 5", utc(2026, 2, 20, 0, 0)));
    /* 1-31 lists every day: croniter reads it as `*`, so no OR */
    ASSERT_EQ(utc(2026, 2, 2, 0, 0),
              next_after("0 0 1-31 * 1", utc(2026, 2, 1, 0, 0)));
    /* 31 exists in no allowed month, the Mondays still fire */
    ASSERT_EQ(utc(2026, 9, 7, 13, 0),
              next_after("0 13 31 9 1", utc(2026, 9, 1, 0, 0)));
}

static void test_cron_returns_minus_one_when_nothing_fires(void)
{
    ASSERT_EQ(-1, next_after("0 0 30 2 *", utc(2026, 1, 1, 0, 0)));
    ASSERT_EQ(-1, next_after("0 0 31 4,6,9,11 *", utc(2026, 1, 1, 0, 0)));
    ASSERT_EQ(-1, next_after("* * * * *", INT64_MAX));
    ASSERT_EQ(-1, next_after("* * * * *", INT64_MIN));
}

static void test_cron_is_case_insensitive_and_lenient_on_space(void)
{
    int64_t t = utc(2026, 1, 1, 0, 0);

    ASSERT_EQ(next_after("0 6 * JAN-MAR MON", t),
              next_after(" 0\t6  *  jan-Mar mOn\n", t));
    ASSERT_EQ(next_after("0 0 * * 0", t), next_after("0 0 * * 00", t));
}

static void test_cron_errors_name_the_field(void)
{
    char err[256];

    ASSERT_STR_EQ("cron: day-of-month: value 32 out of range 1-31 in "
                  "'0 0 32 * *'", parse_error("0 0 32 * *", err, sizeof err));
    ASSERT_STR_EQ("cron: minute: value 60 out of range 0-59 in '60 * * * *'",
                  parse_error("60 * * * *", err, sizeof err));
    ASSERT_STR_EQ("cron: hour: range 5-1 goes backwards in '0 5-1 * * *'",
                  parse_error("0 5-1 * * *", err, sizeof err));
    ASSERT_STR_EQ("cron: month: unknown name 'foo' in '0 0 1 foo *'",
                  parse_error("0 0 1 foo *", err, sizeof err));
    ASSERT_STR_EQ("cron: day-of-week: value 8 out of range 0-7 in "
                  "'0 0 * * 8'", parse_error("0 0 * * 8", err, sizeof err));
    ASSERT_STR_EQ("cron: minute: step must be at least 1 in '*/0 * * * *'",
                  parse_error("*/0 * * * *", err, sizeof err));
    ASSERT_STR_EQ("cron: day-of-week: 'L' is only allowed in day-of-month in "
                  "'0 0 * * L'", parse_error("0 0 * * L", err, sizeof err));
    ASSERT_STR_EQ("cron: expected 5 fields (minute hour day-of-month month "
                  "day-of-week), got 6 in '0 0 * * * *'",
                  parse_error("0 0 * * * *", err, sizeof err));
    ASSERT_STR_EQ("cron: expected 5 fields (minute hour day-of-month month "
                  "day-of-week), got 0 in ''", parse_error("", err, sizeof err));
    ASSERT(strstr(parse_error("@sometimes", err, sizeof err),
                  "cron: unknown preset") == err);
    ASSERT_STR_EQ("cron: minute: empty list element in '1,,2 * * * *'",
                  parse_error("1,,2 * * * *", err, sizeof err));
}

static void test_cron_error_text_is_truncated_safely(void)
{
    char err[16];
    zkf_cron c;

    ASSERT_EQ(-1, zkf_cron_parse(&c, "0 0 32 * *", err, sizeof err));
    ASSERT_EQ(15, strlen(err));
    ASSERT_EQ(-1, zkf_cron_parse(&c, "0 0 32 * *", NULL, 0));
    ASSERT_EQ(-1, zkf_cron_parse(&c, NULL, err, sizeof err));
}

int main(void)
{
    RUN(test_calendar_round_trips);
    RUN(test_cron_parses_fields_into_masks);
    RUN(test_cron_parses_steps_from_a_start);
    RUN(test_cron_treats_7_as_sunday);
    RUN(test_cron_expands_presets);
    RUN(test_cron_next_is_strictly_after);
    RUN(test_cron_next_crosses_month_and_year_ends);
    RUN(test_cron_next_handles_leap_years);
    RUN(test_cron_l_is_the_last_day_of_the_month);
    RUN(test_cron_ors_day_of_month_and_day_of_week);
    RUN(test_cron_returns_minus_one_when_nothing_fires);
    RUN(test_cron_is_case_insensitive_and_lenient_on_space);
    RUN(test_cron_errors_name_the_field);
    RUN(test_cron_error_text_is_truncated_safely);
    return test_report();
}
