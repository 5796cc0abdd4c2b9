/*
 * test_journal - the journal report parser (journal.h): the byte range of the original
 * (RFC 2046: the CRLF before a delimiter belongs to the delimiter), the envelope lines, and
 * the reports it must refuse (so the S3 driver stores them as they came). Each parse also runs
 * on a copy in a buffer of exactly its length, so a read past the end shows under ASan and
 * valgrind.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "journal.h"

#define ORIG "From: a@contoso.test\r\nSubject: x\r\n\r\nbody\r\n--not-the-boundary\r\n"

static char *report(const char *envelope, const char *orig_part_headers, const char *orig,
		    const char *tail)
{
	static char buf[8192];
	snprintf(buf, sizeof(buf),
		 "From: Microsoft Outlook <x@contoso.test>\r\n"
		 "Content-Type: multipart/mixed; boundary=\"b1\"\r\n"
		 "X-MS-Journal-Report:\r\n"
		 "\r\n"
		 "preamble\r\n"
		 "--b1\r\n"
		 "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
		 "%s\r\n"
		 "--b1\r\n"
		 "%s\r\n"
		 "%s\r\n"
		 "%s",
		 envelope, orig_part_headers, orig, tail);
	return buf;
}

static int parse_exact(const char *text, struct journal_report *r, const char **error)
{
	size_t len = strlen(text);
	char *copy = malloc(len);
	cr_assert_not_null(copy);
	memcpy(copy, text, len);
	int ret = journal_parse(copy, len, r, error);
	if (ret == 0) {
		cr_assert_leq(r->original_offset + r->original_length, len);
		/* keep the original's bytes checkable after the copy is gone */
		char *o = strndup(copy + r->original_offset, r->original_length);
		cr_assert_not_null(o);
		cr_assert_eq(memcmp(o, text + r->original_offset, r->original_length), 0);
		free(o);
	}
	free(copy);
	return ret;
}

Test(journal, original_range_and_envelope)
{
	const char *env = "Sender: alice@contoso.test\r\nSubject: Hi\r\nMessage-Id: <m@c>\r\n"
			  "To: bob@contoso.test\r\nBcc: <dave@contoso.test>\r\n"
			  "To: frank@contoso.test, Expanded: sales@contoso.test\r\n"
			  "Cc: h2@contoso.test, Forwarded: h@contoso.test\r\n"
			  "Recipient: erin@fabrikam.test\r\nOn-Behalf-Of: boss@contoso.test";
	const char *text = report(env, "Content-Type: message/rfc822\r\n", ORIG, "--b1--\r\n");
	struct journal_report r;
	const char *error = NULL;

	cr_assert_eq(journal_is_report(text, strlen(text)), true);
	cr_assert_eq(parse_exact(text, &r, &error), 0, "%s", error);
	cr_assert_eq(r.original_length, strlen(ORIG));
	cr_assert_eq(memcmp(text + r.original_offset, ORIG, strlen(ORIG)), 0);
	cr_assert_str_eq(r.sender, "alice@contoso.test");
	cr_assert_str_eq(r.subject, "Hi");
	cr_assert_str_eq(r.message_id, "<m@c>");
	cr_assert_str_eq(r.on_behalf_of, "boss@contoso.test");
	cr_assert_eq(r.rcpt_count, 5);
	cr_assert_str_eq(r.rcpts[1].address, "dave@contoso.test");
	cr_assert_eq(r.rcpts[1].field, JOURNAL_BCC);
	cr_assert_str_eq(r.rcpts[2].expanded_from, "sales@contoso.test");
	cr_assert_null(r.rcpts[2].forwarded_from);
	cr_assert_str_eq(r.rcpts[3].forwarded_from, "h@contoso.test");
	cr_assert_eq(r.rcpts[4].field, JOURNAL_RECIPIENT);
	char bare[64];
	journal_message_id_bare(&r, bare, sizeof(bare));
	cr_assert_str_eq(bare, "m@c");
	journal_report_free(&r);
}

Test(journal, not_a_report)
{
	const char *text = "Subject: plain\r\nContent-Type: text/plain\r\n\r\nhello\r\n";
	struct journal_report r;
	const char *error = NULL;

	cr_assert_eq(journal_is_report(text, strlen(text)), false);
	cr_assert_eq(parse_exact(text, &r, &error), -1);
}

Test(journal, refused_reports)
{
	const char *env = "Sender: a@contoso.test\r\nTo: b@contoso.test";
	const struct {
		const char *env, *part, *tail, *why;
	} cases[] = {
		/* truncated: no delimiter after the original */
		{ env, "Content-Type: message/rfc822\r\n", "", "not terminated" },
		/* no recipient line */
		{ "Sender: a@contoso.test", "Content-Type: message/rfc822\r\n", "--b1--\r\n",
		  "no recipient" },
		/* no Sender line */
		{ "To: b@contoso.test", "Content-Type: message/rfc822\r\n", "--b1--\r\n", "Sender" },
		/* encoded message/rfc822: not the original's bytes */
		{ env, "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n",
		  "--b1--\r\n", "Content-Transfer-Encoding" },
		/* no message/rfc822 part at all */
		{ env, "Content-Type: application/octet-stream\r\n", "--b1--\r\n", "message/rfc822" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *text = report(cases[i].env, cases[i].part, ORIG, cases[i].tail);
		struct journal_report r;
		const char *error = NULL;
		cr_assert_eq(parse_exact(text, &r, &error), -1, "case %zu parsed", i);
		cr_assert_not_null(strstr(error, cases[i].why), "case %zu: %s", i, error);
	}
}

Test(journal, boundary_prefix_inside_the_original_is_not_a_delimiter)
{
	/* "--b1x" at a line start inside the original is a longer string, not "--b1" */
	const char *text = report("Sender: a@c\r\nTo: b@c", "Content-Type: message/rfc822\r\n",
				  "Subject: y\r\n\r\n--b1x not a delimiter", "--b1--\r\n");
	struct journal_report r;
	const char *error = NULL;

	cr_assert_eq(parse_exact(text, &r, &error), 0, "%s", error);
	cr_assert_eq(r.original_length, strlen("Subject: y\r\n\r\n--b1x not a delimiter"));
	journal_report_free(&r);
}
