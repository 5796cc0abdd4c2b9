/* Unit tests for webhook_answer (include/webhook_answer.h): the answer mapping of design.md row
 * by row, per-recipient JSON results, text sanitizing. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "webhook_answer.h"

#define N_ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))

static void map(long http, const char *ct, const char *body, struct status *st, size_t n,
		const char *const *rcpts)
{
	struct webhook_answer a = { .http_status = http, .content_type = ct, .body = body,
				    .body_len = body ? strlen(body) : 0, .ref = "REF" };
	webhook_map_answer(&a, rcpts, n, st);
}

/* design.md: every row of the webhook mapping. */
Test(webhook_answer, http_status_table)
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
		/* bare: the recipient is named when the reply is built (reply.h) */
		cr_assert(strstr(st.text, "a@x.test") == NULL, "%s", st.text);
	}
}

Test(webhook_answer, ok_text_carries_ref)
{
	struct status st;
	const char *rcpts[] = { "a@x.test" };

	map(200, NULL, NULL, &st, 1, rcpts);
	cr_assert(strstr(st.text, "REF") != NULL, "%s", st.text);
}

Test(webhook_answer, retry_after_in_text)
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

Test(webhook_answer, json_results_per_recipient)
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

Test(webhook_answer, json_results_validated)
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

Test(webhook_answer, json_body_doubt)
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

Test(webhook_answer, text_plain_body_is_the_reply_text)
{
	struct status st;
	const char *rcpts[] = { "a@x.test" };
	char body[2000];

	map(422, "text/plain; charset=us-ascii", "mailbox\r\n  disabled\x01\xff by policy\n", &st,
	    1, rcpts);
	cr_assert_eq(st.code, 550);
	cr_assert(strncmp(st.text, "mailbox disabled by policy", 26) == 0, "%s", st.text);
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

Test(webhook_answer, sanitize)
{
	char out[16];

	webhook_sanitize_text("  a\tb\r\nc  ", 10, out, sizeof(out));
	cr_assert_str_eq(out, "a b c");
	webhook_sanitize_text("0123456789abcdefghij", 20, out, sizeof(out));
	cr_assert_str_eq(out, "0123456789ab...");
	webhook_sanitize_text("\xc3\xa9t\xc3\xa9", 6, out, sizeof(out));
	cr_assert_str_eq(out, "t");
}

/* RCPT-time verification: which answers are the receiver's verdict (used as they are) and which
 * are failures to get one (verify_on_error decides). */
Test(webhook_answer, verify_verdicts_and_failures)
{
	static const struct {
		long http;
		const char *ct;
		const char *body;
		bool verdict;
		int code;
		const char *enhanced;
	} rows[] = {
		{ 200, NULL, NULL, true, 250, "2.0.0" },
		{ 200, "application/json",
		  "{\"results\":[{\"rcpt\":\"a@x.test\",\"code\":550,\"status\":\"5.1.1\"}]}", true,
		  550, "5.1.1" },
		{ 200, "application/json",
		  "{\"results\":[{\"rcpt\":\"a@x.test\",\"code\":452,\"status\":\"4.2.2\"}]}", true,
		  452, "4.2.2" },
		{ 404, "application/json",
		  "{\"results\":[{\"rcpt\":\"a@x.test\",\"code\":450,\"status\":\"4.2.1\"}]}", true,
		  450, "4.2.1" },
		/* an HTTP status alone refuses nobody at RCPT: a proxy's 404 page, a schema 400, a
		 * WAF's 413 are not the receiver's word on the recipient */
		{ 404, NULL, NULL, false, 451, "4.3.0" },
		{ 404, "text/html", "<html>Not Found</html>", false, 451, "4.3.0" },
		{ 410, NULL, NULL, false, 451, "4.3.0" },
		{ 400, "application/json", "{\"error\":\"schema\"}", false, 451, "4.3.0" },
		{ 422, "text/plain", "invalid", false, 451, "4.3.0" },
		{ 413, NULL, NULL, false, 451, "4.3.0" },
		{ 204, NULL, NULL, true, 250, "2.0.0" },
		{ 404, "application/json",
		  "{\"results\":[{\"rcpt\":\"a@x.test\",\"code\":550,\"status\":\"5.1.1\"}]}",
		  true, 550, "5.1.1" },
		{ 503, NULL, NULL, false, 451, "4.3.0" },
		{ 500, "text/plain", "db down", false, 451, "4.3.0" },
		{ 401, NULL, NULL, false, 451, "4.7.0" },
		{ 429, NULL, NULL, false, 451, "4.4.5" },
		{ 200, "application/json", "{not json", false, 451, "4.3.0" },
		{ 200, "application/json", "{\"results\":[]}", false, 451, "4.3.0" },
		{ 200, "application/json", "{\"results\":{}}", false, 451, "4.3.0" },
		{ 200, "application/json",
		  "{\"results\":[{\"rcpt\":\"a@x.test\",\"code\":550,\"status\":\"4.1.1\"}]}", false,
		  451, "4.3.0" },
		{ 200, "application/json",
		  "{\"results\":[{\"rcpt\":\"a@x.test\",\"code\":250},{\"rcpt\":\"a@x.test\","
		  "\"code\":550}]}", false, 451, "4.3.0" },
		/* a 2xx entry in a non-2xx answer is invalid: no verdict */
		{ 503, "application/json", "{\"results\":[{\"rcpt\":\"a@x.test\",\"code\":250}]}",
		  false, 451, "4.3.0" },
	};

	for (size_t i = 0; i < N_ELEMENTS(rows); i++) {
		struct webhook_answer a = { .http_status = rows[i].http, .content_type = rows[i].ct,
					    .body = rows[i].body,
					    .body_len = rows[i].body ? strlen(rows[i].body) : 0,
					    .ref = "REF" };
		struct status st;
		bool verdict = webhook_map_verify_answer(&a, "a@x.test", &st);
		cr_assert_eq(verdict, rows[i].verdict, "row %zu: verdict %d", i, verdict);
		cr_assert_eq(st.code, rows[i].code, "row %zu: %d", i, st.code);
		cr_assert_str_eq(st.enhanced, rows[i].enhanced, "row %zu", i);
	}
}
