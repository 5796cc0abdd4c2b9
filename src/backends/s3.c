/*
 * s3 - archive capture: each message written once to an S3-compatible bucket (AWS S3, Ceph
 * RGW, MinIO, Garage, R2, ...), with the envelope of every transaction that delivered it as a
 * sidecar manifest "<key>.manifests/<envelope id>.json".
 *
 * Mode "message" stores one object for all of a transaction's recipients routed here (the
 * driver is a batch driver); mode "recipient" one object per recipient, with its own
 * Delivered-To when that is enabled. The object is the trace headers followed by the content
 * as received, streamed from the spool with a known Content-Length (never loaded whole), or
 * as a multipart upload above multipart_threshold (parts streamed from windows of the spool,
 * the upload aborted on any failure).
 *
 * Integrity: every request is signed with SigV4 (src/sigv4.c) over the real SHA-256 of its
 * payload, and a PUT carries x-amz-checksum-sha256, so the store verifies the bytes it keeps
 * (parts likewise, with the algorithm declared at CreateMultipartUpload). The object's hash is
 * computed in the worker in one streaming pass (trace + content differ from the content the
 * spool hashed while receiving).
 *
 * Write-once: PUT and CompleteMultipartUpload carry If-None-Match: *. A 412 for a key built from
 * %{sha256} means this content is already archived: the target is ok ("already stored"); for
 * any other key it is 451 4.3.0 with the reason in the log, never an overwrite. A retried
 * transaction therefore never creates a second object.
 *
 * Manifests: one per envelope, not one per object. The same content reaches us in several
 * transactions (an MTA splits a message above its recipient limit, retries deferred
 * recipients later, adds always_bcc), and every recipient answered 250 must be named in a
 * manifest of the object. The manifest key derives from the envelope (content digest, sender,
 * recipient set: manifest_envelope_id()), so a later transaction with other recipients adds
 * its own manifest beside the first, and a retry of the same envelope gets 412 for the
 * manifest too: it is recorded already, ok. Manifests are PUT with If-None-Match: * and the
 * object's headers (Object Lock retention, legal hold, encryption, class, tags): write-once
 * like the object.
 *
 * A target is ok only after S3 answered 200 to the object's PUT (or to Complete) or 412 for a
 * content-derived key, and, when manifests are on, 200 or 412 to the PUT of this envelope's
 * manifest; everything else is 4xx (design.md guarantees), except
 * EntityTooLarge (552 5.3.4). The reference in the log is the key, ETag and version id; S3's
 * error code and request id go to the log on failure.
 *
 * Credentials come from files (refused when others may read them) or the AWS_* environment
 * variables, are kept once, wiped at close, and never logged.
 */
#include "backend.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "base64.h"
#include "http.h"
#include "log.h"
#include "manifest.h"
#include "s3.h"
#include "secret.h"
#include "sigv4.h"

#define S3_MAX_PARTS 10000
#define S3_MIN_PART ((long long)5 * 1024 * 1024)
#define S3_RESPONSE_MAX 8192
#define S3_URL_MAX (4 * S3_KEY_MAX + 1024)
#define S3_HEADERS_MAX 24

struct s3_settings {
	char *endpoint;
	bool allow_http;
	char *region;
	char *bucket;
	char *addressing;
	char *ca_file;
	char *access_key_file;
	char *secret_key_file;
	char *credentials_file;
	char *session_token_file;
	char *key;
	char *mode;
	bool manifest;
	char *storage_class;
	char *sse;
	char *sse_kms_key_id;
	char *object_lock_mode;
	long long retention_days;
	bool legal_hold;
	struct conf_strlist tags;
	long long multipart_threshold;
	long long part_size;
	long long timeout;
	long long connect_timeout;
};

static const struct conf_key s3_keys[] = {
	{ "endpoint", CONF_STRING, offsetof(struct s3_settings, endpoint), NULL, 1, 0,
	  "S3 service URL: https://host[:port] (http:// only with allow_http)" },
	{ "allow_http", CONF_BOOL, offsetof(struct s3_settings, allow_http), "false", 1, 0,
	  "accept a plain http:// endpoint (tests, a store on loopback)" },
	{ "region", CONF_STRING, offsetof(struct s3_settings, region), "us-east-1", 1, 0,
	  "region in the SigV4 scope (\"us-east-1\" for most S3-compatible stores)" },
	{ "bucket", CONF_STRING, offsetof(struct s3_settings, bucket), NULL, 1, 0,
	  "bucket the objects are written to" },
	{ "addressing", CONF_STRING, offsetof(struct s3_settings, addressing), "path", 1, 0,
	  "path (https://host/bucket/key) or virtual (https://bucket.host/key)" },
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
	{ "mode", CONF_STRING, offsetof(struct s3_settings, mode), "message", 1, 0,
	  "message (one object for all recipients) or recipient (one object each)" },
	{ "manifest", CONF_BOOL, offsetof(struct s3_settings, manifest), "true", 1, 0,
	  "store each transaction's envelope as JSON in <key>.manifests/<envelope id>.json" },
	{ "storage_class", CONF_STRING, offsetof(struct s3_settings, storage_class), NULL, 1, 0,
	  "x-amz-storage-class of the objects (e.g. STANDARD_IA, GLACIER_IR)" },
	{ "sse", CONF_STRING, offsetof(struct s3_settings, sse), NULL, 1, 0,
	  "server-side encryption: AES256 or aws:kms" },
	{ "sse_kms_key_id", CONF_STRING, offsetof(struct s3_settings, sse_kms_key_id), NULL, 1, 0,
	  "KMS key id or ARN for sse = aws:kms (default: the bucket's key)" },
	{ "object_lock_mode", CONF_STRING, offsetof(struct s3_settings, object_lock_mode), NULL, 1,
	  0, "Object Lock retention mode: GOVERNANCE or COMPLIANCE (needs retention_days)" },
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
	{ NULL, 0, 0, NULL, 0, 0, NULL },
};

struct s3_state {
	char name[64];
	struct s3_settings set;
	bool per_recipient;
	bool virtual_host;
	bool key_has_sha256;
	char base_url[300];          /* "https://host:port" (bucket. prepended when virtual) */
	char host[300];              /* Host header, exactly as signed */
	char *access_key;
	char *secret_key;            /* wiped at close */
	char *session_token;         /* wiped at close */
	char *tagging;               /* "k=v&k2=v2" encoded, or NULL */
	struct template *key_tmpl;
	struct http_client *http;
};

