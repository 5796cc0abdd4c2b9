/*
 * s3_client - signed requests to one bucket of an S3-compatible store, and what their answers
 * mean for a delivery: the endpoint and addressing style, SigV4 signing of every request
 * (sigv4.h) over the real SHA-256 of its payload, the error answer logged and mapped
 * (s3_answer.h), ETag and version id read back.
 *
 * A client is filled by the driver at open and then only read, by any worker thread.
 */
#ifndef LMTPGW_S3_CLIENT_H
#define LMTPGW_S3_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http.h"
#include "s3_credentials.h"
#include "sigv4.h"
#include "spool.h"
#include "status.h"

#define S3_HEADERS_MAX 24          /* headers of one request, the signed ones included */

struct s3_client {
	const char *name;              /* the backend, for log lines */
	const char *bucket;
	const char *region;
	bool virtual_host;             /* https://bucket.host/key, not https://host/bucket/key */
	char base_url[300];            /* "https://host:port" (bucket. prepended when virtual) */
	char host[300];                /* Host header, exactly as signed */
	struct s3_credentials cred;
	struct http_client *http;
};

/* Set the client's host and base_url from an endpoint "https://host[:port]" (http:// only with
 * allow_http); bucket and virtual_host must be set. 0, or -1 with a message. */
int s3_client_endpoint(struct s3_client *c, const char *endpoint, bool allow_http,
		       char *error_r, size_t error_size);

/* One request. headers are the request-specific ones (all signed); host, x-amz-date,
 * x-amz-content-sha256 and the session token are added by s3_perform(). */
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
	int (*sink)(void *ctx, const void *data, size_t len);  /* a GET's 2xx body (http.h) */
	void *sink_ctx;
};

/* Sign and send. 0: an answer arrived (any status; resp filled, free it); -1: transport
 * failure (*st_r, reason). */
int s3_perform(struct s3_client *c, const struct s3_req *r, struct http_response *resp,
	       struct status *st_r, char *reason, size_t reason_size);

/* What a stored object (or a failed attempt) comes back with. */
struct s3_result {
	char etag[80];
	char version[80];
	bool existed;                   /* 412: the same content is already stored */
};

/* Judge an answer for operation op on key: 0 for 2xx, 1 for 412 (reason set), -1 otherwise
 * with *st_r (s3_map_status), reason and a log line (S3's code, message and request id;
 * event=s3_object_lock_refused with a hint when the bucket has no Object Lock). */
int s3_check_answer(const struct s3_client *c, const char *op, const char *key,
		    const struct http_response *resp, struct status *st_r, char *reason,
		    size_t reason_size);

/* The answer's ETag without quotes, or "". */
void s3_copy_etag(const struct http_response *resp, char *out, size_t size);
/* A header of the answer made safe for a log reference (s3_meta_value), or "". */
void s3_copy_header(const struct http_response *resp, const char *name, char *out,
		    size_t size);

/* The SHA-256 of `length` bytes of reader from offset (one streaming pass). */
int s3_hash_window(struct spool_reader *reader, uint64_t offset, uint64_t length,
		   char hex[SIGV4_HEX_SHA256_SIZE]);

/* The client of an opened s3 backend (its driver state), for reading the archive back
 * (lmtpgw replay). Defined in backends/s3.c. */
const struct s3_client *s3_backend_client(const void *state);

#endif
