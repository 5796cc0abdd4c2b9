/*
 * metrics - counters for operators, served in the Prometheus text format (libmicrohttpd).
 *
 * Owns the counter table and the HTTP daemon (its own thread). Names follow Prometheus
 * conventions: *_total for counters, base units (seconds, bytes).
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

#include "spool.h"
#include "status_page.h"

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
	atomic_bool configured;            /* in the configuration now serving */
	/* For the status page, under history_lock: results per minute (a ring indexed by the
	 * monotonic minute; a slot whose stamp is not that minute is stale) and the last failure. */
	struct {
		long long stamp;           /* monotonic minute + 1; 0 = never used */
		unsigned long long counts[3];
	} history[METRICS_HISTORY_MINUTES];
	char last_error[METRICS_LAST_ERROR_MAX];
	time_t last_error_at, last_ok_at;  /* wall clock, 0 = never */
	int last_class;                    /* class of the latest result: 0 ok, 1 temp, 2 perm */
	bool any_result;
	atomic_ullong best_effort_failures; /* recipients whose best-effort target here failed */
	atomic_bool oauth2_used;
	atomic_ullong oauth2_requests[2];  /* token endpoint requests: ok, failed */
	atomic_ullong duplicates;          /* retries answered from the dedupe memory */
};

/* Messages a fallback stored for a failed target: one row per (backend, fallback) pair. */
struct fallback_row {
	char backend[64], fallback[64];
	atomic_bool used;
	atomic_ullong count;
};

static struct {
	atomic_ullong connections_total;
	atomic_llong connections_current;
	atomic_ullong connections_refused[METRICS_REFUSALS];
	atomic_ullong deadline_expiries[METRICS_DEADLINE_PHASES];
	atomic_ullong transactions;
	atomic_ullong bytes;
	atomic_ullong recipients[3];       /* replies to recipients: 2xx, 4xx, 5xx */
	atomic_llong in_flight;
	atomic_bool stopping;
	struct backend_row backends[METRICS_BACKENDS_MAX + 1]; /* last: "other" */
	struct fallback_row fallbacks[METRICS_BACKENDS_MAX + 1]; /* last: "other" pairs */
	struct MHD_Daemon *daemon;
	char version[32];
	long long started_mono_s;
} m;

/* The per-minute history and last errors are several fields that must change together, so
 * unlike the counters they take a lock: the loop thread once per target result (uncontended
 * but for a /status render), the HTTP thread once per /status. */
static pthread_mutex_t history_lock = PTHREAD_MUTEX_INITIALIZER;

static long long mono_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec;
}

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

void metrics_connection_refused(enum metrics_refusal reason)
{
	atomic_fetch_add_explicit(&m.connections_refused[reason], 1, memory_order_relaxed);
}

void metrics_deadline_expired(enum metrics_deadline_phase phase)
{
	atomic_fetch_add_explicit(&m.deadline_expiries[phase], 1, memory_order_relaxed);
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

	int ci = class_index(st);
	long long stamp = mono_seconds() / 60 + 1;
	time_t now = time(NULL);
	pthread_mutex_lock(&history_lock);
	__typeof__(r->history[0]) *slot = &r->history[stamp % METRICS_HISTORY_MINUTES];
	if (slot->stamp != stamp) {
		memset(slot->counts, 0, sizeof(slot->counts));
		slot->stamp = stamp;
	}
	slot->counts[ci]++;
	r->last_class = ci;
	r->any_result = true;
	if (ci == 0) {
		r->last_ok_at = now;
	} else {
		/* The status text is printable ASCII already (status_make); the page escapes it. */
		snprintf(r->last_error, sizeof(r->last_error), "%d %s %s", st->code, st->enhanced,
			 st->text);
		r->last_error_at = now;
	}
	pthread_mutex_unlock(&history_lock);
}

void metrics_backends_configured_begin(void)
{
	for (size_t i = 0; i <= METRICS_BACKENDS_MAX; i++)
		atomic_store(&m.backends[i].configured, false);
}

void metrics_backend_configured(const char *backend, bool fresh)
{
	struct backend_row *r = row_for(backend);

	atomic_store(&r->configured, true);
	/* A backend opened afresh has a closed breaker: its old row must not say "down". */
	if (fresh)
		atomic_store(&r->down, false);
}

void metrics_best_effort_failure(const char *backend)
{
	atomic_fetch_add_explicit(&row_for(backend)->best_effort_failures, 1, memory_order_relaxed);
}

