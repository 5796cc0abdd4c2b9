/*
 * webhook_body - the body of one webhook request, by format:
 *   raw          the message (trace headers + content) as message/rfc822, envelope in
 *                X-Lmtpgw-* headers; streamed from the spool with a known length
 *   multipart    multipart/form-data: part "envelope" (JSON, manifest.h) + part "message"
 *                (message/rfc822 file); streamed as head + spool + tail
 *   json         {"envelope": {...}, "message": "BASE64"}          (built in memory)
 *   json-parsed  {"envelope": {...}, "headers": [...], "subject": ..., "text": ..., "html": ...,
 *                 "attachments": [...], "message": "BASE64"}       (built in memory, mime_json.h)
 * The message carries the trace headers: with one recipient its own (Delivered-To when
 * configured, delivery_prefix()); a request for several carries the shared trace only.
 *
 * Owns its buffers; a streamed body's reader points into the struct itself, so a built body
 * stays where it was built until webhook_body_free(). Nothing here logs: a failure comes back
 * as a short reason (for the target's log reference) and, for a message that does not parse
 * as MIME, the parser's detail.
 */
#ifndef LMTPGW_WEBHOOK_BODY_H
#define LMTPGW_WEBHOOK_BODY_H

#include <stdbool.h>
#include <stddef.h>

#include "backend.h"
#include "spool.h"

/* In the order of the driver's `format` words (CONF_ENUM). */
enum webhook_format {
	WEBHOOK_FORMAT_RAW,
	WEBHOOK_FORMAT_JSON,
	WEBHOOK_FORMAT_JSON_PARSED,
	WEBHOOK_FORMAT_MULTIPART,
};

struct webhook_body {
	bool streamed;                 /* true: read it from reader; false: data, len */
	struct spool_reader reader;    /* raw, multipart: prefix/head + spool (+ tail) */
	char *data;                    /* json, json-parsed: the whole body */
	size_t len;
	char content_type[128];        /* the Content-Type header value */
	char prefix[2048];             /* the trace headers */
	size_t prefix_len;
	char *head, *tail;             /* multipart framing around the message */
};

/* Build the body of a request for targets[0..n) (pointers into the delivery's targets). id is
 * the request's webhook-id (the multipart boundary derives from it). 0, or -1 with *error_r a
 * short static reason and, when the message did not parse as MIME (json-parsed), the
 * parser's detail in mime_error_r (otherwise ""). body_r is freed on failure too. */
int webhook_body_build(enum webhook_format format, const struct delivery *d,
		       struct target *const *targets, size_t n, const char *id,
		       size_t attachment_max, struct webhook_body *body_r, const char **error_r,
		       char *mime_error_r, size_t mime_error_size);

/* Free what webhook_body_build() allocated (also fine on a zeroed or failed body). */
void webhook_body_free(struct webhook_body *body);

#endif
