/*
 * s3 - archive capture: each message written once to an S3-compatible bucket (AWS S3, Ceph
 * RGW, MinIO, Garage, R2, ...), with the envelope of every transaction that delivered it as a
 * sidecar manifest "<key>.manifests/<envelope id>.json".
 *
 * Mode "message" stores one object for all of a transaction's recipients routed here (the
 * driver is a batch driver); mode "recipient" one object per recipient, with its own
 * Delivered-To when that is enabled. The object is the trace headers followed by the content
 * as received, streamed from the spool with a known Content-Length (never loaded whole), or
 * as a multipart upload above multipart_threshold (s3_multipart.h).
 *
 * Integrity: every request is signed with SigV4 over the real SHA-256 of its payload
 * (s3_client.h), and a PUT carries x-amz-checksum-sha256, so the store verifies the bytes it
 * keeps. The object's hash is computed in the worker in one streaming pass (trace + content
 * differ from the content the spool hashed while receiving).
 *
 * Write-once: PUT and CompleteMultipartUpload carry If-None-Match: *. A 412 for a key built from
 * %{sha256} means this content is already archived: the target is ok ("already stored"); for
 * any other key it is 451 4.3.0 with the reason in the log, never an overwrite. A retried
 * transaction therefore never creates a second object.
 *
 * Manifests: one per envelope, not one per object, write-once like the object
 * (s3_manifest.h).
 *
 * A target is ok only after S3 answered 200 to the object's PUT (or to Complete) or 412 for a
 * content-derived key, and, when manifests are on, 200 or 412 to the PUT of this envelope's
 * manifest; everything else is 4xx (design.md guarantees), except
 * EntityTooLarge (552 5.3.4). The reference in the log is the key, ETag and version id; S3's
 * error code and request id go to the log on failure.
 *
 * Credentials come from files (refused when others may read them) or the AWS_* environment
 * variables, are kept once, wiped at close, and never logged (s3_credentials.h). What S3's
 * answers mean: s3_answer.h; key and header checks: s3_fields.h.
 */
#include "backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "journal.h"
#include "log.h"
#include "manifest.h"
#include "s3_answer.h"
#include "s3_client.h"
#include "s3_credentials.h"
#include "s3_fields.h"
#include "s3_manifest.h"
#include "s3_multipart.h"
#include "sigv4.h"

struct s3_settings {
	char *endpoint;
	bool allow_http;
	char *region;
	char *bucket;
	int addressing;                /* enum s3_addressing */
	char *ca_file;
	char *access_key_file;
	char *secret_key_file;
	char *credentials_file;
	char *session_token_file;
	char *key;
	int mode;                      /* enum s3_mode */
	bool manifest;
	char *storage_class;
	int sse;                       /* enum s3_sse */
	char *sse_kms_key_id;
	int object_lock_mode;          /* enum s3_object_lock */
	long long retention_days;
	bool legal_hold;
	struct conf_strlist tags;
	long long multipart_threshold;
	long long part_size;
	long long timeout;
	long long connect_timeout;
	bool journal_reports;
	bool journal_keep_report;
};

enum s3_addressing { S3_ADDRESSING_PATH, S3_ADDRESSING_VIRTUAL };
enum s3_mode { S3_MODE_MESSAGE, S3_MODE_RECIPIENT };
enum s3_sse { S3_SSE_NONE, S3_SSE_AES256, S3_SSE_KMS };
enum s3_object_lock { S3_LOCK_NONE, S3_LOCK_GOVERNANCE, S3_LOCK_COMPLIANCE };

/* The allowed words of the enum keys, in the order of their C enums. sse and object_lock_mode
 * are optional: "none" (the default) sends no header. The other words are sent as written. */
static const char *const s3_addressing_words[] = { "path", "virtual", NULL };
static const char *const s3_mode_words[] = { "message", "recipient", NULL };
static const char *const s3_sse_words[] = { "none", "AES256", "aws:kms", NULL };
static const char *const s3_object_lock_words[] = { "none", "GOVERNANCE", "COMPLIANCE", NULL };

