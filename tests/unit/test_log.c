/* Unit tests for src/log.c: log_escape/log_esc, level names, and the stderr line format
 * (captured through a pipe; Criterion runs each test in its own process). */
#include <criterion/criterion.h>
#include <regex.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

#define N_ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))

Test(log, escape_table)
{
	static const struct {
		const char *in;
		size_t in_len;
		size_t max_in;
		size_t dst_size;
		const char *want;
	} cases[] = {
		{ "plain text", 10, 100, 64, "plain text" },
		{ "", 0, 100, 64, "" },
		{ "a\"b", 3, 100, 64, "a\\\"b" },
		{ "a\\b", 3, 100, 64, "a\\\\b" },
		{ "a\r\nb", 4, 100, 64, "a\\x0d\\x0ab" },
		{ "\x00\x01\x1f\x7f", 4, 100, 64, "\\x00\\x01\\x1f\\x7f" },
		{ "caf\xc3\xa9", 5, 100, 64, "caf\\xc3\\xa9" },
		{ "tab\there", 8, 100, 64, "tab\\x09here" },
		{ "~ !", 3, 100, 64, "~ !" },
		/* max_in stops the input and says so */
		{ "abcdef", 6, 3, 64, "abc..." },
		{ "abcdef", 6, 6, 64, "abcdef" },
		{ "abcdef", 6, 0, 64, "..." },
		{ "\n\n\n\n", 4, 2, 64, "\\x0a\\x0a..." },
		/* a small destination truncates with "..." and stays terminated */
		{ "abcdefghijkl", 12, 100, 8, "abcd..." },
		{ "abcdefg", 7, 100, 8, "abcdefg" },
		{ "abcdefgh", 8, 100, 8, "abcd..." },
		{ "\x01\x02", 2, 100, 8, "\\x01..." },
		{ "\x01\x02", 2, 100, 9, "\\x01\\x02" },
		{ "\"\"\"\"", 4, 100, 8, "\\\"\\\"..." },
	};

	for (size_t i = 0; i < N_ELEMENTS(cases); i++) {
		char dst[512];
		char *ret;

		memset(dst, 'Z', sizeof(dst));
		ret = log_escape(dst, cases[i].dst_size, cases[i].in, cases[i].in_len,
				 cases[i].max_in);
		cr_expect_eq(ret, dst);
		cr_expect_str_eq(dst, cases[i].want, "case %zu: got \"%s\"", i, dst);
		cr_expect_lt(strlen(dst), cases[i].dst_size, "case %zu overflows", i);
		cr_expect_eq(dst[cases[i].dst_size], 'Z', "case %zu wrote past dst_size", i);
	}
}

Test(log, escape_worst_case_fits_log_esc_size)
{
	char src[201];
	char dst[LOG_ESC_SIZE];

	memset(src, '\xff', sizeof(src) - 1);
	src[sizeof(src) - 1] = '\0';
	log_esc(dst, src);
	/* 100 input bytes, each \xNN, then "..." */
	cr_assert_eq(strlen(dst), 100 * 4 + 3);
	cr_assert_eq(strncmp(dst, "\\xff\\xff", 8), 0);
	cr_assert_str_eq(dst + 400, "...");
}

Test(log, esc_short_form)
{
	char dst[LOG_ESC_SIZE];
	char exactly_100[101];

	cr_assert_str_eq(log_esc(dst, "user\"name\r\n"), "user\\\"name\\x0d\\x0a");
	cr_assert_str_eq(log_esc(dst, NULL), "");
	memset(exactly_100, 'a', 100);
	exactly_100[100] = '\0';
	log_esc(dst, exactly_100);
	cr_assert_eq(strlen(dst), 100, "100 bytes fit without \"...\"");
}

Test(log, default_level_is_info)
{
	cr_assert_eq(log_get_level(), LOG_LEVEL_INFO);
	log_set_level(LOG_LEVEL_DEBUG);
	cr_assert_eq(log_get_level(), LOG_LEVEL_DEBUG);
}

/* Run fn with stderr redirected to a pipe; return what was written. */
static size_t capture_stderr(void (*fn)(void), char *out, size_t size)
{
	int fds[2];
	int saved = dup(STDERR_FILENO);
	ssize_t n;
	size_t total = 0;

	cr_assert_eq(pipe(fds), 0);
	cr_assert_geq(saved, 0);
	dup2(fds[1], STDERR_FILENO);
	close(fds[1]);
	fn();
	dup2(saved, STDERR_FILENO);
	close(saved);
	while (total + 1 < size && (n = read(fds[0], out + total, size - 1 - total)) > 0)
		total += (size_t)n;
	close(fds[0]);
	out[total] = '\0';
	return total;
}

static void emit_lines(void)
{
	log_init("test", true, LOG_LEVEL_INFO);
	log_debug("event=hidden");
	log_info("event=first n=%d", 1);
	log_warn("event=second");
	log_error("event=third inj=%s", "a\nb");
	log_set_level(LOG_LEVEL_ERROR);
	log_warn("event=hidden_too");
}

Test(log, stderr_line_format)
{
	char buf[4096];
	regex_t re;
	const char *pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "
			      "info event=first n=1\n"
			      "[0-9T:.Z-]{24} warn event=second\n"
			      "[0-9T:.Z-]{24} error event=third inj=a\\?b\n$";

	capture_stderr(emit_lines, buf, sizeof(buf));
	cr_assert_eq(regcomp(&re, pattern, REG_EXTENDED), 0);
	cr_assert_eq(regexec(&re, buf, 0, NULL, 0), 0, "unexpected log output:\n%s", buf);
	regfree(&re);
}

static void emit_long_line(void)
{
	static char big[5000];

	log_init("test", true, LOG_LEVEL_INFO);
	memset(big, 'x', sizeof(big) - 1);
	log_info("event=big v=%s", big);
}

Test(log, long_line_is_truncated_in_one_line)
{
	char buf[8192];
	size_t len = capture_stderr(emit_long_line, buf, sizeof(buf));

	cr_assert_eq(len, 2047, "line length %zu", len);
	cr_assert_eq(buf[len - 1], '\n');
	cr_assert_eq(strncmp(buf + len - 4, "...\n", 4), 0);
	cr_assert_null(memchr(buf, '\n', len - 1));
}

Test(log, kv_to_json)
{
	char out[1024];

	log_kv_to_json("event=delivery session=ab12 rcpt=<a@b> reply=\"250 2.0.0 ok \\\"x\\\"\" "
		       "text=\"caf\\xc3\\xa9\"",
		       "2026-11-25T07:00:00.000Z", "info", out, sizeof(out));
	cr_assert_str_eq(out, "{\"time\":\"2026-11-25T07:00:00.000Z\",\"level\":\"info\","
			      "\"event\":\"delivery\",\"session\":\"ab12\",\"rcpt\":\"<a@b>\","
			      "\"reply\":\"250 2.0.0 ok \\\"x\\\"\",\"text\":\"caf\\u00c3\\u00a9\"}");
	log_kv_to_json("plain words, not key=value", "", "warn", out, sizeof(out));
	cr_assert_str_eq(out, "{\"time\":\"\",\"level\":\"warn\",\"msg\":\"plain words, not "
			      "key=value\"}");
	/* Truncation keeps the object closed. */
	char small[40];
	log_kv_to_json("event=x a=bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "t", "info", small, sizeof(small));
	cr_assert_eq(small[strlen(small) - 1], '}');
}
