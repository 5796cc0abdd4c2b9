/*
 * dedupe - the memory of delivered copies, so that an MTA's retry of a message does not store a
 * second copy in a Maildir or an IMAP mailbox (issue 16, part 2).
 *
 * Why it exists: the MTA retries a recipient when one of its targets failed (451), or when our
 * reply was lost (the connection dropped after the final dot, Postfix's end-of-data timeout).
 * Every target of that recipient that had already stored the message would store it again. S3
 * (content key + If-None-Match) and the webhook (stable ids) are idempotent by themselves;
 * Maildir and IMAP are not.
 *
 * What it remembers: one row per stored copy, keyed by SHA-256 over (backend name, recipient
 * address, mailbox as the driver names it, content SHA-256 as received), with the time and the
 * copy's log reference. It is written after the store acknowledged the copy (the target is
 * 2xx) and before the reply leaves; it is read before delivering. A hit answers
 * "250 2.0.0 already stored" without a second copy; the delivery log line's target reference
 * says duplicate=suppressed and names the original.
 *
 * Where: an SQLite database (dedupe_db), WAL mode, synchronous=NORMAL: it survives a restart of
 * lmtpgw and is shared by every instance on the same host (SQLite's own locking); it is not
 * shared across hosts. Rows older than dedupe_ttl are ignored and pruned (hourly, by the worker
 * that writes). See docs/reliability notes in docs/backends/imap.md and docs/scaling.md.
 *
 * Failure: the memory never costs mail. When the database cannot be opened, read or written,
 * the delivery goes ahead as without it (a duplicate is better than a loss) and a warning is
 * logged (at most once a minute).
 *
 * Threads: dedupe_deliver() runs in a backend's worker thread. Lookups and writes have a
 * connection each (a lookup never waits for a commit); writes are group-committed.
 * The database is opened on first use, i.e. in a worker after privileges were dropped.
 */
#ifndef LMTPGW_DEDUPE_H
#define LMTPGW_DEDUPE_H

#include <stddef.h>

#include "backend.h"

struct dedupe;

/* A handle for the database at path (nothing is opened yet); NULL only when out of memory. */
struct dedupe *dedupe_new(const char *path, long long ttl_ms);
void dedupe_free(struct dedupe **dedupe);

/* Deliver targets[0..count) of one backend through its driver, skipping (as stored) those the
 * memory knows, and remembering those the driver stored. A driver without dedupe_key, or a
 * NULL dedupe, is called as is. */
void dedupe_deliver(struct dedupe *dedupe, const struct backend_instance *inst, void *state,
		    const struct delivery *delivery, struct target *targets, size_t count);

#endif