/* --- pieces exposed for the unit tests (s3.h) ------------------------------------------ */

static void xml_unescape(char *s)
{
	static const struct {
		const char *ent;
		char c;
	} ents[] = { { "&lt;", '<' }, { "&gt;", '>' }, { "&amp;", '&' }, { "&quot;", '"' },
		     { "&apos;", '\'' } };
	char *w = s;

	for (const char *r = s; *r != '\0';) {
		bool done = false;
		if (*r == '&') {
			for (size_t i = 0; i < sizeof(ents) / sizeof(ents[0]); i++) {
				size_t n = strlen(ents[i].ent);
				if (strncmp(r, ents[i].ent, n) == 0) {
					*w++ = ents[i].c;
					r += n;
					done = true;
					break;
				}
			}
		}
		if (!done)
			*w++ = *r++;
	}
	*w = '\0';
}

bool s3_xml_value(const char *body, size_t len, const char *tag, char *out, size_t size)
{
	char open[72], close[72];

	if (size == 0)
		return false;
	out[0] = '\0';
	if (body == NULL)
		return false;
	int on = snprintf(open, sizeof(open), "<%s>", tag);
	int cn = snprintf(close, sizeof(close), "</%s>", tag);
	if (on < 0 || (size_t)on >= sizeof(open) || cn < 0 || (size_t)cn >= sizeof(close))
		return false;
	const char *start = memmem(body, len, open, (size_t)on);
	if (start == NULL)
		return false;
	start += on;
	const char *end = memmem(start, len - (size_t)(start - body), close, (size_t)cn);
	if (end == NULL)
		return false;
	size_t n = (size_t)(end - start);
	if (n >= size)
		n = size - 1;
	memcpy(out, start, n);
	out[n] = '\0';
	xml_unescape(out);
	return true;
}

void s3_parse_error(const char *body, size_t len, struct s3_error *err_r)
{
	s3_xml_value(body, len, "Code", err_r->code, sizeof(err_r->code));
	s3_xml_value(body, len, "Message", err_r->message, sizeof(err_r->message));
	s3_xml_value(body, len, "RequestId", err_r->request_id, sizeof(err_r->request_id));
}

int s3_map_status(long http_status, const char *code, struct status *st_r)
{
	if (code == NULL)
		code = "";
	if (http_status >= 200 && http_status <= 299)
		return 0;
	if (http_status == 412)
		return 1;
	if (http_status == 403) {
		status_must(st_r, 451, "4.7.0", "Archive store refused our credentials");
	} else if (http_status == 404 && strcmp(code, "NoSuchBucket") == 0) {
		status_must(st_r, 451, "4.3.0", "Archive bucket does not exist");
	} else if ((http_status == 400 && strcmp(code, "EntityTooLarge") == 0) ||
		   http_status == 413) {
		status_must(st_r, 552, "5.3.4", "Message too big for the archive store");
	} else if (http_status == 400 &&
		   (strcmp(code, "BadDigest") == 0 || strcmp(code, "XAmzContentSHA256Mismatch") == 0 ||
		    strcmp(code, "InvalidDigest") == 0)) {
		status_must(st_r, 451, "4.3.0", "Archive store saw corrupted data; try again");
	} else if (http_status == 503 || http_status == 429) {
		status_must(st_r, 451, "4.4.5", "Archive store busy; try again later");
	} else if (http_status >= 500 && http_status <= 599) {
		status_must(st_r, 451, "4.3.0", "Archive store failed");
	} else {
		status_must(st_r, 451, "4.3.0", "Archive store refused the request");
	}
	return -1;
}

bool s3_is_object_lock_refusal(long http_status, const char *code, const char *message)
{
	if (http_status != 400 || code == NULL || message == NULL)
		return false;
	if (strcmp(code, "InvalidRequest") != 0 && strcmp(code, "InvalidBucketState") != 0 &&
	    strcmp(code, "ObjectLockConfigurationNotFoundError") != 0)
		return false;
	return strcasestr(message, "object lock") != NULL || strcasestr(message, "objectlock") != NULL;
}

int s3_key_check(const char *key, const char **error_r)
{
	size_t len = strlen(key);

	if (len == 0 || len > S3_KEY_MAX) {
		*error_r = len == 0 ? "empty key" : "key longer than 1024 bytes";
		return -1;
	}
	if (key[0] == '/') {
		*error_r = "key starts with '/'";
		return -1;
	}
	for (const unsigned char *p = (const unsigned char *)key; *p != '\0'; p++) {
		if (*p < 0x20 || *p == 0x7f) {
			*error_r = "control character in key";
			return -1;
		}
	}
	for (const char *seg = key; seg != NULL;) {
		const char *slash = strchr(seg, '/');
		size_t n = slash != NULL ? (size_t)(slash - seg) : strlen(seg);
		if (n == 0 || (n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.')) {
			*error_r = "empty, \".\" or \"..\" segment in key";
			return -1;
		}
		seg = slash != NULL ? slash + 1 : NULL;
	}
	return 0;
}

void s3_meta_value(const char *in, size_t max_in, char *out, size_t size)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t w = 0;

	if (size == 0)
		return;
	for (size_t i = 0; in != NULL && in[i] != '\0' && i < max_in; i++) {
		unsigned char c = (unsigned char)in[i];
		bool keep = c >= 0x20 && c < 0x7f && c != '%';
		size_t need = keep ? 1 : 3;
		if (w + need >= size)
			break;
		if (keep) {
			out[w++] = (char)c;
		} else {
			out[w++] = '%';
			out[w++] = hex[c >> 4];
			out[w++] = hex[c & 0x0f];
		}
	}
	/* a header value must not end (or start) with a space: encode trailing ones */
	while (w > 0 && out[w - 1] == ' ' && w + 2 < size) {
		w--;
		out[w++] = '%';
		out[w++] = '2';
		out[w++] = '0';
		break;
	}
	out[w] = '\0';
}

int s3_checksum_b64(const char *hex, char *out, size_t size)
{
	unsigned char bin[32];

	if (size < 45 || strlen(hex) != 64)
		return -1;
	for (size_t i = 0; i < 32; i++) {
		int hi = isxdigit((unsigned char)hex[2 * i]), lo = isxdigit((unsigned char)hex[2 * i + 1]);
		if (!hi || !lo)
			return -1;
		char b[3] = { hex[2 * i], hex[2 * i + 1], 0 };
		bin[i] = (unsigned char)strtoul(b, NULL, 16);
	}
	base64_encode(bin, sizeof(bin), out);
	return 0;
}

