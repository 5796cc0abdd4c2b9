/*
 * webhook - the pure parts of the webhook driver (src/backends/webhook.c), exposed for tests:
 * Standard Webhooks ids, secrets and signatures, and the mapping of an HTTP answer to one
 * LMTP status per recipient.
 *
 * Standard Webhooks (https://www.standardwebhooks.com):
 *   webhook-id        "msg_" + hex SHA-256 of: message SHA-256 (hex) "\n" rcpt1 "\n" rcpt2 ...
 *                     with the request's recipients sorted (so a retried delivery of the same
 *                     message to the same recipients carries the same id; also Idempotency-Key)
 *   webhook-timestamp unix seconds
 *   webhook-signature "v1,BASE64(HMAC-SHA256(key, id "." timestamp "." body))", one per active
 *                     secret, space-separated
 * A secret file holds "whsec_BASE64" (the key is the decoded bytes) or the raw key.
 *
 * Answer mapping (design.md, "Default status mapping"); only a 2xx can give a 2xx:
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
 *
 * Error contract: functions returning int give 0, or -1 with nothing allocated.
 */
#ifndef LMTPGW_WEBHOOK_H
#define LMTPGW_WEBHOOK_H

#include <stdbool.h>
#include <stddef.h>

#include "spool.h"
#include "status.h"

#define WEBHOOK_ID_SIZE 69          /* "msg_" + 64 hex + NUL */
#define WEBHOOK_SIG_SIZE 52         /* "v1," + 44 base64 + NUL (+ slack) */
#define WEBHOOK_TEXT_MAX 200        /* receiver text kept in a reply */

/* Key bytes of a secret file's text: "whsec_" + base64, or the text itself; trailing CR/LF and
 * blanks are trimmed. *key_r is malloc'd (wipe before free). -1: empty or bad base64. */
int webhook_secret_decode(const char *text, unsigned char **key_r, size_t *key_len_r);

/* The webhook-id of a request for these recipients (order does not matter). */
int webhook_event_id(const char *sha256_hex, const char *const *rcpts, size_t count,
		     char id_r[WEBHOOK_ID_SIZE]);

/* HMAC-SHA256 over "id.timestamp." followed by the body, for up to two keys at once. */
struct webhook_signer;
struct webhook_signer *webhook_signer_new(const unsigned char *const *keys, const size_t *key_lens,
					  size_t key_count, const char *id, long long timestamp);
int webhook_signer_update(struct webhook_signer *s, const void *data, size_t len);
/* Feed the whole reader (rewound before and after). */
int webhook_signer_update_reader(struct webhook_signer *s, struct spool_reader *reader);
/* "v1,SIG1 v1,SIG2" into out; frees the signer. */
int webhook_signer_finish(struct webhook_signer **s, char *out, size_t size);

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

/* The status of an HTTP status code alone (no body), with text; rcpt may be NULL. */
void webhook_map_http(long http_status, const char *retry_after, const char *text,
		      const char *rcpt, const char *ref, struct status *st_r);

/* Copy untrusted text into a reply text: printable ASCII kept, runs of anything else (CR, LF,
 * tabs, 8-bit) become one space, trimmed, cut at max bytes with "...". */
void webhook_sanitize_text(const char *in, size_t in_len, char *out, size_t max);

#endif
