/* Unit tests for src/envelope.c: MAIL and RCPT arguments, every reply code and enhanced code,
 * parameter values, and xtext. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "envelope.h"

#define N_ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))

struct reply_case {
	const char *arg;
	int code;             /* 0: must succeed */
	const char *enhanced;
	const char *text_prefix;
};

static const struct reply_case mail_cases[] = {
	/* good */
	{ "FROM:<a@b>", 0, NULL, NULL },
	{ "from:<a@b>", 0, NULL, NULL },
	{ "From:<a@b>", 0, NULL, NULL },
	{ "FROM: <a@b>", 0, NULL, NULL },
	{ "FROM:<>", 0, NULL, NULL },
	{ "FROM:<a@b> ", 0, NULL, NULL },
	{ "FROM:<a@b>   SIZE=10", 0, NULL, NULL },
	{ "FROM:<a@b> SIZE=10  BODY=8BITMIME", 0, NULL, NULL },
	{ "FROM:<a@b> size=0", 0, NULL, NULL },
	{ "FROM:<a@b> SIZE=1000", 0, NULL, NULL },
	{ "FROM:<a@b> BODY=7bit", 0, NULL, NULL },
	{ "FROM:<a@b> BODY=BINARYMIME", 0, NULL, NULL },
	{ "FROM:<a@b> SMTPUTF8", 0, NULL, NULL },
	{ "FROM:<a@b> smtputf8", 0, NULL, NULL },
	{ "FROM:<a@b> RET=FULL", 0, NULL, NULL },
	{ "FROM:<a@b> RET=hdrs", 0, NULL, NULL },
	{ "FROM:<a@b> ENVID=QQ314159", 0, NULL, NULL },
	{ "FROM:<a@b> ENVID=a+2Bb+3Dc", 0, NULL, NULL },
	{ "FROM:<\xc3\xa9@b> SMTPUTF8", 0, NULL, NULL },
	{ "FROM:<@relay:a@b>", 0, NULL, NULL },
	{ "FROM:<a@[127.0.0.1]>", 0, NULL, NULL },
	/* missing or wrong "FROM:" */
	{ "", 501, "5.5.4", "Syntax: MAIL FROM:<address>" },
	{ "<a@b>", 501, "5.5.4", "Syntax: MAIL FROM:<address>" },
	{ "FROM <a@b>", 501, "5.5.4", "Syntax: MAIL FROM:<address>" },
	{ "FRO:<a@b>", 501, "5.5.4", "Syntax: MAIL FROM:<address>" },
	{ "TO:<a@b>", 501, "5.5.4", "Syntax: MAIL FROM:<address>" },
	{ " FROM:<a@b>", 501, "5.5.4", "Syntax: MAIL FROM:<address>" },
	/* bad sender path */
	{ "FROM:", 501, "5.1.7", "Bad sender address syntax" },
	{ "FROM:a@b", 501, "5.1.7", "Bad sender address syntax" },
	{ "FROM:  <a@b>", 501, "5.1.7", "Bad sender address syntax" },
	{ "FROM:<a@b", 501, "5.1.7", "Bad sender address syntax" },
	{ "FROM:<a>", 501, "5.1.7", "Bad sender address syntax (missing domain)" },
	{ "FROM:<postmaster>", 501, "5.1.7", "Bad sender address syntax (missing domain)" },
	{ "FROM:<a..b@c>", 501, "5.1.7", "Bad sender address syntax" },
	{ "FROM:<a@-b>", 501, "5.1.7", "Bad sender address syntax" },
	{ "FROM:<a@b>x", 501, "5.1.7", "Bad sender address syntax" },
	{ "FROM:<a@b>SIZE=1", 501, "5.1.7", "Bad sender address syntax" },
	{ "FROM:<\xc0\xaf@b> SMTPUTF8", 501, "5.1.7", "Bad sender address syntax" },
	{ "FROM:<a@b>\tSIZE=1", 501, "5.1.7", "Bad sender address syntax" },
	/* parameter syntax */
	{ "FROM:<a@b> =1", 501, "5.5.4", "Bad parameter syntax" },
	{ "FROM:<a@b> -X", 501, "5.5.4", "Bad parameter syntax" },
	{ "FROM:<a@b> SIZE=", 501, "5.5.4", "Bad parameter syntax" },
	{ "FROM:<a@b> SIZE==1", 501, "5.5.4", "Bad parameter syntax" },
	{ "FROM:<a@b> SIZE=1=2", 501, "5.5.4", "Bad parameter syntax" },
	{ "FROM:<a@b> SI_ZE=1", 501, "5.5.4", "Bad parameter syntax" },
	{ "FROM:<a@b> SIZE=1\t", 501, "5.5.4", "Bad parameter syntax" },
	{ "FROM:<a@b> X=\xc3\xa9", 501, "5.5.4", "Bad parameter syntax" },
	/* unknown keywords */
	{ "FROM:<a@b> FOO", 555, "5.5.4", "Unsupported parameter FOO" },
	{ "FROM:<a@b> X-FOO=bar", 555, "5.5.4", "Unsupported parameter X-FOO" },
	{ "FROM:<a@b> NOTIFY=NEVER", 555, "5.5.4", "Unsupported parameter NOTIFY" },
	{ "FROM:<a@b> AUTH=<>", 555, "5.5.4", "Unsupported parameter AUTH" },
	{ "FROM:<a@b> SIZE=1 FOO=1", 555, "5.5.4", "Unsupported parameter FOO" },
	/* duplicates */
	{ "FROM:<a@b> SIZE=1 SIZE=2", 501, "5.5.4", "Duplicate parameter SIZE" },
	{ "FROM:<a@b> BODY=7BIT body=8BITMIME", 501, "5.5.4", "Duplicate parameter body" },
	{ "FROM:<a@b> SMTPUTF8 SMTPUTF8", 501, "5.5.4", "Duplicate parameter SMTPUTF8" },
	{ "FROM:<a@b> RET=FULL RET=FULL", 501, "5.5.4", "Duplicate parameter RET" },
	{ "FROM:<a@b> ENVID=x ENVID=y", 501, "5.5.4", "Duplicate parameter ENVID" },
	/* bad values */
	{ "FROM:<a@b> SIZE", 501, "5.5.4", "Bad value for parameter SIZE" },
	{ "FROM:<a@b> SIZE=-1", 501, "5.5.4", "Bad value for parameter SIZE" },
	{ "FROM:<a@b> SIZE=+1", 501, "5.5.4", "Bad value for parameter SIZE" },
	{ "FROM:<a@b> SIZE=1k", 501, "5.5.4", "Bad value for parameter SIZE" },
	{ "FROM:<a@b> SIZE=0x10", 501, "5.5.4", "Bad value for parameter SIZE" },
	{ "FROM:<a@b> SIZE=123456789012345678901", 501, "5.5.4", "Bad value for parameter SIZE" },
	{ "FROM:<a@b> BODY", 501, "5.5.4", "Bad value for parameter BODY" },
	{ "FROM:<a@b> BODY=8BIT", 501, "5.5.4", "Bad value for parameter BODY" },
	{ "FROM:<a@b> BODY=8BITMIMEX", 501, "5.5.4", "Bad value for parameter BODY" },
	{ "FROM:<a@b> SMTPUTF8=yes", 501, "5.5.4", "Bad value for parameter SMTPUTF8" },
	{ "FROM:<a@b> RET=ALL", 501, "5.5.4", "Bad value for parameter RET" },
	{ "FROM:<a@b> RET", 501, "5.5.4", "Bad value for parameter RET" },
	{ "FROM:<a@b> ENVID", 501, "5.5.4", "Bad value for parameter ENVID" },
	{ "FROM:<a@b> ENVID=a+2", 501, "5.5.4", "Bad value for parameter ENVID" },
	{ "FROM:<a@b> ENVID=a+ZZb", 501, "5.5.4", "Bad value for parameter ENVID" },
	{ "FROM:<a@b> ENVID=a+", 501, "5.5.4", "Bad value for parameter ENVID" },
	/* UTF-8 needs SMTPUTF8 */
	{ "FROM:<\xc3\xa9@b>", 553, "5.6.7", "Non-ASCII sender address requires SMTPUTF8" },
	{ "FROM:<a@\xc3\xa9.example> SIZE=1", 553, "5.6.7", "Non-ASCII sender" },
	/* SIZE over the limit (the test limit is 1000) */
	{ "FROM:<a@b> SIZE=1001", 552, "5.3.4", "Message size exceeds fixed maximum message size" },
	{ "FROM:<a@b> SIZE=99999999999999999999", 552, "5.3.4", "Message size exceeds" },
	{ "FROM:<a@b> SIZE=18446744073709551616", 552, "5.3.4", "Message size exceeds" },
	/* order: a syntax error beats the size limit, which comes last */
	{ "FROM:<a@b> SIZE=5000 FOO", 555, "5.5.4", "Unsupported parameter FOO" },
	{ "FROM:<\xc3\xa9@b> SIZE=5000", 553, "5.6.7", "Non-ASCII sender" },
};