/* --- configuration ----------------------------------------------------------------------- */

static bool credential_ok(const char *s)
{
	for (; *s != '\0'; s++) {
		if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
			return false;
	}
	return true;
}

static int load_credentials(struct s3_state *st, const struct s3_settings *set, char *error_r,
			    size_t error_size)
{
	if (set->credentials_file != NULL) {
		if (set->access_key_file != NULL || set->secret_key_file != NULL) {
			snprintf(error_r, error_size,
				 "credentials_file excludes access_key_file and secret_key_file");
			return -1;
		}
		st->access_key = secret_read_line(set->credentials_file, 0, error_r, error_size);
		if (st->access_key == NULL)
			return -1;
		st->secret_key = secret_read_line(set->credentials_file, 1, error_r, error_size);
		if (st->secret_key == NULL)
			return -1;
	} else if (set->access_key_file != NULL || set->secret_key_file != NULL) {
		if (set->access_key_file == NULL || set->secret_key_file == NULL) {
			snprintf(error_r, error_size, "access_key_file and secret_key_file go together");
			return -1;
		}
		st->access_key = secret_read_line(set->access_key_file, 0, error_r, error_size);
		if (st->access_key == NULL)
			return -1;
		st->secret_key = secret_read_line(set->secret_key_file, 0, error_r, error_size);
		if (st->secret_key == NULL)
			return -1;
	} else {
		const char *ak = getenv("AWS_ACCESS_KEY_ID"), *sk = getenv("AWS_SECRET_ACCESS_KEY");
		if (ak == NULL || ak[0] == '\0' || sk == NULL || sk[0] == '\0') {
			snprintf(error_r, error_size,
				 "no credentials: set credentials_file (or access_key_file and "
				 "secret_key_file), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
			return -1;
		}
		st->access_key = strdup(ak);
		st->secret_key = strdup(sk);
		const char *tok = getenv("AWS_SESSION_TOKEN");
		if (tok != NULL && tok[0] != '\0' && set->session_token_file == NULL)
			st->session_token = strdup(tok);
		if (st->access_key == NULL || st->secret_key == NULL) {
			snprintf(error_r, error_size, "out of memory");
			return -1;
		}
	}
	if (set->session_token_file != NULL) {
		st->session_token = secret_read_line(set->session_token_file, 0, error_r, error_size);
		if (st->session_token == NULL)
			return -1;
	}
	if (!credential_ok(st->access_key) || !credential_ok(st->secret_key) ||
	    (st->session_token != NULL && !credential_ok(st->session_token)) ||
	    strlen(st->secret_key) > 200) {
		snprintf(error_r, error_size, "credentials contain spaces or non-ASCII bytes");
		return -1;
	}
	return 0;
}

static bool bucket_name_ok(const char *b)
{
	size_t n = strlen(b);

	if (n < 3 || n > 63)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = b[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.'))
			return false;
	}
	return b[0] != '-' && b[0] != '.' && b[n - 1] != '-' && b[n - 1] != '.';
}

static int parse_endpoint(struct s3_state *st, const struct s3_settings *set, char *error_r,
			  size_t error_size)
{
	const char *ep = set->endpoint, *scheme, *auth;

	if (strncasecmp(ep, "https://", 8) == 0) {
		scheme = "https";
		auth = ep + 8;
	} else if (strncasecmp(ep, "http://", 7) == 0) {
		if (!set->allow_http) {
			snprintf(error_r, error_size,
				 "endpoint: http:// needs allow_http = true (credentials and mail "
				 "would cross the network in clear)");
			return -1;
		}
		scheme = "http";
		auth = ep + 7;
	} else {
		snprintf(error_r, error_size, "endpoint must start with https:// (or http://)");
		return -1;
	}
	size_t n = strcspn(auth, "/?#");
	if (n == 0 || n >= 200 || (auth[n] != '\0' && strcmp(auth + n, "/") != 0)) {
		snprintf(error_r, error_size,
			 "endpoint must be scheme://host[:port] with no path, query or user");
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)auth[i];
		if (c == '@' || c <= 0x20 || c >= 0x7f) {
			snprintf(error_r, error_size, "endpoint: bad character in host");
			return -1;
		}
	}
	char authority[201];
	for (size_t i = 0; i < n; i++)
		authority[i] = (char)tolower((unsigned char)auth[i]);
	authority[n] = '\0';
	if (st->virtual_host) {
		snprintf(st->host, sizeof(st->host), "%s.%s", set->bucket, authority);
	} else {
		snprintf(st->host, sizeof(st->host), "%s", authority);
	}
	snprintf(st->base_url, sizeof(st->base_url), "%s://%s", scheme, st->host);
	return 0;
}

static void s3_close(void *state);

static bool template_uses_recipient(const struct template *t)
{
	return template_uses(t, "rcpt") || template_uses(t, "local") || template_uses(t, "user") ||
	       template_uses(t, "detail") || template_uses(t, "domain");
}

