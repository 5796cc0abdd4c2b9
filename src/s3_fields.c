/*
 * s3_fields - checks and encodings of request fields (see s3_fields.h).
 */
#include "s3_fields.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "sigv4.h"

int s3_key_check(const char *key, const char **error_r)
{
	size_t len = strlen(key);

	if (len == 0 || len > S3_KEY_MAX) {
		*error_r = len == 0 ? "empty key" : "key longer than 1024 bytes";
		return -1;
	}
	if (key[0] == '/') {
		*error_r = "key starts with '/'";
		return -1;
	}
	for (const unsigned char *p = (const unsigned char *)key; *p != '\0'; p++) {
		if (*p < 0x20 || *p == 0x7f) {
			*error_r = "control character in key";
			return -1;
		}
	}
	for (const char *seg = key; seg != NULL;) {
		const char *slash = strchr(seg, '/');
		size_t n = slash != NULL ? (size_t)(slash - seg) : strlen(seg);
		if (n == 0 || (n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.')) {
			*error_r = "empty, \".\" or \"..\" segment in key";
			return -1;
		}
		seg = slash != NULL ? slash + 1 : NULL;
	}
	return 0;
}

void s3_meta_value(const char *in, size_t max_in, char *out, size_t size)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t w = 0;

	if (size == 0)
		return;
	for (size_t i = 0; in != NULL && in[i] != '\0' && i < max_in; i++) {
		unsigned char c = (unsigned char)in[i];
		bool keep = c >= 0x20 && c < 0x7f && c != '%';
		size_t need = keep ? 1 : 3;
		if (w + need >= size)
			break;
		if (keep) {
			out[w++] = (char)c;
		} else {
			out[w++] = '%';
			out[w++] = hex[c >> 4];
			out[w++] = hex[c & 0x0f];
		}
	}
	/* a header value must not end (or start) with a space: encode trailing ones */
	while (w > 0 && out[w - 1] == ' ' && w + 2 < size) {
		w--;
		out[w++] = '%';
		out[w++] = '2';
		out[w++] = '0';
		break;
	}
	out[w] = '\0';
}


bool s3_bucket_name_ok(const char *b)
{
	size_t n = strlen(b);

	if (n < 3 || n > 63)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = b[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.'))
			return false;
	}
	return b[0] != '-' && b[0] != '.' && b[n - 1] != '-' && b[n - 1] != '.';
}

bool s3_token_ok(const char *s)
{
	for (; *s != '\0'; s++) {
		if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
			return false;
	}
	return true;
}

int s3_tagging(const struct conf_strlist *tags, char **tagging_r, char *error_r,
	       size_t error_size)
{
	size_t cap = 1, len = 0;
	char *tagging;

	*tagging_r = NULL;
	if (tags->count == 0)
		return 0;
	for (size_t i = 0; i < tags->count; i++)
		cap += 3 * strlen(tags->items[i]) + 1;
	tagging = calloc(1, cap);
	if (tagging == NULL) {
		snprintf(error_r, error_size, "out of memory");
		return -1;
	}
	for (size_t i = 0; i < tags->count; i++) {
		const char *t = tags->items[i], *eq = strchr(t, '=');
		if (eq == NULL || eq == t) {
			snprintf(error_r, error_size, "tags: \"%s\" is not key=value", t);
			goto fail;
		}
		if (i > 0)
			tagging[len++] = '&';
		int a = sigv4_uri_encode(t, (size_t)(eq - t), false, tagging + len, cap - len);
		if (a < 0)
			goto too_long;
		len += (size_t)a;
		tagging[len++] = '=';
		int b = sigv4_uri_encode(eq + 1, strlen(eq + 1), false, tagging + len, cap - len);
		if (b < 0)
			goto too_long;
		len += (size_t)b;
	}
	*tagging_r = tagging;
	return 0;
too_long:
	/* cap allows 3 bytes per input byte: cannot happen, but never fail without a message */
	snprintf(error_r, error_size, "tags: too long to encode");
fail:
	free(tagging);
	return -1;
}

int s3_checksum_b64(const char *hex, char *out, size_t size)
{
	unsigned char bin[32];

	if (size < 45 || strlen(hex) != 64)
		return -1;
	for (size_t i = 0; i < 32; i++) {
		int hi = isxdigit((unsigned char)hex[2 * i]), lo = isxdigit((unsigned char)hex[2 * i + 1]);
		if (!hi || !lo)
			return -1;
		char b[3] = { hex[2 * i], hex[2 * i + 1], 0 };
		bin[i] = (unsigned char)strtoul(b, NULL, 16);
	}
	base64_encode(bin, sizeof(bin), out);
	return 0;
}
