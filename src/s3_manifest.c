/*
 * s3_manifest - the sidecar manifest of a stored object (see s3_manifest.h).
 */
#include "s3_manifest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "s3_fields.h"

/* This envelope's id into id and "<key>.manifests/<id>.json" into mkey (S3_KEY_MAX + 1
 * bytes), checked like an object key. 0, or -1 with *error_r. */
int s3_manifest_key(const struct delivery *d, const struct target *targets, size_t count,
		    const char *key, char *mkey, char id[MANIFEST_ENVELOPE_ID_SIZE],
		    const char **error_r)
{
	const char **addrs = malloc((count > 0 ? count : 1) * sizeof(*addrs));

	if (addrs == NULL) {
		*error_r = "out of memory";
		return -1;
	}
	for (size_t i = 0; i < count; i++)
		addrs[i] = targets[i].rcpt->rcpt;
	int r = manifest_envelope_id(d->sha256, d->sender, addrs, count, id);
	free(addrs);
	if (r < 0) {
		*error_r = "cannot compute the envelope id";
		return -1;
	}
	int n = snprintf(mkey, S3_KEY_MAX + 1, "%s.manifests/%s.json", key, id);
	if (n < 0 || n > S3_KEY_MAX) {
		*error_r = "manifest key (<key>.manifests/<64 hex>.json) longer than 1024 bytes";
		return -1;
	}
	return s3_key_check(mkey, error_r);
}

/* The manifest's JSON: the envelope, its id, and the object stored (or found) at key. */
static char *manifest_text(const struct s3_client *c, const struct delivery *d,
			   struct target *targets, size_t count, const char *key,
			   const char *envelope_id, uint64_t size, const char *obj_hash,
			   const struct s3_result *res, json_t *extra)
{
	json_t *m = manifest_build(d, targets, count);
	json_t *obj = json_object();

	if (m == NULL || obj == NULL) {
		json_decref(m);
		json_decref(obj);
		return NULL;
	}
	json_object_set_new(m, "envelope_id", json_string(envelope_id));
	json_object_set_new(obj, "bucket", json_string(c->bucket));
	json_object_set_new(obj, "key", json_string(key));
	if (res->existed) {
		/* An earlier transaction stored the object, with its own trace headers: size, hash
		 * and ETag of what this one would have stored describe no stored bytes. That
		 * transaction's manifest has them; the content digest ("sha256") is the same. */
		json_object_set_new(obj, "already_stored", json_true());
	} else {
		json_object_set_new(obj, "size", json_integer((json_int_t)size));
		json_object_set_new(obj, "sha256", json_string(obj_hash));
		if (res->etag[0])
			json_object_set_new(obj, "etag", json_string(res->etag));
		if (res->version[0])
			json_object_set_new(obj, "version_id", json_string(res->version));
	}
	json_object_set_new(m, "object", obj);
	if (extra != NULL)
		json_object_update(m, extra);
	char *text = json_dumps(m, JSON_INDENT(2));
	json_decref(m);
	return text;
}

int s3_put_manifest(struct s3_client *c, const struct delivery *d, struct target *targets,
		    size_t count, const char *key, const char *mkey, const char *envelope_id,
		    uint64_t size, const char *obj_hash, const struct s3_result *res,
		    json_t *extra, const struct sigv4_param *oh, size_t oh_count, struct status *st_r,
		    char *reason, size_t reason_size)
{
	char hash[SIGV4_HEX_SHA256_SIZE], b64[48];
	struct sigv4_param h[S3_HEADERS_MAX];
	struct http_response resp;
	size_t n = 0;
	char *text = manifest_text(c, d, targets, count, key, envelope_id, size, obj_hash, res,
				   extra);

	if (text == NULL) {
		status_must(st_r, 451, "4.3.0", "Local error in processing");
		snprintf(reason, reason_size, "cannot build the manifest");
		return -1;
	}
	size_t len = strlen(text);
	sigv4_sha256_hex(text, len, hash);
	s3_checksum_b64(hash, b64, sizeof(b64));
	/* The object's headers (its Object Lock retention and legal hold, encryption, storage
	 * class, tags, metadata): the record of who got the message is kept as long as the
	 * message. */
	for (size_t i = 0; i < oh_count && n < S3_HEADERS_MAX - 2; i++)
		h[n++] = oh[i];
	h[0] = (struct sigv4_param){ "Content-Type", "application/json" };
	h[n++] = (struct sigv4_param){ "x-amz-checksum-sha256", b64 };
	h[n++] = (struct sigv4_param){ "If-None-Match", "*" };
	struct s3_req r = { .method = "PUT", .key = mkey, .headers = h, .header_count = n,
			    .payload_hash = hash, .body = text, .body_len = len };
	int ret = s3_perform(c, &r, &resp, st_r, reason, reason_size);
	free(text);
	if (ret < 0)
		return -1;
	/* 412: this envelope's manifest is there (an earlier attempt of this transaction whose
	 * reply was lost, or the MTA's retry): the recipients are recorded, keep it. */
	int mapped = s3_check_answer(c, "PUT manifest", mkey, &resp, st_r, reason, reason_size);
	http_response_free(&resp);
	return mapped == 1 ? 0 : mapped;
}