static void check_reply(const struct reply_case *c, size_t i, int ret, const struct status *st)
{
	if (c->code == 0) {
		cr_expect_eq(ret, 0, "case %zu \"%s\" failed: %d %s %s", i, c->arg, st->code,
			     st->enhanced, st->text);
		return;
	}
	cr_expect_eq(ret, -1, "case %zu \"%s\" should fail", i, c->arg);
	if (ret != -1)
		return;
	cr_expect_eq(st->code, c->code, "case %zu \"%s\": code %d", i, c->arg, st->code);
	cr_expect_str_eq(st->enhanced, c->enhanced, "case %zu \"%s\"", i, c->arg);
	cr_expect(strncmp(st->text, c->text_prefix, strlen(c->text_prefix)) == 0,
		  "case %zu \"%s\": text \"%s\"", i, c->arg, st->text);
}

Test(envelope, mail_replies)
{
	for (size_t i = 0; i < N_ELEMENTS(mail_cases); i++) {
		struct address from;
		struct mail_params params;
		struct status st = { 0 };
		int ret = envelope_parse_mail(mail_cases[i].arg, 1000, &from, &params, &st);

		check_reply(&mail_cases[i], i, ret, &st);
	}
}

Test(envelope, mail_null_arg)
{
	struct address from;
	struct mail_params params;
	struct status st;

	cr_assert_eq(envelope_parse_mail(NULL, 0, &from, &params, &st), -1);
	cr_assert_eq(st.code, 501);
	cr_assert_str_eq(st.enhanced, "5.5.4");
}

