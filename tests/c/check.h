/* check.h - CHECK(cond) for the C drivers that need no more: a failed
 * check prints itself with its place and exits 1. */
#ifndef IOCPORT_TEST_CHECK_H
#define IOCPORT_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__,         \
                    __LINE__, #cond);                                      \
            exit(1);                                                       \
        }                                                                  \
    } while (0)

#endif
