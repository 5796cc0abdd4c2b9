/*
 * status - the only way to build an LMTP reply (see include/status.h).
 *
 * Owns: nothing (every function works on a caller's struct status).
 * Checks: a reply code is 200..599; an enhanced code is "class.subject.detail" with class 2, 4
 * or 5, subject and detail 1..3 digits without leading zeros (RFC 3463 section 2); the class
 * equals the first digit of the reply code (RFC 2034 section 4); 3xx carries no enhanced code.
 * Text is printable ASCII only: any other octet becomes '?', so a reply can never be split or
 * smuggle a CR/LF, and it is truncated to STATUS_TEXT_MAX - 1 octets.
 *
 * Error contract: status_make() returns -1 and leaves "451 4.3.0 internal error" (never a 5xx:
 * any doubt is temporary); status_must() aborts, because an invalid literal is a bug.
 */
#include "status.h"

#include "format.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parse one 1*3digit field without leading zeros; returns the value or -1. */
static int parse_enhanced_field(const char **p)
{
	const char *s = *p;
	int value = 0;
	int digits = 0;

	while (*s >= '0' && *s <= '9') {
		if (digits == 3)
			return -1;
		if (digits == 1 && value == 0)
			return -1; /* "01": RFC 3463 numbers carry no leading zero */
		value = value * 10 + (*s - '0');
		digits++;
		s++;
	}
	if (digits == 0)
		return -1;
	*p = s;
	return value;
}

/*
 *   status-code = class "." subject "." detail       ; RFC 3463 section 2
 *   class       = "2" / "4" / "5"
 *   subject     = 1*3digit
 *   detail      = 1*3digit
 */
static bool parse_enhanced(const char *enhanced, int *class_r, int *subject_r, int *detail_r)
{
	const char *p = enhanced;
	int subject, detail;

	if (p == NULL || (p[0] != '2' && p[0] != '4' && p[0] != '5') || p[1] != '.')
		return false;
	p += 2;
	if ((subject = parse_enhanced_field(&p)) < 0 || *p != '.')
		return false;
	p++;
	if ((detail = parse_enhanced_field(&p)) < 0 || *p != '\0')
		return false;
	*class_r = enhanced[0] - '0';
	*subject_r = subject;
	*detail_r = detail;
	return true;
}

bool status_enhanced_valid(const char *enhanced)
{
	int class, subject, detail;

	return parse_enhanced(enhanced, &class, &subject, &detail);
}

bool status_valid(int code, const char *enhanced)
{
	int class, subject, detail;

	if (code < 200 || code > 599)
		return false;
	if (code / 100 == 3) /* 354 and friends carry no enhanced code (RFC 2034 section 3) */
		return enhanced == NULL || enhanced[0] == '\0';
	if (!parse_enhanced(enhanced, &class, &subject, &detail))
		return false;
	return class == code / 100;
}

/* Replace every octet that is not printable ASCII, so a text can never break a reply line. */
static void sanitize_text(char *text)
{
	for (unsigned char *p = (unsigned char *)text; *p != '\0'; p++) {
		if (*p < 0x20 || *p > 0x7e)
			*p = '?';
	}
}

static void set_internal_error(struct status *st)
{
	st->code = 451;
	st->kind = STATUS_KIND_MAIL;
	memcpy(st->enhanced, "4.3.0", sizeof("4.3.0"));
	memcpy(st->text, "internal error", sizeof("internal error"));
}

int status_vmake(struct status *st, int code, const char *enhanced, const char *fmt,
			va_list args)
{
	if (!status_valid(code, enhanced)) {
		set_internal_error(st);
		return -1;
	}
	st->code = code;
	st->kind = STATUS_KIND_MAIL;
	if (enhanced == NULL) {
		st->enhanced[0] = '\0';
	} else {
		/* status_valid() bounded it: "x.yyy.zzz" at most. */
		size_t n = strnlen(enhanced, sizeof(st->enhanced) - 1);
		memcpy(st->enhanced, enhanced, n);
		st->enhanced[n] = '\0';
	}
	if (fmt == NULL)
		st->text[0] = '\0';
	else if (format_v(st->text, sizeof(st->text), fmt, args) < 0)
		st->text[0] = '\0';
	sanitize_text(st->text);
	return 0;
}

int status_make(struct status *st, int code, const char *enhanced, const char *fmt, ...)
{
	va_list args;
	int ret;

	va_start(args, fmt);
	ret = status_vmake(st, code, enhanced, fmt, args);
	va_end(args);
	return ret;
}

void status_must(struct status *st, int code, const char *enhanced, const char *fmt, ...)
{
	va_list args;
	int ret;

	va_start(args, fmt);
	ret = status_vmake(st, code, enhanced, fmt, args);
	va_end(args);
	if (ret < 0) {
		fprintf(stderr, "status_must: invalid reply %d %s\n", code,
			enhanced != NULL ? enhanced : "(null)");
		abort();
	}
}

