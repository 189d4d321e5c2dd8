/*
 * cron.c - parsing five-field cron expressions and finding the next fire
 * time, with croniter's semantics, in UTC.
 *
 * The calendar is our own (Howard Hinnant's days-from-civil), never libc's
 * gmtime/timegm: those read the process time zone database on some
 * platforms and cannot be trusted to be free of hidden state.
 */
#include "cron/cron.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* ---- calendar ---------------------------------------------------------- */

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;

    if ((a % b != 0) && ((a < 0) != (b < 0)))
        q--;
    return q;
}

int64_t zkf_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    int64_t era, yoe, doy, doe;

    y -= m <= 2;
    era = floor_div(y, 400);
    yoe = y - era * 400;                                   /* [0, 399] */
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1; /* [0, 365] */
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;           /* [0, 146096] */
    return era * 146097 + doe - 719468;
}

void zkf_civil_from_days(int64_t days, int64_t *y, unsigned *m, unsigned *d)
{
    int64_t z = days + 719468;
    int64_t era = floor_div(z, 146097);
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    unsigned mm = (unsigned)(mp < 10 ? mp + 3 : mp - 9);

    *d = (unsigned)(doy - (153 * mp + 2) / 5 + 1);
    *m = mm;
    *y = yoe + era * 400 + (mm <= 2);
}

static int is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static unsigned days_in_month(int64_t y, unsigned m)
{
    static const unsigned char dim[12] = {
        31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31
    };

    return m == 2 && is_leap(y) ? 29 : dim[m - 1];
}

/* ---- parsing ----------------------------------------------------------- */

enum { F_MINUTE, F_HOUR, F_DOM, F_MONTH, F_DOW, NFIELDS };

static const struct field_def {
    const char *name;
    int min, max;       /* accepted values; day-of-week also takes 7 */
} fields[NFIELDS] = {
    { "minute",       0, 59 },
    { "hour",         0, 23 },
    { "day-of-month", 1, 31 },
    { "month",        1, 12 },
    { "day-of-week",  0, 7 },
};

static const char *const month_names[] = {
    "jan", "feb", "mar", "apr", "may", "jun",
    "jul", "aug", "sep", "oct", "nov", "dec"
};
static const char *const dow_names[] = {
    "sun", "mon", "tue", "wed", "thu", "fri", "sat"
};

static const struct preset {
    const char *name;
    const char *expr;
} presets[] = {
    { "@yearly",   "0 0 1 1 *" },
    { "@annually", "0 0 1 1 *" },
    { "@monthly",  "0 0 1 * *" },
    { "@weekly",   "0 0 * * 0" },
    { "@daily",    "0 0 * * *" },
    { "@midnight", "0 0 * * *" },
    { "@hourly",   "0 * * * *" },
};

/* What a parse needs to report an error: the expression as the user wrote
 * it (presets are reported as written, not as expanded). */
typedef struct parse_ctx {
    const char *expr;
    char *err;
    size_t errlen;
} parse_ctx;

static int fail(const parse_ctx *p, int field, const char *fmt, ...)
{
    char reason[160];
    va_list ap;

    if (!p->err || p->errlen == 0)
        return -1;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    if (field >= 0)
        snprintf(p->err, p->errlen, "cron: %s: %s in '%s'",
                 fields[field].name, reason, p->expr);
    else
        snprintf(p->err, p->errlen, "cron: %s in '%s'", reason, p->expr);
    return -1;
}

#define VAL_LAST (-2)   /* the token `L` */

/* Parses one value token s[0..n) of `field`: digits, a name, or `L`.
 * Returns 0 and the value in *v (VAL_LAST for `L`), or -1. */
static int parse_value(const parse_ctx *p, int field, const char *s,
                       size_t n, int *v)
{
    size_t i;

    if (n == 0)
        return fail(p, field, "missing value");
    if (isdigit((unsigned char)s[0])) {
        long x = 0;

        for (i = 0; i < n; i++) {
            if (!isdigit((unsigned char)s[i]))
                return fail(p, field, "bad value '%.*s'", (int)n, s);
            if (x < 1000000)
                x = x * 10 + (s[i] - '0');
        }
        if (x < fields[field].min || x > fields[field].max)
            return fail(p, field, "value %.*s out of range %d-%d", (int)n, s,
                        fields[field].min, fields[field].max);
        *v = (int)x;
        return 0;
    }
    if (n == 1 && (s[0] == 'L' || s[0] == 'l')) {
        if (field != F_DOM)
            return fail(p, field, "'L' is only allowed in day-of-month");
        *v = VAL_LAST;
        return 0;
    }
    if (n == 3 && (field == F_MONTH || field == F_DOW)) {
        const char *const *names = field == F_MONTH ? month_names : dow_names;
        int count = field == F_MONTH ? 12 : 7;
        int k;

        for (k = 0; k < count; k++) {
            if (tolower((unsigned char)s[0]) == names[k][0]
                && tolower((unsigned char)s[1]) == names[k][1]
                && tolower((unsigned char)s[2]) == names[k][2]) {
                *v = field == F_MONTH ? k + 1 : k;
                return 0;
            }
        }
        return fail(p, field, "unknown name '%.*s'", (int)n, s);
    }
    if (field == F_MONTH || field == F_DOW)
        return fail(p, field, "unknown name '%.*s'", (int)n, s);
    return fail(p, field, "bad value '%.*s'", (int)n, s);
}