static const struct conf_key s3_keys[] = {
	{ "endpoint", CONF_STRING, offsetof(struct s3_settings, endpoint), NULL, 1, 0,
	  "S3 service URL: https://host[:port] (http:// only with allow_http)" },
	{ "allow_http", CONF_BOOL, offsetof(struct s3_settings, allow_http), "false", 1, 0,
	  "accept a plain http:// endpoint (tests, a store on loopback)" },
	{ "region", CONF_STRING, offsetof(struct s3_settings, region), "us-east-1", 1, 0,
	  "region in the SigV4 scope (\"us-east-1\" for most S3-compatible stores)" },
	{ "bucket", CONF_STRING, offsetof(struct s3_settings, bucket), NULL, 1, 0,
	  "bucket the objects are written to" },
	{ "addressing", CONF_ENUM, offsetof(struct s3_settings, addressing), "path", 0, 0,
	  "path (https://host/bucket/key) or virtual (https://bucket.host/key)",
	  s3_addressing_words },
	{ "ca_file", CONF_STRING, offsetof(struct s3_settings, ca_file), NULL, 1, 0,
	  "PEM file of CA certificates to verify the endpoint (default: the system store)" },
	{ "access_key_file", CONF_STRING, offsetof(struct s3_settings, access_key_file), NULL, 1, 0,
	  "file holding the access key id (first line); not readable by others" },
	{ "secret_key_file", CONF_STRING, offsetof(struct s3_settings, secret_key_file), NULL, 1, 0,
	  "file holding the secret access key (first line); not readable by others" },
	{ "credentials_file", CONF_STRING, offsetof(struct s3_settings, credentials_file), NULL, 1,
	  0, "instead of the two above: access key id on line 1, secret key on line 2" },
	{ "session_token_file", CONF_STRING, offsetof(struct s3_settings, session_token_file), NULL,
	  1, 0, "file holding a session token (temporary credentials), optional" },
	{ "key", CONF_STRING, offsetof(struct s3_settings, key), "%{sha256}.eml",
	  1, 0, "object key (template; values are percent-encoded)" },
	{ "mode", CONF_ENUM, offsetof(struct s3_settings, mode), "message", 0, 0,
	  "message (one object for all recipients) or recipient (one object each)",
	  s3_mode_words },
	{ "manifest", CONF_BOOL, offsetof(struct s3_settings, manifest), "true", 1, 0,
	  "store each transaction's envelope as JSON in <key>.manifests/<envelope id>.json" },
	{ "storage_class", CONF_STRING, offsetof(struct s3_settings, storage_class), NULL, 1, 0,
	  "x-amz-storage-class of the objects (e.g. STANDARD_IA, GLACIER_IR)" },
	{ "sse", CONF_ENUM, offsetof(struct s3_settings, sse), "none", 0, 0,
	  "server-side encryption: none (the bucket's default), AES256 or aws:kms", s3_sse_words },
	{ "sse_kms_key_id", CONF_STRING, offsetof(struct s3_settings, sse_kms_key_id), NULL, 1, 0,
	  "KMS key id or ARN for sse = aws:kms (default: the bucket's key)" },
	{ "object_lock_mode", CONF_ENUM, offsetof(struct s3_settings, object_lock_mode), "none", 0,
	  0, "Object Lock retention mode: none, GOVERNANCE or COMPLIANCE (needs retention_days)",
	  s3_object_lock_words },
	{ "retention_days", CONF_INT, offsetof(struct s3_settings, retention_days), "0", 0, 36500,
	  "Object Lock retain-until date: days after the message was received" },
	{ "legal_hold", CONF_BOOL, offsetof(struct s3_settings, legal_hold), "false", 1, 0,
	  "put an Object Lock legal hold on every object" },
	{ "tags", CONF_STRING_LIST, offsetof(struct s3_settings, tags), NULL, 1, 0,
	  "object tags as \"key=value\" strings (x-amz-tagging)" },
	{ "multipart_threshold", CONF_SIZE, offsetof(struct s3_settings, multipart_threshold),
	  "16M", 5 * 1024 * 1024, 5LL * 1024 * 1024 * 1024,
	  "objects larger than this are sent as a multipart upload" },
	{ "part_size", CONF_SIZE, offsetof(struct s3_settings, part_size), "8M", 5 * 1024 * 1024,
	  5LL * 1024 * 1024 * 1024, "size of a multipart part (5M at least; grown for 10000 parts)" },
	{ "timeout", CONF_DURATION, offsetof(struct s3_settings, timeout), "120s", 1000, 3600000,
	  "limit for one S3 request (a PUT or a part) from connect to answer" },
	{ "connect_timeout", CONF_DURATION, offsetof(struct s3_settings, connect_timeout), "10s",
	  100, 600000, "limit for connecting to the endpoint" },
	{ "journal_reports", CONF_BOOL, offsetof(struct s3_settings, journal_reports), "false", 1,
	  0, "Exchange / Microsoft 365 journal reports (X-MS-Journal-Report): store the journaled "
	  "message as the object and the report's envelope in its manifest" },
	{ "journal_keep_report", CONF_BOOL, offsetof(struct s3_settings, journal_keep_report),
	  "true", 1, 0, "with journal_reports: store the report itself too, as an object of its own" },
	{ NULL, 0, 0, NULL, 0, 0, NULL },
};

