/*
 * utf8 - well-formed UTF-8 (include/utf8.h).
 *
 *   UTF8-2 = %xC2-DF UTF8-tail
 *   UTF8-3 = %xE0 %xA0-BF UTF8-tail / %xE1-EC 2( UTF8-tail ) /
 *            %xED %x80-9F UTF8-tail / %xEE-EF 2( UTF8-tail )
 *   UTF8-4 = %xF0 %x90-BF 2( UTF8-tail ) / %xF1-F3 3( UTF8-tail ) / %xF4 %x80-8F 2( UTF8-tail )
 */
#include "utf8.h"

size_t utf8_sequence_length(const unsigned char *p, size_t avail)
{
	unsigned char lead, min = 0x80, max = 0xbf;
	size_t len;

	if (avail == 0)
		return 0;
	lead = p[0];
	if (lead >= 0xc2 && lead <= 0xdf) {
		len = 2;
	} else if (lead >= 0xe0 && lead <= 0xef) {
		len = 3;
		if (lead == 0xe0)
			min = 0xa0; /* overlong */
		else if (lead == 0xed)
			max = 0x9f; /* surrogates U+D800..DFFF */
	} else if (lead >= 0xf0 && lead <= 0xf4) {
		len = 4;
		if (lead == 0xf0)
			min = 0x90; /* overlong */
		else if (lead == 0xf4)
			max = 0x8f; /* above U+10FFFF */
	} else {
		return 0; /* ASCII, a stray tail byte, C0, C1 or F5..FF */
	}
	if (avail < len || p[1] < min || p[1] > max)
		return 0;
	for (size_t i = 2; i < len; i++) {
		if (p[i] < 0x80 || p[i] > 0xbf)
			return 0;
	}
	return len;
}

bool utf8_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + len;

	while (p < end) {
		if (*p < 0x80) {
			p++;
			continue;
		}
		size_t n = utf8_sequence_length(p, (size_t)(end - p));
		if (n == 0)
			return false;
		p += n;
	}
	return true;
}