static int s3_open(const void *settings, const char *instance_name, void **state_r,
		   char *error_r, size_t error_size)
{
	const struct s3_settings *set = settings;
	const char *error;
	struct s3_state *st = calloc(1, sizeof(*st));

	if (st == NULL) {
		snprintf(error_r, error_size, "out of memory");
		return -1;
	}
	st->set = *set;
	snprintf(st->name, sizeof(st->name), "%s", instance_name);
	if (set->endpoint == NULL || set->bucket == NULL) {
		snprintf(error_r, error_size, "s3 needs 'endpoint' and 'bucket'");
		goto fail;
	}
	if (!bucket_name_ok(set->bucket)) {
		snprintf(error_r, error_size,
			 "bucket: 3 to 63 characters of a-z, 0-9, '-' and '.' (S3 naming rules)");
		goto fail;
	}
	if (strcmp(set->addressing, "virtual") == 0) {
		st->virtual_host = true;
	} else if (strcmp(set->addressing, "path") != 0) {
		snprintf(error_r, error_size, "addressing must be path or virtual");
		goto fail;
	}
	if (set->region[0] == '\0' || strpbrk(set->region, "/ \t") != NULL) {
		snprintf(error_r, error_size, "region: not a region name");
		goto fail;
	}
	if (parse_endpoint(st, set, error_r, error_size) < 0)
		goto fail;
	if (strcmp(set->mode, "recipient") == 0) {
		st->per_recipient = true;
	} else if (strcmp(set->mode, "message") != 0) {
		snprintf(error_r, error_size, "mode must be message or recipient");
		goto fail;
	}
	if (template_compile(set->key, &st->key_tmpl, &error) < 0) {
		snprintf(error_r, error_size, "key: %s", error);
		goto fail;
	}
	st->key_has_sha256 = template_uses(st->key_tmpl, "sha256");
	if (!st->per_recipient && template_uses_recipient(st->key_tmpl)) {
		snprintf(error_r, error_size,
			 "key: mode message stores one object for all recipients; a recipient "
			 "variable (%%{rcpt}, %%{local}, ...) needs mode = \"recipient\"");
		goto fail;
	}
	if (st->per_recipient && !template_uses(st->key_tmpl, "rcpt") &&
	    !(template_uses(st->key_tmpl, "local") && template_uses(st->key_tmpl, "domain")) &&
	    !(template_uses(st->key_tmpl, "user") && template_uses(st->key_tmpl, "domain"))) {
		snprintf(error_r, error_size,
			 "key: mode recipient needs %%{rcpt} (or %%{local} and %%{domain}) in the "
			 "key, or every recipient would get the same object");
		goto fail;
	}
	if (set->sse != NULL && strcmp(set->sse, "AES256") != 0 && strcmp(set->sse, "aws:kms") != 0) {
		snprintf(error_r, error_size, "sse must be AES256 or aws:kms");
		goto fail;
	}
	if (set->sse_kms_key_id != NULL && (set->sse == NULL || strcmp(set->sse, "aws:kms") != 0)) {
		snprintf(error_r, error_size, "sse_kms_key_id needs sse = \"aws:kms\"");
		goto fail;
	}
	if (set->object_lock_mode != NULL) {
		if (strcmp(set->object_lock_mode, "GOVERNANCE") != 0 &&
		    strcmp(set->object_lock_mode, "COMPLIANCE") != 0) {
			snprintf(error_r, error_size,
				 "object_lock_mode must be GOVERNANCE or COMPLIANCE");
			goto fail;
		}
		if (set->retention_days <= 0) {
			snprintf(error_r, error_size, "object_lock_mode needs retention_days > 0");
			goto fail;
		}
	} else if (set->retention_days > 0) {
		snprintf(error_r, error_size, "retention_days needs object_lock_mode");
		goto fail;
	}
	if ((set->storage_class != NULL && !credential_ok(set->storage_class)) ||
	    (set->sse_kms_key_id != NULL && !credential_ok(set->sse_kms_key_id))) {
		snprintf(error_r, error_size,
			 "storage_class / sse_kms_key_id: no spaces or non-ASCII allowed");
		goto fail;
	}
	if (set->tags.count > 0) {
		size_t cap = 1;
		for (size_t i = 0; i < set->tags.count; i++)
			cap += 3 * strlen(set->tags.items[i]) + 1;
		st->tagging = calloc(1, cap);
		if (st->tagging == NULL) {
			snprintf(error_r, error_size, "out of memory");
			goto fail;
		}
		size_t len = 0;
		for (size_t i = 0; i < set->tags.count; i++) {
			const char *t = set->tags.items[i], *eq = strchr(t, '=');
			if (eq == NULL || eq == t) {
				snprintf(error_r, error_size, "tags: \"%s\" is not key=value", t);
				goto fail;
			}
			if (i > 0)
				st->tagging[len++] = '&';
			int a = sigv4_uri_encode(t, (size_t)(eq - t), false, st->tagging + len,
						 cap - len);
			if (a < 0)
				goto fail;
			len += (size_t)a;
			st->tagging[len++] = '=';
			int b = sigv4_uri_encode(eq + 1, strlen(eq + 1), false, st->tagging + len,
						 cap - len);
			if (b < 0)
				goto fail;
			len += (size_t)b;
		}
	}
	if (load_credentials(st, set, error_r, error_size) < 0)
		goto fail;
	struct http_options opts = {
		.ca_file = set->ca_file,
		.connect_timeout_ms = (long)set->connect_timeout,
		.timeout_ms = (long)set->timeout,
		.allow_http = set->allow_http,
	};
	st->http = http_client_new(&opts, error_r, error_size);
	if (st->http == NULL)
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
	http_client_free(&st->http);
	template_free(&st->key_tmpl);
	secret_free(&st->secret_key);
	secret_free(&st->session_token);
	free(st->access_key);
	free(st->tagging);
	explicit_bzero(st, sizeof(*st));
	free(st);
}

/* --- requests ---------------------------------------------------------------------------- */

/* One signed request. headers are the request-specific ones (all signed); host, x-amz-date,
 * x-amz-content-sha256 and the session token are added here. 0: an answer arrived (any
 * status; resp filled); -1: transport failure (*st_r, reason). */
struct s3_req {
	const char *method;
	const char *key;                     /* object key, or NULL for the bucket */
	const struct sigv4_param *query;
	size_t query_count;
	const struct sigv4_param *headers;
	size_t header_count;
	const char *payload_hash;
	const void *body;                    /* memory body (may be "" with len 0) */
	size_t body_len;
	struct spool_reader *reader;         /* or a window of the message */
	uint64_t offset, length;
};

static int s3_perform(struct s3_state *st, const struct s3_req *r, struct http_response *resp,
		      struct status *st_r, char *reason, size_t reason_size)
{
	char path[2 * S3_KEY_MAX + 80], enc_path[3 * sizeof(path)], query[1024];
	char url[sizeof(enc_path) + sizeof(query) + 320], amz_date[SIGV4_AMZ_DATE_SIZE];
	char auth[1024];
	struct sigv4_param h[S3_HEADERS_MAX];
	size_t n = 0;
	struct curl_slist *list = NULL;
	int ret = -1;

