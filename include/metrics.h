/*
 * metrics - counters for operators, served in the Prometheus text format (libmicrohttpd).
 *
 * Every counter is an atomic updated with relaxed ordering, so the event loop and the HTTP
 * thread never take a lock for them. Per-backend series are keyed by backend name in a fixed
 * table (METRICS_BACKENDS_MAX names; more share an "other" row), which survives reloads.
 *
 *   GET /metrics   the Prometheus text exposition (version 0.0.4)
 *   GET /status    a small HTML page for people (status_page.h), from metrics_snapshot()
 *   GET /health    200 "ok", or 503 "stopping" during shutdown
 *
 * Error contract: metrics_start() returns 0 or -1 with a message in error_r.
 */
#ifndef LMTPGW_METRICS_H
#define LMTPGW_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "status.h"

#define METRICS_BACKENDS_MAX 64
#define METRICS_HISTORY_MINUTES 15   /* per-minute results kept for the status page */
#define METRICS_LAST_ERROR_MAX 256

/* Start serving on "127.0.0.1:9425" / "[::1]:9425"; version is shown on /status. */
int metrics_start(const char *listen, const char *version, char *error_r, size_t error_size);
void metrics_stop(void);
void metrics_set_stopping(bool stopping);

void metrics_connection_opened(void);
void metrics_connection_closed(void);
/* Why a connection was refused at accept (the `reason` label). */
enum metrics_refusal {
	METRICS_REFUSED_MAX_CONNECTIONS, /* max_connections: 421 4.3.2 */
	METRICS_REFUSED_PER_CLIENT,      /* max_connections_per_client: 421 4.7.0 */
	METRICS_REFUSED_ALLOW_CLIENTS,   /* outside allow_clients: 554 5.7.1 */
	METRICS_REFUSALS
};
void metrics_connection_refused(enum metrics_refusal reason);
/* A read deadline passed and the session was closed (the `phase` label): a command line (the
 * first one, after the greeting, included) or DATA/BDAT bytes under min_data_rate. */
enum metrics_deadline_phase {
	METRICS_DEADLINE_COMMAND,
	METRICS_DEADLINE_DATA,
	METRICS_DEADLINE_PHASES
};
void metrics_deadline_expired(enum metrics_deadline_phase phase);
void metrics_transaction(uint64_t bytes);
/* A final reply for one recipient, counted by class (2xx/4xx/5xx) of the reply sent: a refusal
 * at RCPT (no route, the breaker, a verification, a limit, bad syntax; session.c), a refusal of
 * the message by the session, or the delivery result (dispatcher.c). A 250 to RCPT is not final:
 * each recipient is counted once. */
void metrics_recipient_result(const struct status *reply);
/* One target finished on a backend, with its latency. */
void metrics_target_result(const char *backend, const struct status *st, double seconds);
void metrics_backend_down(const char *backend, bool down);
/* A recipient's best-effort target on backend failed (after its fallback, if any). */
void metrics_best_effort_failure(const char *backend);
/* A fallback backend stored the message of a target on backend that failed. */
void metrics_fallback_delivery(const char *backend, const char *fallback);
/* backend gets its tokens from an OAuth2 token source (its counters are shown from now on). */
void metrics_oauth2_configured(const char *backend);
/* One request to an OAuth2 token endpoint for backend: a token obtained, or not. */
void metrics_oauth2_token_request(const char *backend, bool ok);
/* A retry answered from the memory of stored copies, with no second copy (dedupe.h). */
void metrics_duplicate_suppressed(const char *backend);
void metrics_deliveries_in_flight(int delta);
/* The backends of the configuration now serving (at start and after each reload, on the loop
 * thread): begin, then one call per backend; fresh = opened anew (its breaker is closed). */
void metrics_backends_configured_begin(void);
void metrics_backend_configured(const char *backend, bool fresh);

/* A consistent-enough copy of everything, for the status page: counters are read one by one,
 * the history and last errors of all backends under one lock. */
struct metrics_backend_snapshot {
	char name[64];
	bool configured;                   /* false: removed by a reload */
	bool down;                         /* the circuit breaker holds it down */
	unsigned long long results[3];     /* ok, tempfail, permfail since start */
	/* [0] = the current minute, [i] = i minutes ago; ok, tempfail, permfail */
	unsigned long long history[METRICS_HISTORY_MINUTES][3];
	char last_error[METRICS_LAST_ERROR_MAX]; /* "451 4.4.1 text" of the latest failure, or "" */
	time_t last_error_at, last_ok_at;  /* wall clock; 0 = never */
	int last_class;                    /* latest result: -1 none, 0 ok, 1 tempfail, 2 permfail */
};

struct metrics_snapshot {
	char version[32];
	time_t now;
	long long uptime_s;
	unsigned long long connections_total, transactions;
	long long connections_open, in_flight;
	unsigned long long refused[METRICS_REFUSALS];
	unsigned long long deadline_expiries[METRICS_DEADLINE_PHASES];
	unsigned long long recipients[3];  /* 2xx, 4xx, 5xx */
	size_t backend_count;
	struct metrics_backend_snapshot backends[METRICS_BACKENDS_MAX + 1];
};

/* malloc'd; NULL when out of memory. */
struct metrics_snapshot *metrics_snapshot(void);

/* The whole exposition text into a malloc'd buffer (for tests and the HTTP handler). */
char *metrics_render(size_t *len_r);

#endif