struct s3_state {
	char name[64];
	struct s3_settings set;
	bool per_recipient;
	bool key_has_sha256;
	char *tagging;               /* "k=v&k2=v2" encoded, or NULL */
	struct template *key_tmpl;
	struct s3_client client;     /* endpoint, credentials (wiped at close), HTTP client */
};

/* --- configuration ----------------------------------------------------------------------- */

static void s3_close(void *state);

static bool template_uses_recipient(const struct template *t)
{
	return template_uses(t, "rcpt") || template_uses(t, "local") || template_uses(t, "user") ||
	       template_uses(t, "detail") || template_uses(t, "domain");
}

/* The object key: a template whose recipient variables agree with the mode. */
static int check_key_template(struct s3_state *st, char *error_r, size_t error_size)
{
	const char *error;

	if (template_compile(st->set.key, &st->key_tmpl, &error) < 0) {
		snprintf(error_r, error_size, "key: %s", error);
		return -1;
	}
	st->key_has_sha256 = template_uses(st->key_tmpl, "sha256");
	if (!st->per_recipient && template_uses_recipient(st->key_tmpl)) {
		snprintf(error_r, error_size,
			 "key: mode message stores one object for all recipients; a recipient "
			 "variable (%%{rcpt}, %%{local}, ...) needs mode = \"recipient\"");
		return -1;
	}
	if (st->per_recipient && !template_uses(st->key_tmpl, "rcpt") &&
	    !(template_uses(st->key_tmpl, "local") && template_uses(st->key_tmpl, "domain")) &&
	    !(template_uses(st->key_tmpl, "user") && template_uses(st->key_tmpl, "domain"))) {
		snprintf(error_r, error_size,
			 "key: mode recipient needs %%{rcpt} (or %%{local} and %%{domain}) in the "
			 "key, or every recipient would get the same object");
		return -1;
	}
	return 0;
}

/* The options sent as object headers: encryption, Object Lock, storage class. */
static int check_object_options(const struct s3_settings *set, char *error_r, size_t error_size)
{
	if (set->sse_kms_key_id != NULL && set->sse != S3_SSE_KMS) {
		snprintf(error_r, error_size, "sse_kms_key_id needs sse = \"aws:kms\"");
		return -1;
	}
	if (set->object_lock_mode != S3_LOCK_NONE && set->retention_days <= 0) {
		snprintf(error_r, error_size, "object_lock_mode needs retention_days > 0");
		return -1;
	}
	if (set->object_lock_mode == S3_LOCK_NONE && set->retention_days > 0) {
		snprintf(error_r, error_size, "retention_days needs object_lock_mode");
		return -1;
	}
	if ((set->storage_class != NULL && !s3_token_ok(set->storage_class)) ||
	    (set->sse_kms_key_id != NULL && !s3_token_ok(set->sse_kms_key_id))) {
		snprintf(error_r, error_size,
			 "storage_class / sse_kms_key_id: no spaces or non-ASCII allowed");
		return -1;
	}
	return 0;
}

