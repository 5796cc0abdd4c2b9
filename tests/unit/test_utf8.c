#include <criterion/criterion.h>
#include <string.h>

#include "utf8.h"

static bool valid(const char *s)
{
	return utf8_valid(s, strlen(s));
}

Test(utf8, well_formed_text)
{
	cr_expect(valid(""));
	cr_expect(valid("plain ASCII"));
	cr_expect(valid("J\xc3\xbcrgen \xe2\x82\xac \xf0\x9f\x93\xa7")); /* ü € 📧 */
	cr_expect(valid("\xed\x9f\xbf"));                         /* U+D7FF, below the surrogates */
	cr_expect(valid("\xf4\x8f\xbf\xbf"));                     /* U+10FFFF, the last one */
}

Test(utf8, ill_formed_text)
{
	cr_expect(!valid("\x80"));                 /* a stray tail byte */
	cr_expect(!valid("\xc0\xaf"));             /* overlong '/' */
	cr_expect(!valid("\xc1\xbf"));
	cr_expect(!valid("\xe0\x9f\xbf"));         /* overlong three-byte */
	cr_expect(!valid("\xed\xa0\x80"));         /* a surrogate */
	cr_expect(!valid("\xf0\x8f\xbf\xbf"));     /* overlong four-byte */
	cr_expect(!valid("\xf4\x90\x80\x80"));     /* above U+10FFFF */
	cr_expect(!valid("\xf5\x80\x80\x80"));
	cr_expect(!valid("\xff"));
	cr_expect(!valid("ok \xc3"));              /* cut at the end */
	cr_expect(!valid("\xe2\x82"));
	cr_expect(!valid("\xe2\x28\xa1"));         /* a tail byte missing */
}

Test(utf8, sequence_length_never_reads_past_avail)
{
	const unsigned char euro[] = { 0xe2, 0x82, 0xac };

	cr_expect_eq(utf8_sequence_length(euro, 3), 3);
	cr_expect_eq(utf8_sequence_length(euro, 2), 0);
	cr_expect_eq(utf8_sequence_length(euro, 0), 0);
	cr_expect_eq(utf8_sequence_length((const unsigned char *)"a", 1), 0);
}
