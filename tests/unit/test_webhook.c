/* Unit tests for the pure parts of the webhook driver (include/webhook.h): Standard Webhooks
 * secrets, ids and signatures (the spec's published example as oracle), the answer mapping of
 * design.md row by row, per-recipient JSON results, text sanitizing; and the spool reader's
 * suffix (the multipart body's tail). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spool.h"
#include "webhook.h"

#define N_ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))

Test(webhook, secret_decode)
{
	unsigned char *key;
	size_t len;

	cr_assert_eq(webhook_secret_decode("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n", &key, &len), 0);
	cr_assert_eq(len, 24);
	free(key);
	cr_assert_eq(webhook_secret_decode("whsec_YWJj\r\n", &key, &len), 0);
	cr_assert_eq(len, 3);
	cr_assert(memcmp(key, "abc", 3) == 0);
	free(key);
	cr_assert_eq(webhook_secret_decode("whsec_YWI=", &key, &len), 0);
	cr_assert_eq(len, 2);
	free(key);
	cr_assert_eq(webhook_secret_decode("plain secret\n", &key, &len), 0);
	cr_assert_eq(len, 12);
	cr_assert(memcmp(key, "plain secret", 12) == 0);
	free(key);
	cr_assert_eq(webhook_secret_decode("\n", &key, &len), -1);
	cr_assert_eq(webhook_secret_decode("whsec_not*base64", &key, &len), -1);
	cr_assert_eq(webhook_secret_decode("whsec_abc", &key, &len), -1);
}

/* The example of the Standard Webhooks specification. */
Test(webhook, signature_spec_vector)
{
	unsigned char *key;
	size_t len;
	char sig[128];
	const char *body = "{\"test\": 2432232314}";

	cr_assert_eq(webhook_secret_decode("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &key, &len), 0);
	const unsigned char *keys[1] = { key };
	struct webhook_signer *s =
		webhook_signer_new(keys, &len, 1, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330);
	cr_assert_not_null(s);
	/* in two pieces: the HMAC is incremental */
	cr_assert_eq(webhook_signer_update(s, body, 5), 0);
	cr_assert_eq(webhook_signer_update(s, body + 5, strlen(body) - 5), 0);
	cr_assert_eq(webhook_signer_finish(&s, sig, sizeof(sig)), 0);
	cr_assert_str_eq(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
	free(key);
}

Test(webhook, signature_two_secrets)
{
	const unsigned char *keys[2] = { (const unsigned char *)"rawsecret",
					 (const unsigned char *)"other" };
	size_t lens[2] = { 9, 5 };
	char sig[256];
	struct webhook_signer *s = webhook_signer_new(keys, lens, 2, "id1", 5);

	cr_assert_eq(webhook_signer_update(s, "body", 4), 0);
	cr_assert_eq(webhook_signer_finish(&s, sig, sizeof(sig)), 0);
	cr_assert(strncmp(sig, "v1,v75ilwBlwkUfy/SLjggQWHqewAvsC7H4BW6pNaR6kbw= v1,", 51) == 0,
		  "%s", sig);
	cr_assert_eq(strlen(sig), 51 + 44);
}

Test(webhook, event_id_sorted_and_stable)
{
	char a[WEBHOOK_ID_SIZE], b[WEBHOOK_ID_SIZE], c[WEBHOOK_ID_SIZE];
	char sha[65];
	const char *r1[] = { "b@y.test", "a@x.test" }, *r2[] = { "a@x.test", "b@y.test" };
	const char *r3[] = { "a@x.test" };

	memset(sha, 'a', 64);
	sha[64] = '\0';
	cr_assert_eq(webhook_event_id(sha, r1, 2, a), 0);
	cr_assert_eq(webhook_event_id(sha, r2, 2, b), 0);
	cr_assert_eq(webhook_event_id(sha, r3, 1, c), 0);
	cr_assert_str_eq(a, "msg_69ced7685ed212fdb2ef5e4b0a1a47aa232bb02771ab5a37963e5bf4668f7d89");
	cr_assert_str_eq(a, b);
	cr_assert_str_neq(a, c);
}

static void map(long http, const char *ct, const char *body, struct status *st, size_t n,
		const char *const *rcpts)
{
	struct webhook_answer a = { .http_status = http, .content_type = ct, .body = body,
				    .body_len = body ? strlen(body) : 0, .ref = "REF" };
	webhook_map_answer(&a, rcpts, n, st);
}

/* design.md: every row of the webhook mapping. */
Test(webhook, http_status_table)
{
	static const struct {
		long http;
		int code;
		const char *enhanced;
	} rows[] = {
		{ 200, 250, "2.0.0" }, { 201, 250, "2.0.0" }, { 202, 250, "2.0.0" },
		{ 204, 250, "2.0.0" }, { 400, 550, "5.0.0" }, { 404, 550, "5.0.0" },
		{ 410, 550, "5.0.0" }, { 422, 550, "5.0.0" }, { 413, 552, "5.3.4" },
		{ 401, 451, "4.7.0" }, { 403, 451, "4.7.0" }, { 408, 451, "4.3.0" },
		{ 429, 451, "4.4.5" }, { 500, 451, "4.3.0" }, { 502, 451, "4.3.0" },
		{ 503, 451, "4.3.0" }, { 504, 451, "4.3.0" }, { 301, 451, "4.3.0" },
		{ 302, 451, "4.3.0" }, { 405, 451, "4.3.0" }, { 409, 451, "4.3.0" },
		{ 418, 451, "4.3.0" }, { 100, 451, "4.3.0" }, { 0, 451, "4.3.0" },
	};
	const char *rcpts[] = { "a@x.test" };

	for (size_t i = 0; i < N_ELEMENTS(rows); i++) {
		struct status st;
		map(rows[i].http, NULL, NULL, &st, 1, rcpts);
		cr_assert_eq(st.code, rows[i].code, "HTTP %ld -> %d", rows[i].http, st.code);
		cr_assert_str_eq(st.enhanced, rows[i].enhanced, "HTTP %ld", rows[i].http);
		cr_assert(strstr(st.text, "<a@x.test>") != NULL, "%s", st.text);
	}
}

Test(webhook, ok_text_carries_ref)
{
	struct status st;
	const char *rcpts[] = { "a@x.test" };

	map(200, NULL, NULL, &st, 1, rcpts);
	cr_assert(strstr(st.text, "REF") != NULL, "%s", st.text);
}

Test(webhook, retry_after_in_text)
{
	struct status st;
	const char *rcpts[] = { "a@x.test" };
	struct webhook_answer a = { .http_status = 429, .retry_after = "120\r\nX: y" };

	webhook_map_answer(&a, rcpts, 1, &st);
	cr_assert_eq(st.code, 451);
	cr_assert_str_eq(st.enhanced, "4.4.5");
	cr_assert(strstr(st.text, "retry after 120 X: y") != NULL, "%s", st.text);
	cr_assert(strchr(st.text, '\r') == NULL && strchr(st.text, '\n') == NULL);
}

Test(webhook, json_results_per_recipient)
{
	struct status st[4];
	const char *rcpts[] = { "a@x.test", "b@x.test", "c@x.test", "d@x.test" };
	const char *body =
		"{\"results\":["
		"{\"rcpt\":\"a@x.test\",\"code\":250,\"status\":\"2.0.0\",\"text\":\"ok\"},"
		"{\"rcpt\":\"<B@X.test>\",\"code\":452,\"status\":\"4.2.2\",\"text\":\"full\"},"
		"{\"rcpt\":\"c@x.test\",\"code\":550,\"status\":\"5.1.1\",\"text\":\"no such user\"}"
		"]}";

	map(200, "application/json; charset=utf-8", body, st, 4, rcpts);
	cr_assert_eq(st[0].code, 250);
	cr_assert_str_eq(st[0].enhanced, "2.0.0");
	cr_assert_eq(st[1].code, 452);
	cr_assert_str_eq(st[1].enhanced, "4.2.2");
	cr_assert(strstr(st[1].text, "full") != NULL);
	cr_assert_eq(st[2].code, 550);
	cr_assert_str_eq(st[2].enhanced, "5.1.1");
	cr_assert(strstr(st[2].text, "no such user") != NULL);
	/* missing from the results: doubt */
	cr_assert_eq(st[3].code, 451);
	cr_assert_str_eq(st[3].enhanced, "4.3.0");
}

Test(webhook, json_results_validated)
{
	static const struct {
		long http;
		const char *entry;
		int code;
		const char *enhanced;
	} cases[] = {
		/* class mismatch */
		{ 200, "{\"rcpt\":\"a@x.test\",\"code\":550,\"status\":\"4.1.1\"}", 451, "4.3.0" },
		/* no 2xx without an HTTP 2xx */
		{ 422, "{\"rcpt\":\"a@x.test\",\"code\":250,\"status\":\"2.0.0\"}", 451, "4.3.0" },
		/* 3xx, out of range, strings */
		{ 200, "{\"rcpt\":\"a@x.test\",\"code\":354}", 451, "4.3.0" },
		{ 200, "{\"rcpt\":\"a@x.test\",\"code\":650,\"status\":\"6.0.0\"}", 451, "4.3.0" },
		{ 200, "{\"rcpt\":\"a@x.test\",\"code\":\"550\"}", 451, "4.3.0" },
		{ 200, "{\"rcpt\":\"a@x.test\",\"code\":550,\"status\":\"5.01.1\"}", 451, "4.3.0" },
		/* enhanced code defaults to class.0.0 */
		{ 200, "{\"rcpt\":\"a@x.test\",\"code\":550}", 550, "5.0.0" },
		/* a 4xx HTTP answer with a permanent verdict for the recipient: used as given */
		{ 422, "{\"rcpt\":\"a@x.test\",\"code\":553,\"status\":\"5.1.3\"}", 553, "5.1.3" },
		/* 5xx HTTP, temporary result */
		{ 503, "{\"rcpt\":\"a@x.test\",\"code\":450,\"status\":\"4.2.1\"}", 450, "4.2.1" },
	};
	const char *rcpts[] = { "a@x.test" };

	for (size_t i = 0; i < N_ELEMENTS(cases); i++) {
		char body[512];
		struct status st;
		snprintf(body, sizeof(body), "{\"results\":[%s]}", cases[i].entry);
		map(cases[i].http, "application/json", body, &st, 1, rcpts);
		cr_assert_eq(st.code, cases[i].code, "case %zu: %d %s", i, st.code, st.text);
		cr_assert_str_eq(st.enhanced, cases[i].enhanced, "case %zu", i);
	}
}

Test(webhook, json_body_doubt)
{
	struct status st;
	const char *rcpts[] = { "a@x.test" };
	struct webhook_answer a = { .http_status = 200, .content_type = "application/json",
				    .body = "{\"results\":[", .body_len = 12 };

	webhook_map_answer(&a, rcpts, 1, &st);
	cr_assert_eq(st.code, 451);
	a.body = "{\"results\":[]}";
	a.body_len = strlen(a.body);
	a.truncated = true;
	webhook_map_answer(&a, rcpts, 1, &st);
	cr_assert_eq(st.code, 451);
	/* results not an array */
	a.truncated = false;
	a.body = "{\"results\":{}}";
	a.body_len = strlen(a.body);
	webhook_map_answer(&a, rcpts, 1, &st);
	cr_assert_eq(st.code, 451);
	cr_assert_str_eq(st.enhanced, "4.3.0");
	/* JSON without results: the HTTP status decides, "text" is used */
	a.body = "{\"text\":\"queued as 42\"}";
	a.body_len = strlen(a.body);
	webhook_map_answer(&a, rcpts, 1, &st);
	cr_assert_eq(st.code, 250);
	cr_assert(strstr(st.text, "queued as 42") != NULL, "%s", st.text);
	/* empty JSON body is no body */
	a.http_status = 404;
	a.body = "";
	a.body_len = 0;
	webhook_map_answer(&a, rcpts, 1, &st);
	cr_assert_eq(st.code, 550);
}

Test(webhook, text_plain_body_is_the_reply_text)
{
	struct status st;
	const char *rcpts[] = { "a@x.test" };
	char body[2000];

	map(422, "text/plain; charset=us-ascii", "mailbox\r\n  disabled\x01\xff by policy\n", &st,
	    1, rcpts);
	cr_assert_eq(st.code, 550);
	cr_assert(strstr(st.text, "<a@x.test> mailbox disabled by policy") != NULL, "%s", st.text);
	memset(body, 'x', sizeof(body) - 1);
	body[sizeof(body) - 1] = '\0';
	map(503, "text/plain", body, &st, 1, rcpts);
	cr_assert_eq(st.code, 451);
	cr_assert(strstr(st.text, "...") != NULL);
	cr_assert(strlen(st.text) < 260);
	/* text/html is not used as text */
	map(500, "text/html", "<h1>boom</h1>", &st, 1, rcpts);
	cr_assert(strstr(st.text, "boom") == NULL, "%s", st.text);
}

Test(webhook, sanitize)
{
	char out[16];

	webhook_sanitize_text("  a\tb\r\nc  ", 10, out, sizeof(out));
	cr_assert_str_eq(out, "a b c");
	webhook_sanitize_text("0123456789abcdefghij", 20, out, sizeof(out));
	cr_assert_str_eq(out, "0123456789ab...");
	webhook_sanitize_text("\xc3\xa9t\xc3\xa9", 6, out, sizeof(out));
	cr_assert_str_eq(out, "t");
}

Test(webhook, reader_suffix)
{
	struct spool *sp = spool_new(4, "/tmp", 1 << 20); /* spills to a file at once */
	const char *err;
	char back[64];
	ssize_t n;
	size_t got = 0;

	cr_assert_not_null(sp);
	cr_assert_eq(spool_write(sp, "0123456789", 10, &err), 0);
	cr_assert_eq(spool_finish(sp, &err), 0);
	struct spool_reader r;
	spool_reader_init(&r, sp, "HEAD", 4);
	spool_reader_set_suffix(&r, "TAIL", 4);
	cr_assert_eq(spool_reader_total(&r), 18);
	while ((n = spool_reader_read(&r, back + got, 3)) > 0)
		got += (size_t)n;
	cr_assert_eq(got, 18);
	cr_assert(memcmp(back, "HEAD0123456789TAIL", 18) == 0);
	/* seek into the suffix, as curl's rewind does */
	r.pos = 15;
	n = spool_reader_read(&r, back, sizeof(back));
	cr_assert_eq(n, 3);
	cr_assert(memcmp(back, "AIL", 3) == 0);
	/* the signer reads the whole reader and rewinds it */
	const unsigned char *keys[1] = { (const unsigned char *)"k" };
	size_t lens[1] = { 1 };
	char s1[128], s2[128];
	struct webhook_signer *s = webhook_signer_new(keys, lens, 1, "id", 1);
	cr_assert_eq(webhook_signer_update_reader(s, &r), 0);
	cr_assert_eq(r.pos, 0);
	webhook_signer_finish(&s, s1, sizeof(s1));
	s = webhook_signer_new(keys, lens, 1, "id", 1);
	webhook_signer_update(s, "HEAD0123456789TAIL", 18);
	webhook_signer_finish(&s, s2, sizeof(s2));
	cr_assert_str_eq(s1, s2);
	spool_free(&sp);
}