static int s3_open(const void *settings, const char *instance_name, void **state_r,
		   char *error_r, size_t error_size)
{
	const struct s3_settings *set = settings;
	struct s3_state *st = calloc(1, sizeof(*st));

	if (st == NULL) {
		snprintf(error_r, error_size, "out of memory");
		return -1;
	}
	st->set = *set;
	snprintf(st->name, sizeof(st->name), "%s", instance_name);
	st->client.name = st->name;
	st->client.bucket = set->bucket;
	st->client.region = set->region;
	if (set->endpoint == NULL || set->bucket == NULL) {
		snprintf(error_r, error_size, "s3 needs 'endpoint' and 'bucket'");
		goto fail;
	}
	if (!s3_bucket_name_ok(set->bucket)) {
		snprintf(error_r, error_size,
			 "bucket: 3 to 63 characters of a-z, 0-9, '-' and '.' (S3 naming rules)");
		goto fail;
	}
	st->client.virtual_host = set->addressing == S3_ADDRESSING_VIRTUAL;
	if (set->region[0] == '\0' || strpbrk(set->region, "/ \t") != NULL) {
		snprintf(error_r, error_size, "region: not a region name");
		goto fail;
	}
	if (s3_client_endpoint(&st->client, set->endpoint, set->allow_http, error_r,
			       error_size) < 0)
		goto fail;
	st->per_recipient = set->mode == S3_MODE_RECIPIENT;
	if (check_key_template(st, error_r, error_size) < 0 ||
	    check_object_options(set, error_r, error_size) < 0)
		goto fail;
	if (set->journal_reports &&
	    (st->per_recipient || !st->key_has_sha256 || !set->manifest)) {
		/* The journaled message gets its own content key (its digest, not the report's),
		 * and its envelope lives only in the manifest. */
		snprintf(error_r, error_size,
			 "journal_reports needs mode = \"message\", %%{sha256} in key and "
			 "manifest = true");
		goto fail;
	}
	if (s3_tagging(&set->tags, &st->tagging, error_r, error_size) < 0)
		goto fail;
	struct s3_credential_files files = {
		.credentials_file = set->credentials_file,
		.access_key_file = set->access_key_file,
		.secret_key_file = set->secret_key_file,
		.session_token_file = set->session_token_file,
	};
	if (s3_credentials_load(&files, &st->client.cred, error_r, error_size) < 0)
		goto fail;
	struct http_options opts = {
		.ca_file = set->ca_file,
		.connect_timeout_ms = (long)set->connect_timeout,
		.timeout_ms = (long)set->timeout,
		.allow_http = set->allow_http,
	};
	st->client.http = http_client_new(&opts, error_r, error_size);
	if (st->client.http == NULL)
		goto fail;
	*state_r = st;
	return 0;
fail:
	s3_close(st);
	return -1;
}

static void s3_close(void *state)
{
	struct s3_state *st = state;

	if (st == NULL)
		return;
	http_client_free(&st->client.http);
	template_free(&st->key_tmpl);
	s3_credentials_wipe(&st->client.cred);
	free(st->tagging);
	explicit_bzero(st, sizeof(*st));
	free(st);
}

/* --- storing ---------------------------------------------------------------------------- */

/* The headers every stored object gets (content type, metadata, Object Lock, encryption,
 * storage class, tags). sha256 and msgid describe the stored message (the delivery's, or the
 * journaled original's). Strings live in oh. Returns the count added to h. */
struct object_headers {
	char sender[300], count[24], session[100], sha256[72], retain[32], msgid[300];
};

static size_t add_object_headers(struct s3_state *st, const struct delivery *d, size_t rcpt_count,
				 const char *sha256, const char *msgid, const char *content_type,
				 struct object_headers *oh, struct sigv4_param *h)
{
	size_t n = 0;

