/*
 * manifest - the envelope of a delivery as JSON (jansson): what the S3 archive stores next to
 * each object and what the webhook sends. One builder, so both describe a message the same way.
 *
 * {
 *   "version": 1, "session": "...", "transaction": "...", "queue_id": "...",
 *   "received": "2026-11-25T07:00:00Z", "size": 1234, "sha256": "hex", "message_id": "...",
 *   "client": { "lhlo": "mx.example", "address": "127.0.0.1", "tls": false,
 *               "xforward": { "name": "...", "address": "..." } },
 *   "mail_from": { "address": "a@b", "size": 123, "body": "8BITMIME", "smtputf8": false,
 *                  "ret": "HDRS", "envid": "..." },
 *   "recipients": [ { "address": "x@y", "orcpt": "rfc822;x@y", "notify": ["FAILURE"] }, ... ],
 *   "targets": [ "x@y", ... ]          (the recipients this delivery is for)
 * }
 * Absent optional values are omitted, not null. "recipients" is every accepted recipient of
 * the transaction (Bcc included); "targets" the ones routed to the backend building it.
 *
 * The envelope id names one envelope of one content: the S3 driver stores each transaction's
 * manifest under "<key>.manifests/<envelope id>.json", so a later transaction with the same
 * content adds its own manifest and a retry of the same envelope finds its manifest there.
 */
#ifndef LMTPGW_MANIFEST_H
#define LMTPGW_MANIFEST_H

#include <jansson.h>

#include "backend.h"

/* A new JSON object (caller json_decref()s it), or NULL on allocation failure. size is the
 * stored size (trace headers included) or 0 for the content size. */
json_t *manifest_build(const struct delivery *delivery, const struct target *targets,
		       size_t target_count);

#define MANIFEST_ENVELOPE_ID_SIZE 65  /* 64 hex digits + NUL */

/* The envelope id: hex SHA-256 over the content's digest, the sender and the SET of
 * recipients (sorted, duplicates once), each field length-prefixed so no two envelopes
 * encode alike:
 *   "lmtpgw-envelope-v1\n" "content " LEN ":" SHA256 "\n" "sender " LEN ":" SENDER "\n"
 *   then for each recipient in strcmp order: "rcpt " LEN ":" ADDRESS "\n"
 * The order of RCPT commands, the time, the session and the parameters do not count, so a
 * retry of the same transaction gets the same id. 0, or -1 on allocation failure. */
int manifest_envelope_id(const char *content_sha256, const char *sender,
			 const char *const *rcpts, size_t count,
			 char id_r[MANIFEST_ENVELOPE_ID_SIZE]);

/* RFC 3339 UTC time "2026-11-25T07:00:00Z" into buf (>= 21 bytes). */
void manifest_time(time_t t, char *buf, size_t size);

#endif
