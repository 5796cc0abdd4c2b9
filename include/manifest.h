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
 */
#ifndef LMTPGW_MANIFEST_H
#define LMTPGW_MANIFEST_H

#include <jansson.h>

#include "backend.h"

/* A new JSON object (caller json_decref()s it), or NULL on allocation failure. size is the
 * stored size (trace headers included) or 0 for the content size. */
json_t *manifest_build(const struct delivery *delivery, const struct target *targets,
		       size_t target_count);

/* RFC 3339 UTC time "2026-11-25T07:00:00Z" into buf (>= 21 bytes). */
void manifest_time(time_t t, char *buf, size_t size);

#endif