	h[n++] = (struct sigv4_param){ "Content-Type", content_type };
	s3_meta_value(d->sender, 256, oh->sender, sizeof(oh->sender));
	snprintf(oh->count, sizeof(oh->count), "%zu", rcpt_count);
	s3_meta_value(d->session_id, 64, oh->session, sizeof(oh->session));
	s3_meta_value(sha256, 64, oh->sha256, sizeof(oh->sha256));
	h[n++] = (struct sigv4_param){ "x-amz-meta-sender", oh->sender };
	h[n++] = (struct sigv4_param){ "x-amz-meta-recipient-count", oh->count };
	h[n++] = (struct sigv4_param){ "x-amz-meta-session", oh->session };
	h[n++] = (struct sigv4_param){ "x-amz-meta-sha256", oh->sha256 };
	if (msgid != NULL && msgid[0] != '\0') {
		s3_meta_value(msgid, 256, oh->msgid, sizeof(oh->msgid));
		h[n++] = (struct sigv4_param){ "x-amz-meta-message-id", oh->msgid };
	}
	if (st->set.storage_class != NULL)
		h[n++] = (struct sigv4_param){ "x-amz-storage-class", st->set.storage_class };
	switch ((enum s3_sse)st->set.sse) {
	case S3_SSE_NONE:
		break;
	case S3_SSE_AES256:
		h[n++] = (struct sigv4_param){ "x-amz-server-side-encryption", "AES256" };
		break;
	case S3_SSE_KMS:
		h[n++] = (struct sigv4_param){ "x-amz-server-side-encryption", "aws:kms" };
		if (st->set.sse_kms_key_id != NULL)
			h[n++] = (struct sigv4_param){ "x-amz-server-side-encryption-aws-kms-key-id",
						       st->set.sse_kms_key_id };
		break;
	}
	if (st->set.object_lock_mode != S3_LOCK_NONE) {
		/* Retain-until counts from the time the message was received, so a retry asks
		 * for the same date. */
		manifest_time(d->received + (time_t)st->set.retention_days * 86400, oh->retain,
			      sizeof(oh->retain));
		h[n++] = (struct sigv4_param){ "x-amz-object-lock-mode",
					       s3_object_lock_words[st->set.object_lock_mode] };
		h[n++] = (struct sigv4_param){ "x-amz-object-lock-retain-until-date", oh->retain };
	}
	if (st->set.legal_hold)
		h[n++] = (struct sigv4_param){ "x-amz-object-lock-legal-hold", "ON" };
	if (st->tagging != NULL)
		h[n++] = (struct sigv4_param){ "x-amz-tagging", st->tagging };
	return n;
}

/* One PUT of the object (length bytes of the reader from offset). 0 stored, 1 exists (412),
 * -1 failed. */
static int put_single(struct s3_state *st, const char *key, struct spool_reader *reader,
		      uint64_t offset, uint64_t length, const char *hash_hex,
		      const char *checksum_b64, struct sigv4_param *oh, size_t oh_count,
		      struct s3_result *res, struct status *st_r, char *reason, size_t reason_size)
{
	struct sigv4_param h[S3_HEADERS_MAX];
	size_t n = 0;
	struct http_response resp;

	for (size_t i = 0; i < oh_count && n < S3_HEADERS_MAX - 2; i++)
		h[n++] = oh[i];
	h[n++] = (struct sigv4_param){ "x-amz-checksum-sha256", checksum_b64 };
	h[n++] = (struct sigv4_param){ "If-None-Match", "*" };
	struct s3_req r = { .method = "PUT", .key = key, .headers = h, .header_count = n,
			    .payload_hash = hash_hex, .reader = reader, .offset = offset,
			    .length = length };
	if (s3_perform(&st->client, &r, &resp, st_r, reason, reason_size) < 0)
		return -1;
	int m = s3_check_answer(&st->client, "PUT", key, &resp, st_r, reason, reason_size);
	if (m == 0) {
		s3_copy_etag(&resp, res->etag, sizeof(res->etag));
		s3_copy_header(&resp, "x-amz-version-id", res->version, sizeof(res->version));
	}
	http_response_free(&resp);
	return m;
}

/* The same failure for every target of this object: one request, one event for the breaker. */
static void fail_all(struct target *targets, size_t count, const struct status *st,
		     const char *key, const char *reason)
{
	char ref[sizeof(targets[0].ref)];

	snprintf(ref, sizeof(ref), "%s key=%s", reason, key);
	backend_fail_targets(targets, count, st, ref);
}

/* What one object is made of: a window of "prefix + content" (the whole of it when length is
 * 0), the digest and Message-ID of the message it holds, and what the manifest adds to the
 * envelope (a "journal" object, or NULL). */
struct object_source {
	const char *prefix;
	size_t prefix_len;
	uint64_t offset, length;
	const char *sha256;
	const char *msgid;
	json_t *extra;
};

/* Store one object at key from src and this envelope's manifest beside it. 0 stored (or found
 * stored: res->existed), -1 failed (*status, reason). */
static int store_at(struct s3_state *st, const struct delivery *d, struct target *targets,
		    size_t count, const char *key, const struct object_source *src,
		    struct s3_result *res, struct status *status, char *reason, size_t reason_size)
{
	char mkey[S3_KEY_MAX + 1], envelope_id[MANIFEST_ENVELOPE_ID_SIZE];
	char obj_hash[SIGV4_HEX_SHA256_SIZE], b64[48];
	const char *error;
	struct object_headers ohb;
	struct sigv4_param oh[S3_HEADERS_MAX];

