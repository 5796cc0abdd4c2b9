/*
 * dedupe - the memory of delivered copies (see dedupe.h for what and why).
 *
 * Why SQLite and not a file of our own: the memory must survive restarts and be shared by the
 * instances on one host, which needs atomic updates, locking between processes and crash
 * consistency: an engine built for that, not a home-made one (issue 16). Cyrus lmtpd keeps its
 * duplicate-delivery database the same way (deliver.db, pruned by cyr_expire -E).
 * WAL with synchronous=NORMAL: a commit is a write into the WAL, no fsync; a power loss may
 * forget the last rows, which only allows a duplicate, never a loss.
 */
#include "dedupe.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <sqlite3.h>

#include "log.h"

#define DEDUPE_KEY_SIZE 32
#define DEDUPE_MAILBOX_MAX 4200
#define DEDUPE_BUSY_MS 2000          /* another instance writing: wait this long, then give up */
#define DEDUPE_RETRY_S 60            /* after a failure to open: try again (and warn) this late */
#define DEDUPE_PRUNE_S 3600          /* prune rows past the TTL at most this often */

/* One connection: lookups have their own and the writes theirs, so a lookup never waits for
 * a commit (WAL readers do not block on the writer). */
struct dedupe_conn {
	pthread_mutex_t lock;        /* guards everything in this struct */
	sqlite3 *db;
	sqlite3_stmt *stmt[2];       /* reader: lookup; writer: record, prune */
	time_t next_open;            /* after a failure: not before */
};

/* Rows of one delivery call waiting to be written (see record()). */
struct pending {
	struct pending *next;
	unsigned char (*keys)[DEDUPE_KEY_SIZE];
	const struct target *targets;
	const size_t *which;
	size_t n;
};

struct dedupe {
	char *path;
	long long ttl_s;
	struct dedupe_conn reader, writer;
	pthread_mutex_t queue_lock;  /* guards queue */
	struct pending *queue;
	pthread_mutex_t warn_lock;   /* guards next_warn */
	time_t next_warn;
	time_t next_prune;           /* writer.lock */
};

struct dedupe *dedupe_new(const char *path, long long ttl_ms)
{
	struct dedupe *dd = calloc(1, sizeof(*dd));

	if (dd == NULL || (dd->path = strdup(path)) == NULL) {
		free(dd);
		return NULL;
	}
	dd->ttl_s = ttl_ms / 1000 > 0 ? ttl_ms / 1000 : 1;
	pthread_mutex_init(&dd->reader.lock, NULL);
	pthread_mutex_init(&dd->writer.lock, NULL);
	pthread_mutex_init(&dd->queue_lock, NULL);
	pthread_mutex_init(&dd->warn_lock, NULL);
	return dd;
}

static void disconnect(struct dedupe_conn *c)
{
	for (size_t i = 0; i < 2; i++) {
		sqlite3_finalize(c->stmt[i]);
		c->stmt[i] = NULL;
	}
	if (c->db != NULL)
		sqlite3_close(c->db);
	c->db = NULL;
}

void dedupe_free(struct dedupe **ddp)
{
	struct dedupe *dd = *ddp;

	if (dd == NULL)
		return;
	*ddp = NULL;
	disconnect(&dd->reader);
	disconnect(&dd->writer);
	pthread_mutex_destroy(&dd->reader.lock);
	pthread_mutex_destroy(&dd->writer.lock);
	pthread_mutex_destroy(&dd->queue_lock);
	pthread_mutex_destroy(&dd->warn_lock);
	free(dd->path);
	free(dd);
}

/* A warning, at most once a minute, that deliveries go on without the memory. */
static void warn_unavailable(struct dedupe *dd, const char *what, const char *error)
{
	time_t now = time(NULL);
	char esc_path[LOG_ESC_SIZE], esc_err[LOG_ESC_SIZE];

	pthread_mutex_lock(&dd->warn_lock);
	bool warn = now >= dd->next_warn;
	if (warn)
		dd->next_warn = now + DEDUPE_RETRY_S;
	pthread_mutex_unlock(&dd->warn_lock);
	if (warn)
		log_warn("event=dedupe_unavailable db=%s step=%s error=\"%s\" "
			 "action=delivering_without_memory",
			 log_esc(esc_path, dd->path), what, log_esc(esc_err, error));
}

