#ifndef CRIMUX_COMMON_UTF8_H
#define CRIMUX_COMMON_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* UTF-8 as Go's protobuf and gRPC clients accept it: no overlong forms,
 * surrogates or code points past U+10FFFF. Client bytes reach error
 * messages, labels and wire strings, and a reader that finds anything else
 * there fails on the whole message. */

/* The length of the valid sequence at p (at most n bytes), 0 if none. */
size_t utf8_char_len(const uint8_t *p, size_t n);
bool utf8_valid(const uint8_t *p, size_t n);
/* s with every byte that is not part of a valid sequence replaced by
 * U+FFFD; malloc'd, NULL without memory. */
char *utf8_repair(const char *s);

#endif