	/* The manifest's key before anything is stored: one that cannot be built must not leave
	 * an object without its envelope. */
	if (st->set.manifest &&
	    s3_manifest_key(d, targets, count, key, mkey, envelope_id, &error) < 0) {
		status_must(status, 451, "4.3.0", "Cannot build the archive key");
		snprintf(reason, reason_size, "manifest key: %s", error);
		return -1;
	}
	struct spool_reader reader;
	spool_reader_init(&reader, d->spool, src->prefix, src->prefix_len);
	uint64_t total = src->length > 0 ? src->length : spool_reader_total(&reader);
	size_t nh = add_object_headers(st, d, count, src->sha256, src->msgid, "message/rfc822",
				       &ohb, oh);
	int r;
	if (s3_hash_window(&reader, src->offset, total, obj_hash) < 0 ||
	    s3_checksum_b64(obj_hash, b64, sizeof(b64)) < 0) {
		status_must(status, 451, "4.3.0", "Local error reading the message");
		snprintf(reason, reason_size, "spool read failed");
		r = -1;
	} else if (total > (uint64_t)st->set.multipart_threshold) {
		r = s3_put_multipart(&st->client, key, &reader, src->offset, total,
				     (uint64_t)st->set.part_size, oh, nh, res, status, reason,
				     reason_size);
	} else {
		r = put_single(st, key, &reader, src->offset, src->length, obj_hash, b64, oh, nh,
			       res, status, reason, reason_size);
	}
	if (r == 1) {
		if (st->key_has_sha256) {
			/* Same content under a content-derived key: already archived. */
			res->existed = true;
			r = 0;
		} else {
			char esc_key[LOG_ESC_SIZE];
			log_warn("backend=%s event=s3_key_exists key=%s reason=\"the key does not "
				 "derive from the content (no %%{sha256}), so an existing object "
				 "may be another message; not overwritten\"",
				 st->name, log_esc(esc_key, key));
			status_must(status, 451, "4.3.0", "Archive key already in use");
			r = -1;
		}
	}
	if (r == 0 && st->set.manifest)
		r = s3_put_manifest(&st->client, d, targets, count, key, mkey, envelope_id, total,
				    obj_hash, res, src->extra, oh, nh, status, reason,
				    reason_size);
	return r < 0 ? -1 : 0;
}

/* Every target ok: stored at key (res). */
static void succeed_all(struct s3_state *st, struct target *targets, size_t count,
			const char *key, const struct s3_result *res, const char *note)
{
	for (size_t i = 0; i < count; i++) {
		struct target *t = &targets[i];
		if (res->existed)
			status_must(&t->status, 250, "2.0.0", "already stored (%s)", st->name);
		else
			status_must(&t->status, 250, "2.0.0", "stored (%s etag %.40s)", st->name,
				    res->etag[0] ? res->etag : "-");
		snprintf(t->ref, sizeof(t->ref), "key=%s etag=%s%s%s%s%s", key,
			 res->etag[0] ? res->etag : "-", res->version[0] ? " version=" : "",
			 res->version, res->existed ? " already-stored" : "", note);
	}
}

/* The key of a message from the key template, with the digest and Message-ID of what is
 * stored (the delivery's, or the journaled original's). 0, or -1 with reason. */
static int object_key(struct s3_state *st, const struct target *target, const char *sha256,
		      const char *msgid, char key[S3_KEY_MAX + 1], char *reason,
		      size_t reason_size)
{
	struct template_vars vars = target->vars;
	const char *error;

	vars.sha256 = sha256;
	vars.msgid = msgid;
	if (template_expand(st->key_tmpl, &vars, TEMPLATE_URL, key, S3_KEY_MAX + 1, &error) < 0 ||
	    s3_key_check(key, &error) < 0) {
		snprintf(reason, reason_size, "key: %s", error);
		return -1;
	}
	return 0;
}

/* Store one object for targets[0..count) (all recipients in message mode, one otherwise), as
 * received: the trace headers (with Delivered-To in recipient mode) + content. extra: what
 * the manifest adds (a journal report that could not be parsed says so), or NULL. */