Test(envelope, mail_values)
{
	struct address from;
	struct mail_params params;
	struct status st;

	cr_assert_eq(envelope_parse_mail("FROM:<User@Example.com> SIZE=12345 BODY=8BITMIME "
					 "SMTPUTF8 RET=HDRS ENVID=QQ+2B314",
					 0, &from, &params, &st), 0);
	cr_assert_str_eq(from.local, "User");
	cr_assert_str_eq(from.domain, "Example.com");
	cr_assert_not(from.null);
	cr_assert(params.has_size);
	cr_assert_eq(params.size, 12345);
	cr_assert_eq(params.body, BODY_8BITMIME);
	cr_assert(params.smtputf8);
	cr_assert_eq(params.ret, RET_HDRS);
	cr_assert_str_eq(params.envid, "QQ+2B314");

	cr_assert_eq(envelope_parse_mail("FROM:<>", 0, &from, &params, &st), 0);
	cr_assert(from.null);
	cr_assert_not(params.has_size);
	cr_assert_eq(params.body, BODY_UNSPECIFIED);
	cr_assert_not(params.smtputf8);
	cr_assert_eq(params.ret, RET_UNSPECIFIED);
	cr_assert_str_eq(params.envid, "");

	cr_assert_eq(envelope_parse_mail("FROM:<a@b> BODY=binarymime RET=full", 0, &from, &params,
					 &st), 0);
	cr_assert_eq(params.body, BODY_BINARYMIME);
	cr_assert_eq(params.ret, RET_FULL);
	cr_assert_eq(envelope_parse_mail("FROM:<a@b> BODY=7BIT", 0, &from, &params, &st), 0);
	cr_assert_eq(params.body, BODY_7BIT);

	cr_assert_eq(envelope_parse_mail("FROM:<\xc3\xa9@b> SMTPUTF8", 0, &from, &params, &st), 0);
	cr_assert(from.utf8);
}

