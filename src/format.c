/*
 * format - snprintf for the hot path (see include/format.h).
 *
 * One pass over the format: literal runs and strings go in with memcpy, integers through a
 * small digit loop. The first conversion it does not handle makes the whole call vsnprintf's,
 * from a copy of the arguments taken before any was read, so the output never differs.
 */
#include "format.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

struct out {
	char *buf;
	size_t size;  /* capacity including the NUL */
	size_t len;   /* octets the full output has so far (may exceed size) */
};

static void put(struct out *o, const char *s, size_t n)
{
	if (o->len + 1 < o->size) {
		size_t room = o->size - 1 - o->len;
		memcpy(o->buf + o->len, s, n < room ? n : room);
	}
	o->len += n;
}

static void put_unsigned(struct out *o, unsigned long long v, unsigned base, bool negative)
{
	char digits[24];
	size_t i = sizeof(digits);

	do {
		digits[--i] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v != 0);
	if (negative)
		digits[--i] = '-';
	put(o, digits + i, sizeof(digits) - i);
}

enum length { LEN_NONE, LEN_HH, LEN_H, LEN_L, LEN_LL, LEN_Z };

/* Returns false at the first conversion it does not handle; args is then partly consumed. */
static bool format_fast(struct out *o, const char *fmt, va_list args)
{
	const char *p = fmt;

	for (;;) {
		const char *pct = strchr(p, '%');
		if (pct == NULL) {
			put(o, p, strlen(p));
			return true;
		}
		put(o, p, (size_t)(pct - p));
		p = pct + 1;

		long precision = -1;
		if (*p == '.') {
			p++;
			if (*p == '*') {
				precision = va_arg(args, int);
				p++;
			} else {
				precision = 0;
				while (*p >= '0' && *p <= '9' && precision < 100000)
					precision = precision * 10 + (*p++ - '0');
			}
		}
		enum length len = LEN_NONE;
		if (p[0] == 'h' && p[1] == 'h')
			len = LEN_HH, p += 2;
		else if (p[0] == 'h')
			len = LEN_H, p++;
		else if (p[0] == 'l' && p[1] == 'l')
			len = LEN_LL, p += 2;
		else if (p[0] == 'l')
			len = LEN_L, p++;
		else if (p[0] == 'z')
			len = LEN_Z, p++;

		char conv = *p++;
		if (conv == 's' && len == LEN_NONE) {
			const char *s = va_arg(args, const char *);
			if (s == NULL)
				s = "(null)";
			/* With a precision the string need not be NUL-terminated (C17 7.21.6.1). */
			size_t n = precision >= 0 ? strnlen(s, (size_t)precision) : strlen(s);
			put(o, s, n);
			continue;
		}
		if (precision >= 0 && conv != 's')
			return false;
		switch (conv) {
		case '%':
			if (len != LEN_NONE)
				return false;
			put(o, "%", 1);
			break;
		case 'c':
			if (len != LEN_NONE)
				return false;
			{
				char c = (char)va_arg(args, int);
				put(o, &c, 1);
			}
			break;
		case 'd':
		case 'i': {
			long long v;
			switch (len) {
			case LEN_HH: v = (signed char)va_arg(args, int); break;
			case LEN_H: v = (short)va_arg(args, int); break;
			case LEN_L: v = va_arg(args, long); break;
			case LEN_LL: v = va_arg(args, long long); break;
			case LEN_Z: v = va_arg(args, long); break; /* ssize_t on LP64 and ILP32 */
			default: v = va_arg(args, int); break;
			}
			/* Negate in unsigned arithmetic: LLONG_MIN has no positive counterpart. */
			unsigned long long mag = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
			put_unsigned(o, mag, 10, v < 0);
			break;
		}
		case 'u':
		case 'x': {
			unsigned long long v;
			switch (len) {
			case LEN_HH: v = (unsigned char)va_arg(args, unsigned); break;
			case LEN_H: v = (unsigned short)va_arg(args, unsigned); break;
			case LEN_L: v = va_arg(args, unsigned long); break;
			case LEN_LL: v = va_arg(args, unsigned long long); break;
			case LEN_Z: v = va_arg(args, size_t); break;
			default: v = va_arg(args, unsigned); break;
			}
			put_unsigned(o, v, conv == 'x' ? 16 : 10, false);
			break;
		}
		default:
			return false; /* flags, widths, floats, pointers, %n, a lone '%' at the end */
		}
	}
}

int format_v(char *buf, size_t size, const char *fmt, va_list args)
{
	struct out o = { buf, size, 0 };
	va_list copy;

	va_copy(copy, args);
	bool done = format_fast(&o, fmt, copy);
	va_end(copy);
	if (!done)
		return vsnprintf(buf, size, fmt, args);
	if (size > 0)
		buf[o.len < size ? o.len : size - 1] = '\0';
	return o.len > (size_t)__INT_MAX__ ? -1 : (int)o.len;
}

int format(char *buf, size_t size, const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	int n = format_v(buf, size, fmt, args);
	va_end(args);
	return n;
}
