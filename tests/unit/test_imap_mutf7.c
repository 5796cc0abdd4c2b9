/* Unit tests for src/imap_mutf7.c, imap_mutf7_encode: the modified UTF-7 encoder of mailbox
 * names (RFC 3501 5.1.3), against the RFC's own examples and a few edge cases (surrogate pairs,
 * "&", control bytes, ill-formed UTF-8, the output bound). */
#include <criterion/criterion.h>
#include <string.h>

#include "imap_mutf7.h"

#define N_ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))

Test(mutf7, encodes_rfc_and_edge_cases)
{
	static const struct {
		const char *utf8;
		const char *mutf7;
	} cases[] = {
		/* RFC 3501 5.1.3: "~peter/mail/台北/日本語" */
		{ "~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
		  "~peter/mail/&U,BTFw-/&ZeVnLIqe-" },
		/* RFC 3501 5.1.3: "&Jjo-!" is the valid form of "☺!" */
		{ "\xe2\x98\xba!", "&Jjo-!" },
		/* RFC 2152's "Hi Mom -☺-!" with modified base64 */
		{ "Hi Mom -\xe2\x98\xba-!", "Hi Mom -&Jjo--!" },
		{ "Entw\xc3\xbcrfe", "Entw&APw-rfe" },
		{ "f\xc3\xb6\xc3\xb6", "f&APYA9g-" },
		{ "INBOX", "INBOX" },
		{ "", "" },
		{ "&", "&-" },
		{ "a&b&&", "a&-b&-&-" },
		/* outside the BMP: a surrogate pair (U+1F600) */
		{ "\xf0\x9f\x98\x80", "&2D3eAA-" },
		/* control bytes are not printable: encoded, never sent raw */
		{ "x\x01y", "x&AAE-y" },
		{ "\xe2\x82\xacuro/\xd0\x9e\xd1\x80\xd0\xb4\xd0\xb5\xd1\x80", "&IKw-uro/&BB4EQAQ0BDUEQA-" },
	};
	for (size_t i = 0; i < N_ELEMENTS(cases); i++) {
		char out[128];
		cr_assert_eq(imap_mutf7_encode(cases[i].utf8, out, sizeof(out)), 0, "case %zu", i);
		cr_assert_str_eq(out, cases[i].mutf7, "case %zu", i);
	}
}

Test(mutf7, refuses_ill_formed_utf8)
{
	static const char *const bad[] = {
		"\xc3",             /* truncated */
		"\xc3(",            /* bad continuation */
		"\xc0\xaf",         /* overlong "/" */
		"\xe0\x80\xaf",     /* overlong "/" */
		"\xed\xa0\x80",     /* a surrogate, U+D800 */
		"\xf4\x90\x80\x80", /* past U+10FFFF */
		"\xff",
		"ok\x80",
	};
	for (size_t i = 0; i < N_ELEMENTS(bad); i++) {
		char out[64];
		cr_assert_eq(imap_mutf7_encode(bad[i], out, sizeof(out)), -1, "case %zu", i);
	}
}

Test(mutf7, bounded_by_the_output_size)
{
	char out[16];

	memset(out, 'X', sizeof(out));
	/* "f&APYA9g-" needs 10 octets with its NUL */
	cr_assert_eq(imap_mutf7_encode("f\xc3\xb6\xc3\xb6", out, 9), -1);
	cr_assert_eq(out[9], 'X', "wrote past the given size");
	cr_assert_eq(imap_mutf7_encode("f\xc3\xb6\xc3\xb6", out, 10), 0);
	cr_assert_str_eq(out, "f&APYA9g-");
	cr_assert_eq(imap_mutf7_encode("abc", out, 3), -1);
	cr_assert_eq(imap_mutf7_encode("abc", out, 0), -1);
	cr_assert_eq(imap_mutf7_encode("&", out, 2), -1);
}