	if (st->virtual_host)
		snprintf(path, sizeof(path), "/%s", r->key != NULL ? r->key : "");
	else
		snprintf(path, sizeof(path), "/%s%s%s", st->set.bucket, r->key != NULL ? "/" : "",
			 r->key != NULL ? r->key : "");
	sigv4_amz_date(time(NULL), amz_date);
	h[n++] = (struct sigv4_param){ "Host", st->host };
	h[n++] = (struct sigv4_param){ "x-amz-date", amz_date };
	h[n++] = (struct sigv4_param){ "x-amz-content-sha256", r->payload_hash };
	if (st->session_token != NULL)
		h[n++] = (struct sigv4_param){ "x-amz-security-token", st->session_token };
	for (size_t i = 0; i < r->header_count && n < S3_HEADERS_MAX; i++)
		h[n++] = r->headers[i];
	struct sigv4_request sreq = { .method = r->method, .path = path, .query = r->query,
				      .query_count = r->query_count, .headers = h,
				      .header_count = n, .payload_hash = r->payload_hash };
	struct sigv4_credentials cred = { st->access_key, st->secret_key, st->session_token };
	if (sigv4_uri_encode(path, strlen(path), true, enc_path, sizeof(enc_path)) < 0 ||
	    sigv4_canonical_query(r->query, r->query_count, query, sizeof(query)) < 0 ||
	    sigv4_authorization(&sreq, &cred, amz_date, st->set.region, "s3", auth,
				sizeof(auth)) < 0) {
		status_must(st_r, 451, "4.3.0", "Local error in processing");
		snprintf(reason, reason_size, "cannot sign the request (too long)");
		return -1;
	}
	snprintf(url, sizeof(url), "%s%s%s%s", st->base_url, enc_path, query[0] ? "?" : "", query);
	for (size_t i = 0; i < n; i++) {
		if (http_header_add(&list, "%s: %s", h[i].name, h[i].value) < 0)
			goto oom;
	}
	if (http_header_add(&list, "Authorization: %s", auth) < 0)
		goto oom;
	explicit_bzero(auth, sizeof(auth));
	struct http_request req = {
		.method = r->method, .url = url, .headers = list, .body = r->body,
		.body_len = r->body_len, .reader = r->reader, .reader_offset = r->offset,
		.reader_length = r->length, .response_max = S3_RESPONSE_MAX,
	};
	ret = http_perform(st->http, &req, resp, st_r, reason, reason_size);
	http_headers_free(&list);
	return ret;
oom:
	http_headers_free(&list);
	status_must(st_r, 451, "4.3.0", "Local error in processing");
	snprintf(reason, reason_size, "out of memory");
	return -1;
}

/* The headers every stored object gets (content type, metadata, Object Lock, encryption,
 * storage class, tags). Strings live in buf. Returns the count added to h. */
struct object_headers {
	char sender[300], count[24], session[100], sha256[72], retain[32], msgid[300];
};

static size_t add_object_headers(struct s3_state *st, const struct delivery *d, size_t rcpt_count,
				 const char *content_type, struct object_headers *oh,
				 struct sigv4_param *h)
{
	size_t n = 0;

	h[n++] = (struct sigv4_param){ "Content-Type", content_type };
	s3_meta_value(d->sender, 256, oh->sender, sizeof(oh->sender));
	snprintf(oh->count, sizeof(oh->count), "%zu", rcpt_count);
	s3_meta_value(d->session_id, 64, oh->session, sizeof(oh->session));
	s3_meta_value(d->sha256, 64, oh->sha256, sizeof(oh->sha256));
	h[n++] = (struct sigv4_param){ "x-amz-meta-sender", oh->sender };
	h[n++] = (struct sigv4_param){ "x-amz-meta-recipient-count", oh->count };
	h[n++] = (struct sigv4_param){ "x-amz-meta-session", oh->session };
	h[n++] = (struct sigv4_param){ "x-amz-meta-sha256", oh->sha256 };
	if (d->msgid != NULL && d->msgid[0] != '\0') {
		s3_meta_value(d->msgid, 256, oh->msgid, sizeof(oh->msgid));
		h[n++] = (struct sigv4_param){ "x-amz-meta-message-id", oh->msgid };
	}
	if (st->set.storage_class != NULL)
		h[n++] = (struct sigv4_param){ "x-amz-storage-class", st->set.storage_class };
	if (st->set.sse != NULL) {
		h[n++] = (struct sigv4_param){ "x-amz-server-side-encryption", st->set.sse };
		if (st->set.sse_kms_key_id != NULL)
			h[n++] = (struct sigv4_param){ "x-amz-server-side-encryption-aws-kms-key-id",
						       st->set.sse_kms_key_id };
	}
	if (st->set.object_lock_mode != NULL) {
		/* Retain-until counts from the time the message was received, so a retry asks
		 * for the same date. */
		manifest_time(d->received + (time_t)st->set.retention_days * 86400, oh->retain,
			      sizeof(oh->retain));
		h[n++] = (struct sigv4_param){ "x-amz-object-lock-mode", st->set.object_lock_mode };
		h[n++] = (struct sigv4_param){ "x-amz-object-lock-retain-until-date", oh->retain };
	}
	if (st->set.legal_hold)
		h[n++] = (struct sigv4_param){ "x-amz-object-lock-legal-hold", "ON" };
	if (st->tagging != NULL)
		h[n++] = (struct sigv4_param){ "x-amz-tagging", st->tagging };
	return n;
}

/* The SHA-256 of `length` bytes of reader from offset (one streaming pass). */
static int hash_window(struct spool_reader *reader, uint64_t offset, uint64_t length,
		       char hex[SIGV4_HEX_SHA256_SIZE])
{
	size_t bufsize = 64 * 1024;
	char *buf = malloc(bufsize);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned char md[32];
	unsigned int mdlen = 0;
	int r = -1;

	if (buf == NULL || ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
		goto out;
	reader->pos = offset;
	while (length > 0) {
		size_t want = length < bufsize ? (size_t)length : bufsize;
		ssize_t got = spool_reader_read(reader, buf, want);
		if (got <= 0)
			goto out;
		if (EVP_DigestUpdate(ctx, buf, (size_t)got) != 1)
			goto out;
		length -= (uint64_t)got;
	}
	if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 32)
		goto out;
	sigv4_hex(md, hex);
	r = 0;
out:
	EVP_MD_CTX_free(ctx);
	free(buf);
	return r;
}

/* Describe an S3 error answer in reason and the log; set *st_r. Returns the s3_map_status
 * result (1 for 412). */