Test(envelope, mail_size_limits)
{
	struct address from;
	struct mail_params params;
	struct status st;

	/* 20 digits is the RFC 1870 maximum; UINT64_MAX itself fits */
	cr_assert_eq(envelope_parse_mail("FROM:<a@b> SIZE=18446744073709551615", 0, &from, &params,
					 &st), 0);
	cr_assert_eq(params.size, UINT64_MAX);
	cr_assert_eq(envelope_parse_mail("FROM:<a@b> SIZE=00000000000000000042", 0, &from, &params,
					 &st), 0);
	cr_assert_eq(params.size, 42);
	/* one past UINT64_MAX: too big for anything, refused even without a configured limit */
	cr_assert_eq(envelope_parse_mail("FROM:<a@b> SIZE=18446744073709551616", 0, &from, &params,
					 &st), -1);
	cr_assert_eq(st.code, 552);
	cr_assert_str_eq(st.enhanced, "5.3.4");
	/* 21 digits is a syntax error */
	cr_assert_eq(envelope_parse_mail("FROM:<a@b> SIZE=000000000000000000042", 0, &from, &params,
					 &st), -1);
	cr_assert_eq(st.code, 501);
	cr_assert_str_eq(st.enhanced, "5.5.4");
	/* at the limit is fine, one above is not; no SIZE is fine */
	cr_assert_eq(envelope_parse_mail("FROM:<a@b> SIZE=1000", 1000, &from, &params, &st), 0);
	cr_assert_eq(envelope_parse_mail("FROM:<a@b> SIZE=1001", 1000, &from, &params, &st), -1);
	cr_assert_eq(st.code, 552);
	cr_assert_str_eq(st.enhanced, "5.3.4");
	cr_assert_eq(envelope_parse_mail("FROM:<a@b>", 1000, &from, &params, &st), 0);
	cr_assert_eq(envelope_parse_mail("FROM:<a@b> SIZE=999999999", 0, &from, &params, &st), 0);
}

Test(envelope, envid_length)
{
	char arg[256];
	char envid[128];
	struct address from;
	struct mail_params params;
	struct status st;

	memset(envid, 'e', 100);
	envid[100] = '\0';
	snprintf(arg, sizeof(arg), "FROM:<a@b> ENVID=%s", envid);
	cr_assert_eq(envelope_parse_mail(arg, 0, &from, &params, &st), 0);
	cr_assert_str_eq(params.envid, envid);

	envid[100] = 'e';
	envid[101] = '\0';
	snprintf(arg, sizeof(arg), "FROM:<a@b> ENVID=%s", envid);
	cr_assert_eq(envelope_parse_mail(arg, 0, &from, &params, &st), -1);
	cr_assert_eq(st.code, 501);
	cr_assert_str_eq(st.enhanced, "5.5.4");
}

Test(envelope, unknown_keyword_echo_is_bounded_and_clean)
{
	char arg[512];
	char keyword[300];
	struct address from;
	struct mail_params params;
	struct status st;

	memset(keyword, 'K', 299);
	keyword[299] = '\0';
	snprintf(arg, sizeof(arg), "FROM:<a@b> %s=1", keyword);
	cr_assert_eq(envelope_parse_mail(arg, 0, &from, &params, &st), -1);
	cr_assert_eq(st.code, 555);
	cr_assert_str_eq(st.enhanced, "5.5.4");
	cr_assert_eq(strlen(st.text), strlen("Unsupported parameter ") + 64);
}