/*
 * Soft bounce turns a permanent answer into the nearest temporary one, so the client keeps the
 * message in its queue. 5YZ becomes 4YZ (550 -> 450, 551 -> 451, 552 -> 452, and 500..504 ->
 * 400..404 as Postfix's soft_bounce does), except where 4YZ has no or another meaning in
 * RFC 5321: 553 (mailbox name not allowed) -> 450, 554 (transaction failed) -> 451 and
 * 555 (parameters not recognized) -> 451. The enhanced class goes from 5 to 4, subject and
 * detail unchanged.
 */
void status_soft_bounce(struct status *st)
{
	if (st->code < 500 || st->code > 599)
		return;
	switch (st->code) {
	case 553:
		st->code = 450;
		break;
	case 554:
	case 555:
		st->code = 451;
		break;
	default:
		st->code -= 100;
		break;
	}
	if (st->enhanced[0] == '5')
		st->enhanced[0] = '4';
	else if (!status_enhanced_valid(st->enhanced) || st->enhanced[0] != '4')
		memcpy(st->enhanced, "4.0.0", sizeof("4.0.0")); /* a struct filled by hand */
}

size_t status_format(const struct status *st, bool more, char *buf, size_t size)
{
	char prefix[32];
	size_t prefix_len, text_len, room, out;
	int code = st->code >= 200 && st->code <= 599 ? st->code : 451;
	char sep = more ? '-' : ' ';

	if (size == 0)
		return 0;
	/* "250-" or "250 " then the enhanced code: by hand, this runs for every reply. */
	prefix[0] = (char)('0' + code / 100);
	prefix[1] = (char)('0' + code / 10 % 10);
	prefix[2] = (char)('0' + code % 10);
	prefix[3] = sep;
	prefix_len = 4;
	if (st->enhanced[0] != '\0') {
		size_t n = strnlen(st->enhanced, STATUS_ENHANCED_MAX - 1);
		memcpy(prefix + prefix_len, st->enhanced, n);
		prefix_len += n;
	}
	if (size < prefix_len + 3) { /* not even room for the code and CRLF: a caller's bug */
		buf[0] = '\0';
		return 0;
	}
	memcpy(buf, prefix, prefix_len);
	out = prefix_len;

	text_len = strnlen(st->text, sizeof(st->text));
	/* Reserve CRLF + NUL; a separating space only when there is text and room for it. */
	room = size - out - 3;
	if (text_len > 0 && st->enhanced[0] != '\0' && room > 0) {
		buf[out++] = ' ';
		room--;
	}
	if (text_len > room)
		text_len = room;
	for (size_t i = 0; i < text_len; i++) {
		unsigned char c = (unsigned char)st->text[i];

		buf[out++] = c < 0x20 || c > 0x7e ? '?' : (char)c;
	}
	/* "354 " with no text keeps its trailing space; "250 2.0.0" needs none. */
	buf[out++] = '\r';
	buf[out++] = '\n';
	buf[out] = '\0';
	return out;
}

struct enhanced_description {
	unsigned char subject;
	unsigned char detail;
	const char *text;
};

/* RFC 3463 section 3, with the later registrations (RFC 3886, 4468, 4954, 5248, 6531, 6710,
 * 7293, 7372, 7505, 8617, 8689) from the IANA "SMTP Enhanced Status Codes" registry. */