/* Parses one list element s[0..n) into *mask.  *star is set when the
 * element is a bare `*`; *last when it is `L`. */
static int parse_element(const parse_ctx *p, int field, const char *s,
                         size_t n, uint64_t *mask, int *star, int *last)
{
    const char *slash = memchr(s, '/', n);
    const char *dash;
    size_t base_n = slash ? (size_t)(slash - s) : n;
    int lo, hi, step = 1, v;

    if (n == 0)
        return fail(p, field, "empty list element");
    if (slash) {
        const char *st = slash + 1;
        size_t sn = n - base_n - 1, i;
        long x = 0;

        if (sn == 0)
            return fail(p, field, "missing step after '/'");
        for (i = 0; i < sn; i++) {
            if (!isdigit((unsigned char)st[i]))
                return fail(p, field, "bad step '%.*s'", (int)sn, st);
            if (x < 1000000)
                x = x * 10 + (st[i] - '0');
        }
        if (x == 0)
            return fail(p, field, "step must be at least 1");
        step = (int)(x > 1000 ? 1000 : x);
    }

    dash = memchr(s, '-', base_n);
    if (base_n == 1 && s[0] == '*') {
        lo = fields[field].min;
        hi = fields[field].max;
        if (!slash)
            *star = 1;
    } else if (dash) {
        if (dash == s)
            return fail(p, field, "negative values are not allowed");
        if (memchr(dash + 1, '-', base_n - (size_t)(dash - s) - 1))
            return fail(p, field, "bad range '%.*s'", (int)base_n, s);
        if (parse_value(p, field, s, (size_t)(dash - s), &lo) < 0)
            return -1;
        if (parse_value(p, field, dash + 1, base_n - (size_t)(dash - s) - 1,
                        &hi) < 0)
            return -1;
        if (lo == VAL_LAST)
            return fail(p, field, "'L' can only end a range");
        if (hi == VAL_LAST)
            hi = 31;
        /* FRI-SUN: a range may wrap to Sunday written as 0 */
        if (field == F_DOW && hi == 0 && lo > hi)
            hi = 7;
        if (lo > hi)
            return fail(p, field, "range %.*s goes backwards", (int)base_n,
                        s);
    } else {
        if (parse_value(p, field, s, base_n, &lo) < 0)
            return -1;
        if (lo == VAL_LAST) {
            if (slash)
                return fail(p, field, "'L' cannot take a step");
            *last = 1;
            return 0;
        }
        hi = slash ? fields[field].max : lo;
    }

    for (v = lo; v <= hi; v += step)
        *mask |= (uint64_t)1 << (field == F_DOW && v == 7 ? 0 : v);
    return 0;
}

static int popcount64(uint64_t x)
{
    int n = 0;

    while (x) {
        x &= x - 1;
        n++;
    }
    return n;
}

/* Parses field `field` from s[0..n) into `c`. */
static int parse_field(const parse_ctx *p, int field, const char *s,
                       size_t n, zkf_cron *c)
{
    uint64_t mask = 0;
    int star = 0, last = 0;
    size_t i = 0;

    for (;;) {
        const char *comma = memchr(s + i, ',', n - i);
        size_t en = comma ? (size_t)(comma - (s + i)) : n - i;

        if (parse_element(p, field, s + i, en, &mask, &star, &last) < 0)
            return -1;
        if (!comma)
            break;
        i += en + 1;
    }

    if (star) {
        /* `*` anywhere in the list makes the field unrestricted */
        mask = 0;
        for (i = (size_t)fields[field].min; i <= (size_t)fields[field].max;
             i++)
            mask |= (uint64_t)1 << i;
        if (field == F_DOW)
            mask &= 0x7f;
        last = 0;
    }

    switch (field) {
    case F_MINUTE:
        c->minutes = mask;
        break;
    case F_HOUR:
        c->hours = (uint32_t)mask;
        break;
    case F_DOM:
        c->dom = (uint32_t)mask;
        if (last)
            c->flags |= ZKF_CRON_DOM_LAST;
        /* croniter calls a day-of-month `*` when its list has 31 entries,
         * `L` counting as one: that decides whether days are OR-ed */
        if (star || popcount64(mask) + last == 31)
            c->flags |= ZKF_CRON_DOM_STAR;
        break;
    case F_MONTH:
        c->months = (uint16_t)mask;
        break;
    default:
        c->dow = (uint8_t)mask;
        if (star || popcount64(mask) == 7)
            c->flags |= ZKF_CRON_DOW_STAR;
        break;
    }
    return 0;
}