/* Whoever can write the memory can make lmtpgw answer 250 for mail it never stored, so the
 * database, its -wal and -shm files (when they exist) and the directory holding them must be
 * lmtpgw's alone: owned by our user (the directory may be root's), not writable by group or
 * others, no symbolic links. NULL when so, else why not. */
static const char *unsafe_files(const char *path)
{
	static const char *const suffixes[] = { "", "-wal", "-shm" };
	char name[4096];
	struct stat sb;

	const char *slash = strrchr(path, '/');
	if (slash == NULL)
		snprintf(name, sizeof(name), ".");
	else if (slash == path)
		snprintf(name, sizeof(name), "/");
	else
		snprintf(name, sizeof(name), "%.*s", (int)(slash - path), path);
	if (stat(name, &sb) < 0)
		return "its directory cannot be read";
	if ((sb.st_uid != geteuid() && sb.st_uid != 0) || (sb.st_mode & (S_IWGRP | S_IWOTH)) != 0)
		return "directory not lmtpgw's (or root's) or writable by group or others";
	for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
		if ((size_t)snprintf(name, sizeof(name), "%s%s", path, suffixes[i]) >= sizeof(name))
			return "the path is too long";
		if (lstat(name, &sb) < 0) {
			if (errno == ENOENT && i > 0)
				continue;
			return "the file cannot be read";
		}
		if (!S_ISREG(sb.st_mode) || sb.st_uid != geteuid() ||
		    (sb.st_mode & (S_IWGRP | S_IWOTH)) != 0)
			return "file, -wal or -shm not a regular file of lmtpgw's or writable by group or "
			       "others";
	}
	return NULL;
}

/* Under c->lock: open the database and prepare the connection's statements, unless it is open
 * or failed recently. true when usable. */
static bool connect_locked(struct dedupe *dd, struct dedupe_conn *c, bool writer)
{
	static const char schema[] =
		"PRAGMA journal_mode=WAL;"
		"PRAGMA synchronous=NORMAL;"
		"CREATE TABLE IF NOT EXISTS delivered (key BLOB PRIMARY KEY, at INTEGER NOT NULL,"
		" ref TEXT NOT NULL) WITHOUT ROWID;"
		"CREATE INDEX IF NOT EXISTS delivered_at ON delivered(at);";
	static const char *const sql[2][2] = {
		{ "SELECT ref FROM delivered WHERE key = ?1 AND at >= ?2", NULL },
		{ "INSERT OR REPLACE INTO delivered (key, at, ref) VALUES (?1, ?2, ?3)",
		  "DELETE FROM delivered WHERE at < ?1" },
	};
	time_t now = time(NULL);
	const char *step = "open";

	if (c->db != NULL)
		return true;
	if (now < c->next_open)
		return false;
	/* Create the file ourselves so it is 0600 (it names mailboxes); SQLite gives its WAL and
	 * shared-memory files the same mode. */
	int fd = open(dd->path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		c->next_open = now + DEDUPE_RETRY_S;
		warn_unavailable(dd, step, strerror(errno));
		return false;
	}
	close(fd);
	/* Refused as secret files are refused (see unsafe_files). */
	const char *why = unsafe_files(dd->path);
	if (why != NULL) {
		c->next_open = now + DEDUPE_RETRY_S;
		warn_unavailable(dd, step, why);
		return false;
	}
	if (sqlite3_open_v2(dd->path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
	    SQLITE_OK)
		goto fail;
	sqlite3_busy_timeout(c->db, DEDUPE_BUSY_MS);
	step = "schema";
	if (sqlite3_exec(c->db, schema, NULL, NULL, NULL) != SQLITE_OK)
		goto fail;
	step = "prepare";
	for (size_t i = 0; i < 2; i++) {
		if (sql[writer][i] != NULL &&
		    sqlite3_prepare_v2(c->db, sql[writer][i], -1, &c->stmt[i], NULL) != SQLITE_OK)
			goto fail;
	}
	return true;
fail:
	warn_unavailable(dd, step, c->db != NULL ? sqlite3_errmsg(c->db) : "out of memory");
	disconnect(c);
	c->next_open = now + DEDUPE_RETRY_S;
	return false;
}

/* The row key: SHA-256 over the fields, each length-prefixed so no two tuples encode alike. */
/* The envelope sender is part of the key: a retry keeps it, while the same bytes sent again
 * by another submission (a script or cron job feeding `lmtpgw deliver` a fixed template) may
 * not, and must not be taken for a copy already stored. */
static int make_key(const char *backend, const char *rcpt, const char *mailbox,
		    const char *sender, const char *content_sha256,
		    unsigned char key[DEDUPE_KEY_SIZE])
{
	const char *const fields[] = { backend, rcpt, mailbox, sender, content_sha256 };
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned int len = 0;
	int ret = -1;

	if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(md, "lmtpgw-dedupe-v2\n", 17) != 1)
		goto out;
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
		char head[32];
		size_t flen = strlen(fields[i]);
		int n = snprintf(head, sizeof(head), "%zu:", flen);
		if (EVP_DigestUpdate(md, head, (size_t)n) != 1 ||
		    EVP_DigestUpdate(md, fields[i], flen) != 1 || EVP_DigestUpdate(md, "\n", 1) != 1)
			goto out;
	}
	if (EVP_DigestFinal_ex(md, key, &len) == 1 && len == DEDUPE_KEY_SIZE)
		ret = 0;
