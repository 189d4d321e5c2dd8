/*
 * store.c - what both store backends share: the rules of a valid path.
 */
#include <string.h>

#include "store/store.h"

/* ZooKeeper's PathUtils.validatePath.  `seq`: a sequential create, whose
 * path may end in '/' because the sequence completes it. */
int zkf_store_valid_path(const char *p, int seq)
{
    size_t i, n = strlen(p), start;

    if (n == 0 || p[0] != '/')
        return 0;
    if (n == 1)
        return !seq;
    if (p[n - 1] == '/' && !seq)
        return 0;
    start = 1;
    for (i = 1; i <= n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '/' || c == '\0') {
            size_t len = i - start;
            if (len == 0 && !(c == '\0' && seq))
                return 0;
            if ((len == 1 && p[start] == '.') ||
                (len == 2 && p[start] == '.' && p[start + 1] == '.'))
                return 0;
            start = i + 1;
        } else if (c < 0x20 || c == 0x7f) {
            return 0;
        }
    }
    return 1;
}