static const struct reply_case rcpt_cases[] = {
	/* good */
	{ "TO:<a@b>", 0, NULL, NULL },
	{ "to:<a@b>", 0, NULL, NULL },
	{ "To: <a@b>", 0, NULL, NULL },
	{ "TO:<postmaster>", 0, NULL, NULL },
	{ "TO:<POSTMASTER>", 0, NULL, NULL },
	{ "TO:<Postmaster@example.com>", 0, NULL, NULL },
	{ "TO:<@r1,@r2:a@b>", 0, NULL, NULL },
	{ "TO:<a@b> NOTIFY=NEVER", 0, NULL, NULL },
	{ "TO:<a@b> NOTIFY=SUCCESS,FAILURE,DELAY", 0, NULL, NULL },
	{ "TO:<a@b> notify=delay", 0, NULL, NULL },
	{ "TO:<a@b> NOTIFY=FAILURE,FAILURE", 0, NULL, NULL },
	{ "TO:<a@b> ORCPT=rfc822;a@b", 0, NULL, NULL },
	{ "TO:<a@b> ORCPT=rfc822;a+2Bb@c  NOTIFY=NEVER", 0, NULL, NULL },
	{ "TO:<a@b> ORCPT=x-type;", 0, NULL, NULL },
	{ "TO:<a@b>  ", 0, NULL, NULL },
	/* missing "TO:" */
	{ "", 501, "5.5.4", "Syntax: RCPT TO:<address>" },
	{ "<a@b>", 501, "5.5.4", "Syntax: RCPT TO:<address>" },
	{ "TO <a@b>", 501, "5.5.4", "Syntax: RCPT TO:<address>" },
	{ "FROM:<a@b>", 501, "5.5.4", "Syntax: RCPT TO:<address>" },
	{ "T:<a@b>", 501, "5.5.4", "Syntax: RCPT TO:<address>" },
	/* bad recipient path */
	{ "TO:", 501, "5.1.3", "Bad recipient address syntax" },
	{ "TO:<>", 501, "5.1.3", "Bad recipient address syntax (null address not allowed)" },
	{ "TO:a@b", 501, "5.1.3", "Bad recipient address syntax" },
	{ "TO:  <a@b>", 501, "5.1.3", "Bad recipient address syntax" },
	{ "TO:<user>", 501, "5.1.3", "Bad recipient address syntax (missing domain)" },
	{ "TO:<a@b c>", 501, "5.1.3", "Bad recipient address syntax" },
	{ "TO:<a@[999.1.1.1]>", 501, "5.1.3", "Bad recipient address syntax" },
	{ "TO:<a@b>NOTIFY=NEVER", 501, "5.1.3", "Bad recipient address syntax" },
	{ "TO:<\xed\xa0\x80@b>", 501, "5.1.3", "Bad recipient address syntax" },
	/* parameters */
	{ "TO:<a@b> SIZE=1", 555, "5.5.4", "Unsupported parameter SIZE" },
	{ "TO:<a@b> FOO", 555, "5.5.4", "Unsupported parameter FOO" },
	{ "TO:<a@b> NOTIFY=NEVER NOTIFY=NEVER", 501, "5.5.4", "Duplicate parameter NOTIFY" },
	{ "TO:<a@b> ORCPT=rfc822;a ORCPT=rfc822;b", 501, "5.5.4", "Duplicate parameter ORCPT" },
	{ "TO:<a@b> NOTIFY", 501, "5.5.4", "Bad value for parameter NOTIFY" },
	{ "TO:<a@b> NOTIFY=NEVER,SUCCESS", 501, "5.5.4", "Bad value for parameter NOTIFY" },
	{ "TO:<a@b> NOTIFY=SUCCESS,NEVER", 501, "5.5.4", "Bad value for parameter NOTIFY" },
	{ "TO:<a@b> NOTIFY=SUCCESS,", 501, "5.5.4", "Bad value for parameter NOTIFY" },
	{ "TO:<a@b> NOTIFY=,SUCCESS", 501, "5.5.4", "Bad value for parameter NOTIFY" },
	{ "TO:<a@b> NOTIFY=SUCCESS,,DELAY", 501, "5.5.4", "Bad value for parameter NOTIFY" },
	{ "TO:<a@b> NOTIFY=ALWAYS", 501, "5.5.4", "Bad value for parameter NOTIFY" },
	{ "TO:<a@b> NOTIFY=SUCCES", 501, "5.5.4", "Bad value for parameter NOTIFY" },
	{ "TO:<a@b> ORCPT", 501, "5.5.4", "Bad value for parameter ORCPT" },
	{ "TO:<a@b> ORCPT=rfc822", 501, "5.5.4", "Bad value for parameter ORCPT" },
	{ "TO:<a@b> ORCPT=;a@b", 501, "5.5.4", "Bad value for parameter ORCPT" },
	{ "TO:<a@b> ORCPT=rfc(822);a@b", 501, "5.5.4", "Bad value for parameter ORCPT" },
	{ "TO:<a@b> ORCPT=rfc822;a+2", 501, "5.5.4", "Bad value for parameter ORCPT" },
	{ "TO:<a@b> ORCPT=rfc822;a+xyb", 501, "5.5.4", "Bad value for parameter ORCPT" },
	{ "TO:<a@b> ORCPT=rfc822;a=b", 501, "5.5.4", "Bad parameter syntax" },
	{ "TO:<a@b> =x", 501, "5.5.4", "Bad parameter syntax" },
	/* UTF-8 without SMTPUTF8 on MAIL (utf8 = false in this table) */
	{ "TO:<\xc3\xa9@b>", 553, "5.6.7", "Non-ASCII recipient address requires SMTPUTF8" },
	{ "TO:<a@\xe4\xbe\x8b.example>", 553, "5.6.7", "Non-ASCII recipient" },
};

Test(envelope, rcpt_replies)
{
	for (size_t i = 0; i < N_ELEMENTS(rcpt_cases); i++) {
		struct address to;
		struct rcpt_params params;
		struct status st = { 0 };
		int ret = envelope_parse_rcpt(rcpt_cases[i].arg, false, &to, &params, &st);

		check_reply(&rcpt_cases[i], i, ret, &st);
	}
}

