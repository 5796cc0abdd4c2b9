/* Unit tests for src/status.c: construction rules, soft bounce, formatting, descriptions and the
 * errno mapping. */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "status.h"

#define N_ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))

static void assert_internal_error(const struct status *st)
{
	cr_assert_eq(st->code, 451);
	cr_assert_str_eq(st->enhanced, "4.3.0");
	cr_assert_str_eq(st->text, "internal error");
}

Test(status, enhanced_valid_table)
{
	static const struct {
		const char *enhanced;
		bool valid;
	} cases[] = {
		{ "2.0.0", true },     { "4.3.0", true },      { "5.1.1", true },
		{ "5.999.999", true }, { "4.10.0", true },     { "5.7.27", true },
		{ "2.100.9", true },   { "3.0.0", false },     { "1.0.0", false },
		{ "6.0.0", false },    { "0.0.0", false },     { "5.1", false },
		{ "5", false },        { "", false },          { "5..1", false },
		{ "5.1.", false },     { ".1.1", false },      { "5.1.1.", false },
		{ "5.1.1 ", false },   { " 5.1.1", false },    { "5.1000.1", false },
		{ "5.1.1000", false }, { "5.+1.1", false },    { "5.-1.1", false },
		{ "5.01.1", false },   { "5.1.01", false },    { "5.a.1", false },
		{ "55.1.1", false },   { "5.1.1x", false },    { "5,1,1", false },
	};

	cr_assert_not(status_enhanced_valid(NULL));
	for (size_t i = 0; i < N_ELEMENTS(cases); i++)
		cr_expect_eq(status_enhanced_valid(cases[i].enhanced), cases[i].valid,
			     "status_enhanced_valid(\"%s\") should be %d", cases[i].enhanced,
			     cases[i].valid);
}

Test(status, valid_code_pairs)
{
	static const struct {
		int code;
		const char *enhanced;
		bool valid;
	} cases[] = {
		{ 200, "2.0.0", true },  { 250, "2.1.5", true },   { 299, "2.0.0", true },
		{ 354, NULL, true },     { 354, "", true },        { 354, "2.0.0", false },
		{ 300, NULL, true },     { 399, NULL, true },      { 421, "4.3.2", true },
		{ 451, "4.3.0", true },  { 452, "4.5.3", true },   { 550, "5.1.1", true },
		{ 552, "5.3.4", true },  { 599, "5.0.0", true },   { 199, "2.0.0", false },
		{ 600, "5.0.0", false }, { 0, "2.0.0", false },    { -250, "2.0.0", false },
		{ 250, "4.0.0", false }, { 250, "5.0.0", false },  { 451, "5.3.0", false },
		{ 451, "2.0.0", false }, { 550, "4.1.1", false },  { 550, NULL, false },
		{ 250, "", false },      { 250, NULL, false },     { 550, "5.1", false },
	};

	for (size_t i = 0; i < N_ELEMENTS(cases); i++) {
		struct status st;
		int ret = status_make(&st, cases[i].code, cases[i].enhanced, "text %zu", i);

		cr_expect_eq(status_valid(cases[i].code, cases[i].enhanced), cases[i].valid,
			     "status_valid(%d, %s)", cases[i].code,
			     cases[i].enhanced ? cases[i].enhanced : "NULL");
		if (cases[i].valid) {
			char text[32];

			snprintf(text, sizeof(text), "text %zu", i);
			cr_expect_eq(ret, 0, "status_make(%d) failed", cases[i].code);
			cr_expect_eq(st.code, cases[i].code);
			cr_expect_str_eq(st.enhanced, cases[i].enhanced ? cases[i].enhanced : "");
			cr_expect_str_eq(st.text, text);
			cr_expect_eq((int)status_class_of(&st), cases[i].code / 100);
		} else {
			cr_expect_eq(ret, -1, "status_make(%d, %s) should fail", cases[i].code,
				     cases[i].enhanced ? cases[i].enhanced : "NULL");
			assert_internal_error(&st);
		}
	}
}

Test(status, text_is_sanitized)
{
	struct status st;

	cr_assert_eq(status_make(&st, 550, "5.1.1", "<%s> unknown", "a\r\nRSET\x01\x7f\xc3\xa9"), 0);
	cr_assert_str_eq(st.text, "<a?\?RSET?\??\?> unknown");
	cr_assert_eq(status_make(&st, 250, "2.0.0", "tab\there"), 0);
	cr_assert_str_eq(st.text, "tab?here");
	cr_assert_eq(status_make(&st, 250, "2.0.0", NULL), 0);
	cr_assert_str_eq(st.text, "");
}

