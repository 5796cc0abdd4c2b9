/* base64: RFC 4648 test vectors, and the strict decode's refusals. */
#include <criterion/criterion.h>
#include <string.h>

#include "base64.h"

Test(base64, encode_rfc4648_vectors)
{
	static const char *const plain[] = { "", "f", "fo", "foo", "foob", "fooba", "foobar" };
	static const char *const coded[] = { "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=",
					     "Zm9vYmFy" };
	char out[16];

	for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
		cr_assert_eq(base64_encode(plain[i], strlen(plain[i]), out), strlen(coded[i]));
		cr_assert_str_eq(out, coded[i]);
		cr_assert_eq(base64_encoded_size(strlen(plain[i])), strlen(coded[i]) + 1);
	}
}

Test(base64, decode_rfc4648_vectors)
{
	static const char *const plain[] = { "", "f", "fo", "foo", "foob", "fooba", "foobar" };
	static const char *const coded[] = { "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=",
					     "Zm9vYmFy" };
	unsigned char out[16];

	for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
		ssize_t n = base64_decode(coded[i], strlen(coded[i]), out);
		cr_assert_eq(n, (ssize_t)strlen(plain[i]), "%s", coded[i]);
		cr_assert(memcmp(out, plain[i], (size_t)n) == 0);
	}
}

Test(base64, decode_refuses_what_is_not_base64)
{
	/* EVP_DecodeBlock alone accepts every one of these. */
	static const char *const bad[] = { "abc", "ab=c", "a===", "====", "ab c", " YWI=", "YW*=",
					   "YWI=\n", "Zg==Zg==" };
	unsigned char out[16];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_assert_eq(base64_decode(bad[i], strlen(bad[i]), out), -1, "%s", bad[i]);
}