out:
	EVP_MD_CTX_free(md);
	return ret;
}

/* 1: stored before (its reference in ref), 0: not known, -1: the memory failed. */
static int lookup(struct dedupe *dd, const unsigned char *key, char *ref, size_t ref_size)
{
	struct dedupe_conn *c = &dd->reader;
	int ret = -1;

	pthread_mutex_lock(&c->lock);
	if (!connect_locked(dd, c, false))
		goto out;
	sqlite3_stmt *st = c->stmt[0];
	sqlite3_bind_blob(st, 1, key, DEDUPE_KEY_SIZE, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)(time(NULL) - dd->ttl_s));
	int r = sqlite3_step(st);
	if (r == SQLITE_ROW) {
		const unsigned char *text = sqlite3_column_text(st, 0);
		snprintf(ref, ref_size, "%s", text != NULL ? (const char *)text : "");
		ret = 1;
	} else if (r == SQLITE_DONE) {
		ret = 0;
	} else {
		warn_unavailable(dd, "lookup", sqlite3_errmsg(c->db));
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
out:
	pthread_mutex_unlock(&c->lock);
	return ret;
}

/* Under writer.lock: every queued row in one transaction (one WAL append, one set of locks),
 * then the hourly prune. */
static void write_rows(struct dedupe *dd, struct pending *rows)
{
	struct dedupe_conn *c = &dd->writer;
	time_t now = time(NULL);
	const char *step = "record";

	if (!connect_locked(dd, c, true))
		return;
	if (sqlite3_exec(c->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
		goto fail;
	for (struct pending *p = rows; p != NULL; p = p->next) {
		for (size_t k = 0; k < p->n; k++) {
			sqlite3_stmt *st = c->stmt[0];
			sqlite3_bind_blob(st, 1, p->keys[p->which[k]], DEDUPE_KEY_SIZE, SQLITE_STATIC);
			sqlite3_bind_int64(st, 2, (sqlite3_int64)now);
			sqlite3_bind_text(st, 3, p->targets[p->which[k]].ref, -1, SQLITE_STATIC);
			int r = sqlite3_step(st);
			sqlite3_reset(st);
			sqlite3_clear_bindings(st);
			if (r != SQLITE_DONE) {
				sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
				goto fail;
			}
		}
	}
	if (sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
		sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
		goto fail;
	}
	if (now >= dd->next_prune) {
		/* Rows past the TTL are ignored by lookups already; this only bounds the file. */
		dd->next_prune = now + DEDUPE_PRUNE_S;
		step = "prune";
		sqlite3_bind_int64(c->stmt[1], 1, (sqlite3_int64)(now - dd->ttl_s));
		int r = sqlite3_step(c->stmt[1]);
		sqlite3_reset(c->stmt[1]);
		if (r != SQLITE_DONE)
			goto fail;
	}
	return;
fail:
	warn_unavailable(dd, step, sqlite3_errmsg(c->db));
}

/*
 * Remember the stored targets of one delivery call; returns once they are written (or the
 * write failed). Group commit: a commit costs about the same for one row as for ten, and
 * concurrent deliveries finish together (the Maildir directory fsyncs are grouped too). So
 * each caller queues its rows, then takes the writer: whoever holds it writes everything
 * queued so far in one transaction. A caller that finds the queue empty once it holds the
 * writer had its rows written by the one before it, which took them while holding the writer
 * and released it only after the commit.
 */
static void record(struct dedupe *dd, unsigned char (*keys)[DEDUPE_KEY_SIZE],
		   const struct target *targets, const size_t *which, size_t n)
{
	struct pending me = { .keys = keys, .targets = targets, .which = which, .n = n };

	if (n == 0)
		return;
	pthread_mutex_lock(&dd->queue_lock);
	me.next = dd->queue;
	dd->queue = &me;
	pthread_mutex_unlock(&dd->queue_lock);

	pthread_mutex_lock(&dd->writer.lock);
	pthread_mutex_lock(&dd->queue_lock);
	struct pending *rows = dd->queue;
	dd->queue = NULL;
	pthread_mutex_unlock(&dd->queue_lock);
	if (rows != NULL)
		write_rows(dd, rows);
	pthread_mutex_unlock(&dd->writer.lock);
}

void dedupe_deliver(struct dedupe *dd, const struct backend_instance *inst, void *state,
		    const struct delivery *d, struct target *targets, size_t count)
{
	const struct backend_driver *drv = inst->driver;

	if (dd == NULL || drv->dedupe_key == NULL || d->sha256 == NULL || d->sha256[0] == '\0' ||
	    count == 0) {
		drv->deliver(state, d, targets, count);
		return;
	}
	unsigned char (*keys)[DEDUPE_KEY_SIZE] = calloc(count, sizeof(*keys));
	bool *keyed = calloc(count, sizeof(*keyed));
	size_t *todo = calloc(count, sizeof(*todo));
	struct target *sub = calloc(count, sizeof(*sub));
	size_t n = 0;

	if (keys == NULL || keyed == NULL || todo == NULL || sub == NULL) {
		/* no memory for the memory: deliver as without it */
		free(keys);
		free(keyed);
		free(todo);
		free(sub);
		drv->deliver(state, d, targets, count);
		return;
	}
	bool usable = true;
	for (size_t i = 0; i < count; i++) {
		struct target *t = &targets[i];
		char mailbox[DEDUPE_MAILBOX_MAX], original[sizeof(t->ref)];
		if (usable && drv->dedupe_key(state, t, mailbox, sizeof(mailbox)) == 0 &&
		    make_key(inst->name, t->rcpt->rcpt, mailbox, d->sender, d->sha256, keys[i]) == 0) {
			int found = lookup(dd, keys[i], original, sizeof(original));
			if (found == 1) {
				/* Stored by an earlier attempt: the retry counts as stored. */
				status_must(&t->status, 250, "2.0.0",
					    "already stored (%s, duplicate suppressed)", inst->name);
				snprintf(t->ref, sizeof(t->ref), "duplicate=suppressed original=%s",
					 original);
				t->duplicate = true;
				continue;
			}
			keyed[i] = found == 0;
			usable = found == 0; /* failed once: the others go without it too */
		}
		todo[n++] = i;
	}
	if (n == count) {
		drv->deliver(state, d, targets, count);
	} else if (n > 0) {
		/* The driver takes a contiguous array: hand it the others, then copy back. */
		for (size_t k = 0; k < n; k++)
			sub[k] = targets[todo[k]];
		drv->deliver(state, d, sub, n);
		for (size_t k = 0; k < n; k++)
			targets[todo[k]] = sub[k];
	}
	size_t stored = 0;
	for (size_t k = 0; k < n; k++) {
		size_t i = todo[k];
		if (keyed[i] && status_class_of(&targets[i].status) == STATUS_OK)
			todo[stored++] = i;
	}
	record(dd, keys, targets, todo, stored);
	free(keys);
	free(keyed);
	free(todo);
	free(sub);
}
