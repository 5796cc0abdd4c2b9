/*
 * imap_mutf7 - the modified UTF-7 encoder of IMAP mailbox names (RFC 3501 5.1.3).
 *
 * Modified UTF-7 is RFC 2152's UTF-7 with "&" as the shift character and "," for "/" in the
 * base64 alphabet; every non-printable or non-ASCII run is UTF-16 in that base64. Error
 * contract: -1 for ill-formed UTF-8 or a result that does not fit, never a partial name.
 */
#include "imap_mutf7.h"

#include <stdint.h>

/* Next code point of the UTF-8 text at *p (advanced past it), or -1 when the bytes there are
 * not well-formed UTF-8 (overlong forms, surrogates and values past U+10FFFF included). */
static long utf8_next(const unsigned char **p)
{
	const unsigned char *s = *p;
	long cp;
	int more;

	if (s[0] < 0x80) {
		*p = s + 1;
		return s[0];
	}
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		cp = s[0] & 0x1f;
		more = 1;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		cp = s[0] & 0x0f;
		more = 2;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		cp = s[0] & 0x07;
		more = 3;
	} else {
		return -1;
	}
	for (int i = 1; i <= more; i++) {
		if ((s[i] & 0xc0) != 0x80) /* also stops at the terminating NUL */
			return -1;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if ((more == 2 && cp < 0x800) || (more == 3 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return -1;
	*p = s + more + 1;
	return cp;
}

int imap_mutf7_encode(const char *utf8, char *out, size_t out_size)
{
	/* RFC 3501 5.1.3: RFC 2152's base64 with ',' for '/', no padding. */
	static const char b64[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";
	const unsigned char *p = (const unsigned char *)utf8;
	size_t n = 0;

#define MUTF7_PUT(c)                          \
	do {                                  \
		if (n + 1 >= out_size)        \
			return -1;            \
		out[n++] = (char)(c);         \
	} while (0)

	if (out_size == 0)
		return -1;
	while (*p != '\0') {
		if (*p >= 0x20 && *p <= 0x7e) {
			/* printable US-ASCII stands for itself; "&" is written "&-" */
			MUTF7_PUT(*p);
			if (*p == '&')
				MUTF7_PUT('-');
			p++;
			continue;
		}
		/* A run of everything else: UTF-16 in modified base64 between "&" and "-". */
		uint32_t bits = 0;
		int nbits = 0;
		MUTF7_PUT('&');
		while (*p != '\0' && !(*p >= 0x20 && *p <= 0x7e)) {
			long cp = utf8_next(&p);
			if (cp < 0)
				return -1;
			uint16_t units[2];
			int count = 1;
			if (cp >= 0x10000) {
				cp -= 0x10000;
				units[0] = (uint16_t)(0xd800 | (cp >> 10));
				units[1] = (uint16_t)(0xdc00 | (cp & 0x3ff));
				count = 2;
			} else {
				units[0] = (uint16_t)cp;
			}
			for (int u = 0; u < count; u++) {
				bits = (bits << 16) | units[u];
				nbits += 16;
				while (nbits >= 6) {
					nbits -= 6;
					MUTF7_PUT(b64[(bits >> nbits) & 0x3f]);
				}
				bits &= (1u << nbits) - 1; /* keep only what is not written yet */
			}
		}
		if (nbits > 0)
			MUTF7_PUT(b64[(bits << (6 - nbits)) & 0x3f]); /* zero-padded last sextet */
		MUTF7_PUT('-');
	}
	out[n] = '\0';
	return 0;
#undef MUTF7_PUT
}
