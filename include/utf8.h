/*
 * utf8 - well-formed UTF-8 (RFC 3629 section 4), for addresses (RFC 6531) and for text taken
 * from messages (MIME headers and parts, journal report envelopes).
 *
 * Written by hand: a dozen lines, where iconv or libunistring would be a dependency for one
 * check; one copy serves every caller.
 */
#ifndef LMTPGW_UTF8_H
#define LMTPGW_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* Length (2..4) of the well-formed multi-byte sequence at p, reading at most avail bytes; 0
 * when p[0] is ASCII or the sequence is ill-formed (stray tail byte, C0/C1, F5..FF, overlong,
 * surrogate, above U+10FFFF, cut short). */
size_t utf8_sequence_length(const unsigned char *p, size_t avail);

/* All of s[0..len) is well-formed UTF-8 (ASCII included). */
bool utf8_valid(const char *s, size_t len);

#endif
