/*
 * metrics - counters for operators, served in the Prometheus text format (libmicrohttpd).
 *
 * Owns the counter table and the HTTP daemon (its own thread). Names follow Prometheus
 * conventions: *_total for counters, base units (seconds, bytes).
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "spool.h"

static const double latency_buckets[] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
					  1,     2.5,  5,     10,   30,  60 };
#define NBUCKETS (sizeof(latency_buckets) / sizeof(latency_buckets[0]))

struct backend_row {
	char name[64];
	atomic_bool used;
	atomic_ullong results[3];          /* ok, tempfail, permfail */
	atomic_ullong buckets[NBUCKETS];   /* cumulative counts are computed when rendering */
	atomic_ullong count;
	atomic_ullong micros_sum;
	atomic_bool down;
	atomic_ullong duplicates;          /* retries answered from the dedupe memory */
};

static struct {
	atomic_ullong connections_total;
	atomic_llong connections_current;
	atomic_ullong connections_refused;
	atomic_ullong transactions;
	atomic_ullong bytes;
	atomic_ullong recipients[3];       /* replies to recipients: 2xx, 4xx, 5xx */
	atomic_llong in_flight;
	atomic_bool stopping;
	struct backend_row backends[METRICS_BACKENDS_MAX + 1]; /* last: "other" */
	struct MHD_Daemon *daemon;
} m;

static int class_index(const struct status *st)
{
	switch (status_class_of(st)) {
	case STATUS_OK:
		return 0;
	case STATUS_PERMFAIL:
		return 2;
	default:
		return 1;
	}
}

/* Find or claim the row for a backend name (loop thread only claims, so no race on claim). */
static struct backend_row *row_for(const char *name)
{
	for (size_t i = 0; i < METRICS_BACKENDS_MAX; i++) {
		struct backend_row *r = &m.backends[i];
		if (!atomic_load_explicit(&r->used, memory_order_acquire)) {
			snprintf(r->name, sizeof(r->name), "%s", name);
			atomic_store_explicit(&r->used, true, memory_order_release);
			return r;
		}
		if (strcmp(r->name, name) == 0)
			return r;
	}
	struct backend_row *other = &m.backends[METRICS_BACKENDS_MAX];
	if (!atomic_load(&other->used)) {
		snprintf(other->name, sizeof(other->name), "other");
		atomic_store(&other->used, true);
	}
	return other;
}

void metrics_connection_opened(void)
{
	atomic_fetch_add_explicit(&m.connections_total, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&m.connections_current, 1, memory_order_relaxed);
}

void metrics_connection_closed(void)
{
	atomic_fetch_sub_explicit(&m.connections_current, 1, memory_order_relaxed);
}

void metrics_connection_refused(void)
{
	atomic_fetch_add_explicit(&m.connections_refused, 1, memory_order_relaxed);
}

void metrics_transaction(uint64_t bytes)
{
	atomic_fetch_add_explicit(&m.transactions, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&m.bytes, bytes, memory_order_relaxed);
}

void metrics_recipient_result(const struct status *reply)
{
	atomic_fetch_add_explicit(&m.recipients[class_index(reply)], 1, memory_order_relaxed);
}

void metrics_target_result(const char *backend, const struct status *st, double seconds)
{
	struct backend_row *r = row_for(backend);

	atomic_fetch_add_explicit(&r->results[class_index(st)], 1, memory_order_relaxed);
	for (size_t i = 0; i < NBUCKETS; i++) {
		if (seconds <= latency_buckets[i]) {
			atomic_fetch_add_explicit(&r->buckets[i], 1, memory_order_relaxed);
			break;
		}
	}
	atomic_fetch_add_explicit(&r->count, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&r->micros_sum, (unsigned long long)(seconds * 1e6),
				  memory_order_relaxed);
}

void metrics_backend_down(const char *backend, bool down)
{
	atomic_store(&row_for(backend)->down, down);
}

void metrics_duplicate_suppressed(const char *backend)
{
	atomic_fetch_add_explicit(&row_for(backend)->duplicates, 1, memory_order_relaxed);
}

void metrics_deliveries_in_flight(int delta)
{
	atomic_fetch_add_explicit(&m.in_flight, delta, memory_order_relaxed);
}

void metrics_set_stopping(bool stopping)
{
	atomic_store(&m.stopping, stopping);
}