static int s3_answer(struct s3_state *st, const char *op, const char *key,
		     const struct http_response *resp, struct status *st_r, char *reason,
		     size_t reason_size)
{
	struct s3_error err = { "", "", "" };
	char esc_msg[LOG_ESC_SIZE], esc_key[LOG_ESC_SIZE], esc_code[LOG_ESC_SIZE];
	char esc_rid[LOG_ESC_SIZE];

	s3_parse_error(resp->body, resp->body_len, &err);
	if (err.request_id[0] == '\0') {
		const char *rid = http_response_header(resp, "x-amz-request-id");
		if (rid != NULL)
			snprintf(err.request_id, sizeof(err.request_id), "%s", rid);
	}
	int m = s3_map_status(resp->status, err.code, st_r);
	if (m == 0)
		return 0;
	snprintf(reason, reason_size, "%s http=%ld code=%s rid=%s", op, resp->status,
		 err.code[0] ? err.code : "-", err.request_id[0] ? err.request_id : "-");
	if (m == 1)
		return 1;
	log_esc(esc_key, key);
	log_esc(esc_code, err.code);
	log_esc(esc_rid, err.request_id);
	log_escape(esc_msg, sizeof(esc_msg), err.message, strlen(err.message), 200);
	if (s3_is_object_lock_refusal(resp->status, err.code, err.message)) {
		log_error("backend=%s event=s3_object_lock_refused op=%s key=%s code=%s "
			  "request_id=%s message=\"%s\" hint=\"the bucket must have Object Lock "
			  "enabled (or remove object_lock_mode / legal_hold)\"",
			  st->name, op, esc_key, esc_code, esc_rid, esc_msg);
		snprintf(reason, reason_size, "%s http=%ld code=%s object-lock-refused rid=%s", op,
			 resp->status, err.code, err.request_id[0] ? err.request_id : "-");
	} else {
		log_warn("backend=%s event=s3_error op=%s key=%s http=%ld code=%s request_id=%s "
			 "message=\"%s\"",
			 st->name, op, esc_key, resp->status, esc_code, esc_rid, esc_msg);
	}
	return -1;
}

static void copy_etag(const struct http_response *resp, char *out, size_t size)
{
	const char *e = http_response_header(resp, "etag");
	size_t w = 0;

	for (; e != NULL && *e != '\0' && w + 1 < size; e++) {
		if (*e != '"' && (unsigned char)*e > 0x20 && (unsigned char)*e < 0x7f)
			out[w++] = *e;
	}
	out[w] = '\0';
}

static void copy_header(const struct http_response *resp, const char *name, char *out,
			size_t size)
{
	const char *v = http_response_header(resp, name);
	s3_meta_value(v != NULL ? v : "", 100, out, size);
}

struct s3_result {
	char etag[80];
	char version[80];
	bool existed;                   /* 412: the same content is already stored */
};

/* One PUT of the whole object from the reader. 0 stored, 1 exists (412), -1 failed. */
static int put_single(struct s3_state *st, const char *key, struct spool_reader *reader,
		      const char *hash_hex, const char *checksum_b64, struct sigv4_param *oh,
		      size_t oh_count, struct s3_result *res, struct status *st_r, char *reason,
		      size_t reason_size)
{
	struct sigv4_param h[S3_HEADERS_MAX];
	size_t n = 0;
	struct http_response resp;

	for (size_t i = 0; i < oh_count && n < S3_HEADERS_MAX - 2; i++)
		h[n++] = oh[i];
	h[n++] = (struct sigv4_param){ "x-amz-checksum-sha256", checksum_b64 };
	h[n++] = (struct sigv4_param){ "If-None-Match", "*" };
	struct s3_req r = { .method = "PUT", .key = key, .headers = h, .header_count = n,
			    .payload_hash = hash_hex, .reader = reader };
	if (s3_perform(st, &r, &resp, st_r, reason, reason_size) < 0)
		return -1;
	int m = s3_answer(st, "PUT", key, &resp, st_r, reason, reason_size);
	if (m == 0) {
		copy_etag(&resp, res->etag, sizeof(res->etag));
		copy_header(&resp, "x-amz-version-id", res->version, sizeof(res->version));
	}
	http_response_free(&resp);
	return m;
}

static void abort_upload(struct s3_state *st, const char *key, const char *upload_id)
{
	struct sigv4_param q[] = { { "uploadId", upload_id } };
	struct s3_req r = { .method = "DELETE", .key = key, .query = q, .query_count = 1,
			    .payload_hash = SIGV4_EMPTY_SHA256 };
	struct http_response resp;
	struct status ignored;
	char reason[300], esc_key[LOG_ESC_SIZE];

	if (s3_perform(st, &r, &resp, &ignored, reason, sizeof(reason)) < 0 ||
	    (resp.status != 204 && resp.status != 200 && resp.status != 404)) {
		log_warn("backend=%s event=s3_abort_failed key=%s http=%ld (the incomplete upload "
			 "stays until a bucket lifecycle rule removes it)",
			 st->name, log_esc(esc_key, key), resp.status);
	}
	http_response_free(&resp);
}

/* Multipart upload: create, parts (each hashed, then streamed from its window), complete;
 * aborted on any failure. 0 stored, 1 exists (412 at Complete), -1 failed. */