int zkf_cron_parse(zkf_cron *out, const char *expr, char *err, size_t errlen)
{
    parse_ctx p = { expr, err, errlen };
    const char *s = expr, *end;
    const char *start[NFIELDS + 1];
    size_t len[NFIELDS + 1];
    int nf = 0;

    if (err && errlen)
        err[0] = '\0';
    if (!expr) {
        p.expr = "";
        return fail(&p, -1, "no expression");
    }
    memset(out, 0, sizeof *out);

    while (isspace((unsigned char)*s))
        s++;
    end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        end--;

    if (*s == '@') {
        size_t n = (size_t)(end - s), k;

        for (k = 0; k < sizeof presets / sizeof presets[0]; k++) {
            if (strlen(presets[k].name) == n
                && strncasecmp(presets[k].name, s, n) == 0) {
                s = presets[k].expr;
                end = s + strlen(s);
                break;
            }
        }
        if (k == sizeof presets / sizeof presets[0])
            return fail(&p, -1, "unknown preset (known: @hourly @daily "
                        "@midnight @weekly @monthly @yearly @annually)");
    }

    while (s < end) {
        const char *f = s;

        while (s < end && !isspace((unsigned char)*s))
            s++;
        if (nf <= NFIELDS) {
            start[nf] = f;
            len[nf] = (size_t)(s - f);
        }
        nf++;
        while (s < end && isspace((unsigned char)*s))
            s++;
    }
    if (nf != NFIELDS)
        return fail(&p, -1, "expected 5 fields (minute hour day-of-month "
                    "month day-of-week), got %d", nf);

    for (nf = 0; nf < NFIELDS; nf++)
        if (parse_field(&p, nf, start[nf], len[nf], out) < 0)
            return -1;
    return 0;
}

/* ---- evaluation -------------------------------------------------------- */

/* The lowest set bit of `mask` at or above `from`, or -1. */
static int next_bit(uint64_t mask, int from)
{
    if (from > 63)
        return -1;
    mask >>= from;
    if (!mask)
        return -1;
    return from + __builtin_ctzll(mask);
}

static int day_matches(const zkf_cron *c, int64_t y, unsigned m, unsigned d,
                       int64_t days)
{
    int dom_ok = (c->dom >> d) & 1
                 || ((c->flags & ZKF_CRON_DOM_LAST) && d == days_in_month(y, m));
    int64_t wd = days + 4 - floor_div(days + 4, 7) * 7;  /* 1970-01-01: Thu */
    int dow_ok = (c->dow >> wd) & 1;
    if (c->flags & ZKF_CRON_DOM_STAR)
        return (c->flags & ZKF_CRON_DOW_STAR) ? 1 : dow_ok;
    if (c->flags & ZKF_CRON_DOW_STAR)
        return dom_ok;
    return dom_ok || dow_ok;
}

/* Oldest and newest instants accepted: 0001-01-01 and the start of 9990,
 * so that the ten-year search never leaves four-digit years. */
#define T_MIN INT64_C(-62135596800)
#define T_MAX INT64_C(253086508800)

int64_t zkf_cron_next(const zkf_cron *c, int64_t t)
{
    int64_t start, days, limit, y;
    unsigned m, d;
    int h, mi;

    if (t < T_MIN || t > T_MAX)
        return -1;
    if (!c->minutes || !c->hours || !c->months
        || (!c->dom && !(c->flags & ZKF_CRON_DOM_LAST) && !c->dow))
        return -1;

    /* the first whole minute strictly after t */
    start = floor_div(t, 60) * 60 + 60;
    days = floor_div(start, 86400);
    h = (int)((start - days * 86400) / 3600);
    mi = (int)((start - days * 86400) % 3600 / 60);
    zkf_civil_from_days(days, &y, &m, &d);
    limit = days + 3653;

    /* Jump by month, then by day, then pick the hour and minute from the
     * masks: at most a few thousand steps for ten years. */
    while (days <= limit) {
        int nh, nm;

        if (!((c->months >> m) & 1)) {
            days += days_in_month(y, m) - d + 1;
            d = 1;
            if (++m > 12) {
                m = 1;
                y++;
            }
            h = mi = 0;
            continue;
        }
        if (day_matches(c, y, m, d, days)) {
            nh = next_bit(c->hours, h);
            if (nh >= 0) {
                if (nh != h)
                    mi = 0;
                nm = next_bit(c->minutes, mi);
                if (nm < 0) {
                    nh = next_bit(c->hours, nh + 1);
                    nm = nh >= 0 ? next_bit(c->minutes, 0) : -1;
                }
                if (nh >= 0 && nm >= 0)
                    return days * 86400 + nh * 3600 + nm * 60;
            }
        }
        days++;
        if (++d > days_in_month(y, m)) {
            d = 1;
            if (++m > 12) {
                m = 1;
                y++;
            }
        }
        h = mi = 0;
    }
    return -1;
}