/* Claimed on the loop thread only, as row_for(). */
void metrics_fallback_delivery(const char *backend, const char *fallback)
{
	struct fallback_row *r = &m.fallbacks[METRICS_BACKENDS_MAX];

	for (size_t i = 0; i < METRICS_BACKENDS_MAX; i++) {
		struct fallback_row *f = &m.fallbacks[i];
		if (!atomic_load_explicit(&f->used, memory_order_acquire)) {
			snprintf(f->backend, sizeof(f->backend), "%s", backend);
			snprintf(f->fallback, sizeof(f->fallback), "%s", fallback);
			atomic_store_explicit(&f->used, true, memory_order_release);
			r = f;
			break;
		}
		if (strcmp(f->backend, backend) == 0 && strcmp(f->fallback, fallback) == 0) {
			r = f;
			break;
		}
	}
	if (r == &m.fallbacks[METRICS_BACKENDS_MAX] && !atomic_load(&r->used)) {
		snprintf(r->backend, sizeof(r->backend), "other");
		snprintf(r->fallback, sizeof(r->fallback), "other");
		atomic_store(&r->used, true);
	}
	atomic_fetch_add_explicit(&r->count, 1, memory_order_relaxed);
}

void metrics_backend_down(const char *backend, bool down)
{
	atomic_store(&row_for(backend)->down, down);
}

void metrics_oauth2_configured(const char *backend)
{
	/* From the start, as zeros: an alert on increase() then sees the first failure. */
	atomic_store(&row_for(backend)->oauth2_used, true);
}