static void store_object(struct s3_state *st, const struct delivery *d, struct target *targets,
			 size_t count, json_t *extra)
{
	char key[S3_KEY_MAX + 1], reason[400];
	struct status status;
	struct s3_result res = { "", "", false };

	if (object_key(st, &targets[0], targets[0].vars.sha256, targets[0].vars.msgid, key,
		       reason, sizeof(reason)) < 0) {
		status_must(&status, 451, "4.3.0", "Cannot build the archive key");
		fail_all(targets, count, &status, "-", reason);
		return;
	}
	char small[2048], *prefix = small;
	size_t prefix_len;
	if (st->per_recipient) {
		prefix_len = delivery_prefix(d, &targets[0], small, sizeof(small));
		if (prefix_len >= sizeof(small)) {
			prefix = malloc(prefix_len + 1);
			if (prefix == NULL) {
				status_must(&status, 451, "4.3.0", "Local error in processing");
				fail_all(targets, count, &status, key, "out of memory");
				return;
			}
			delivery_prefix(d, &targets[0], prefix, prefix_len + 1);
		}
	} else {
		prefix = (char *)d->trace;
		prefix_len = d->trace_len;
	}
	struct object_source src = { .prefix = prefix, .prefix_len = prefix_len,
				     .sha256 = d->sha256, .msgid = d->msgid, .extra = extra };
	int r = store_at(st, d, targets, count, key, &src, &res, &status, reason, sizeof(reason));
	if (prefix != small && prefix != d->trace)
		free(prefix);
	if (r < 0) {
		fail_all(targets, count, &status, key, reason);
		return;
	}
	succeed_all(st, targets, count, key, &res, "");
}

/* A journal report stored as it came: the manifest says why it was not taken apart. */
static void store_unparsed_report(struct s3_state *st, const struct delivery *d,
				  struct target *targets, size_t count, const char *why)
{
	char esc[LOG_ESC_SIZE];
	json_t *extra = json_pack("{s:{s:b,s:s}}", "journal", "parsed", 0, "error", why);

	log_warn("backend=%s event=journal_report_unparsable session=%s reason=\"%s\" "
		 "action=stored_as_received",
		 st->name, d->session_id, log_esc(esc, why));
	store_object(st, d, targets, count, extra);
	json_decref(extra);
}

/* A journal report (X-MS-Journal-Report, journal.h): the journaled original, byte-exact,
 * under its own content key, with the report's envelope in this transaction's manifest; the
 * report itself too when journal_keep_report. Returns false when the message is not a report
 * (the caller stores it as usual). */
static bool store_journal_report(struct s3_state *st, const struct delivery *d,
				 struct target *targets, size_t count)
{
	const void *data;
	size_t len;
	const char *error;
	struct journal_report jr;

	/* The spool mapped (a file is mapped, not read into memory): the parser touches the
	 * header blocks and the envelope part, and memmem skips over the attachment. */
	if (spool_map(d->spool, &data, &len) < 0) {
		store_unparsed_report(st, d, targets, count, "cannot map the spool");
		return true;
	}
	if (!journal_is_report(data, len))
		return false;
	if (journal_parse(data, len, &jr, &error) < 0) {
		store_unparsed_report(st, d, targets, count, error);
		return true;
	}

	char orig_hash[SIGV4_HEX_SHA256_SIZE], msgid[JOURNAL_VALUE_MAX + 1];
	char key[S3_KEY_MAX + 1], report_key[S3_KEY_MAX + 1], reason[400];
	struct status status;
	struct s3_result res = { "", "", false }, rres = { "", "", false };
	struct spool_reader reader;
	json_t *extra = NULL, *journal = NULL;
	int r = -1;

	journal_message_id_bare(&jr, msgid, sizeof(msgid));
	spool_reader_init(&reader, d->spool, "", 0);
	if (s3_hash_window(&reader, jr.original_offset, jr.original_length, orig_hash) < 0) {
		status_must(&status, 451, "4.3.0", "Local error reading the message");
		snprintf(reason, sizeof(reason), "spool read failed");
		snprintf(key, sizeof(key), "-");
		goto done;
	}
	if (object_key(st, &targets[0], orig_hash, msgid, key, reason, sizeof(reason)) < 0 ||
	    (st->set.journal_keep_report &&
	     object_key(st, &targets[0], d->sha256, d->msgid, report_key, reason,
			sizeof(reason)) < 0)) {
		status_must(&status, 451, "4.3.0", "Cannot build the archive key");
		snprintf(key, sizeof(key), "-");
		goto done;
	}
	journal = journal_json(&jr);
	extra = json_object();
	if (journal == NULL || extra == NULL) {
		status_must(&status, 451, "4.3.0", "Local error in processing");
		snprintf(reason, sizeof(reason), "out of memory");
		goto done;
	}
	json_object_set_new(journal, "parsed", json_true());
	json_object_set_new(journal, "original_key", json_string(key));
	json_object_set_new(journal, "original_sha256", json_string(orig_hash));
	json_object_set_new(journal, "original_size", json_integer((json_int_t)jr.original_length));
	json_object_set_new(journal, "report_sha256", json_string(d->sha256));
	if (st->set.journal_keep_report)
		json_object_set_new(journal, "report_key", json_string(report_key));
	json_object_set(extra, "journal", journal);

