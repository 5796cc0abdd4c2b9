/*
 * journal - Exchange / Microsoft 365 envelope journal reports: detect one, find the journaled
 * message inside it (byte offsets into the report), and parse the envelope the report carries.
 *
 * The format ([MS-XJRNL] "Journal Record Message File Format"; Exchange "Understanding Journal
 * Reports"): a message with the header field X-MS-Journal-Report, Content-Type multipart/mixed,
 * whose first text/plain part is the envelope, one "Name: value" line each:
 *
 *   "Sender:" SP smtp-address CRLF
 *   "Subject:" SP subject CRLF
 *   "Message-ID:" SP message-id CRLF
 *   ["On-Behalf-Of:" SP smtp-address CRLF]
 *   1*( ("To" / "Cc" / "Bcc" / "Recipient") ":" SP address
 *       [", " ("Expanded" / "Forwarded") ":" SP source-address] CRLF )
 *
 * and whose message/rfc822 part is the original message, "included unaltered".
 *
 * The parser reads one contiguous block (the spool mapped, spool_map()) and copies only the
 * envelope text; the original is returned as a window (offset, length) of that block, so a
 * 30 MB attachment is never copied. Every header block, the envelope text and the number of
 * parts and recipients are bounded (JOURNAL_* below).
 *
 * Error contract: journal_parse() returns 0, or -1 with a short static reason in *error_r;
 * it never logs (the S3 driver decides: a report that cannot be parsed is stored as it came).
 */
#ifndef LMTPGW_JOURNAL_H
#define LMTPGW_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define JOURNAL_HEADER_MAX (256 * 1024)        /* a header block (the report's, a part's) */
#define JOURNAL_ENVELOPE_MAX (8 * 1024 * 1024) /* the envelope part, decoded */
#define JOURNAL_PARTS_MAX 64                   /* body parts looked at */
#define JOURNAL_RECIPIENTS_MAX 100000
#define JOURNAL_VALUE_MAX 2000                 /* one address, subject or message id */

enum journal_field { JOURNAL_TO, JOURNAL_CC, JOURNAL_BCC, JOURNAL_RECIPIENT };

struct journal_recipient {
	char *address;
	enum journal_field field;
	char *expanded_from;           /* "Expanded:" distribution group, or NULL */
	char *forwarded_from;          /* "Forwarded:" original recipient, or NULL */
};

struct journal_report {
	uint64_t original_offset;      /* the message/rfc822 body within the report */
	uint64_t original_length;
	char *sender;
	char *subject;                 /* UTF-8 (ISO-8859-1 is the fallback reading) */
	char *message_id;              /* as written, with its <> */
	char *on_behalf_of;            /* or NULL */
	struct journal_recipient *rcpts;
	size_t rcpt_count;
};

/* Does the top-level header of the message carry X-MS-Journal-Report? (Looks at the header
 * block only, at most JOURNAL_HEADER_MAX bytes.) */
bool journal_is_report(const char *data, size_t len);

/* Parse a report (see the top of this file). 0 with *report_r filled (free it with
 * journal_report_free), or -1 with *error_r. */
int journal_parse(const char *data, size_t len, struct journal_report *report_r,
		  const char **error_r);
void journal_report_free(struct journal_report *report);

/* The envelope as JSON (the manifest's "journal" object, docs/backends/s3.md):
 * { "sender", "subject", "message_id", "on_behalf_of"?,
 *   "recipients": [ { "address", "field": "to"|"cc"|"bcc"|"recipient",
 *                     "expanded_from"?, "forwarded_from"? } ] }
 * NULL on allocation failure. */
json_t *journal_json(const struct journal_report *report);

/* The Message-ID without its angle brackets into buf ("" when none). */
void journal_message_id_bare(const struct journal_report *report, char *buf, size_t size);

#endif