void metrics_oauth2_token_request(const char *backend, bool ok)
{
	struct backend_row *r = row_for(backend);

	atomic_store(&r->oauth2_used, true);
	atomic_fetch_add_explicit(&r->oauth2_requests[ok ? 0 : 1], 1, memory_order_relaxed);
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
	/* Every label value from the start (zeros included): an alert on increase() sees the
	 * first refusal, which it cannot when the series appears with its first sample. */
	static const char *const refusals[METRICS_REFUSALS] = { "max_connections", "per_client",
								"allow_clients" };
	put(&t, "# HELP lmtpgw_connections_refused_total Connections refused at accept, by reason.\n"
		"# TYPE lmtpgw_connections_refused_total counter\n");
	for (int i = 0; i < METRICS_REFUSALS; i++)
		put(&t, "lmtpgw_connections_refused_total{reason=\"%s\"} %llu\n", refusals[i],
		    (unsigned long long)LOAD(m.connections_refused[i]));
	static const char *const phases[METRICS_DEADLINE_PHASES] = { "command", "data" };
	put(&t, "# HELP lmtpgw_deadline_expiries_total Sessions closed because the client was too "
		"slow (421 4.4.2), by phase.\n"
		"# TYPE lmtpgw_deadline_expiries_total counter\n");
	for (int i = 0; i < METRICS_DEADLINE_PHASES; i++)
		put(&t, "lmtpgw_deadline_expiries_total{phase=\"%s\"} %llu\n", phases[i],
		    (unsigned long long)LOAD(m.deadline_expiries[i]));
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
	put(&t, "# HELP lmtpgw_best_effort_failures_total Recipients whose best-effort target "
		"failed (the reply did not change).\n"
		"# TYPE lmtpgw_best_effort_failures_total counter\n");
	for (size_t b = 0; b <= METRICS_BACKENDS_MAX; b++) {
		struct backend_row *r = &m.backends[b];
		if (atomic_load_explicit(&r->used, memory_order_acquire))
			put(&t, "lmtpgw_best_effort_failures_total{backend=\"%s\"} %llu\n", r->name,
			    (unsigned long long)LOAD(r->best_effort_failures));
	}
	put(&t, "# HELP lmtpgw_fallback_deliveries_total Messages a fallback backend stored for a "
		"failed target.\n"
		"# TYPE lmtpgw_fallback_deliveries_total counter\n");
	for (size_t b = 0; b <= METRICS_BACKENDS_MAX; b++) {
		struct fallback_row *f = &m.fallbacks[b];
		if (atomic_load_explicit(&f->used, memory_order_acquire))
			put(&t, "lmtpgw_fallback_deliveries_total{backend=\"%s\",fallback=\"%s\"} "
				"%llu\n", f->backend, f->fallback, (unsigned long long)LOAD(f->count));
	}
	put(&t, "# HELP lmtpgw_oauth2_token_requests_total OAuth2 token endpoint requests.\n"
		"# TYPE lmtpgw_oauth2_token_requests_total counter\n");
	for (size_t b = 0; b <= METRICS_BACKENDS_MAX; b++) {
		struct backend_row *r = &m.backends[b];
		if (!atomic_load_explicit(&r->used, memory_order_acquire) ||
		    !atomic_load(&r->oauth2_used))
			continue;
		for (int i = 0; i < 2; i++)
			put(&t, "lmtpgw_oauth2_token_requests_total{backend=\"%s\",result=\"%s\"} %llu\n",
			    r->name, i == 0 ? "ok" : "failed",
			    (unsigned long long)LOAD(r->oauth2_requests[i]));
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
	} else if (strcmp(url, "/status") == 0) {
		struct metrics_snapshot *snap = metrics_snapshot();
		size_t len = 0;
		char *html = snap != NULL ? status_page_render(snap, &len) : NULL;
		free(snap);
		if (html == NULL)
			return MHD_NO;
		resp = MHD_create_response_from_buffer(len, html, MHD_RESPMEM_MUST_FREE);
		if (resp != NULL) {
			MHD_add_response_header(resp, "Content-Type", "text/html; charset=utf-8");
			MHD_add_response_header(resp, "Cache-Control", "no-store");
			/* No script of ours, and none can be injected through a value we show. */
			MHD_add_response_header(resp, "Content-Security-Policy",
						"default-src 'none'; style-src 'unsafe-inline'");
			MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
		}
	} else if (strcmp(url, "/health") == 0) {
		bool stopping = atomic_load(&m.stopping);
		static const char ok[] = "ok\n", stop[] = "stopping\n";
		resp = MHD_create_response_from_buffer(stopping ? sizeof(stop) - 1 : sizeof(ok) - 1,
						       (void *)(stopping ? stop : ok),
						       MHD_RESPMEM_PERSISTENT);
		code = stopping ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK;
	} else {
		static const char msg[] = "not found: try /metrics, /status or /health\n";
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

struct metrics_snapshot *metrics_snapshot(void)
{
	struct metrics_snapshot *s = calloc(1, sizeof(*s));

	if (s == NULL)
		return NULL;
	snprintf(s->version, sizeof(s->version), "%s", m.version);
	s->now = time(NULL);
	s->uptime_s = m.started_mono_s > 0 ? mono_seconds() - m.started_mono_s : 0;
	s->connections_total = LOAD(m.connections_total);
	s->connections_open = LOAD(m.connections_current);
	for (int i = 0; i < METRICS_REFUSALS; i++)
		s->refused[i] = LOAD(m.connections_refused[i]);
	for (int i = 0; i < METRICS_DEADLINE_PHASES; i++)
		s->deadline_expiries[i] = LOAD(m.deadline_expiries[i]);
	s->transactions = LOAD(m.transactions);
	for (int i = 0; i < 3; i++)
		s->recipients[i] = LOAD(m.recipients[i]);
	s->in_flight = LOAD(m.in_flight);

	long long stamp = mono_seconds() / 60 + 1;
	pthread_mutex_lock(&history_lock);
	for (size_t b = 0; b <= METRICS_BACKENDS_MAX; b++) {
		struct backend_row *r = &m.backends[b];
		if (!atomic_load_explicit(&r->used, memory_order_acquire))
			continue;
		struct metrics_backend_snapshot *o = &s->backends[s->backend_count++];
		snprintf(o->name, sizeof(o->name), "%s", r->name);
		/* The overflow row counts backends past METRICS_BACKENDS_MAX names: shown too. */
		o->configured = atomic_load(&r->configured) || b == METRICS_BACKENDS_MAX;
		o->down = atomic_load(&r->down);
		for (int i = 0; i < 3; i++)
			o->results[i] = LOAD(r->results[i]);
		for (long long ago = 0; ago < METRICS_HISTORY_MINUTES && stamp - ago > 0; ago++) {
			const __typeof__(r->history[0]) *slot =
				&r->history[(stamp - ago) % METRICS_HISTORY_MINUTES];
			if (slot->stamp == stamp - ago)
				memcpy(o->history[ago], slot->counts, sizeof(o->history[ago]));
		}
		snprintf(o->last_error, sizeof(o->last_error), "%s", r->last_error);
		o->last_error_at = r->last_error_at;
		o->last_ok_at = r->last_ok_at;
		o->last_class = r->any_result ? r->last_class : -1;
	}
	pthread_mutex_unlock(&history_lock);
	return s;
}

int metrics_start(const char *listen, const char *version, char *error_r, size_t error_size)
{
	struct sockaddr_storage ss;
	char host[INET6_ADDRSTRLEN + 2];
	const char *colon = strrchr(listen, ':');
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD;

	memset(&ss, 0, sizeof(ss));
	snprintf(m.version, sizeof(m.version), "%s", version);
	m.started_mono_s = mono_seconds();
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
