/*
 * metrics - counters for operators, served in the Prometheus text format (libmicrohttpd).
 *
 * Every counter is an atomic updated with relaxed ordering, so the event loop and the HTTP
 * thread never take a lock for them. Per-backend series are keyed by backend name in a fixed
 * table (METRICS_BACKENDS_MAX names; more share an "other" row), which survives reloads.
 *
 *   GET /metrics   the Prometheus text exposition (version 0.0.4)
 *   GET /health    200 "ok", or 503 "stopping" during shutdown
 *
 * Error contract: metrics_start() returns 0 or -1 with a message in error_r.
 */
#ifndef LMTPGW_METRICS_H
#define LMTPGW_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define METRICS_BACKENDS_MAX 64

/* Start serving on "127.0.0.1:9425" / "[::1]:9425". */
int metrics_start(const char *listen, char *error_r, size_t error_size);
void metrics_stop(void);
void metrics_set_stopping(bool stopping);

void metrics_connection_opened(void);
void metrics_connection_closed(void);
void metrics_connection_refused(void);
void metrics_transaction(uint64_t bytes);
/* A reply to the client: counted by class (2xx/4xx/5xx) for RCPT-time and post-DATA results. */
void metrics_recipient_result(const struct status *reply);
/* One target finished on a backend, with its latency. */
void metrics_target_result(const char *backend, const struct status *st, double seconds);
void metrics_backend_down(const char *backend, bool down);
/* A retry answered from the memory of stored copies, with no second copy (dedupe.h). */
void metrics_duplicate_suppressed(const char *backend);
void metrics_deliveries_in_flight(int delta);

/* The whole exposition text into a malloc'd buffer (for tests and the HTTP handler). */
char *metrics_render(size_t *len_r);

#endif
