/*
 * cron.h - five-field cron expressions, evaluated in UTC.
 *
 * The grammar and the answers are croniter's (the reference DESIGN.md
 * names): names JAN-DEC and SUN-SAT in any case, ranges, steps (`*`/5,
 * 1-10/2, 5/15), lists, `L` in day-of-month, 7 as Sunday, the presets
 * @hourly @daily @midnight @weekly @monthly @yearly @annually, and
 * day-of-month OR-ed with day-of-week when neither of them is `*`.
 *
 * A parsed expression is a plain value (bitmasks, no allocation): copy it,
 * embed it, share it between threads; there is nothing to free.
 */
#ifndef ZKF_CRON_H
#define ZKF_CRON_H

#include <stddef.h>
#include <stdint.h>

enum {
    ZKF_CRON_DOM_LAST = 1,  /* `L`: the last day of the month also fires */
    ZKF_CRON_DOM_STAR = 2,  /* day-of-month is `*` (croniter's sense) */
    ZKF_CRON_DOW_STAR = 4   /* day-of-week is `*` (croniter's sense) */
};

typedef struct zkf_cron {
    uint64_t minutes;   /* bit m: minute m (0-59) fires */
    uint32_t hours;     /* bit h: hour h (0-23) */
    uint32_t dom;       /* bit d: day of month d (1-31) */
    uint16_t months;    /* bit m: month m (1-12) */
    uint8_t dow;        /* bit d: weekday d (0 = Sunday ... 6) */
    uint8_t flags;      /* ZKF_CRON_* */
} zkf_cron;

/* Parses `expr` into `*out`.  Returns 0, or -1 with `*out` unspecified and
 * a message in `err` (always NUL-terminated when errlen > 0) that names
 * the field and quotes the expression:
 * "cron: day-of-month: value 32 out of range 1-31 in '0 0 32 * *'".
 * Reads `expr` only during the call; `err` may be NULL. */
int zkf_cron_parse(zkf_cron *out, const char *expr, char *err, size_t errlen);

/* The first fire time strictly after `t` (UTC epoch seconds), a whole
 * minute.  Returns -1 when there is none within ten years of `t` (30 Feb;
 * ten because 29 Feb can be eight years away around 2100) or when `t` lies
 * outside the years 1-9990.  Reads `c` only. */
int64_t zkf_cron_next(const zkf_cron *c, int64_t t);

/* Days since 1970-01-01 of the proleptic Gregorian date y-m-d (m 1-12,
 * d 1-31), and back.  Exact for any year that fits; no time zone. */
int64_t zkf_days_from_civil(int64_t y, unsigned m, unsigned d);
void zkf_civil_from_days(int64_t days, int64_t *y, unsigned *m, unsigned *d);

#endif