static const struct enhanced_description enhanced_descriptions[] = {
	{ 0, 0, "Other undefined status" },
	{ 1, 0, "Other address status" },
	{ 1, 1, "Bad destination mailbox address" },
	{ 1, 2, "Bad destination system address" },
	{ 1, 3, "Bad destination mailbox address syntax" },
	{ 1, 4, "Destination mailbox address ambiguous" },
	{ 1, 5, "Destination address valid" },
	{ 1, 6, "Destination mailbox has moved, no forwarding address" },
	{ 1, 7, "Bad sender's mailbox address syntax" },
	{ 1, 8, "Bad sender's system address" },
	{ 1, 9, "Message relayed to non-compliant mailer" },
	{ 1, 10, "Recipient address has null MX" },
	{ 2, 0, "Other or undefined mailbox status" },
	{ 2, 1, "Mailbox disabled, not accepting messages" },
	{ 2, 2, "Mailbox full" },
	{ 2, 3, "Message length exceeds administrative limit" },
	{ 2, 4, "Mailing list expansion problem" },
	{ 3, 0, "Other or undefined mail system status" },
	{ 3, 1, "Mail system full" },
	{ 3, 2, "System not accepting network messages" },
	{ 3, 3, "System not capable of selected features" },
	{ 3, 4, "Message too big for system" },
	{ 3, 5, "System incorrectly configured" },
	{ 3, 6, "Requested priority was changed" },
	{ 4, 0, "Other or undefined network or routing status" },
	{ 4, 1, "No answer from host" },
	{ 4, 2, "Bad connection" },
	{ 4, 3, "Directory server failure" },
	{ 4, 4, "Unable to route" },
	{ 4, 5, "Mail system congestion" },
	{ 4, 6, "Routing loop detected" },
	{ 4, 7, "Delivery time expired" },
	{ 5, 0, "Other or undefined protocol status" },
	{ 5, 1, "Invalid command" },
	{ 5, 2, "Syntax error" },
	{ 5, 3, "Too many recipients" },
	{ 5, 4, "Invalid command arguments" },
	{ 5, 5, "Wrong protocol version" },
	{ 5, 6, "Authentication exchange line is too long" },
	{ 6, 0, "Other or undefined media error" },
	{ 6, 1, "Media not supported" },
	{ 6, 2, "Conversion required and prohibited" },
	{ 6, 3, "Conversion required but not supported" },
	{ 6, 4, "Conversion with loss performed" },
	{ 6, 5, "Conversion failed" },
	{ 6, 6, "Message content not available" },
	{ 6, 7, "Non-ASCII addresses not permitted for that sender/recipient" },
	{ 6, 8, "UTF-8 string reply is required, but not permitted by the SMTP client" },
	{ 6, 9, "UTF-8 header message cannot be transferred to one or more recipients" },
	{ 7, 0, "Other or undefined security status" },
	{ 7, 1, "Delivery not authorized, message refused" },
	{ 7, 2, "Mailing list expansion prohibited" },
	{ 7, 3, "Security conversion required but not possible" },
	{ 7, 4, "Security features not supported" },
	{ 7, 5, "Cryptographic failure" },
	{ 7, 6, "Cryptographic algorithm not supported" },
	{ 7, 7, "Message integrity failure" },
	{ 7, 8, "Authentication credentials invalid" },
	{ 7, 9, "Authentication mechanism is too weak" },
	{ 7, 10, "Encryption needed" },
	{ 7, 11, "Encryption required for requested authentication mechanism" },
	{ 7, 12, "A password transition is needed" },
	{ 7, 13, "User account disabled" },
	{ 7, 14, "Trust relationship required" },
	{ 7, 15, "Priority level is too low" },
	{ 7, 16, "Message is too big for the specified priority" },
	{ 7, 17, "Mailbox owner has changed" },
	{ 7, 18, "Domain owner has changed" },
	{ 7, 19, "RRVS test cannot be completed" },
	{ 7, 20, "No passing DKIM signature found" },
	{ 7, 21, "No acceptable DKIM signature found" },
	{ 7, 22, "No valid author-matched DKIM signature found" },
	{ 7, 23, "SPF validation failed" },
	{ 7, 24, "SPF validation error" },
	{ 7, 25, "Reverse DNS validation failed" },
	{ 7, 26, "Multiple authentication checks failed" },
	{ 7, 27, "Sender address has null MX" },
	{ 7, 29, "ARC validation failure" },
	{ 7, 30, "REQUIRETLS support required" },
};

const char *status_description(const char *enhanced)
{
	int class, subject, detail;

	if (parse_enhanced(enhanced, &class, &subject, &detail)) {
		for (size_t i = 0;
		     i < sizeof(enhanced_descriptions) / sizeof(enhanced_descriptions[0]); i++) {
			if (enhanced_descriptions[i].subject == subject &&
			    enhanced_descriptions[i].detail == detail)
				return enhanced_descriptions[i].text;
		}
	}
	return "Other or undefined status";
}

/*
 * Local storage errors are never the recipient's fault, so none of them is permanent:
 *   ENOSPC            452 4.3.1  the file system is full (Mail system full)
 *   EDQUOT            452 4.2.2  the user's quota is exhausted (Mailbox full); 452, not 552,
 *                                because quota frees up and the client should retry
 *   EMFILE ENFILE ENOMEM ENOBUFS EAGAIN
 *                     451 4.3.2  we are short of a resource for now (System not accepting
 *                                network messages)
 *   everything else   451 4.3.0  (EACCES, EPERM, EROFS, ENOENT, EIO, ...: misconfiguration or a
 *                                failing disk, ours to fix, never a bounce)
 */
void status_from_errno(struct status *st, int err, const char *what)
{
	char errbuf[128];
	const char *reason = strerror_r(err, errbuf, sizeof(errbuf)); /* GNU: thread-safe */
	const char *sep = what != NULL && what[0] != '\0' ? ": " : "";
	int code = 451;
	const char *enhanced = "4.3.0";

	if (what == NULL)
		what = "";
	switch (err) {
	case ENOSPC:
		code = 452;
		enhanced = "4.3.1";
		break;
#ifdef EDQUOT
	case EDQUOT:
		code = 452;
		enhanced = "4.2.2";
		break;
#endif
	case EMFILE:
	case ENFILE:
	case ENOMEM:
	case ENOBUFS:
	case EAGAIN:
		enhanced = "4.3.2";
		break;
	default:
		break;
	}
	status_must(st, code, enhanced, "%s%s%s", what, sep, reason);
}