Test(status, text_is_truncated)
{
	struct status st;
	char long_text[1000];

	memset(long_text, 'x', sizeof(long_text) - 1);
	long_text[sizeof(long_text) - 1] = '\0';
	cr_assert_eq(status_make(&st, 250, "2.0.0", "%s", long_text), 0);
	cr_assert_eq(strlen(st.text), STATUS_TEXT_MAX - 1);
	cr_assert_eq(st.text[0], 'x');
}

Test(status, must_accepts_literals)
{
	struct status st;

	status_must(&st, 250, "2.1.0", "Sender <%s> OK", "a@b");
	cr_assert_eq(st.code, 250);
	cr_assert_str_eq(st.enhanced, "2.1.0");
	cr_assert_str_eq(st.text, "Sender <a@b> OK");
}

Test(status, must_aborts_on_class_mismatch, .signal = SIGABRT)
{
	struct status st;

	status_must(&st, 550, "4.1.1", "mismatch");
}

Test(status, must_aborts_on_bad_code, .signal = SIGABRT)
{
	struct status st;

	status_must(&st, 700, "5.0.0", "bad code");
}

Test(status, soft_bounce_table)
{
	static const struct {
		int code;
		const char *enhanced;
		int want_code;
		const char *want_enhanced;
	} cases[] = {
		{ 550, "5.1.1", 450, "4.1.1" }, { 551, "5.1.6", 451, "4.1.6" },
		{ 552, "5.3.4", 452, "4.3.4" }, { 552, "5.2.2", 452, "4.2.2" },
		{ 553, "5.1.3", 450, "4.1.3" }, { 554, "5.6.0", 451, "4.6.0" },
		{ 555, "5.5.4", 451, "4.5.4" }, { 500, "5.5.2", 400, "4.5.2" },
		{ 501, "5.5.4", 401, "4.5.4" }, { 503, "5.5.1", 403, "4.5.1" },
		{ 550, "5.7.1", 450, "4.7.1" }, { 556, "5.1.10", 456, "4.1.10" },
		{ 451, "4.3.0", 451, "4.3.0" }, { 452, "4.5.3", 452, "4.5.3" },
		{ 421, "4.3.2", 421, "4.3.2" }, { 250, "2.0.0", 250, "2.0.0" },
		{ 221, "2.0.0", 221, "2.0.0" }, { 354, NULL, 354, "" },
	};

	for (size_t i = 0; i < N_ELEMENTS(cases); i++) {
		struct status st;

		cr_assert_eq(status_make(&st, cases[i].code, cases[i].enhanced, "keep me"), 0);
		status_soft_bounce(&st);
		cr_expect_eq(st.code, cases[i].want_code, "%d -> %d, want %d", cases[i].code,
			     st.code, cases[i].want_code);
		cr_expect_str_eq(st.enhanced, cases[i].want_enhanced);
		cr_expect_str_eq(st.text, "keep me");
		cr_expect(st.code / 100 == 3 || status_valid(st.code, st.enhanced),
			  "soft bounce produced an invalid pair %d %s", st.code, st.enhanced);
	}
}

Test(status, soft_bounce_is_idempotent)
{
	struct status st;

	status_must(&st, 550, "5.1.1", "no");
	status_soft_bounce(&st);
	status_soft_bounce(&st);
	cr_assert_eq(st.code, 450);
	cr_assert_str_eq(st.enhanced, "4.1.1");
}

Test(status, format_lines)
{
	static const struct {
		int code;
		const char *enhanced;
		const char *text;
		bool more;
		const char *want;
	} cases[] = {
		{ 250, "2.0.0", "OK", false, "250 2.0.0 OK\r\n" },
		{ 250, "2.0.0", "OK", true, "250-2.0.0 OK\r\n" },
		{ 550, "5.1.1", "<a@b> no such user", false, "550 5.1.1 <a@b> no such user\r\n" },
		{ 354, NULL, "Start mail input; end with <CRLF>.<CRLF>", false,
		  "354 Start mail input; end with <CRLF>.<CRLF>\r\n" },
		{ 250, "2.0.0", "", false, "250 2.0.0\r\n" },
		{ 354, "", "", false, "354 \r\n" },
		{ 452, "4.5.3", "Too many recipients", false, "452 4.5.3 Too many recipients\r\n" },
	};

	for (size_t i = 0; i < N_ELEMENTS(cases); i++) {
		struct status st;
		char buf[512];
		size_t len;

		cr_assert_eq(status_make(&st, cases[i].code, cases[i].enhanced, "%s", cases[i].text), 0);
		len = status_format(&st, cases[i].more, buf, sizeof(buf));
		cr_expect_str_eq(buf, cases[i].want);
		cr_expect_eq(len, strlen(cases[i].want));
	}
}

