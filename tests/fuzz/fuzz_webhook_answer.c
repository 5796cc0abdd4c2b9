/*
 * fuzz_webhook_answer - the mapping of a webhook receiver's HTTP answer to one LMTP reply per
 * recipient (webhook_map_answer, webhook_map_http, webhook_sanitize_text in
 * src/webhook_answer.c) and the secret file reader (webhook_secret_decode, src/webhook_sign.c).
 *
 * Input: bytes 0-1 the HTTP status (an interesting one from a table, or raw), byte 2 flags
 * (content type, truncated, Retry-After, recipient count); the rest is the answer body.
 * Invariants (design.md, "Default status mapping"): every reply is a valid status
 * (status_valid: code and enhanced class agree) with printable text; only an HTTP 2xx can give
 * a 2xx; a truncated or non-JSON "JSON" answer gives 451 4.3.0 to everyone; sanitized text is
 * printable, trimmed and within its bound.
 */
#include <stdbool.h>
#include <string.h>

#include "status.h"
#include "webhook_answer.h"
#include "webhook_sign.h"
#include "fuzz.h"

static void check_status(const struct status *st, long http)
{
	FUZZ_CHECK(status_valid(st->code, st->enhanced));
	FUZZ_CHECK(st->code >= 200 && st->code < 600 && st->code / 100 != 3);
	FUZZ_CHECK(memchr(st->text, '\0', sizeof(st->text)) != NULL);
	for (const char *p = st->text; *p; p++)
		FUZZ_CHECK((unsigned char)*p >= 0x20 && *p != 0x7f);
	if (st->code < 300)
		FUZZ_CHECK(http >= 200 && http <= 299);
}

static void check_sanitized(const char *out, size_t max)
{
	size_t n = strlen(out);

	FUZZ_CHECK(n < max);
	for (size_t i = 0; i < n; i++)
		FUZZ_CHECK(out[i] >= 0x20 && out[i] < 0x7f);
	/* (below 5 bytes there is no room for "...": a cut may leave a trailing space) */
	if (n > 0)
		FUZZ_CHECK(out[0] != ' ' && (out[n - 1] != ' ' || max <= 4));
	FUZZ_CHECK(strstr(out, "  ") == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const long codes[] = { 200, 201, 202, 204, 299, 300, 301, 400, 401, 403, 404,
				      408, 410, 413, 422, 429, 500, 502, 503, 0, -1, 199, 600,
				      1000 };
	static const char *const types[] = { "application/json", "application/json; charset=utf-8",
					      "application/problem+json", "text/plain",
					      "text/plain;charset=latin1", " APPLICATION/JSON",
					      "text/html", NULL };
	static const char *const all_rcpts[] = { "a@example.test", "B@Example.Test",
						 "c+d@example.test", "postmaster" };

	if (size < 3)
		return 0;
	long http = (data[0] & 0x80) ? (long)((data[0] & 0x7f) << 8 | data[1]) - 1000
				     : codes[data[1] % (sizeof(codes) / sizeof(codes[0]))];
	unsigned flags = data[2];
	size_t body_len = size - 3;
	char *body = malloc(body_len + 1);
	memcpy(body, data + 3, body_len);
	body[body_len] = '\0';

	struct webhook_answer a = {
		.http_status = http,
		.content_type = types[flags & 7],
		.body = body,
		.body_len = body_len,
		.truncated = flags & 8,
		.retry_after = (flags & 16) ? body : NULL,
		.ref = (flags & 32) ? "msg_0123" : NULL,
	};
	size_t count = 1 + ((flags >> 6) & 3);
	struct status st[4];
	memset(st, 0x55, sizeof(st)); /* so an unset reply shows */
	webhook_map_answer(&a, all_rcpts, count, st);
	for (size_t i = 0; i < count; i++) {
		check_status(&st[i], http);
		if (a.truncated && a.content_type != NULL && strstr(a.content_type, "json") &&
		    body_len > 0)
			FUZZ_CHECK(st[i].code == 451 && strcmp(st[i].enhanced, "4.3.0") == 0);
	}

	struct status one;
	webhook_map_http(http, a.retry_after, body, a.ref, &one);
	check_status(&one, http);

	char text[WEBHOOK_TEXT_MAX + 1];
	webhook_sanitize_text(body, body_len, text, sizeof(text));
	check_sanitized(text, sizeof(text));
	for (size_t max = 1; max < 8; max++) {
		char small[8];
		webhook_sanitize_text(body, body_len, small, max);
		check_sanitized(small, max);
	}

	unsigned char *key = NULL;
	size_t key_len = 0;
	if (webhook_secret_decode(body, &key, &key_len) == 0) {
		FUZZ_CHECK(key != NULL && key_len > 0 && key_len <= body_len);
		free(key);
	}
	free(body);
	return 0;
}