static int put_multipart(struct s3_state *st, const char *key, struct spool_reader *reader,
			 uint64_t total, struct sigv4_param *oh, size_t oh_count,
			 struct s3_result *res, struct status *st_r, char *reason,
			 size_t reason_size)
{
	struct sigv4_param h[S3_HEADERS_MAX];
	struct http_response resp;
	char upload_id[512] = "";
	size_t n = 0;
	int result = -1;
	uint64_t part = (uint64_t)st->set.part_size;
	char *xml = NULL;

	if ((total + part - 1) / part > S3_MAX_PARTS)
		part = (total + S3_MAX_PARTS - 1) / S3_MAX_PARTS;
	size_t parts = (size_t)((total + part - 1) / part);

	for (size_t i = 0; i < oh_count && n < S3_HEADERS_MAX - 1; i++)
		h[n++] = oh[i];
	h[n++] = (struct sigv4_param){ "x-amz-checksum-algorithm", "SHA256" };
	struct sigv4_param q_create[] = { { "uploads", "" } };
	struct s3_req create = { .method = "POST", .key = key, .query = q_create, .query_count = 1,
				 .headers = h, .header_count = n,
				 .payload_hash = SIGV4_EMPTY_SHA256, .body = "", .body_len = 0 };
	if (s3_perform(st, &create, &resp, st_r, reason, reason_size) < 0)
		return -1;
	int m = s3_answer(st, "CreateMultipartUpload", key, &resp, st_r, reason, reason_size);
	if (m == 0 && !s3_xml_value(resp.body, resp.body_len, "UploadId", upload_id,
				    sizeof(upload_id))) {
		status_must(st_r, 451, "4.3.0", "Archive store answered without an upload id");
		snprintf(reason, reason_size, "CreateMultipartUpload: no UploadId");
		m = -1;
	}
	http_response_free(&resp);
	if (m != 0) {
		if (m == 1) {
			status_must(st_r, 451, "4.3.0", "Archive store refused the upload");
			return -1;
		}
		return -1;
	}

	/* "<CompleteMultipartUpload>" + per part about 200 bytes */
	size_t xml_cap = 128 + parts * 200, xml_len = 0;
	xml = malloc(xml_cap);
	if (xml == NULL) {
		status_must(st_r, 451, "4.3.0", "Local error in processing");
		snprintf(reason, reason_size, "out of memory");
		goto abort;
	}
	xml_len += (size_t)snprintf(xml, xml_cap, "<CompleteMultipartUpload xmlns=\"http://s3."
						  "amazonaws.com/doc/2006-03-01/\">");
	for (size_t i = 0; i < parts; i++) {
		uint64_t off = (uint64_t)i * part;
		uint64_t len = total - off < part ? total - off : part;
		char hex[SIGV4_HEX_SHA256_SIZE], b64[48], num[16], etag[80];
		if (hash_window(reader, off, len, hex) < 0 ||
		    s3_checksum_b64(hex, b64, sizeof(b64)) < 0) {
			status_must(st_r, 451, "4.3.0", "Local error reading the message");
			snprintf(reason, reason_size, "spool read failed");
			goto abort;
		}
		snprintf(num, sizeof(num), "%zu", i + 1);
		struct sigv4_param q[] = { { "partNumber", num }, { "uploadId", upload_id } };
		struct sigv4_param ph[] = { { "x-amz-checksum-sha256", b64 } };
		struct s3_req r = { .method = "PUT", .key = key, .query = q, .query_count = 2,
				    .headers = ph, .header_count = 1, .payload_hash = hex,
				    .reader = reader, .offset = off, .length = len };
		if (s3_perform(st, &r, &resp, st_r, reason, reason_size) < 0)
			goto abort;
		m = s3_answer(st, "UploadPart", key, &resp, st_r, reason, reason_size);
		copy_etag(&resp, etag, sizeof(etag));
		http_response_free(&resp);
		if (m != 0 || etag[0] == '\0') {
			if (m == 0 || m == 1) {
				status_must(st_r, 451, "4.3.0", "Archive store refused a part");
				if (m == 0)
					snprintf(reason, reason_size, "UploadPart %zu: no ETag", i + 1);
			}
			goto abort;
		}
		int w = snprintf(xml + xml_len, xml_cap - xml_len,
				 "<Part><PartNumber>%zu</PartNumber><ETag>\"%s\"</ETag>"
				 "<ChecksumSHA256>%s</ChecksumSHA256></Part>",
				 i + 1, etag, b64);
		if (w < 0 || (size_t)w >= xml_cap - xml_len) {
			status_must(st_r, 451, "4.3.0", "Local error in processing");
			snprintf(reason, reason_size, "part list too long");
			goto abort;
		}
		xml_len += (size_t)w;
	}
	int w = snprintf(xml + xml_len, xml_cap - xml_len, "</CompleteMultipartUpload>");
	if (w < 0 || (size_t)w >= xml_cap - xml_len)
		goto abort;
	xml_len += (size_t)w;

	char xml_hash[SIGV4_HEX_SHA256_SIZE];
	sigv4_sha256_hex(xml, xml_len, xml_hash);
	struct sigv4_param q_done[] = { { "uploadId", upload_id } };
	struct sigv4_param dh[] = { { "Content-Type", "application/xml" },
				    { "If-None-Match", "*" } };
	struct s3_req done = { .method = "POST", .key = key, .query = q_done, .query_count = 1,
			       .headers = dh, .header_count = 2, .payload_hash = xml_hash,
			       .body = xml, .body_len = xml_len };
	if (s3_perform(st, &done, &resp, st_r, reason, reason_size) < 0) {
		/* Unknown outcome: abort (S3 keeps a completed object; an abort then fails). */
		goto abort;
	}
	m = s3_answer(st, "CompleteMultipartUpload", key, &resp, st_r, reason, reason_size);
	if (m == 0 && memmem(resp.body, resp.body_len, "<Error>", 7) != NULL) {
		/* S3 may answer 200 and report the failure in the body. */
		struct s3_error err = { "", "", "" };
		s3_parse_error(resp.body, resp.body_len, &err);
		status_must(st_r, 451, "4.3.0", "Archive store failed to assemble the upload");
		snprintf(reason, reason_size, "CompleteMultipartUpload http=200 code=%s rid=%s",
			 err.code[0] ? err.code : "-", err.request_id[0] ? err.request_id : "-");
		m = -1;
	}
	if (m == 0) {
		copy_etag(&resp, res->etag, sizeof(res->etag));
		if (res->etag[0] == '\0') {
			char e[80];
			if (s3_xml_value(resp.body, resp.body_len, "ETag", e, sizeof(e)))
				s3_meta_value(e[0] == '"' ? e + 1 : e, 70, res->etag,
					      sizeof(res->etag));
			res->etag[strcspn(res->etag, "\"")] = '\0';
		}
		copy_header(&resp, "x-amz-version-id", res->version, sizeof(res->version));
	}
	http_response_free(&resp);
	if (m < 0)
		goto abort;
	free(xml);
	if (m == 1) {
		abort_upload(st, key, upload_id);
		return 1;
	}
	return 0;
abort:
	free(xml);
	abort_upload(st, key, upload_id);
	return result;
}

/* This envelope's id into id_r and "<key>.manifests/<id>.json" into mkey (S3_KEY_MAX + 1
 * bytes), checked like an object key. 0, or -1 with *error_r. */
