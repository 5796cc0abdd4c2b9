/*
 * http - a blocking HTTP(S) client for backends (libcurl), shared by the S3 and webhook drivers.
 *
 * Owns a stack of curl easy handles (reused across requests: connection cache per handle) and
 * the options every request gets. curl_global_init runs once, on the loop thread, when the
 * first client is made (before any worker exists).
 */
#include "http.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#define HTTP_POOL_MAX 64
#define HTTP_EXPECT_MIN (1024 * 1024) /* bodies from this size ask 100-continue first */

struct http_client {
	struct http_options options;
	char *ca_file;
	char *client_cert_file, *client_key_file;
	pthread_mutex_t lock;
	CURL *idle[HTTP_POOL_MAX];
	size_t idle_count;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_result;

static void global_init(void)
{
	global_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

struct http_client *http_client_new(const struct http_options *options, char *error_r,
				    size_t error_size)
{
	pthread_once(&global_once, global_init);
	if (global_result != CURLE_OK) {
		snprintf(error_r, error_size, "libcurl: %s", curl_easy_strerror(global_result));
		return NULL;
	}
	struct http_client *client = calloc(1, sizeof(*client));
	if (client == NULL) {
		snprintf(error_r, error_size, "out of memory");
		return NULL;
	}
	client->options = *options;
	if (options->ca_file != NULL && (client->ca_file = strdup(options->ca_file)) == NULL) {
		free(client);
		snprintf(error_r, error_size, "out of memory");
		return NULL;
	}
	client->options.ca_file = client->ca_file;
	if ((options->client_cert_file != NULL &&
	     (client->client_cert_file = strdup(options->client_cert_file)) == NULL) ||
	    (options->client_key_file != NULL &&
	     (client->client_key_file = strdup(options->client_key_file)) == NULL)) {
		free(client->client_cert_file);
		free(client->ca_file);
		free(client);
		snprintf(error_r, error_size, "out of memory");
		return NULL;
	}
	client->options.client_cert_file = client->client_cert_file;
	client->options.client_key_file = client->client_key_file;
	pthread_mutex_init(&client->lock, NULL);
	return client;
}

void http_client_free(struct http_client **clientp)
{
	struct http_client *client = *clientp;

	if (client == NULL)
		return;
	*clientp = NULL;
	for (size_t i = 0; i < client->idle_count; i++)
		curl_easy_cleanup(client->idle[i]);
	pthread_mutex_destroy(&client->lock);
	free(client->ca_file);
	free(client->client_cert_file);
	free(client->client_key_file);
	free(client);
}

static CURL *handle_take(struct http_client *client)
{
	CURL *h = NULL;

	pthread_mutex_lock(&client->lock);
	if (client->idle_count > 0)
		h = client->idle[--client->idle_count];
	pthread_mutex_unlock(&client->lock);
	if (h != NULL)
		curl_easy_reset(h); /* keeps the connection cache */
	else
		h = curl_easy_init();
	return h;
}

static void handle_give(struct http_client *client, CURL *h)
{
	pthread_mutex_lock(&client->lock);
	if (client->idle_count < HTTP_POOL_MAX) {
		client->idle[client->idle_count++] = h;
		h = NULL;
	}
	pthread_mutex_unlock(&client->lock);
	if (h != NULL)
		curl_easy_cleanup(h);
}

struct transfer {
	struct http_response *resp;
	size_t max;
	struct spool_reader *reader;
	uint64_t reader_start, reader_end; /* the window of the reader that is sent */
	const char *body;
	size_t body_len, body_pos;
	bool read_error;
	/* Framing of the last response, checked after curl says CURLE_OK (see answer_complete). */
	bool headers_ended;           /* its empty line came */
	uint64_t body_received;       /* body bytes curl handed us for it */
	/* A 2xx body goes to the sink instead of resp->body (a download, lmtpgw replay). */
	int (*sink)(void *ctx, const void *data, size_t len);
	void *sink_ctx;
	long code;                    /* status of the response being received */
};

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
	struct transfer *t = arg;
	size_t len = size * nmemb;
	size_t room = t->max > t->resp->body_len ? t->max - t->resp->body_len : 0;
	size_t keep = len < room ? len : room;

	t->body_received += len;
	if (t->sink != NULL && t->code >= 200 && t->code <= 299)
		return t->sink(t->sink_ctx, data, len) == 0 ? len : 0;
	if (keep > 0) {
		char *body = realloc(t->resp->body, t->resp->body_len + keep + 1);
		if (body == NULL)
			return 0;
		memcpy(body + t->resp->body_len, data, keep);
		t->resp->body = body;
		t->resp->body_len += keep;
		body[t->resp->body_len] = '\0';
	}
	if (keep < len)
		t->resp->truncated = true;
	return len;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *arg)
{
	struct transfer *t = arg;
	struct http_response *resp = t->resp;
	size_t len = size * nmemb;
	const char *colon = memchr(data, ':', len);

	if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) {
		/* A new response (after 100 Continue or a redirect): start over. */
		for (size_t i = 0; i < resp->header_count; i++) {
			free(resp->header_names[i]);
			free(resp->header_values[i]);
		}
		resp->header_count = 0;
		t->headers_ended = false;
		t->body_received = 0;
		const char *sp = memchr(data, ' ', len);
		t->code = sp != NULL && (size_t)(sp - data) + 4 <= len ? strtol(sp + 1, NULL, 10) : 0;
		return len;
	}
	if ((len == 2 && data[0] == '\r' && data[1] == '\n') || (len == 1 && data[0] == '\n')) {
		t->headers_ended = true;
		return len;
	}
	if (colon == NULL || resp->header_count >= HTTP_MAX_HEADERS)
		return len;
	size_t name_len = (size_t)(colon - data);
	const char *value = colon + 1;
	size_t value_len = len - name_len - 1;
	while (value_len > 0 && (*value == ' ' || *value == '\t')) {
		value++;
		value_len--;
	}
	while (value_len > 0 && (value[value_len - 1] == '\r' || value[value_len - 1] == '\n' ||
				 value[value_len - 1] == ' '))
		value_len--;
	char *name = strndup(data, name_len), *val = strndup(value, value_len);
	if (name == NULL || val == NULL) {
		free(name);
		free(val);
		return len;
	}
	for (char *p = name; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	resp->header_names[resp->header_count] = name;
	resp->header_values[resp->header_count] = val;
	resp->header_count++;
	return len;
}

static size_t on_read(char *buf, size_t size, size_t nmemb, void *arg)
{
	struct transfer *t = arg;
	size_t want = size * nmemb;

	if (t->reader != NULL) {
		uint64_t left = t->reader->pos < t->reader_end ? t->reader_end - t->reader->pos : 0;
		if (want > left)
			want = (size_t)left;
		if (want == 0)
			return 0;
		ssize_t n = spool_reader_read(t->reader, buf, want);
		if (n < 0) {
			t->read_error = true;
			return CURL_READFUNC_ABORT;
		}
		return (size_t)n;
	}
	size_t left = t->body_len - t->body_pos;
	size_t n = want < left ? want : left;
	memcpy(buf, t->body + t->body_pos, n);
	t->body_pos += n;
	return n;
}

/* curl may rewind the body (a redirect, an auth retry, a reused connection that died). */
static int on_seek(void *arg, curl_off_t offset, int origin)
{
	struct transfer *t = arg;

	if (origin != SEEK_SET || offset < 0)
		return CURL_SEEKFUNC_CANTSEEK;
	if (t->reader != NULL) {
		if ((uint64_t)offset > t->reader_end - t->reader_start)
			return CURL_SEEKFUNC_FAIL;
		t->reader->pos = t->reader_start + (uint64_t)offset;
		return CURL_SEEKFUNC_OK;
	}
	if ((size_t)offset > t->body_len)
		return CURL_SEEKFUNC_FAIL;
	t->body_pos = (size_t)offset;
	return CURL_SEEKFUNC_OK;
}

void http_map_curl_error(int code, struct status *st_r)
{
	switch (code) {
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
		status_must(st_r, 451, "4.4.3", "Cannot resolve the backend's host");
		break;
	case CURLE_COULDNT_CONNECT:
		status_must(st_r, 451, "4.4.1", "Backend not reachable");
		break;
	case CURLE_OPERATION_TIMEDOUT:
		status_must(st_r, 451, "4.4.2", "Backend timed out");
		break;
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_INVALIDCERTSTATUS:
		status_must(st_r, 451, "4.7.5", "Backend TLS certificate not trusted");
		break;
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
		status_must(st_r, 451, "4.4.2", "Connection to backend lost");
		break;
	default:
		status_must(st_r, 451, "4.3.0", "Backend request failed");
		break;
	}
}

/* curl 7.88 returns CURLE_OK for an answer cut inside its header block ("HTTP/1.1 200 OK\r\n"
 * and a close): it takes the close as the end of a close-delimited response. An answer counts
 * only when its header block ended (the empty line came) and its body matched the framing it
 * announced: Content-Length fully received (curl checks this itself and says
 * CURLE_PARTIAL_FILE; checked again here, as it is the guarantee), chunked terminated by the
 * zero chunk (curl fails the transfer otherwise), or delimited by the close once the headers
 * were complete. HTTP/2 and later frame every answer (a stream not ended by the server is an
 * error curl reports), so the header check is for HTTP/1.x. Returns NULL when complete, else
 * why not. */
static const char *answer_complete(CURL *h, const struct transfer *t, const char *method)
{
	long status = 0, version = 0;
	curl_off_t length = -1;

	curl_easy_getinfo(h, CURLINFO_HTTP_VERSION, &version);
	bool http1 = version == CURL_HTTP_VERSION_1_0 || version == CURL_HTTP_VERSION_1_1;
	if (http1 && !t->headers_ended)
		return "answer cut inside its header block";
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
	if (status < 200)
		return "no final answer (only an interim 1xx)";
	if (strcmp(method, "HEAD") == 0 || status == 204 || status == 304)
		return NULL; /* no body whatever Content-Length says */
	if (curl_easy_getinfo(h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length) == CURLE_OK &&
	    length >= 0 && (uint64_t)length != t->body_received)
		return "answer body shorter or longer than its Content-Length";
	return NULL;
}

int http_perform(struct http_client *client, const struct http_request *req,
		 struct http_response *resp, struct status *st_r, char *reason, size_t reason_size)
{
	struct transfer t = { .resp = resp, .max = req->response_max, .reader = req->reader,
			      .body = req->body, .body_len = req->body_len, .sink = req->sink,
			      .sink_ctx = req->sink_ctx };
	char errbuf[CURL_ERROR_SIZE] = "";
	struct curl_slist *extra = NULL, *headers = NULL;
	CURL *h;

