/*
 * status_page - the HTML page behind GET /status on the metrics listener, for a person with a
 * browser: each backend's state (up, failing, down with its circuit breaker open, the last
 * failure and when), its results per minute over the last METRICS_HISTORY_MINUTES minutes,
 * connections, deliveries in flight, uptime and version.
 *
 * No script at all (the page is served with a Content-Security-Policy that forbids it); it is
 * rendered anew on every request and asks the browser to reload it every 30 s. Every value
 * from outside (backend names, a server's error text) is HTML-escaped. Elements carry id and
 * data-* attributes so that tests (and scrapers) need not parse the prose.
 *
 * Error contract: status_page_render() returns a malloc'd page, or NULL when out of memory.
 */
#ifndef LMTPGW_STATUS_PAGE_H
#define LMTPGW_STATUS_PAGE_H

#include <stddef.h>

#include "metrics.h"

char *status_page_render(const struct metrics_snapshot *snap, size_t *len_r);

#endif
