/* Unit tests for src/format.c: every output, return value and truncation must equal snprintf's,
 * for the conversions done directly and for the ones handed to vsnprintf. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <wchar.h>

#include "format.h"

/* Format with both into buffers of several sizes and compare octet for octet. */
#define SAME(...)                                                                              \
	do {                                                                                   \
		static const size_t sizes[] = { 0, 1, 2, 5, 17, 64, 512 };                    \
		for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {             \
			char want[600], got[600];                                              \
			memset(want, 'W', sizeof(want));                                       \
			memset(got, 'W', sizeof(got));                                         \
			int wn = snprintf(want, sizes[si], __VA_ARGS__);                       \
			int gn = format(got, sizes[si], __VA_ARGS__);                          \
			cr_assert_eq(gn, wn, "size %zu: returned %d, snprintf %d", sizes[si], gn, wn); \
			cr_assert(memcmp(want, got, sizeof(want)) == 0,                        \
				  "size %zu: \"%.*s\" vs snprintf \"%.*s\"", sizes[si],          \
				  (int)(sizes[si] ? sizes[si] : 1), got,                         \
				  (int)(sizes[si] ? sizes[si] : 1), want);                       \
		}                                                                              \
	} while (0)

Test(format, literals_and_strings)
{
	SAME("plain text");
	SAME("%s", "");
	SAME("%s", "hello");
	SAME("<%s> OK (transaction %s)", "user@example.test", "abc.1");
	SAME("100%% sure %s%%", "x");
	SAME("%.*s|", 3, "abcdef");
	SAME("%.*s|", 0, "abcdef");
	SAME("%.*s|", -1, "abcdef");
	SAME("%.*s|", 10, "abc");
	SAME("%.4s|%.0s|", "abcdef", "zz");
	SAME("%c%c%c", 'a', ' ', '~');
	SAME("%s and %s and %s", "one", "two", "three");
}

Test(format, string_precision_reads_no_further)
{
	/* "%.*s" may point into a buffer without a NUL inside the precision. */
	char raw[4] = { 'a', 'b', 'c', 'd' };
	char out[16];
	cr_assert_eq(format(out, sizeof(out), "[%.*s]", 4, raw), 6);
	cr_assert_str_eq(out, "[abcd]");
}

Test(format, integers_every_length)
{
	SAME("%d %d %d %d", 0, -1, INT_MAX, INT_MIN);
	SAME("%i %u %u", -42, 0u, UINT_MAX);
	SAME("%ld %ld %lu", LONG_MAX, LONG_MIN, ULONG_MAX);
	SAME("%lld %lld %llu", LLONG_MAX, LLONG_MIN, ULLONG_MAX);
	SAME("%zu %zu", (size_t)0, SIZE_MAX);
	SAME("%zd %zd", (ssize_t)-7, (ssize_t)123456789);
	/* ints on purpose, out of range too: hh and h must narrow them as printf does (clang's
	 * -Wformat objects to an int for %hhd, which is what the caller passes after promotion). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat"
	SAME("%hhd %hhu %hd %hu", -5, 250, -30000, 65000);
	SAME("%hhd %hhu %hd %hu", 300, 300, 70000, 70000); /* converted like printf */
#pragma GCC diagnostic pop
	SAME("%x %lx %llx %zx", 0xdeadbeefu, 0xfUL, 0x1234567890abcdefULL, (size_t)255);
	SAME("%" PRIu64 " octets received", (uint64_t)123456789012ULL);
	SAME("%d %s %s", 250, "2.0.0", "OK");
}

Test(format, random_integers_match_snprintf)
{
	srand(7);
	for (int i = 0; i < 20000; i++) {
		long long v = ((long long)rand() << 33) ^ ((long long)rand() << 11) ^ rand();
		if (i % 3 == 0)
			v = -v;
		int small = (int)(v % 100000);
		SAME("a%lldb%dc%llu%x", v, small, (unsigned long long)v, (unsigned)v);
	}
}

Test(format, unhandled_conversions_fall_back_whole)
{
	/* Each of these makes the whole call vsnprintf's: the output still matches, including the
	 * arguments consumed before the unhandled conversion. */
	SAME("%s %5d|", "a", 42);
	SAME("%s %-8s|", "x", "left");
	SAME("%d %08.3f", 1, 3.14159);
	SAME("%s %.3f %s", "delay", 0.0125, "end");
	SAME("%s %p", "p", (void *)0);
	SAME("%d %+d % d", 1, 2, 3);
	SAME("%s %.5d", "prec", 42);
	SAME("%s %#x", "alt", 255);
	SAME("%s %e %g", "sci", 1e10, 0.5);
	SAME("%s %lc", "wide", (wint_t)'w');
	SAME("%s %jd %td", "j", (intmax_t)5, (ptrdiff_t)-6);
}

Test(format, long_output_is_truncated_like_snprintf)
{
	char big[1000];
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	SAME("%s", big);
	SAME("head %s tail %d", big, 12345);

	char small[8];
	cr_assert_eq(format(small, sizeof(small), "%s", "0123456789"), 10);
	cr_assert_str_eq(small, "0123456");
	cr_assert_eq(format(NULL, 0, "%d-%s", 5, "abc"), 5);
}