struct text {
	char *buf;
	size_t len, cap;
	bool failed;
};

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct text *t, const char *fmt, ...)
{
	va_list ap;

	if (t->failed)
		return;
	for (;;) {
		va_start(ap, fmt);
		int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
		va_end(ap);
		if (n < 0) {
			t->failed = true;
			return;
		}
		if ((size_t)n < t->cap - t->len) {
			t->len += (size_t)n;
			return;
		}
		size_t cap = t->cap * 2 + (size_t)n;
		char *b = realloc(t->buf, cap);
		if (b == NULL) {
			t->failed = true;
			return;
		}
		t->buf = b;
		t->cap = cap;
	}
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

char *metrics_render(size_t *len_r)
{
	struct text t = { .buf = malloc(8192), .cap = 8192 };
	static const char *const classes[3] = { "2xx", "4xx", "5xx" };
	static const char *const results[3] = { "ok", "tempfail", "permfail" };
	uint64_t spool_mem = 0, spool_disk = 0;

	if (t.buf == NULL)
		return NULL;
	t.buf[0] = '\0';
	put(&t, "# HELP lmtpgw_connections_total LMTP connections accepted.\n"
		"# TYPE lmtpgw_connections_total counter\nlmtpgw_connections_total %llu\n",
	    (unsigned long long)LOAD(m.connections_total));
	put(&t, "# HELP lmtpgw_connections LMTP connections open now.\n"
		"# TYPE lmtpgw_connections gauge\nlmtpgw_connections %lld\n",
	    (long long)LOAD(m.connections_current));
	put(&t, "# HELP lmtpgw_connections_refused_total Connections refused over max_connections.\n"
		"# TYPE lmtpgw_connections_refused_total counter\n"
		"lmtpgw_connections_refused_total %llu\n",
	    (unsigned long long)LOAD(m.connections_refused));
	put(&t, "# HELP lmtpgw_transactions_total Messages received (end of DATA or BDAT LAST).\n"
		"# TYPE lmtpgw_transactions_total counter\nlmtpgw_transactions_total %llu\n",
	    (unsigned long long)LOAD(m.transactions));
	put(&t, "# HELP lmtpgw_received_bytes_total Message bytes received.\n"
		"# TYPE lmtpgw_received_bytes_total counter\nlmtpgw_received_bytes_total %llu\n",
	    (unsigned long long)LOAD(m.bytes));
	put(&t, "# HELP lmtpgw_recipients_total Final replies per recipient, by class.\n"
		"# TYPE lmtpgw_recipients_total counter\n");
	for (int i = 0; i < 3; i++)
		put(&t, "lmtpgw_recipients_total{class=\"%s\"} %llu\n", classes[i],
		    (unsigned long long)LOAD(m.recipients[i]));
	put(&t, "# HELP lmtpgw_deliveries_in_flight Messages being delivered now.\n"
		"# TYPE lmtpgw_deliveries_in_flight gauge\nlmtpgw_deliveries_in_flight %lld\n",
	    (long long)LOAD(m.in_flight));
	spool_stats(&spool_mem, &spool_disk);
	put(&t, "# HELP lmtpgw_spool_bytes Bytes of messages being received or delivered.\n"
		"# TYPE lmtpgw_spool_bytes gauge\n"
		"lmtpgw_spool_bytes{where=\"memory\"} %llu\nlmtpgw_spool_bytes{where=\"disk\"} %llu\n",
	    (unsigned long long)spool_mem, (unsigned long long)spool_disk);

	put(&t, "# HELP lmtpgw_backend_results_total Target results per backend.\n"
		"# TYPE lmtpgw_backend_results_total counter\n");
	for (size_t b = 0; b <= METRICS_BACKENDS_MAX; b++) {
		struct backend_row *r = &m.backends[b];
		if (!atomic_load_explicit(&r->used, memory_order_acquire))
			continue;
		for (int i = 0; i < 3; i++)
			put(&t, "lmtpgw_backend_results_total{backend=\"%s\",result=\"%s\"} %llu\n",
			    r->name, results[i], (unsigned long long)LOAD(r->results[i]));
	}
	put(&t, "# HELP lmtpgw_duplicates_suppressed_total Retries of a copy already stored, "
		"answered without a second copy.\n"
		"# TYPE lmtpgw_duplicates_suppressed_total counter\n");
	for (size_t b = 0; b <= METRICS_BACKENDS_MAX; b++) {
		struct backend_row *r = &m.backends[b];
		if (atomic_load_explicit(&r->used, memory_order_acquire))
			put(&t, "lmtpgw_duplicates_suppressed_total{backend=\"%s\"} %llu\n", r->name,
			    (unsigned long long)LOAD(r->duplicates));
	}
	put(&t, "# HELP lmtpgw_backend_up 0 while the circuit breaker holds the backend down.\n"
		"# TYPE lmtpgw_backend_up gauge\n");
	for (size_t b = 0; b <= METRICS_BACKENDS_MAX; b++) {
		struct backend_row *r = &m.backends[b];
		if (atomic_load_explicit(&r->used, memory_order_acquire))
			put(&t, "lmtpgw_backend_up{backend=\"%s\"} %d\n", r->name,
			    atomic_load(&r->down) ? 0 : 1);
	}
	put(&t, "# HELP lmtpgw_backend_delivery_seconds Time from dispatch to a target's result.\n"
		"# TYPE lmtpgw_backend_delivery_seconds histogram\n");
	for (size_t b = 0; b <= METRICS_BACKENDS_MAX; b++) {
		struct backend_row *r = &m.backends[b];
		if (!atomic_load_explicit(&r->used, memory_order_acquire))
			continue;
		unsigned long long cumulative = 0;
		for (size_t i = 0; i < NBUCKETS; i++) {
			cumulative += LOAD(r->buckets[i]);
			put(&t, "lmtpgw_backend_delivery_seconds_bucket{backend=\"%s\",le=\"%g\"} %llu\n",
			    r->name, latency_buckets[i], cumulative);
		}
		put(&t, "lmtpgw_backend_delivery_seconds_bucket{backend=\"%s\",le=\"+Inf\"} %llu\n",
		    r->name, (unsigned long long)LOAD(r->count));
		put(&t, "lmtpgw_backend_delivery_seconds_sum{backend=\"%s\"} %.6f\n", r->name,
		    (double)LOAD(r->micros_sum) / 1e6);
		put(&t, "lmtpgw_backend_delivery_seconds_count{backend=\"%s\"} %llu\n", r->name,
		    (unsigned long long)LOAD(r->count));
	}
	if (t.failed) {
		free(t.buf);
		return NULL;
	}
	*len_r = t.len;
	return t.buf;
}

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url,
			      const char *method, const char *version, const char *upload_data,
			      size_t *upload_size, void **con_cls)
{
	struct MHD_Response *resp;
	unsigned int code = MHD_HTTP_OK;
	enum MHD_Result ret;

	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
		static const char msg[] = "method not allowed\n";
		resp = MHD_create_response_from_buffer(sizeof(msg) - 1, (void *)msg,
						       MHD_RESPMEM_PERSISTENT);
		code = MHD_HTTP_METHOD_NOT_ALLOWED;
	} else if (strcmp(url, "/metrics") == 0) {
		size_t len = 0;
		char *text = metrics_render(&len);
		if (text == NULL)
			return MHD_NO;
		resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
		if (resp != NULL)
			MHD_add_response_header(resp, "Content-Type",
						"text/plain; version=0.0.4; charset=utf-8");
	} else if (strcmp(url, "/health") == 0) {
		bool stopping = atomic_load(&m.stopping);
		static const char ok[] = "ok\n", stop[] = "stopping\n";
		resp = MHD_create_response_from_buffer(stopping ? sizeof(stop) - 1 : sizeof(ok) - 1,
						       (void *)(stopping ? stop : ok),
						       MHD_RESPMEM_PERSISTENT);
		code = stopping ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK;
	} else {
		static const char msg[] = "not found: try /metrics or /health\n";
		resp = MHD_create_response_from_buffer(sizeof(msg) - 1, (void *)msg,
						       MHD_RESPMEM_PERSISTENT);
		code = MHD_HTTP_NOT_FOUND;
	}
	if (resp == NULL)
		return MHD_NO;
	ret = MHD_queue_response(conn, code, resp);
	MHD_destroy_response(resp);
	return ret;
}

