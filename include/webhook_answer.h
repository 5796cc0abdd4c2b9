/*
 * webhook_answer - what a webhook receiver's HTTP answer means for each recipient of the
 * request: one LMTP status per recipient. Pure (no I/O); log lines only for receivers that
 * contradict themselves or answer for strangers.
 *
 * Mapping (design.md, "Default status mapping"); only a 2xx can give a 2xx:
 *   2xx                     250 2.0.0 (ref: a response id or the webhook-id)
 *   400, 404, 410, 422      550 5.0.0
 *   413                     552 5.3.4
 *   401, 403                451 4.7.0
 *   429                     451 4.4.5 (Retry-After in the text)
 *   408, 5xx, anything else 451 4.3.0
 * A JSON body {"results":[{"rcpt":..,"code":..,"status":"x.y.z","text":..}]} sets each listed
 * recipient's reply; each entry is validated (status_make: code and enhanced class agree; a 2xx
 * only within an HTTP 2xx); an invalid entry, or a recipient the results leave out, gets
 * 451 4.3.0. A recipient named more than once: entries of different classes contradict each
 * other (451 4.3.0, logged); entries of one class give the first one's reply (a different code
 * within the class is logged). Entries naming recipients not in the request are ignored and
 * logged. A JSON body that does not parse, or was cut at max_response, gives 451 4.3.0 to
 * everyone (any doubt is temporary). A text/plain body becomes the reply text (sanitized,
 * truncated).
 */
#ifndef LMTPGW_WEBHOOK_ANSWER_H
#define LMTPGW_WEBHOOK_ANSWER_H

#include <stdbool.h>
#include <stddef.h>

#include "status.h"

#define WEBHOOK_TEXT_MAX 200        /* receiver text kept in a reply */

/* The receiver's answer, as http.c delivered it. */
struct webhook_answer {
	long http_status;
	const char *content_type;   /* NULL when absent */
	const char *body;           /* NUL-terminated */
	size_t body_len;
	bool truncated;             /* more than max_response bytes came */
	const char *retry_after;    /* Retry-After header value, or NULL */
	const char *ref;            /* reference for 2xx texts (response id or webhook-id) */
	const char *backend;        /* for log lines (NULL: "-") */
};

/* One status per recipient (rcpts[i] -> st_r[i]). */
void webhook_map_answer(const struct webhook_answer *answer, const char *const *rcpts,
			size_t count, struct status *st_r);

/* For the RCPT-time verification of one recipient: its status by the same rules, and true when
 * that status is the receiver's own verdict on the recipient: a valid results entry naming it
 * (550 5.1.1 unknown, 452 4.2.2 full, 250 ..., under any HTTP status), or an HTTP 2xx. false:
 * the answer gave no verdict (an HTTP status alone that is not 2xx: 400/404/410/413/422 too,
 * which a proxy, a WAF or a schema check may answer without knowing the recipient; JSON that
 * does not parse; no or an invalid or a contradicting entry); *st_r is then a 4xx (451 4.3.0
 * for a status-only 4xx/5xx refusal, the mapping's own 4xx for 401/403/408/429/5xx). */
bool webhook_map_verify_answer(const struct webhook_answer *answer, const char *rcpt,
			       struct status *st_r);

/* The status of an HTTP status code alone (no body), with text. Statuses are bare: the
 * recipient is named when the reply is built (reply.h). */
void webhook_map_http(long http_status, const char *retry_after, const char *text,
		      const char *ref, struct status *st_r);

/* Copy untrusted text into a reply text: printable ASCII kept, runs of anything else (CR, LF,
 * tabs, 8-bit) become one space, trimmed, cut at max bytes with "...". */
void webhook_sanitize_text(const char *in, size_t in_len, char *out, size_t max);

#endif
