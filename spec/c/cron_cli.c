/*
 * cron_cli.c - drives zkf_cron_next() for spec/croniter_check.py.
 *
 * Reads lines "EXPR<TAB>T1 T2 ..." from stdin and answers each with one
 * line: the next fire time after every Ti, space-separated ("-1" for
 * none), or "ERR <message>" when EXPR does not parse.  Not a test_*.c
 * file on purpose: the Makefile does not build it, the check script does.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cron/cron.h"

int main(void)
{
    char line[4096], err[256];

    while (fgets(line, sizeof line, stdin)) {
        char *tab = strchr(line, '\t'), *p;
        zkf_cron c;

        if (!tab)
            continue;
        *tab = '\0';
        if (zkf_cron_parse(&c, line, err, sizeof err) < 0) {
            printf("ERR %s\n", err);
            continue;
        }
        p = tab + 1;
        for (;;) {
            char *end;
            long long t = strtoll(p, &end, 10);

            if (end == p)
                break;
            printf("%s%" PRId64, p == tab + 1 ? "" : " ",
                   zkf_cron_next(&c, (int64_t)t));
            p = end;
        }
        putchar('\n');
    }
    return 0;
}
