/*
 * http - a blocking HTTP(S) client for backends (libcurl), shared by the S3 and webhook drivers.
 *
 * One http_client per configured backend holds a small pool of curl easy handles, so every
 * worker thread reuses connections (curl keeps a connection cache per handle). A request body
 * is either a memory block or streamed from a spool reader with a known length, so a message
 * is never copied into memory to be sent. Responses are captured up to a bound, with the
 * headers a backend needs for its log reference.
 *
 * Transport failures become statuses here, one mapping for every HTTP backend: cannot resolve
 * 451 4.4.3, cannot connect 451 4.4.1, timeout / connection lost 451 4.4.2, TLS verification
 * 451 4.7.5, anything else 451 4.3.0. HTTP status codes are for the caller to map.
 *
 * Thread-safe: http_perform() may run in many workers at once on one client.
 */
#ifndef LMTPGW_HTTP_H
#define LMTPGW_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spool.h"
#include "status.h"

struct curl_slist;

struct http_options {
	const char *ca_file;     /* NULL: the system store */
	long connect_timeout_ms;
	long timeout_ms;         /* whole request */
	bool allow_http;         /* plain http:// allowed (tests, loopback receivers) */
	/* Optional (zero = off), added for the webhook driver: */
	const char *client_cert_file; /* PEM client certificate for mutual TLS */
	const char *client_key_file;  /* its PEM private key (NULL: in client_cert_file) */
	long max_redirects;      /* > 0: follow up to this many redirects (same protocols) */
};

struct http_client;

struct http_client *http_client_new(const struct http_options *options, char *error_r,
				    size_t error_size);
void http_client_free(struct http_client **client);

struct http_request {
	const char *method;              /* "PUT", "POST", "HEAD", "GET", "DELETE" */
	const char *url;
	const struct curl_slist *headers; /* complete header lines, built by the caller */
	const void *body;                /* memory body, or NULL */
	size_t body_len;
	struct spool_reader *reader;     /* or a streamed body (prefix + spool), or NULL */
	/* With a reader, reader_length > 0 sends only the window [reader_offset, reader_offset +
	 * reader_length) of it (an S3 multipart part); 0 sends the whole reader. */
	uint64_t reader_offset;
	uint64_t reader_length;
	size_t response_max;             /* body bytes kept (more are read and dropped) */
	bool no_expect;                  /* suppress "Expect: 100-continue" */
	/* Optional: the body of a 2xx answer is handed to sink as it arrives (a download that
	 * must not be held in memory); other answers are kept in resp as usual. sink returns 0,
	 * or -1 to abort the transfer (a transport failure). */
	int (*sink)(void *ctx, const void *data, size_t len);
	void *sink_ctx;
};

#define HTTP_MAX_HEADERS 32

struct http_response {
	long status;                     /* 0 when no HTTP response was received */
	char *body;                      /* NUL-terminated, body_len bytes kept */
	size_t body_len;
	bool truncated;
	size_t header_count;
	char *header_names[HTTP_MAX_HEADERS];  /* lowercased */
	char *header_values[HTTP_MAX_HEADERS];
	double seconds;
};

/* 0: a complete HTTP response arrived (any status): its header block ended and its body
 * matched its framing (Content-Length, chunked, or close-delimited after complete headers).
 * -1: transport failure, *st_r and reason set, *resp empty (freeing it is allowed, not needed);
 * an answer cut inside its header block or body is such a failure, 451 4.4.2, even when it
 * began with a 2xx status line. */
int http_perform(struct http_client *client, const struct http_request *req,
		 struct http_response *resp, struct status *st_r, char *reason, size_t reason_size);
void http_response_free(struct http_response *resp);

/* Value of a response header (case-insensitive name), or NULL. */
const char *http_response_header(const struct http_response *resp, const char *name);

/* Append a header line built with printf to *list; returns -1 on allocation failure. */
int http_header_add(struct curl_slist **list, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void http_headers_free(struct curl_slist **list);

/* The curl error -> status mapping (exposed for unit tests). */
void http_map_curl_error(int curl_code, struct status *st_r);

#endif
