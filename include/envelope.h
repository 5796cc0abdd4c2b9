/*
 * envelope - the arguments of MAIL and RCPT: path plus ESMTP parameters, checked and carried.
 *
 *   mail-arg  = "FROM:" Reverse-path [SP Mail-parameters]
 *   rcpt-arg  = "TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" / Forward-path ) [SP Rcpt-parameters]
 *   esmtp-param = esmtp-keyword ["=" esmtp-value]     ; keyword case-insensitive
 *
 * MAIL parameters: SIZE=n (RFC 1870), BODY=7BIT|8BITMIME|BINARYMIME (RFC 6152, 3030), SMTPUTF8
 * (RFC 6531, no value), RET=FULL|HDRS and ENVID=xtext (RFC 3461). RCPT parameters:
 * NOTIFY=NEVER|SUCCESS,FAILURE,DELAY and ORCPT=addr-type;xtext (RFC 3461). Each parameter at
 * most once. An unknown keyword is 555 5.5.4; a known keyword with a bad value is 501 5.5.4;
 * a bad sender path 501 5.1.7; a bad recipient path 501 5.1.3; a missing "FROM:"/"TO:" 501 5.5.4.
 *
 * Error contract: envelope_parse_* return 0, or -1 with the reply to send in *st_r.
 */
#ifndef LMTPGW_ENVELOPE_H
#define LMTPGW_ENVELOPE_H

#include <stdbool.h>
#include <stdint.h>

#include "address.h"
#include "status.h"

enum envelope_body { BODY_UNSPECIFIED, BODY_7BIT, BODY_8BITMIME, BODY_BINARYMIME };
enum envelope_ret { RET_UNSPECIFIED, RET_FULL, RET_HDRS };

#define ENVELOPE_NOTIFY_NEVER   0x1
#define ENVELOPE_NOTIFY_SUCCESS 0x2
#define ENVELOPE_NOTIFY_FAILURE 0x4
#define ENVELOPE_NOTIFY_DELAY   0x8

#define ENVELOPE_ENVID_MAX 100  /* RFC 3461 4.4 */
#define ENVELOPE_ORCPT_MAX 500  /* RFC 3461 4.2: the whole parameter is bounded by the line */

struct mail_params {
	bool has_size;
	uint64_t size;                      /* declared SIZE, when has_size */
	enum envelope_body body;
	bool smtputf8;
	enum envelope_ret ret;
	char envid[ENVELOPE_ENVID_MAX + 1]; /* xtext as given, "" when absent */
};

struct rcpt_params {
	unsigned notify;                    /* ENVELOPE_NOTIFY_* bits, 0 when absent */
	char orcpt[ENVELOPE_ORCPT_MAX + 1]; /* "rfc822;xtext" as given, "" when absent */
};

/* Parse the argument text of MAIL (everything after "MAIL "), e.g. "FROM:<a@b> SIZE=10".
 * max_size is the server's limit (0: none); SIZE above it gives 552 5.3.4. */
int envelope_parse_mail(const char *arg, uint64_t max_size, struct address *from_r,
			struct mail_params *params_r, struct status *st_r);

/* Parse the argument text of RCPT (everything after "RCPT "), e.g. "TO:<a@b> NOTIFY=NEVER".
 * utf8 is true when the transaction's MAIL carried SMTPUTF8. */
int envelope_parse_rcpt(const char *arg, bool utf8, struct address *to_r,
			struct rcpt_params *params_r, struct status *st_r);

/* Check xtext (RFC 3461 4): printable ASCII 33..126 except '+' and '=', and "+XX" hex escapes. */
bool envelope_xtext_valid(const char *s);

#endif
