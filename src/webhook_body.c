/*
 * webhook_body - the body of one webhook request by format (see webhook_body.h).
 */
#include "webhook_body.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base64.h"
#include "manifest.h"
#include "mime_json.h"
#include "webhook_sign.h"

/* A growable string for the in-memory formats and the multipart framing; one failed
 * allocation marks it failed and later additions do nothing. */
struct buf {
	char *data;
	size_t len, cap;
	bool failed;
};

static void buf_reserve(struct buf *b, size_t more)
{
	if (b->failed || b->len + more + 1 <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 1024;
	while (cap < b->len + more + 1)
		cap *= 2;
	char *n = realloc(b->data, cap);
	if (n == NULL) {
		b->failed = true;
		return;
	}
	b->data = n;
	b->cap = cap;
}

static void buf_add(struct buf *b, const void *data, size_t len)
{
	buf_reserve(b, len);
	if (b->failed)
		return;
	memcpy(b->data + b->len, data, len);
	b->len += len;
	b->data[b->len] = '\0';
}

static void buf_str(struct buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

static void buf_base64(struct buf *b, const void *data, size_t len)
{
	buf_reserve(b, base64_encoded_size(len));
	if (b->failed)
		return;
	b->len += base64_encode(data, len, b->data + b->len);
}

/* The buffer's string, or NULL (and the buffer freed) when an allocation failed. */
static char *buf_take(struct buf *b)
{
	if (b->failed) {
		free(b->data);
		return NULL;
	}
	return b->data;
}

/* The trace headers: with one recipient, its own (Delivered-To when configured); a request
 * for several carries the shared trace only. */
static void trace_prefix(const struct delivery *d, struct target *const *targets, size_t n,
			 struct webhook_body *b)
{
	if (n == 1)
		b->prefix_len = delivery_prefix(d, targets[0], b->prefix, sizeof(b->prefix));
	else
		b->prefix_len = (size_t)snprintf(b->prefix, sizeof(b->prefix), "%.*s",
						 (int)d->trace_len, d->trace);
	if (b->prefix_len >= sizeof(b->prefix))
		b->prefix_len = sizeof(b->prefix) - 1;
}

/* "event_ids": {"rcpt": "msg_..."}: each recipient's own event id, the webhook-id a request
 * for that recipient alone carries (webhook_event_id over the content digest and the one
 * address). A request covers a set of recipients and its webhook-id changes with the set: when
 * the MTA retries only the recipients that were deferred, the receiver still recognises each
 * recipient's event by this id (issue 16). */
static int add_event_ids(json_t *env, const struct delivery *d, struct target *const *targets,
			 size_t n)
{
	json_t *ids = json_object();

	if (ids == NULL)
		return -1;
	for (size_t i = 0; i < n; i++) {
		const char *rcpt = targets[i]->rcpt->rcpt;
		char id[WEBHOOK_ID_SIZE];
		if (webhook_event_id(d->sha256, &rcpt, 1, id) < 0) {
			json_decref(ids);
			return -1;
		}
		/* An address jansson refuses as a key (never, once the parser validated it) is
		 * left out rather than failing the request. */
		json_object_set_new(ids, rcpt, json_string(id));
	}
	return json_object_set_new(env, "event_ids", ids);
}

/* The envelope as compact JSON (manifest.h) with the recipients' event ids, or NULL. */
static char *envelope_text(const struct delivery *d, struct target *const *targets, size_t n)
{
	struct target *copy = calloc(n, sizeof(*copy));
	char *text = NULL;

	if (copy == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++)
		copy[i] = *targets[i];
	json_t *env = manifest_build(d, copy, n);
	if (env != NULL && add_event_ids(env, d, targets, n) == 0)
		text = json_dumps(env, JSON_COMPACT);
	json_decref(env);
	free(copy);
	return text;
}

static void build_raw(struct webhook_body *b, const struct delivery *d)
{
	snprintf(b->content_type, sizeof(b->content_type), "message/rfc822");
	spool_reader_init(&b->reader, d->spool, b->prefix, b->prefix_len);
	b->streamed = true;
}

/* head: the envelope part and the message part's headers (and the trace); the spool; tail:
 * the closing boundary. */
static int build_multipart(struct webhook_body *b, const struct delivery *d, const char *id,
			   const char *env_text)
{
	struct buf head = { 0 }, tail = { 0 };
	char boundary[64];

	snprintf(boundary, sizeof(boundary), "lmtpgw-%.40s", id + 4);
	buf_str(&head, "--");
	buf_str(&head, boundary);
	buf_str(&head, "\r\nContent-Disposition: form-data; name=\"envelope\"\r\n"
		       "Content-Type: application/json\r\n\r\n");
	buf_str(&head, env_text);
	buf_str(&head, "\r\n--");
	buf_str(&head, boundary);
	buf_str(&head, "\r\nContent-Disposition: form-data; name=\"message\"; "
		       "filename=\"message.eml\"\r\nContent-Type: message/rfc822\r\n\r\n");
	buf_add(&head, b->prefix, b->prefix_len);
	buf_str(&tail, "\r\n--");
	buf_str(&tail, boundary);
	buf_str(&tail, "--\r\n");
	b->head = buf_take(&head);
	b->tail = buf_take(&tail);
	if (b->head == NULL || b->tail == NULL)
		return -1;
	snprintf(b->content_type, sizeof(b->content_type), "multipart/form-data; boundary=%s",
		 boundary);
	spool_reader_init(&b->reader, d->spool, b->head, head.len);
	spool_reader_set_suffix(&b->reader, b->tail, tail.len);
	b->streamed = true;
	return 0;
}

/* The JSON text of an object, without its closing brace, for splicing. */
static char *json_open_text(json_t *obj)
{
	char *text = json_dumps(obj, JSON_COMPACT);

	if (text == NULL)
		return NULL;
	size_t len = strlen(text);
	if (len < 2 || text[len - 1] != '}') {
		free(text);
		return NULL;
	}
	text[len - 1] = '\0';
	return text;
}

/* The parsed message's members (",\"headers\":...,\"attachments\":[...]") onto body. */
static int add_parsed(struct buf *body, const struct spool_view *view, size_t attachment_max,
		      char *mime_error_r, size_t mime_error_size)
{
	char *parsed_text = NULL;
	json_t *parsed = mime_json_parse(view->data, view->len, attachment_max, mime_error_r,
					 mime_error_size);

	if (parsed == NULL || (parsed_text = json_open_text(parsed)) == NULL) {
		json_decref(parsed);
		return -1;
	}
	json_decref(parsed);
	if (parsed_text[1] != '\0') {
		buf_str(body, ",");
		buf_str(body, parsed_text + 1); /* without its '{' */
	}
	free(parsed_text);
	return 0;
}

static int build_json(struct webhook_body *b, enum webhook_format format,
		      const struct delivery *d, const char *env_text, size_t attachment_max,
		      const char **error_r, char *mime_error_r, size_t mime_error_size)
{
	struct spool_view view = { 0 };
	struct buf body = { 0 };

	if (spool_view_prefixed(d->spool, b->prefix, b->prefix_len, &view) < 0) {
		*error_r = "spool map failed";
		return -1;
	}
	buf_str(&body, "{\"envelope\":");
	buf_str(&body, env_text);
	if (format == WEBHOOK_FORMAT_JSON_PARSED &&
	    add_parsed(&body, &view, attachment_max, mime_error_r, mime_error_size) < 0) {
		if (mime_error_r[0] == '\0')
			snprintf(mime_error_r, mime_error_size, "no JSON from the MIME parser");
		*error_r = "MIME parse failed";
		spool_view_release(&view);
		free(body.data);
		return -1;
	}
	buf_str(&body, ",\"message\":\"");
	buf_base64(&body, view.data, view.len);
	buf_str(&body, "\"}");
	/* the base64 copy is made: the mapping is no longer needed */
	spool_view_release(&view);
	b->len = body.len;
	b->data = buf_take(&body);
	if (b->data == NULL) {
		*error_r = "out of memory";
		return -1;
	}
	snprintf(b->content_type, sizeof(b->content_type), "application/json");
	return 0;
}

int webhook_body_build(enum webhook_format format, const struct delivery *d,
		       struct target *const *targets, size_t n, const char *id,
		       size_t attachment_max, struct webhook_body *b, const char **error_r,
		       char *mime_error_r, size_t mime_error_size)
{
	char *env_text = NULL;
	int r = 0;

	memset(b, 0, sizeof(*b));
	mime_error_r[0] = '\0';
	trace_prefix(d, targets, n, b);
	if (format != WEBHOOK_FORMAT_RAW && (env_text = envelope_text(d, targets, n)) == NULL) {
		*error_r = "envelope failed";
		return -1;
	}
	switch (format) {
	case WEBHOOK_FORMAT_RAW:
		build_raw(b, d);
		break;
	case WEBHOOK_FORMAT_MULTIPART:
		r = build_multipart(b, d, id, env_text);
		if (r < 0)
			*error_r = "out of memory";
		break;
	case WEBHOOK_FORMAT_JSON:
	case WEBHOOK_FORMAT_JSON_PARSED:
		r = build_json(b, format, d, env_text, attachment_max, error_r, mime_error_r,
			       mime_error_size);
		break;
	}
	free(env_text);
	if (r < 0)
		webhook_body_free(b);
	return r;
}

void webhook_body_free(struct webhook_body *b)
{
	free(b->data);
	free(b->head);
	free(b->tail);
	b->data = b->head = b->tail = NULL;
}