Test(envelope, rcpt_values)
{
	struct address to;
	struct rcpt_params params;
	struct status st;

	cr_assert_eq(envelope_parse_rcpt("TO:<user+box@example.com> NOTIFY=SUCCESS,DELAY "
					 "ORCPT=rfc822;user+2Bbox@example.com",
					 false, &to, &params, &st), 0);
	cr_assert_str_eq(to.local, "user+box");
	cr_assert_str_eq(to.domain, "example.com");
	cr_assert_eq(params.notify, ENVELOPE_NOTIFY_SUCCESS | ENVELOPE_NOTIFY_DELAY);
	cr_assert_str_eq(params.orcpt, "rfc822;user+2Bbox@example.com");

	cr_assert_eq(envelope_parse_rcpt("TO:<a@b> NOTIFY=never", false, &to, &params, &st), 0);
	cr_assert_eq(params.notify, ENVELOPE_NOTIFY_NEVER);
	cr_assert_str_eq(params.orcpt, "");

	cr_assert_eq(envelope_parse_rcpt("TO:<a@b> NOTIFY=FAILURE", false, &to, &params, &st), 0);
	cr_assert_eq(params.notify, ENVELOPE_NOTIFY_FAILURE);

	cr_assert_eq(envelope_parse_rcpt("TO:<a@b>", false, &to, &params, &st), 0);
	cr_assert_eq(params.notify, 0);

	cr_assert_eq(envelope_parse_rcpt("TO:<postmaster>", false, &to, &params, &st), 0);
	cr_assert_str_eq(to.local, "postmaster");
	cr_assert_str_eq(to.domain, "");

	/* with SMTPUTF8 on MAIL, a UTF-8 recipient is fine */
	cr_assert_eq(envelope_parse_rcpt("TO:<\xc3\xa9@b>", true, &to, &params, &st), 0);
	cr_assert(to.utf8);
	cr_assert_str_eq(to.local, "\xc3\xa9");
}

Test(envelope, orcpt_length)
{
	char arg[700];
	char orcpt[600];
	struct address to;
	struct rcpt_params params;
	struct status st;

	/* "rfc822;" + 493 = 500 octets: the maximum */
	memcpy(orcpt, "rfc822;", 7);
	memset(orcpt + 7, 'o', 493);
	orcpt[500] = '\0';
	snprintf(arg, sizeof(arg), "TO:<a@b> ORCPT=%s", orcpt);
	cr_assert_eq(envelope_parse_rcpt(arg, false, &to, &params, &st), 0);
	cr_assert_str_eq(params.orcpt, orcpt);

	orcpt[500] = 'o';
	orcpt[501] = '\0';
	snprintf(arg, sizeof(arg), "TO:<a@b> ORCPT=%s", orcpt);
	cr_assert_eq(envelope_parse_rcpt(arg, false, &to, &params, &st), -1);
	cr_assert_eq(st.code, 501);
	cr_assert_str_eq(st.enhanced, "5.5.4");
	cr_assert_str_eq(params.orcpt, "");
}

Test(envelope, xtext_table)
{
	static const struct {
		const char *in;
		bool valid;
	} cases[] = {
		{ "", true },           { "abc", true },        { "a+2Bb", true },
		{ "+3D", true },        { "+2b", true },        { "!~<>;:@", true },
		{ "a+", false },        { "a+2", false },       { "a+G0", false },
		{ "a=b", false },       { "a b", false },       { "a\tb", false },
		{ "\x7f", false },      { "\xc3\xa9", false },  { "+20+20", true },
		{ "a+\x00", false },
	};

	cr_assert_not(envelope_xtext_valid(NULL));
	for (size_t i = 0; i < N_ELEMENTS(cases); i++)
		cr_expect_eq(envelope_xtext_valid(cases[i].in), cases[i].valid, "xtext \"%s\"",
			     cases[i].in);
}

Test(envelope, outputs_are_reset_on_error)
{
	struct address from;
	struct mail_params params;
	struct status st;

	cr_assert_eq(envelope_parse_mail("FROM:<a@b> SIZE=10 ENVID=x", 0, &from, &params, &st), 0);
	cr_assert_eq(envelope_parse_mail("FROM:<c@d> BODY=bad", 0, &from, &params, &st), -1);
	cr_assert_eq(st.code, 501);
	cr_assert_not(params.has_size, "stale SIZE from the previous call");
	cr_assert_str_eq(params.envid, "");
}
