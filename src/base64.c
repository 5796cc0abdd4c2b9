/*
 * base64 - RFC 4648 base64 over OpenSSL's EVP block functions (see base64.h).
 */
#include "base64.h"

#include <ctype.h>

#include <openssl/evp.h>

/* EVP_EncodeBlock takes an int length: encode in blocks of this many bytes (a multiple of 3,
 * so only the last block is padded). */
#define BASE64_BLOCK ((size_t)3 * 1024 * 1024)

size_t base64_encoded_size(size_t len)
{
	return 4 * ((len + 2) / 3) + 1;
}

size_t base64_encode(const void *data, size_t len, char *out)
{
	const unsigned char *in = data;
	size_t done = 0, out_len = 0;

	while (done < len) {
		size_t n = len - done < BASE64_BLOCK ? len - done : BASE64_BLOCK;
		out_len += (size_t)EVP_EncodeBlock((unsigned char *)out + out_len, in + done,
						   (int)n);
		done += n;
	}
	out[out_len] = '\0';
	return out_len;
}

ssize_t base64_decode(const char *in, size_t len, unsigned char *out)
{
	size_t pad = 0;

	if (len % 4 != 0 || len > (size_t)0x7fffffff)
		return -1;
	if (len == 0)
		return 0;
	if (in[len - 1] == '=')
		pad = in[len - 2] == '=' ? 2 : 1;
	/* EVP_DecodeBlock would take '=' anywhere, and skips blanks: check the alphabet first. */
	for (size_t i = 0; i < len - pad; i++) {
		unsigned char c = (unsigned char)in[i];
		if (!(isalnum(c) || c == '+' || c == '/'))
			return -1;
	}
	int n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)len);
	if (n < 0 || (size_t)n < pad)
		return -1;
	/* EVP_DecodeBlock counts the padding as zero bytes. */
	return (ssize_t)((size_t)n - pad);
}
