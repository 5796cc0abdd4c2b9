/*
 * runtime - the live side of a configuration: opened drivers (and the connection pools they
 * keep), the backends' worker pools, and their circuit breakers.
 *
 * A loaded configuration (config.h) is pure settings and never changes. What changes while
 * lmtpgw runs lives here, beside it: the server owns one runtime, every transaction takes a
 * reference to the runtime it started with, and SIGHUP builds a new one. A backend whose
 * settings, and the files they name, did not change keeps its backend_runtime across the
 * reload: same driver state, same pooled IMAP connections, same worker threads, same breaker.
 * A changed or new backend gets a fresh one; a removed one is closed when the last transaction
 * holding it ends.
 *
 * Threads: refcounts are atomic (a worker may hold the last reference of its transaction);
 * breaker fields and pool creation belong to the event-loop thread.
 *
 * Error contract: runtime_open() returns NULL and writes "file:line: backend 'x': message"
 * into error_r.
 */
#ifndef LMTPGW_RUNTIME_H
#define LMTPGW_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>

#include "backend.h"
#include "config.h"

struct pool;

/* One configured backend while it runs. */
struct backend_runtime {
	int refcount;
	/* The configuration the driver was opened with, kept alive because driver state points
	 * into its settings; inst is origin->backends[i] (name, driver, common keys, settings). */
	struct config *origin;
	const struct backend_instance *inst;
	void *state;                   /* from driver->open */
	struct pool *pool;             /* worker threads, created on first delivery */
	char *fingerprint;             /* settings + named files: equal means "unchanged" */
	/* circuit breaker, event-loop thread only */
	unsigned consecutive_failures;
	long long down_until_ms;       /* monotonic ms; recipients get 451 4.4.1 at RCPT until then */
};

struct runtime {
	int refcount;
	struct config *cfg;                /* a reference: the settings of this runtime */
	struct backend_runtime **backends; /* cfg->backend_count, in cfg->backends order */
	bool need_sha256;                  /* some backend uses the content digest */
	struct dedupe *dedupe;             /* memory of stored copies (dedupe_db), or NULL */
	size_t kept, opened;               /* across the reload that built it (for the log) */
};

/* Open cfg's backends, reusing previous's backend_runtime for every backend with the same
 * name, driver, settings and named files (previous may be NULL). The reference to cfg passes
 * to the runtime, also on failure. */
struct runtime *runtime_open(struct config *cfg, const struct runtime *previous, char *error_r,
			     size_t error_size);
struct runtime *runtime_ref(struct runtime *rt);
/* Drop one reference; the last one drops the backends (closing those no other runtime holds)
 * and the configuration. */
void runtime_unref(struct runtime **rt);

/* The backend's worker pool, started on first use (event-loop thread). */
struct pool *backend_runtime_pool(struct backend_runtime *br);

#endif
