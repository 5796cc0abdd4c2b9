/*
 * fuzz.h - what every libFuzzer target in tests/fuzz/ shares.
 *
 * FUZZ_CHECK aborts (so libFuzzer reports the input) when an invariant fails, naming the
 * condition; fuzz_split() derives chunk boundaries from the input itself, so the fuzzer also
 * explores how the bytes are cut (style.md item 14a: whole buffer and trickle alike).
 */
#ifndef LMTPGW_FUZZ_H
#define LMTPGW_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond)                                                                \
	do {                                                                            \
		if (!(cond)) {                                                          \
			fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__,      \
				__LINE__, #cond);                                       \
			abort();                                                        \
		}                                                                       \
	} while (0)

/* Up to max_cuts ascending cut positions in (0, len), derived from seed bytes; returns the
 * count. Positions are distinct; a cut at 0 or len is dropped. */
static inline size_t fuzz_split(const uint8_t *seed, size_t seed_len, size_t len, size_t *cuts,
				size_t max_cuts)
{
	size_t n = 0, pos = 0;

	for (size_t i = 0; i < seed_len && n < max_cuts; i++) {
		/* Small steps are the interesting ones: 1..256, and 1 byte steps for 0xff. */
		size_t step = seed[i] == 0xff ? 1 : (size_t)seed[i] + 1;
		pos += step;
		if (pos >= len)
			break;
		cuts[n++] = pos;
	}
	return n;
}

#endif
