/*
 * format - snprintf for the hot path: replies, log lines, trace headers.
 *
 * glibc's vsnprintf costs ~1 us per call on this code's short formats (it copies strings into
 * its buffer one character at a time through a FILE); every message formats about a dozen
 * replies and log fields, so that was a quarter of the CPU of a 1 KB delivery (measured
 * with callgrind, docs/performance.md). format_v() handles the conversions lmtpgw uses itself directly and
 * hands any other format to vsnprintf whole, so its output is always exactly snprintf's.
 *
 * Handled directly: %s, %.*s, %.Ns, %c, %%, and d i u x with the length modifiers hh h l ll z
 * (no flags, no field width, no other precision). Anything else (%5d, %-s, %f, %p, ...) falls
 * back to vsnprintf for the whole call.
 *
 * Contract: exactly snprintf's: at most size - 1 octets and a NUL are written (nothing when
 * size is 0), and the return value is the length the full output would have (a negative value
 * only if the vsnprintf fallback fails).
 */
#ifndef LMTPGW_FORMAT_H
#define LMTPGW_FORMAT_H

#include <stdarg.h>
#include <stddef.h>

int format_v(char *buf, size_t size, const char *fmt, va_list args)
	__attribute__((format(printf, 3, 0)));

int format(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