static int manifest_key(const struct delivery *d, const struct target *targets, size_t count,
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

/* This transaction's manifest at mkey (from manifest_key(), with its envelope_id): the
 * envelope plus what was stored. 0 when it is stored now or was already (412: a retry of this
 * envelope), -1 otherwise (*st_r, reason). */
static int put_manifest(struct s3_state *st, const struct delivery *d, struct target *targets,
			size_t count, const char *key, const char *mkey, const char *envelope_id,
			uint64_t size, const char *obj_hash, const struct s3_result *res,
			struct sigv4_param *oh, size_t oh_count, struct status *st_r, char *reason,
			size_t reason_size)
{
	char hash[SIGV4_HEX_SHA256_SIZE], b64[48];
	struct sigv4_param h[S3_HEADERS_MAX];
	struct http_response resp;
	size_t n = 0;

	json_t *m = manifest_build(d, targets, count);
	json_t *obj = json_object();
	if (m == NULL || obj == NULL) {
		json_decref(m);
		json_decref(obj);
		goto oom;
	}
	json_object_set_new(m, "envelope_id", json_string(envelope_id));
	json_object_set_new(obj, "bucket", json_string(st->set.bucket));
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
	char *text = json_dumps(m, JSON_INDENT(2));
	json_decref(m);
	if (text == NULL)
		goto oom;
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
	int ret = s3_perform(st, &r, &resp, st_r, reason, reason_size);
	free(text);
	if (ret < 0)
		return -1;
	/* 412: this envelope's manifest is there (an earlier attempt of this transaction whose
	 * reply was lost, or the MTA's retry): the recipients are recorded, keep it. */
	int mapped = s3_answer(st, "PUT manifest", mkey, &resp, st_r, reason, reason_size);
	http_response_free(&resp);
	return mapped == 1 ? 0 : mapped;
oom:
	status_must(st_r, 451, "4.3.0", "Local error in processing");
	snprintf(reason, reason_size, "cannot build the manifest");
	return -1;
}

static void fail_all(struct target *targets, size_t count, const struct status *st,
		     const char *key, const char *reason)
{
	for (size_t i = 0; i < count; i++) {
		targets[i].status = *st;
		targets[i].same_failure = i > 0; /* one failed request: one event for the breaker */
		snprintf(targets[i].ref, sizeof(targets[i].ref), "%s key=%s", reason, key);
	}
}

/* Store one object for targets[0..count) (all recipients in message mode, one otherwise). */
static void store_object(struct s3_state *st, const struct delivery *d, struct target *targets,
			 size_t count)
{
	char key[S3_KEY_MAX + 1], mkey[S3_KEY_MAX + 1], envelope_id[MANIFEST_ENVELOPE_ID_SIZE];
	char reason[400];
	char obj_hash[SIGV4_HEX_SHA256_SIZE], b64[48];
	const char *error;
	struct status status;
	struct s3_result res = { "", "", false };
	struct object_headers ohb;
	struct sigv4_param oh[S3_HEADERS_MAX];

	if (template_expand(st->key_tmpl, &targets[0].vars, TEMPLATE_URL, key, sizeof(key),
			    &error) < 0 ||
	    s3_key_check(key, &error) < 0) {
		status_must(&status, 451, "4.3.0", "Cannot build the archive key");
		snprintf(reason, sizeof(reason), "key: %s", error);
		fail_all(targets, count, &status, "-", reason);
		return;
	}
	/* The manifest's key before anything is stored: one that cannot be built must not leave
	 * an object without its envelope. */
	if (st->set.manifest &&
	    manifest_key(d, targets, count, key, mkey, envelope_id, &error) < 0) {
		status_must(&status, 451, "4.3.0", "Cannot build the archive key");
		snprintf(reason, sizeof(reason), "manifest key: %s", error);
		fail_all(targets, count, &status, key, reason);
		return;
	}
	/* The object: trace headers (with Delivered-To in recipient mode) + content. */
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
	struct spool_reader reader;
	spool_reader_init(&reader, d->spool, prefix, prefix_len);
	uint64_t total = spool_reader_total(&reader);
	size_t nh = add_object_headers(st, d, count, "message/rfc822", &ohb, oh);
	int r;
	if (hash_window(&reader, 0, total, obj_hash) < 0 ||
	    s3_checksum_b64(obj_hash, b64, sizeof(b64)) < 0) {
		status_must(&status, 451, "4.3.0", "Local error reading the message");
		snprintf(reason, sizeof(reason), "spool read failed");
		r = -1;
	} else if (total > (uint64_t)st->set.multipart_threshold) {
		r = put_multipart(st, key, &reader, total, oh, nh, &res, &status, reason,
				  sizeof(reason));
	} else {
		r = put_single(st, key, &reader, obj_hash, b64, oh, nh, &res, &status, reason,
			       sizeof(reason));
	}
	if (r == 1) {
		if (st->key_has_sha256) {
			/* Same content under a content-derived key: already archived. */
			res.existed = true;
			r = 0;
		} else {
			char esc_key[LOG_ESC_SIZE];
			log_warn("backend=%s event=s3_key_exists key=%s reason=\"the key does not "
				 "derive from the content (no %%{sha256}), so an existing object "
				 "may be another message; not overwritten\"",
				 st->name, log_esc(esc_key, key));
			status_must(&status, 451, "4.3.0", "Archive key already in use");
			r = -1;
		}
	}
	if (r == 0 && st->set.manifest)
		r = put_manifest(st, d, targets, count, key, mkey, envelope_id, total, obj_hash,
				 &res, oh, nh, &status, reason, sizeof(reason));
	if (prefix != small && prefix != d->trace)
		free(prefix);
	if (r < 0) {
		fail_all(targets, count, &status, key, reason);
		return;
	}
	for (size_t i = 0; i < count; i++) {
		struct target *t = &targets[i];
		if (res.existed)
			status_must(&t->status, 250, "2.0.0", "<%s> already stored (%s)",
				    t->rcpt->rcpt, st->name);
		else
			status_must(&t->status, 250, "2.0.0", "<%s> stored (%s etag %.40s)",
				    t->rcpt->rcpt, st->name, res.etag[0] ? res.etag : "-");
		snprintf(t->ref, sizeof(t->ref), "key=%s etag=%s%s%s%s", key,
			 res.etag[0] ? res.etag : "-", res.version[0] ? " version=" : "",
			 res.version, res.existed ? " already-stored" : "");
	}
}

static void s3_deliver(void *state, const struct delivery *delivery, struct target *targets,
		       size_t count)
{
	struct s3_state *st = state;

	if (count == 0)
		return;
	if (st->per_recipient) {
		for (size_t i = 0; i < count; i++)
			store_object(st, delivery, &targets[i], 1);
	} else {
		store_object(st, delivery, targets, count);
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

	if (s3_perform(st, &r, &resp, &status, reason, sizeof(reason)) < 0) {
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
		 st->base_url);
	return 0;
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