	if (req->reader != NULL) {
		uint64_t total = spool_reader_total(req->reader);
		t.reader_start = req->reader_length > 0 ? req->reader_offset : 0;
		t.reader_end = req->reader_length > 0 ? req->reader_offset + req->reader_length : total;
		if (t.reader_start > total || t.reader_end > total || t.reader_end < t.reader_start) {
			memset(resp, 0, sizeof(*resp));
			status_must(st_r, 451, "4.3.0", "Local error in processing");
			snprintf(reason, reason_size, "body window outside the message");
			return -1;
		}
	}
	memset(resp, 0, sizeof(*resp));
	h = handle_take(client);
	if (h == NULL) {
		status_must(st_r, 451, "4.3.0", "Local error in processing");
		snprintf(reason, reason_size, "curl_easy_init failed");
		return -1;
	}
	/* Our copy of the caller's headers, plus the ones we add. */
	for (const struct curl_slist *l = req->headers; l != NULL; l = l->next) {
		struct curl_slist *n = curl_slist_append(headers, l->data);
		if (n == NULL)
			goto oom;
		headers = n;
	}
	/* libcurl asks "Expect: 100-continue" before every upload: a round trip (and a 1 s wait
	 * with servers that ignore it) per request. Worth it only when the body is big enough
	 * that a refusal before sending it saves real work. */
	uint64_t body_len = req->reader != NULL ? t.reader_end - t.reader_start : req->body_len;
	if (req->no_expect || body_len < HTTP_EXPECT_MIN) {
		extra = curl_slist_append(headers, "Expect:");
		if (extra == NULL)
			goto oom;
		headers = extra;
	}
	curl_easy_setopt(h, CURLOPT_URL, req->url);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, client->options.allow_http ? "https,http" : "https");
	if (client->options.max_redirects > 0) {
		curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
		curl_easy_setopt(h, CURLOPT_MAXREDIRS, client->options.max_redirects);
		curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR,
				 client->options.allow_http ? "https,http" : "https");
		/* keep POST a POST after 301/302/303, as the body is the point */
		curl_easy_setopt(h, CURLOPT_POSTREDIR, (long)CURL_REDIR_POST_ALL);
	} else {
		curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
	}
	if (client->options.client_cert_file != NULL) {
		curl_easy_setopt(h, CURLOPT_SSLCERT, client->options.client_cert_file);
		if (client->options.client_key_file != NULL)
			curl_easy_setopt(h, CURLOPT_SSLKEY, client->options.client_key_file);
	}
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, client->options.connect_timeout_ms);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, client->options.timeout_ms);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	if (client->options.ca_file != NULL)
		curl_easy_setopt(h, CURLOPT_CAINFO, client->options.ca_file);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &t);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, &t);
	if (strcmp(req->method, "HEAD") == 0) {
		curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
	} else if (req->body != NULL || req->reader != NULL) {
		curl_off_t len = req->reader != NULL ? (curl_off_t)(t.reader_end - t.reader_start)
						     : (curl_off_t)req->body_len;
		curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, len);
		curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
		curl_easy_setopt(h, CURLOPT_READDATA, &t);
		curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, on_seek);
		curl_easy_setopt(h, CURLOPT_SEEKDATA, &t);
		curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, req->method);
	} else if (strcmp(req->method, "GET") != 0) {
		curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, req->method);
	}
	if (req->reader != NULL)
		req->reader->pos = t.reader_start;

	CURLcode rc = curl_easy_perform(h);
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp->status);
	curl_easy_getinfo(h, CURLINFO_TOTAL_TIME, &resp->seconds);
	const char *incomplete = rc == CURLE_OK ? answer_complete(h, &t, req->method) : NULL;
	if (incomplete != NULL) {
		/* The connection must not go back to curl's cache: drop the handle with it. */
		curl_easy_cleanup(h);
		h = NULL;
	}
	curl_slist_free_all(headers);
	if (h != NULL)
		handle_give(client, h);
	if (incomplete != NULL) {
		status_must(st_r, 451, "4.4.2", "Connection to backend lost (answer incomplete)");
		snprintf(reason, reason_size, "%s %s: %s (HTTP %ld)", req->method, req->url,
			 incomplete, resp->status);
		http_response_free(resp); /* what came of it is not an answer */
		return -1;
	}
	if (rc != CURLE_OK) {
		if (t.read_error) {
			status_must(st_r, 451, "4.3.0", "Local error reading the message");
			snprintf(reason, reason_size, "spool read failed");
		} else {
			http_map_curl_error(rc, st_r);
			snprintf(reason, reason_size, "%s %s: %s", req->method, req->url,
				 errbuf[0] ? errbuf : curl_easy_strerror(rc));
		}
		/* Headers may have come before the failure: free them here, as callers do not
		 * free the response of a failed request. */
		http_response_free(resp);
		return -1;
	}
	return 0;
oom:
	curl_slist_free_all(headers);
	handle_give(client, h);
	status_must(st_r, 451, "4.3.0", "Local error in processing");
	snprintf(reason, reason_size, "out of memory");
	return -1;
}

void http_response_free(struct http_response *resp)
{
	free(resp->body);
	for (size_t i = 0; i < resp->header_count; i++) {
		free(resp->header_names[i]);
		free(resp->header_values[i]);
	}
	memset(resp, 0, sizeof(*resp));
}

const char *http_response_header(const struct http_response *resp, const char *name)
{
	for (size_t i = 0; i < resp->header_count; i++) {
		if (strcasecmp(resp->header_names[i], name) == 0)
			return resp->header_values[i];
	}
	return NULL;
}

int http_header_add(struct curl_slist **list, const char *fmt, ...)
{
	char line[2048];
	va_list ap;

	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(line))
		return -1;
	struct curl_slist *l = curl_slist_append(*list, line);
	if (l == NULL)
		return -1;
	*list = l;
	return 0;
}

void http_headers_free(struct curl_slist **list)
{
	curl_slist_free_all(*list);
	*list = NULL;
}