	/* The original as it was attached: no trace headers of ours (they describe the
	 * report's delivery, which the manifest records). */
	struct object_source orig = { .prefix = "", .prefix_len = 0,
				      .offset = jr.original_offset,
				      .length = jr.original_length, .sha256 = orig_hash,
				      .msgid = msgid, .extra = extra };
	r = store_at(st, d, targets, count, key, &orig, &res, &status, reason, sizeof(reason));
	if (r == 0 && st->set.journal_keep_report) {
		struct object_source rep = { .prefix = d->trace, .prefix_len = d->trace_len,
					     .sha256 = d->sha256, .msgid = d->msgid,
					     .extra = extra };
		r = store_at(st, d, targets, count, report_key, &rep, &rres, &status, reason,
			     sizeof(reason));
		if (r < 0)
			snprintf(key, sizeof(key), "%s", report_key);
	}
done:
	if (r < 0)
		fail_all(targets, count, &status, key, reason);
	else
		succeed_all(st, targets, count, key, &res, " journal-report");
	json_decref(journal);
	json_decref(extra);
	journal_report_free(&jr);
	return true;
}

static void s3_deliver(void *state, const struct delivery *delivery, struct target *targets,
		       size_t count)
{
	struct s3_state *st = state;

	if (count == 0)
		return;
	if (st->per_recipient) {
		for (size_t i = 0; i < count; i++)
			store_object(st, delivery, &targets[i], 1, NULL);
	} else if (!st->set.journal_reports ||
		   !store_journal_report(st, delivery, targets, count)) {
		store_object(st, delivery, targets, count, NULL);
	}
}

static void s3_explain(void *state, const struct recipient *rcpt,
		       const struct template_vars *vars, char *buf, size_t size)
{
	struct s3_state *st = state;
	char key[S3_KEY_MAX + 1];
	const char *error;

	if (template_expand(st->key_tmpl, vars, TEMPLATE_URL, key, sizeof(key), &error) < 0)
		snprintf(buf, size, "key: %s", error);
	else
		snprintf(buf, size, "s3://%s/%s (%s mode%s)", st->set.bucket, key,
			 st->per_recipient ? "recipient" : "message",
			 st->set.manifest ? ", manifests under <key>.manifests/" : "");
}

/* HEAD the bucket, signed: proves the endpoint, TLS, the credentials and the bucket. */
static int s3_probe(void *state, char *result, size_t size)
{
	struct s3_state *st = state;
	struct s3_req r = { .method = "HEAD", .payload_hash = SIGV4_EMPTY_SHA256 };
	struct http_response resp;
	struct status status;
	char reason[400];

	if (s3_perform(&st->client, &r, &resp, &status, reason, sizeof(reason)) < 0) {
		snprintf(result, size, "%d %s: %s", status.code, status.enhanced, reason);
		return -1;
	}
	long code = resp.status;
	http_response_free(&resp);
	if (code < 200 || code > 299) {
		/* HEAD has no body: the status alone says which (403 credentials, 404 bucket). */
		s3_map_status(code, "", &status);
		snprintf(result, size, "bucket %s: HTTP %ld -> %d %s %s", st->set.bucket, code,
			 status.code, status.enhanced, status.text);
		return -1;
	}
	snprintf(result, size, "bucket %s at %s reachable, credentials accepted", st->set.bucket,
		 st->client.base_url);
	return 0;
}

const struct s3_client *s3_backend_client(const void *state)
{
	return &((const struct s3_state *)state)->client;
}

const struct backend_driver backend_s3 = {
	.name = "s3",
	.keys = s3_keys,
	.settings_size = sizeof(struct s3_settings),
	.open = s3_open,
	.deliver = s3_deliver,
	.close = s3_close,
	.probe = s3_probe,
	.explain = s3_explain,
	.batch = true,
};
