/*
 * backend - the driver contract, and the registry of drivers by name.
 *
 * A driver is a const table of functions. It is opened once per configured backend block (with
 * a settings struct filled from its own key table; runtime.c opens it, and keeps it across a
 * reload that leaves the block unchanged), delivers a message to the targets it owns, and is
 * closed when the last runtime holding it is released. A driver never talks to the
 * LMTP client and never logs per-recipient results (the dispatcher does): it fills one status
 * and one log reference per target.
 *
 * Threads: deliver() runs in one of the backend's worker threads (up to `concurrency` at once
 * for the same state), except for drivers with inline set, whose deliver() runs on the event
 * loop and must not block. open() and close() run on the event loop thread; verify() too,
 * unless verify_blocking says it talks to the store, then it runs in a worker.
 *
 * Every result obeys the guarantees: 2xx only after the store acknowledged durable storage; any
 * doubt is 4xx; 5xx only on a definitive permanent answer.
 */
#ifndef LMTPGW_BACKEND_H
#define LMTPGW_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "address.h"
#include "conftable.h"
#include "recipient.h"
#include "envelope.h"
#include "router.h"
#include "spool.h"
#include "status.h"
#include "template.h"

/* The buffer a driver's request_key() writes into (a URL fits): the dispatcher and `replay`
 * group targets by it, and must group alike. */
#define REQUEST_KEY_MAX 4096

struct config;

/* The message as every target of one transaction sees it. Read-only for drivers. */
struct delivery {
	struct spool *spool;           /* the content as received (spool_map may be used) */
	const char *trace;             /* Return-Path: and Received: lines, CRLF-terminated */
	size_t trace_len;
	bool delivered_to;             /* prepend "Delivered-To: <rcpt>" per target */
	const char *sender;            /* reverse path without <>, "" for the null sender */
	const struct mail_params *mail;
	const char *session_id;
	const char *txid;
	const char *msgid;             /* Message-ID without <>, "" when none */
	const char *sha256;            /* hex digest of the content as received */
	time_t received;
	const struct config *cfg;
	/* the whole envelope, for manifests and webhooks (Bcc included) */
	const struct recipient *rcpts; /* every accepted recipient of the transaction */
	size_t rcpt_count;
	const char *lhlo;              /* the client's LHLO name */
	const char *client_addr;       /* peer IP address, or "unix" */
	const char *xforward_name;     /* XFORWARD NAME/ADDR/IDENT from the MTA, "" when absent */
	const char *xforward_addr;
	const char *queue_id;
	bool tls;                      /* the LMTP session was encrypted */
};

/* One (recipient, backend) pair. in: rcpt, vars; out: status, ref. */
struct target {
	const struct recipient *rcpt;
	struct template_vars vars;     /* filled from the delivery and the recipient */
	struct status status;          /* the driver's verdict */
	char ref[160];                 /* for the log: file name, APPENDUID, S3 key+ETag, request id */
	/* out: this failure is another target's (one lost connection or request for a whole
	 * batch), so the circuit breaker counts the event once, not once a recipient */
	bool same_failure;
	/* out: this failure concerns the backend as a whole although its code does not say so
	 * (an OAuth2 token that cannot be had: 451 4.7.0 like a refused login, but no user of
	 * the backend can log in): the circuit breaker counts it. */
	bool backend_failure;
	/* out: not stored again, an earlier attempt stored it (dedupe.h) */
	bool duplicate;
};

/* What a RCPT-time verification knows of the transaction besides the recipient. The strings
 * are valid for the verify() call only: the session's own, pointed to (RCPT is hot, and most
 * verifications never read them); dispatch_verify_start() copies them for a worker. */
struct verify_context {
	const char *sender;      /* reverse path without <>, "" for the null sender */
	const char *client_addr; /* peer IP address, or "unix" */
	const char *lhlo;        /* the client's LHLO name */
	const char *session_id;
	const char *txid;
};

