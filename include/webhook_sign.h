/*
 * webhook_sign - Standard Webhooks (https://www.standardwebhooks.com) ids, secrets and
 * signatures for the webhook driver:
 *   webhook-id        "msg_" + hex SHA-256 of: message SHA-256 (hex) "\n" rcpt1 "\n" rcpt2 ...
 *                     with the request's recipients sorted (so a retried delivery of the same
 *                     message to the same recipients carries the same id; also Idempotency-Key)
 *   webhook-timestamp unix seconds
 *   webhook-signature "v1,BASE64(HMAC-SHA256(key, id "." timestamp "." body))", one per active
 *                     secret, then "v1a,BASE64(Ed25519(private key, id "." timestamp "." body))",
 *                     one per Ed25519 key (asymmetric: the receiver keeps only the public
 *                     key), all space-separated
 * A secret file holds "whsec_BASE64" (the key is the decoded bytes) or the raw key; an Ed25519
 * key file holds a PKCS#8 PEM private key (`openssl genpkey -algorithm ed25519`).
 *
 * Error contract: functions returning int give 0, or -1 with nothing allocated.
 */
#ifndef LMTPGW_WEBHOOK_SIGN_H
#define LMTPGW_WEBHOOK_SIGN_H

#include <stddef.h>

#include "spool.h"

#define WEBHOOK_ID_SIZE 69          /* "msg_" + 64 hex + NUL */
#define WEBHOOK_SIG_SIZE 52         /* "v1," + 44 base64 + NUL (+ slack) */
#define WEBHOOK_ED25519_KEYS_MAX 4  /* Ed25519 keys signing at once (rotation) */
#define WEBHOOK_ED25519_SIG_SIZE 96 /* "v1a," + 88 base64 + separator (+ slack) */
/* The whole webhook-signature value: 2 HMAC and WEBHOOK_ED25519_KEYS_MAX Ed25519 signatures. */
#define WEBHOOK_SIGNATURE_SIZE \
	(2 * WEBHOOK_SIG_SIZE + WEBHOOK_ED25519_KEYS_MAX * WEBHOOK_ED25519_SIG_SIZE + 8)

typedef struct evp_pkey_st EVP_PKEY;

/* Key bytes of a secret file's text: "whsec_" + base64, or the text itself; trailing CR/LF and
 * blanks are trimmed. *key_r is malloc'd (wipe before free). -1: empty or bad base64. */
int webhook_secret_decode(const char *text, unsigned char **key_r, size_t *key_len_r);

/* The webhook-id of a request for these recipients (order does not matter). */
int webhook_event_id(const char *sha256_hex, const char *const *rcpts, size_t count,
		     char id_r[WEBHOOK_ID_SIZE]);

/* An Ed25519 private key from a PEM file, read like every secret (secret.h: refused when group
 * or others may access it; the text wiped after parsing). -1 with "path: reason" in error_r
 * when unreadable or not an Ed25519 private key (an RSA or EC key is refused, not used). */
int webhook_ed25519_key_load(const char *path, EVP_PKEY **key_r, char *error_r,
			     size_t error_size);
void webhook_ed25519_key_free(EVP_PKEY **key);

/* HMAC-SHA256 over "id.timestamp." followed by the body, for up to two keys at once (0 keys
 * allowed when Ed25519 keys are added). */
struct webhook_signer;
struct webhook_signer *webhook_signer_new(const unsigned char *const *keys, const size_t *key_lens,
					  size_t key_count, const char *id, long long timestamp);
/* Also sign with these Ed25519 keys (borrowed: they must outlive the signer). Call before any
 * update. Ed25519 signs the whole content in one pass (no streaming interface exists for pure
 * Ed25519, and Standard Webhooks signs the content itself, not a digest), so from now on the
 * signer keeps a copy of what it is fed until finish. */
int webhook_signer_add_ed25519(struct webhook_signer *s, EVP_PKEY *const *keys, size_t count);
int webhook_signer_update(struct webhook_signer *s, const void *data, size_t len);
/* Feed the whole reader (rewound before and after). */
int webhook_signer_update_reader(struct webhook_signer *s, struct spool_reader *reader);
/* "v1,SIG1 v1,SIG2 v1a,SIG3" into out (WEBHOOK_SIGNATURE_SIZE fits all); frees the signer. */
int webhook_signer_finish(struct webhook_signer **s, char *out, size_t size);

/* A webhook-id for a request that is not a message delivery (the RCPT-time verification):
 * prefix ("vrf_") + hex SHA-256 of the body and the time, unique per request. */
int webhook_request_id(const char *prefix, const void *body, size_t len, long long timestamp,
		       char id_r[WEBHOOK_ID_SIZE]);

#endif