Test(status, format_truncates_text_and_keeps_crlf)
{
	struct status st;
	char buf[32];
	size_t len;

	status_must(&st, 550, "5.1.1", "%s", "a rather long text that will not fit in 32 bytes");
	len = status_format(&st, false, buf, sizeof(buf));
	cr_assert_eq(len, sizeof(buf) - 1);
	cr_assert_eq(strlen(buf), len);
	cr_assert_str_eq(buf, "550 5.1.1 a rather long text \r\n");
}

Test(status, format_sanitizes_hand_filled_text)
{
	struct status st = { .code = 250, .enhanced = "2.0.0" };
	char buf[64];

	snprintf(st.text, sizeof(st.text), "a\r\nb");
	status_format(&st, false, buf, sizeof(buf));
	cr_assert_str_eq(buf, "250 2.0.0 a??b\r\n");
}

Test(status, descriptions)
{
	static const struct {
		const char *enhanced;
		const char *want;
	} cases[] = {
		{ "2.0.0", "Other undefined status" },
		{ "5.1.1", "Bad destination mailbox address" },
		{ "4.1.1", "Bad destination mailbox address" },
		{ "5.1.3", "Bad destination mailbox address syntax" },
		{ "5.1.7", "Bad sender's mailbox address syntax" },
		{ "5.1.10", "Recipient address has null MX" },
		{ "4.2.2", "Mailbox full" },
		{ "5.2.3", "Message length exceeds administrative limit" },
		{ "4.3.0", "Other or undefined mail system status" },
		{ "4.3.1", "Mail system full" },
		{ "4.3.2", "System not accepting network messages" },
		{ "5.3.4", "Message too big for system" },
		{ "4.3.5", "System incorrectly configured" },
		{ "4.4.1", "No answer from host" },
		{ "4.4.2", "Bad connection" },
		{ "4.4.5", "Mail system congestion" },
		{ "5.4.6", "Routing loop detected" },
		{ "4.4.7", "Delivery time expired" },
		{ "5.5.1", "Invalid command" },
		{ "5.5.2", "Syntax error" },
		{ "4.5.3", "Too many recipients" },
		{ "5.5.4", "Invalid command arguments" },
		{ "5.6.7", "Non-ASCII addresses not permitted for that sender/recipient" },
		{ "5.7.0", "Other or undefined security status" },
		{ "5.7.1", "Delivery not authorized, message refused" },
		{ "5.7.8", "Authentication credentials invalid" },
		{ "5.7.13", "User account disabled" },
		{ "5.7.26", "Multiple authentication checks failed" },
		{ "5.7.27", "Sender address has null MX" },
		{ "5.9.9", "Other or undefined status" },
		{ "5.1.99", "Other or undefined status" },
		{ "bogus", "Other or undefined status" },
		{ "", "Other or undefined status" },
	};

	for (size_t i = 0; i < N_ELEMENTS(cases); i++)
		cr_expect_str_eq(status_description(cases[i].enhanced), cases[i].want, "for %s",
				 cases[i].enhanced);
	cr_assert_str_eq(status_description(NULL), "Other or undefined status");
}

Test(status, from_errno_is_never_permanent)
{
	static const struct {
		int err;
		int code;
		const char *enhanced;
	} cases[] = {
		{ ENOSPC, 452, "4.3.1" }, { EDQUOT, 452, "4.2.2" }, { EMFILE, 451, "4.3.2" },
		{ ENFILE, 451, "4.3.2" }, { ENOMEM, 451, "4.3.2" }, { EAGAIN, 451, "4.3.2" },
		{ EROFS, 451, "4.3.0" },  { EACCES, 451, "4.3.0" }, { EPERM, 451, "4.3.0" },
		{ ENOENT, 451, "4.3.0" }, { EIO, 451, "4.3.0" },    { ENOTDIR, 451, "4.3.0" },
		{ EEXIST, 451, "4.3.0" }, { 0, 451, "4.3.0" },      { 99999, 451, "4.3.0" },
	};

	for (size_t i = 0; i < N_ELEMENTS(cases); i++) {
		struct status st;

		status_from_errno(&st, cases[i].err, "open tmp/x");
		cr_expect_eq(st.code, cases[i].code, "errno %d -> %d", cases[i].err, st.code);
		cr_expect_str_eq(st.enhanced, cases[i].enhanced, "errno %d", cases[i].err);
		cr_expect(strncmp(st.text, "open tmp/x: ", 12) == 0, "text \"%s\"", st.text);
	}
}

Test(status, from_errno_text)
{
	struct status st;

	status_from_errno(&st, ENOSPC, "write");
	cr_assert_str_eq(st.text, "write: No space left on device");
	status_from_errno(&st, EACCES, NULL);
	cr_assert_str_eq(st.text, "Permission denied");
	status_from_errno(&st, EACCES, "");
	cr_assert_str_eq(st.text, "Permission denied");
}