struct backend_driver {
	const char *name;
	/* Driver-specific keys of the backend block, and the size of the struct they fill. The
	 * common keys (driver, concurrency, soft_bounce) are handled by config.c. */
	const struct conf_key *keys;
	size_t settings_size;
	/* Check the settings and build the driver's state (no network I/O here). */
	int (*open)(const void *settings, const char *instance_name, void **state_r,
		    char *error_r, size_t error_size);
	/* Deliver to targets[0..count): fill every target's status (and ref). */
	void (*deliver)(void *state, const struct delivery *delivery, struct target *targets,
			size_t count);
	void (*close)(void *state);
	/* Optional, at RCPT time: 0 = fine, -1 = *st_r says why not (e.g. 550 5.1.1). ctx: the
	 * envelope so far (sender, client). */
	int (*verify)(void *state, const struct recipient *rcpt, const struct verify_context *ctx,
		      struct status *st_r);
	/* verify() may block (it talks to the store): the session runs it in the backend's worker
	 * pool and holds the pipeline until it answers. */
	bool verify_blocking;
	/* Optional, for `lmtpgw check --probe`: connect to the store the way a delivery would
	 * (TLS verified, credentials tried where the mode allows) and say what was found in
	 * result. 0 = reachable and usable, -1 = not. May block; runs on the main thread before
	 * the server starts. */
	int (*probe)(void *state, char *result, size_t result_size);
	/* Optional, for `lmtpgw route ADDRESS`: where this backend would put the recipient
	 * (a Maildir path, an IMAP user and folder, an S3 key, a URL) into buf. vars are those
	 * known before the message: sha256, msgid and date are placeholders. */
	void (*explain)(void *state, const struct recipient *rcpt,
			const struct template_vars *vars, char *buf, size_t size);
	/* Optional: does this backend use the content's SHA-256 (keys, ids, templates)? NULL means
	 * yes. When no backend of a configuration does, the spool skips the digest. */
	bool (*uses_sha256)(void *state);
	/* deliver() is quick and non-blocking: run it on the event loop (discard). */
	bool inline_deliver;
	/* deliver() takes all of a transaction's targets of this backend in one call; otherwise
	 * the dispatcher calls it once per target, concurrently. */
	bool batch;
	/* Optional, for batch drivers whose one call may make several independent requests (the
	 * webhook: one request per distinct URL, or per recipient): the request a target goes
	 * into, as a key written to key (e.g. the expanded URL). 0: written; -1: the target is a
	 * request of its own. The dispatcher gives each distinct key its own deliver() call and
	 * pool job, so the requests run concurrently within the backend's concurrency instead of
	 * one after another (where their timeouts would add up). Runs on the loop thread: quick,
	 * no I/O. */
	int (*request_key)(void *state, const struct target *target, char *key, size_t size);
	/* Optional: the mailbox a target's copy goes to (a Maildir directory, an IMAP user and
	 * folder) as text into key, for the memory of stored copies (dedupe.h): a retry of the same
	 * content for the same recipient and mailbox then counts as stored, with no second copy.
	 * Runs in a worker before deliver(); quick, no I/O. 0: written; -1: no memory for it. */
	int (*dedupe_key)(void *state, const struct target *target, char *key, size_t size);
	/* Default of `concurrency` for this driver; 0: the common default (8). */
	unsigned default_concurrency;
};

/* Common keys of every backend block; the struct they fill. */
struct backend_common {
	char *driver;
	long long concurrency;
	bool soft_bounce;
	long long breaker_failures;    /* consecutive failures that open the breaker; 0: never */
	long long breaker_cooloff_ms;
};
extern const struct conf_key backend_common_keys[];

struct pool;

/* A configured backend: a named block of the configuration file (settings only; what runs is
 * its backend_runtime, runtime.h). */
struct backend_instance {
	char *name;
	const struct backend_driver *driver;
	struct backend_common common;
	void *settings;                /* driver->settings_size bytes, filled from driver->keys */
	int line;                      /* of the block in the file, for messages */
};

/* Registry: the drivers, NULL-terminated, and lookup by name (NULL when unknown). */
extern const struct backend_driver *const backend_drivers[];
const struct backend_driver *backend_driver_find(const char *name);

/* Trace prefix for one target: the delivery's trace, then "Delivered-To: rcpt" when enabled.
 * Returns the length (snprintf contract). */
size_t delivery_prefix(const struct delivery *delivery, const struct target *target, char *buf,
		       size_t size);

/* One failure for a set of targets (one lost connection, one failed request, one local error
 * for a whole batch): each gets the bare status st and the log reference ref (NULL: keep its
 * own); all but the first are marked same_failure, so the circuit breaker counts the event
 * once. The set is targets[0..count) (a batch as the dispatcher gave it), or, for
 * backend_fail_group, the targets group[0..count) points to (a driver's own grouping). */
void backend_fail_targets(struct target *targets, size_t count, const struct status *st,
			  const char *ref);
void backend_fail_group(struct target *const *group, size_t count, const struct status *st,
			const char *ref);

/* Fill vars from a delivery and a recipient. */
void delivery_vars(const struct delivery *delivery, const struct recipient *rcpt,
		   struct template_vars *vars_r);

#endif
