/*
 * status - the only way to build an LMTP reply.
 *
 * A status is a reply code (200..599), an RFC 3463 enhanced status code whose class digit equals
 * the first digit of the reply code (RFC 2034), and a short text. Constructors refuse anything
 * else, so no reply can leave the server without a matching enhanced code.
 *
 * Error contract: status_make() returns -1 for an invalid combination and leaves a fixed
 * "451 4.3.0 internal error" in *st (never a 5xx: any doubt is temporary). status_must() aborts
 * on an invalid combination: use it only with literals.
 */
#ifndef LMTPGW_STATUS_H
#define LMTPGW_STATUS_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

enum status_class {
	STATUS_OK = 2,        /* 2xx */
	STATUS_INTERIM = 3,   /* 3xx: only 354 for DATA */
	STATUS_TEMPFAIL = 4,  /* 4xx: the client retries */
	STATUS_PERMFAIL = 5,  /* 5xx: the client bounces */
};

#define STATUS_TEXT_MAX 256
#define STATUS_ENHANCED_MAX 12 /* "5.999.999" + NUL fits */

/* What a refusal is about: the mail (a recipient, the message, a store's answer) or the
 * protocol (the client's syntax or sequence). Only mail refusals are subject to soft bounce. */
enum status_kind {
	STATUS_KIND_MAIL = 0,    /* the default of every constructor */
	STATUS_KIND_PROTOCOL,
};

/* A bare status: drivers and the session fill it with their own words only; reply.h adds the
 * recipient, the transaction id and the policy when it becomes a recipient's reply. */
struct status {
	int code;                             /* 200..599 */
	char enhanced[STATUS_ENHANCED_MAX];   /* "x.y.z", x equals code / 100; empty only for 3xx */
	char text[STATUS_TEXT_MAX];           /* printable ASCII, no CR/LF */
	enum status_kind kind;
};

/* Build *st from code, enhanced code and printf-style text. Text is truncated to fit and any
 * control character is replaced by '?'. Returns 0, or -1 (and a 451 4.3.0 in *st) when code or
 * enhanced code is malformed or their classes differ. 3xx takes enhanced == NULL or "". */
int status_make(struct status *st, int code, const char *enhanced, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* status_make() with a va_list. */
int status_vmake(struct status *st, int code, const char *enhanced, const char *fmt, va_list args)
	__attribute__((format(printf, 4, 0)));

/* As status_make() for compile-time literals: aborts on an invalid combination (a bug). */
void status_must(struct status *st, int code, const char *enhanced, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Validate a code and enhanced code pair without building anything. */
bool status_valid(int code, const char *enhanced);

/* Parse "x.y.z" with bounds (x in 2,4,5; y and z 0..999, no leading '+', no extra characters). */
bool status_enhanced_valid(const char *enhanced);

static inline enum status_class status_class_of(const struct status *st)
{
	return (enum status_class)(st->code / 100);
}

/* Mark st as a protocol error (bad syntax or sequence), not a refusal of mail. */
static inline void status_mark_protocol(struct status *st)
{
	st->kind = STATUS_KIND_PROTOCOL;
}

/* Soft bounce: a 5xx becomes the matching 4xx (550 5.1.1 -> 450 4.1.1, 552 5.3.4 -> 452 4.3.4,
 * 554 -> 451 ...). Anything else is left as it is. */
void status_soft_bounce(struct status *st);

/* Format "CODE ENH TEXT\r\n" (or "CODE-ENH TEXT\r\n" when more is true) into buf; returns the
 * length written (without NUL), truncating the text if needed. buf must hold at least 32 bytes. */
size_t status_format(const struct status *st, bool more, char *buf, size_t size);

/* RFC 3463 description of an enhanced code's subject.detail ("1.1" -> "Bad destination mailbox
 * address"); "Other or undefined status" for unknown ones. Never NULL. */
const char *status_description(const char *enhanced);

/* errno -> status for local storage: ENOSPC 452 4.3.1, EDQUOT 452 4.2.2, EACCES/EPERM/EROFS
 * 451 4.3.0 ... Never a 5xx. what is put in front of strerror() in the text. */
void status_from_errno(struct status *st, int err, const char *what);

#endif