int metrics_start(const char *listen, char *error_r, size_t error_size)
{
	struct sockaddr_storage ss;
	char host[INET6_ADDRSTRLEN + 2];
	const char *colon = strrchr(listen, ':');
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD;

	memset(&ss, 0, sizeof(ss));
	if (colon == NULL || colon == listen || (size_t)(colon - listen) >= sizeof(host) ||
	    atoi(colon + 1) <= 0 || atoi(colon + 1) > 65535) {
		snprintf(error_r, error_size, "metrics_listen: expected HOST:PORT, got '%s'", listen);
		return -1;
	}
	memcpy(host, listen, (size_t)(colon - listen));
	host[colon - listen] = '\0';
	uint16_t port = (uint16_t)atoi(colon + 1);
	if (host[0] == '[' && host[strlen(host) - 1] == ']') {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
		host[strlen(host) - 1] = '\0';
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		if (inet_pton(AF_INET6, host + 1, &in6->sin6_addr) != 1) {
			snprintf(error_r, error_size, "metrics_listen: bad IPv6 address '%s'", host + 1);
			return -1;
		}
		flags |= MHD_USE_IPv6;
	} else {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;
		in->sin_family = AF_INET;
		in->sin_port = htons(port);
		if (inet_pton(AF_INET, host, &in->sin_addr) != 1) {
			snprintf(error_r, error_size, "metrics_listen: bad IPv4 address '%s' (numeric only)",
				 host);
			return -1;
		}
	}
	m.daemon = MHD_start_daemon(flags, port, NULL, NULL, answer, NULL, MHD_OPTION_SOCK_ADDR,
				    (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT, 16U,
				    MHD_OPTION_CONNECTION_TIMEOUT, 10U, MHD_OPTION_END);
	if (m.daemon == NULL) {
		snprintf(error_r, error_size, "metrics_listen: cannot listen on %s", listen);
		return -1;
	}
	return 0;
}

void metrics_stop(void)
{
	if (m.daemon != NULL) {
		MHD_stop_daemon(m.daemon);
		m.daemon = NULL;
	}
}
