/*
 * s3_client - signed requests to one bucket and their answers (see s3_client.h).
 */
#include "s3_client.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "log.h"
#include "s3_answer.h"
#include "s3_fields.h"

#define S3_RESPONSE_MAX 8192       /* bytes of an answer body read: S3's XML answers are small */

int s3_client_endpoint(struct s3_client *c, const char *endpoint, bool allow_http,
		       char *error_r, size_t error_size)
{
	const char *ep = endpoint, *scheme, *auth;

	if (strncasecmp(ep, "https://", 8) == 0) {
		scheme = "https";
		auth = ep + 8;
	} else if (strncasecmp(ep, "http://", 7) == 0) {
		if (!allow_http) {
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
		unsigned char ch = (unsigned char)auth[i];
		if (ch == '@' || ch <= 0x20 || ch >= 0x7f) {
			snprintf(error_r, error_size, "endpoint: bad character in host");
			return -1;
		}
	}
	char authority[201];
	for (size_t i = 0; i < n; i++)
		authority[i] = (char)tolower((unsigned char)auth[i]);
	authority[n] = '\0';
	if (c->virtual_host) {
		snprintf(c->host, sizeof(c->host), "%s.%s", c->bucket, authority);
	} else {
		snprintf(c->host, sizeof(c->host), "%s", authority);
	}
	snprintf(c->base_url, sizeof(c->base_url), "%s://%s", scheme, c->host);
	return 0;
}

int s3_perform(struct s3_client *c, const struct s3_req *r, struct http_response *resp,
	       struct status *st_r, char *reason, size_t reason_size)
{
	char path[2 * S3_KEY_MAX + 80], enc_path[3 * sizeof(path)], query[1024];
	char url[sizeof(enc_path) + sizeof(query) + 320], amz_date[SIGV4_AMZ_DATE_SIZE];
	char auth[1024];
	struct sigv4_param h[S3_HEADERS_MAX];
	size_t n = 0;
	struct curl_slist *list = NULL;
	int ret = -1;

	if (c->virtual_host)
		snprintf(path, sizeof(path), "/%s", r->key != NULL ? r->key : "");
	else
		snprintf(path, sizeof(path), "/%s%s%s", c->bucket, r->key != NULL ? "/" : "",
			 r->key != NULL ? r->key : "");
	sigv4_amz_date(time(NULL), amz_date);
	h[n++] = (struct sigv4_param){ "Host", c->host };
	h[n++] = (struct sigv4_param){ "x-amz-date", amz_date };
	h[n++] = (struct sigv4_param){ "x-amz-content-sha256", r->payload_hash };
	if (c->cred.session_token != NULL)
		h[n++] = (struct sigv4_param){ "x-amz-security-token", c->cred.session_token };
	for (size_t i = 0; i < r->header_count && n < S3_HEADERS_MAX; i++)
		h[n++] = r->headers[i];
	struct sigv4_request sreq = { .method = r->method, .path = path, .query = r->query,
				      .query_count = r->query_count, .headers = h,
				      .header_count = n, .payload_hash = r->payload_hash };
	struct sigv4_credentials cred = { c->cred.access_key, c->cred.secret_key,
					  c->cred.session_token };
	if (sigv4_uri_encode(path, strlen(path), true, enc_path, sizeof(enc_path)) < 0 ||
	    sigv4_canonical_query(r->query, r->query_count, query, sizeof(query)) < 0 ||
	    sigv4_authorization(&sreq, &cred, amz_date, c->region, "s3", auth,
				sizeof(auth)) < 0) {
		status_must(st_r, 451, "4.3.0", "Local error in processing");
		snprintf(reason, reason_size, "cannot sign the request (too long)");
		return -1;
	}
	snprintf(url, sizeof(url), "%s%s%s%s", c->base_url, enc_path, query[0] ? "?" : "", query);
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
		.sink = r->sink, .sink_ctx = r->sink_ctx,
	};
	ret = http_perform(c->http, &req, resp, st_r, reason, reason_size);
	http_headers_free(&list);
	return ret;
oom:
	http_headers_free(&list);
	status_must(st_r, 451, "4.3.0", "Local error in processing");
	snprintf(reason, reason_size, "out of memory");
	return -1;
}

/* The SHA-256 of `length` bytes of reader from offset (one streaming pass). */
int s3_hash_window(struct spool_reader *reader, uint64_t offset, uint64_t length,
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
int s3_check_answer(const struct s3_client *c, const char *op, const char *key,
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
			  c->name, op, esc_key, esc_code, esc_rid, esc_msg);
		snprintf(reason, reason_size, "%s http=%ld code=%s object-lock-refused rid=%s", op,
			 resp->status, err.code, err.request_id[0] ? err.request_id : "-");
	} else {
		log_warn("backend=%s event=s3_error op=%s key=%s http=%ld code=%s request_id=%s "
			 "message=\"%s\"",
			 c->name, op, esc_key, resp->status, esc_code, esc_rid, esc_msg);
	}
	return -1;
}

void s3_copy_etag(const struct http_response *resp, char *out, size_t size)
{
	const char *e = http_response_header(resp, "etag");
	size_t w = 0;

	for (; e != NULL && *e != '\0' && w + 1 < size; e++) {
		if (*e != '"' && (unsigned char)*e > 0x20 && (unsigned char)*e < 0x7f)
			out[w++] = *e;
	}
	out[w] = '\0';
}

void s3_copy_header(const struct http_response *resp, const char *name, char *out,
		    size_t size)
{
	const char *v = http_response_header(resp, name);
	s3_meta_value(v != NULL ? v : "", 100, out, size);
}
