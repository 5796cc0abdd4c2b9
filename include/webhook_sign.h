/*
 * webhook_sign - Standard Webhooks (https://www.standardwebhooks.com) ids, secrets and
 * signatures for the webhook driver:
 *   webhook-id        "msg_" + hex SHA-256 of: message SHA-256 (hex) "\n" rcpt1 "\n" rcpt2 ...
 *                     with the request's recipients sorted (so a retried delivery of the same
 *                     message to the same recipients carries the same id; also Idempotency-Key)
 *   webhook-timestamp unix seconds
 *   webhook-signature "v1,BASE64(HMAC-SHA256(key, id "." timestamp "." body))", one per active
 *                     secret, space-separated
 * A secret file holds "whsec_BASE64" (the key is the decoded bytes) or the raw key.
 *
 * Error contract: functions returning int give 0, or -1 with nothing allocated.
 */
#ifndef LMTPGW_WEBHOOK_SIGN_H
#define LMTPGW_WEBHOOK_SIGN_H

#include <stddef.h>

#include "spool.h"

#define WEBHOOK_ID_SIZE 69          /* "msg_" + 64 hex + NUL */
#define WEBHOOK_SIG_SIZE 52         /* "v1," + 44 base64 + NUL (+ slack) */

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

#endif
