/*
 * dispatcher - runs a transaction's targets on their backends and folds the results.
 *
 * A dispatch owns everything a delivery reads (spool, trace, recipients) from dispatch_start()
 * until its last target has finished, so a client that hangs up mid-delivery cannot pull memory
 * from under a worker. Targets are laid out grouped by backend, so a batch driver gets its
 * targets as one contiguous array; where its driver names the request each target goes into
 * (request_key), each request gets its own contiguous run and its own pool job. All
 * bookkeeping happens on the loop thread: workers only run driver->deliver() on their own
 * targets.
 */
#include "dispatcher.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "dedupe.h"
#include "format.h"
#include "log.h"
#include "metrics.h"
#include "pool.h"
#include "reply.h"
#include "runtime.h"

struct dispatch;

struct dispatch_job {
	struct pool_job job;          /* first: the pool hands us back this pointer */
	struct dispatch *dispatch;
	struct backend_runtime *backend;
	size_t first, count;          /* targets[first .. first+count) */
};

struct dispatch {
	struct runtime *rt;           /* a reference: backends as they run */
	const struct config *cfg;     /* rt->cfg */
	struct delivery delivery;
	struct mail_params mail;
	char *strings;                /* one block holding trace and every string below */
	char *trace;
	char *sender;
	char *session_id;
	char *txid;
	char *msgid;
	char *queue_id;
	char *client;
	char *lhlo;
	char *client_addr;
	char *xforward_name;
	char *xforward_addr;

	struct recipient *rcpts;
	size_t rcpt_count;
	struct target *targets;
	void *target_block;           /* one block holding the per-target and per-recipient arrays */
	unsigned *target_backend;     /* backend index of each target */
	size_t target_count;
	unsigned *rcpt_pending;       /* unfinished targets per recipient */
	bool *rcpt_reported;          /* reply given (normally, or at the deadline) */
	bool *target_done;            /* loop-side copy: the worker finished this target */
	bool *target_job_start;       /* a deliver() call (one pool job) starts at this target */
	struct event *deadline;
	size_t *rcpt_targets;         /* per recipient: its target indexes, rcpt_target_start[i].. */
	size_t *rcpt_target_start;

	struct dispatch_job *jobs;
	size_t job_count;
	size_t jobs_pending;
	size_t rcpts_pending;

	dispatch_result_fn *cb;
	void *ctx;
	struct timespec started;
};

static unsigned in_flight;
static unsigned unanswered;

unsigned dispatch_in_flight(void)
{
	return in_flight;
}

unsigned dispatch_unanswered(void)
{
	return unanswered;
}

/* Copy the request's strings into one block: one allocation a message instead of eleven
 * (allocation was a tenth of the CPU of a small delivery, docs/performance.md). A NULL
 * becomes "". */
static void copy_strings(struct dispatch *d, const struct dispatch_request *req)
{
	const char *const src[] = {
		req->delivery.sender, req->delivery.session_id, req->delivery.txid,
		req->delivery.msgid, req->queue_id, req->client, req->delivery.lhlo,
		req->delivery.client_addr, req->delivery.xforward_name,
		req->delivery.xforward_addr,
	};
	char **const dst[] = {
		&d->sender, &d->session_id, &d->txid, &d->msgid, &d->queue_id, &d->client,
		&d->lhlo, &d->client_addr, &d->xforward_name, &d->xforward_addr,
	};
	size_t lens[sizeof(src) / sizeof(src[0])];
	size_t total = req->delivery.trace_len + 1;

	for (size_t i = 0; i < sizeof(src) / sizeof(src[0]); i++) {
		lens[i] = src[i] != NULL ? strlen(src[i]) : 0;
		total += lens[i] + 1;
	}
	char *p = malloc(total);
	if (p == NULL)
		abort(); /* out of memory while holding a message: nothing sensible is left to do */
	d->strings = p;
	d->trace = p;
	memcpy(p, req->delivery.trace, req->delivery.trace_len);
	p[req->delivery.trace_len] = '\0';
	p += req->delivery.trace_len + 1;
	for (size_t i = 0; i < sizeof(src) / sizeof(src[0]); i++) {
		if (lens[i] > 0)
			memcpy(p, src[i], lens[i]);
		p[lens[i]] = '\0';
		*dst[i] = p;
		p += lens[i] + 1;
	}
}

#define REQUEST_KEY_MAX 4096 /* a driver's request key (a URL) */

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (p == NULL)
		abort();
	return p;
}

static void dispatch_free(struct dispatch *d)
{
	spool_free(&d->delivery.spool);
	free(d->strings);
	free(d->rcpts);
	free(d->target_block);
	if (d->deadline != NULL)
		event_free(d->deadline);
	free(d->jobs);
	d->cfg = NULL;
	runtime_unref(&d->rt);
	free(d);
	in_flight--;
	metrics_deliveries_in_flight(-1);
}

static const char *class_name(const struct status *st)
{
	switch (status_class_of(st)) {
	case STATUS_OK:
		return "ok";
	case STATUS_TEMPFAIL:
		return "tempfail";
	case STATUS_PERMFAIL:
		return "permfail";
	default:
		return "other";
	}
}

/* Fold one recipient's targets into one bare reply: all ok -> ok; any temporary -> the first
 * temporary; otherwise the first permanent. Soft bounce was applied per target already.
 * Returns the backend whose verdict it is (NULL for the session's own: expired, several
 * stores). */
static const struct backend_instance *fold_recipient(struct dispatch *d, size_t ri,
						     struct status *reply)
{
	size_t first = d->rcpt_target_start[ri], end = d->rcpt_target_start[ri + 1];
	const struct status *temp = NULL, *perm = NULL;
	size_t temp_ti = 0, perm_ti = 0;
	static struct status expired;

	/* Only the loop thread folds, so one static status for "still running" is safe. */
	status_must(&expired, 451, "4.4.7", "delivery time expired, try again later");
	for (size_t k = first; k < end; k++) {
		size_t ti = d->rcpt_targets[k];
		const struct status *st = d->target_done[ti] ? &d->targets[ti].status : &expired;
		if (status_class_of(st) == STATUS_TEMPFAIL && temp == NULL) {
			temp = st;
			temp_ti = ti;
		} else if (status_class_of(st) != STATUS_OK &&
			   status_class_of(st) != STATUS_TEMPFAIL && perm == NULL) {
			perm = st;
			perm_ti = ti;
		}
	}
	if (temp != NULL) {
		*reply = *temp;
		return temp == &expired ? NULL : &d->cfg->backends[d->target_backend[temp_ti]];
	} else if (perm != NULL) {
		*reply = *perm;
		return &d->cfg->backends[d->target_backend[perm_ti]];
	} else if (end - first == 1) {
		size_t ti = d->rcpt_targets[first];
		*reply = d->targets[ti].status; /* finished: else temp != NULL */
		return &d->cfg->backends[d->target_backend[ti]];
	} else {
		char names[STATUS_TEXT_MAX] = "";
		size_t len = 0;
		for (size_t k = first; k < end && len < sizeof(names); k++) {
			unsigned b = d->target_backend[d->rcpt_targets[k]];
			int n = format(names + len, sizeof(names) - len, "%s%s",
					 k > first ? ", " : "", d->cfg->backends[b].name);
			if (n > 0)
				len += (size_t)n;
		}
		status_must(reply, 250, "2.0.0", "stored (%s)", names);
	}
	return NULL;
}

static void log_recipient(struct dispatch *d, size_t ri, const struct status *reply)
{
	char targets[1024] = "", esc_rcpt[LOG_ESC_SIZE], esc_from[LOG_ESC_SIZE];
	char esc_targets[1400], esc_text[LOG_ESC_SIZE], esc_qid[LOG_ESC_SIZE];
	char xclient[LOG_ESC_SIZE] = "", esc_xname[LOG_ESC_SIZE], esc_xaddr[LOG_ESC_SIZE];
	size_t len = 0;
	struct timespec now;

	if (log_get_level() < LOG_LEVEL_INFO)
		return; /* nothing would be written: do not build the line */
	for (size_t k = d->rcpt_target_start[ri]; k < d->rcpt_target_start[ri + 1]; k++) {
		size_t ti = d->rcpt_targets[k];
		const struct target *t = &d->targets[ti];
		unsigned b = d->target_backend[ti];
		int n = d->target_done[ti]
				? format(targets + len, sizeof(targets) - len, "%s%s:%d:%s:%s",
					   len > 0 ? "," : "", d->cfg->backends[b].name,
					   t->status.code, t->status.enhanced, t->ref[0] ? t->ref : "-")
				: format(targets + len, sizeof(targets) - len, "%s%s:running",
					   len > 0 ? "," : "", d->cfg->backends[b].name);
		if (n < 0 || (size_t)n >= sizeof(targets) - len)
			break;
		len += (size_t)n;
	}
	clock_gettime(CLOCK_MONOTONIC, &now);
	/* Milliseconds as integers: a "%.3f" would send the whole line through vsnprintf. */
	long long delay_ms = (long long)(now.tv_sec - d->started.tv_sec) * 1000 +
			     (now.tv_nsec - d->started.tv_nsec) / 1000000;
	if (delay_ms < 0)
		delay_ms = 0;
	log_escape(esc_targets, sizeof(esc_targets), targets, strlen(targets), sizeof(targets));
	log_escape(esc_text, sizeof(esc_text), reply->text, strlen(reply->text), 200);
	/* client= is the peer that connected to us; what an XFORWARD said stands beside it, so a
	 * forged XFORWARD cannot hide who sent the mail. */
	if (d->xforward_name[0] || d->xforward_addr[0])
		format(xclient, sizeof(xclient), " xforward_client=%s[%s]",
		       d->xforward_name[0] ? log_esc(esc_xname, d->xforward_name) : "unknown",
		       d->xforward_addr[0] ? log_esc(esc_xaddr, d->xforward_addr) : "unknown");
	log_info("event=delivery session=%s tx=%s%s%s client=%s%s from=<%s> rcpt=<%s> result=%s "
		 "reply=\"%d %s %s\" targets=\"%s\" size=%llu delay=%lld.%s%lld",
		 d->session_id, d->txid, d->queue_id[0] ? " qid=" : "",
		 d->queue_id[0] ? log_esc(esc_qid, d->queue_id) : "", d->client, xclient,
		 log_esc(esc_from, d->sender), log_esc(esc_rcpt, d->rcpts[ri].rcpt),
		 class_name(reply), reply->code, reply->enhanced, esc_text, esc_targets,
		 (unsigned long long)spool_size(d->delivery.spool), delay_ms / 1000,
		 delay_ms % 1000 < 10 ? "00" : delay_ms % 1000 < 100 ? "0" : "", delay_ms % 1000);
}

static void maybe_free(struct dispatch *d)
{
	if (d->jobs_pending == 0 && d->rcpts_pending == 0)
		dispatch_free(d);
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool dispatch_backend_down(const struct backend_runtime *b)
{
	return b->down_until_ms > 0 && now_ms() < b->down_until_ms;
}

/* Only failures that say "the backend as a whole is unreachable" count: network (x.4.x) and
 * its TLS certificate (4.7.5). A full mailbox says nothing about it. */
static void breaker_account(struct backend_runtime *b, const struct status *st)
{
	const char *name = b->inst->name;

	/* 4.7.0 is left out: a login refused for one unknown user looks the same as a wrong
	 * admin password, and must not let a few such recipients take the backend down. */
	bool backend_failure = status_class_of(st) == STATUS_TEMPFAIL &&
			       (strncmp(st->enhanced, "4.4.", 4) == 0 ||
				strcmp(st->enhanced, "4.7.5") == 0);

	if (!backend_failure) {
		if (status_class_of(st) == STATUS_OK && b->down_until_ms > 0) {
			log_info("event=backend_up backend=%s", name);
			metrics_backend_down(name, false);
			b->down_until_ms = 0;
		}
		if (status_class_of(st) == STATUS_OK)
			b->consecutive_failures = 0;
		return;
	}
	b->consecutive_failures++;
	if (b->inst->common.breaker_failures > 0 &&
	    b->consecutive_failures >= (unsigned)b->inst->common.breaker_failures &&
	    !dispatch_backend_down(b)) {
		b->down_until_ms = now_ms() + b->inst->common.breaker_cooloff_ms;
		metrics_backend_down(name, true);
		log_warn("event=backend_down backend=%s failures=%u cooloff_ms=%lld last=\"%d %s\"",
			 name, b->consecutive_failures, b->inst->common.breaker_cooloff_ms, st->code,
			 st->enhanced);
	}
}

static void report_recipient(struct dispatch *d, size_t ri)
{
	struct status reply;

	const struct backend_instance *backend = fold_recipient(d, ri, &reply);
	/* The transaction id in every final reply: the MTA logs it, so its log and ours meet. */
	reply_for_recipient(d->cfg, backend, d->rcpts[ri].rcpt, d->txid, &reply);
	log_recipient(d, ri, &reply);
	metrics_recipient_result(&reply);
	d->rcpt_reported[ri] = true;
	if (--d->rcpts_pending == 0)
		unanswered--;
	if (d->rcpts_pending == 0 && d->deadline != NULL)
		event_del(d->deadline);
	if (d->cb != NULL)
		d->cb(d->ctx, ri, &reply);
}

/* A target's verdict is in: apply the reply policy (soft bounce), and report its recipient
 * when complete. */
static void target_finished(struct dispatch *d, size_t ti)
{
	struct target *t = &d->targets[ti];
	const struct backend_instance *b = &d->cfg->backends[d->target_backend[ti]];
	size_t ri = (size_t)(t->rcpt - d->rcpts);

	if (t->status.code == 0)
		status_must(&t->status, 451, "4.3.0", "internal error: backend %s gave no result",
			    b->name);
	reply_policy_final(d->cfg, b, &t->status);
	d->target_done[ti] = true;
	{
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		metrics_target_result(b->name, &t->status,
				      (double)(now.tv_sec - d->started.tv_sec) +
					      (double)(now.tv_nsec - d->started.tv_nsec) / 1e9);
	}
	if (t->duplicate)
		metrics_duplicate_suppressed(b->name);
	if (!t->same_failure)
		breaker_account(d->rt->backends[d->target_backend[ti]], &t->status);
	d->rcpt_pending[ri]--;
	if (d->rcpt_reported[ri]) {
		/* Answered 451 4.4.7 at the deadline already. A late success means a copy is stored
		 * that the MTA will send again: say so loudly. */
		char esc[LOG_ESC_SIZE];
		(status_class_of(&t->status) == STATUS_OK ? log_warn : log_info)(
			"event=late_result session=%s tx=%s rcpt=<%s> backend=%s reply=\"%d %s\" "
			"note=%s",
			d->session_id, d->txid, log_esc(esc, t->rcpt->rcpt), b->name, t->status.code,
			t->status.enhanced,
			status_class_of(&t->status) == STATUS_OK ? "stored_after_deadline_duplicate_likely"
								 : "none_stored");
		return;
	}
	if (d->rcpt_pending[ri] > 0)
		return;
	report_recipient(d, ri);
}

/* The deadline passed: answer every recipient still waiting (451 4.4.7 for its running
 * targets); workers carry on and their results are logged as late. */
static void deadline_expired(evutil_socket_t fd, short what, void *arg)
{
	struct dispatch *d = arg;

	log_warn("event=delivery_deadline session=%s tx=%s waiting_recipients=%zu", d->session_id,
		 d->txid, d->rcpts_pending);
	for (size_t ri = 0; ri < d->rcpt_count; ri++) {
		if (!d->rcpt_reported[ri])
			report_recipient(d, ri);
	}
	maybe_free(d);
}

static void job_run(struct pool_job *pj)
{
	struct dispatch_job *job = (struct dispatch_job *)pj;
	struct dispatch *d = job->dispatch;

	/* Through the memory of stored copies: a retry stores no second copy (dedupe.h). */
	dedupe_deliver(d->rt->dedupe, job->backend->inst, job->backend->state, &d->delivery,
		       d->targets + job->first, job->count);
}

static void job_done(struct pool_job *pj)
{
	struct dispatch_job *job = (struct dispatch_job *)pj;
	struct dispatch *d = job->dispatch;

	d->jobs_pending--;
	for (size_t k = 0; k < job->count; k++)
		target_finished(d, job->first + k);
	maybe_free(d);
}

/* Mark where the deliver() calls of one backend's targets [first, end) start, reordering them
 * so that the targets of one request sit together.
 *
 * A batch driver used to get all its targets in one call, so a webhook transaction with three
 * URLs made three requests one after another on one worker and their timeouts added up (three
 * recipients at a hanging receiver hit the delivery deadline instead of one timeout each). Two
 * ways to run them at once: a curl multi handle inside the worker, or one pool job per request.
 * Jobs on the pool are the cleaner one: the pool's size is the backend's concurrency limit, so
 * the requests are bounded by it with no second counter (a multi handle would open any number
 * of connections from one worker); each request's recipients are answered when that request
 * ends, not when the slowest of the transaction does; and drivers stay plain blocking code, as
 * design.md wants. The cost is one key per target, computed here on the loop thread. */
static void split_jobs(struct dispatch *d, const struct backend_runtime *br, size_t first,
		       size_t end)
{
	const struct backend_instance *b = br->inst;
	size_t count = end - first;

	if (count == 0)
		return;
	if (!b->driver->batch) {
		for (size_t i = first; i < end; i++)
			d->target_job_start[i] = true;
		return;
	}
	d->target_job_start[first] = true;
	if (b->driver->request_key == NULL || count == 1)
		return;
	char **keys = xcalloc(count, sizeof(*keys));
	struct target *ordered = xcalloc(count, sizeof(*ordered));
	bool *placed = xcalloc(count, sizeof(*placed));
	bool *starts = xcalloc(count, sizeof(*starts));
	char *key = xcalloc(1, REQUEST_KEY_MAX);
	for (size_t i = 0; i < count; i++) {
		const struct target *t = &d->targets[first + i];
		if (b->driver->request_key(br->state, t, key, REQUEST_KEY_MAX) == 0 &&
		    (keys[i] = strdup(key)) == NULL)
			abort(); /* out of memory while holding a message, as xcalloc */
	}
	/* Groups in the order of their first target; within a group, the original order. */
	size_t o = 0;
	for (size_t i = 0; i < count; i++) {
		if (placed[i])
			continue;
		starts[o] = true;
		ordered[o++] = d->targets[first + i];
		placed[i] = true;
		for (size_t j = i + 1; keys[i] != NULL && j < count; j++) {
			if (!placed[j] && keys[j] != NULL && strcmp(keys[i], keys[j]) == 0) {
				ordered[o++] = d->targets[first + j];
				placed[j] = true;
			}
		}
	}
	memcpy(&d->targets[first], ordered, count * sizeof(*ordered));
	memcpy(&d->target_job_start[first], starts, count * sizeof(*starts));
	for (size_t i = 0; i < count; i++)
		free(keys[i]);
	free(keys);
	free(ordered);
	free(placed);
	free(starts);
	free(key);
}

static void build_targets(struct dispatch *d)
{
	size_t total = 0;

	for (size_t i = 0; i < d->rcpt_count; i++)
		total += d->rcpts[i].rule->target_count;
	/* Eight arrays in one zeroed block, each aligned for any type. */
	size_t rcpts = d->rcpt_count;
	size_t sizes[] = {
		total * sizeof(*d->targets), total * sizeof(*d->target_backend),
		rcpts * sizeof(*d->rcpt_pending), rcpts * sizeof(*d->rcpt_reported),
		total * sizeof(*d->target_done), total * sizeof(*d->rcpt_targets),
		(rcpts + 1) * sizeof(*d->rcpt_target_start), total * sizeof(*d->target_job_start),
	};
	size_t offsets[sizeof(sizes) / sizeof(sizes[0])], block = 0;
	const size_t align = _Alignof(max_align_t);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		offsets[i] = block;
		block += (sizes[i] + align - 1) / align * align;
	}
	char *base = xcalloc(1, block);
	d->target_block = base;
	d->targets = (struct target *)(void *)(base + offsets[0]);
	d->target_backend = (unsigned *)(void *)(base + offsets[1]);
	d->rcpt_pending = (unsigned *)(void *)(base + offsets[2]);
	d->rcpt_reported = (bool *)(void *)(base + offsets[3]);
	d->target_done = (bool *)(void *)(base + offsets[4]);
	d->rcpt_targets = (size_t *)(void *)(base + offsets[5]);
	d->rcpt_target_start = (size_t *)(void *)(base + offsets[6]);
	d->target_job_start = (bool *)(void *)(base + offsets[7]);

	/* Grouped by backend, so a batch call gets a contiguous slice. */
	size_t n = 0;
	for (unsigned b = 0; b < d->cfg->backend_count; b++) {
		size_t first = n;
		for (size_t i = 0; i < d->rcpt_count; i++) {
			const struct route_rule *rule = d->rcpts[i].rule;
			for (size_t k = 0; k < rule->target_count; k++) {
				if (rule->targets[k] != b)
					continue;
				/* A backend named twice in one route delivers once. */
				bool seen = false;
				for (size_t j = 0; j < k; j++)
					seen = seen || rule->targets[j] == b;
				if (seen)
					continue;
				d->targets[n].rcpt = &d->rcpts[i];
				delivery_vars(&d->delivery, &d->rcpts[i], &d->targets[n].vars);
				d->target_backend[n] = b;
				d->rcpt_pending[i]++;
				n++;
			}
		}
		split_jobs(d, d->rt->backends[b], first, n);
	}
	d->target_count = n;
	/* Per recipient index, in the route's backend order. */
	size_t pos = 0;
	for (size_t i = 0; i < d->rcpt_count; i++) {
		d->rcpt_target_start[i] = pos;
		const struct route_rule *rule = d->rcpts[i].rule;
		for (size_t k = 0; k < rule->target_count; k++) {
			for (size_t t = 0; t < n; t++) {
				if (d->targets[t].rcpt == &d->rcpts[i] &&
				    d->target_backend[t] == rule->targets[k]) {
					bool dup = false;
					for (size_t j = d->rcpt_target_start[i]; j < pos; j++)
						dup = dup || d->rcpt_targets[j] == t;
					if (!dup)
						d->rcpt_targets[pos++] = t;
					break;
				}
			}
		}
	}
	d->rcpt_target_start[d->rcpt_count] = pos;
}

struct dispatch_verify {
	struct pool_job job;          /* first: the pool hands us back this pointer */
	struct runtime *rt;           /* a reference: keeps backend open */
	struct backend_runtime *backend;
	struct recipient rcpt;
	int result;
	struct status status;
	dispatch_verify_fn *cb;
	void *ctx;
};

static void verify_run(struct pool_job *pj)
{
	struct dispatch_verify *v = (struct dispatch_verify *)pj;

	v->result = v->backend->inst->driver->verify(v->backend->state, &v->rcpt, &v->status);
}

static void verify_done(struct pool_job *pj)
{
	struct dispatch_verify *v = (struct dispatch_verify *)pj;

	if (v->cb != NULL)
		v->cb(v->ctx, v->result, &v->status);
	runtime_unref(&v->rt);
	free(v);
}

struct dispatch_verify *dispatch_verify_start(struct runtime *rt, struct backend_runtime *backend,
					      const struct recipient *rcpt, dispatch_verify_fn *cb,
					      void *ctx)
{
	struct dispatch_verify *v = xcalloc(1, sizeof(*v));

	v->job.run = verify_run;
	v->job.done = verify_done;
	v->rt = runtime_ref(rt);
	v->backend = backend;
	v->rcpt = *rcpt;
	v->cb = cb;
	v->ctx = ctx;
	pool_submit(backend_runtime_pool(backend), &v->job);
	return v;
}

void dispatch_verify_detach(struct dispatch_verify *v)
{
	if (v != NULL) {
		v->cb = NULL;
		v->ctx = NULL;
	}
}

struct dispatch *dispatch_start(struct dispatch_request *req, dispatch_result_fn *cb, void *ctx)
{
	struct dispatch *d = xcalloc(1, sizeof(*d));

	in_flight++;
	metrics_deliveries_in_flight(1);
	clock_gettime(CLOCK_MONOTONIC, &d->started);
	d->rt = runtime_ref(req->rt);
	d->cfg = d->rt->cfg;
	d->cb = cb;
	d->ctx = ctx;
	d->delivery = req->delivery;
	req->delivery.spool = NULL;
	copy_strings(d, req);
	if (req->delivery.mail != NULL)
		d->mail = *req->delivery.mail;
	d->delivery.trace = d->trace;
	d->delivery.sender = d->sender;
	d->delivery.session_id = d->session_id;
	d->delivery.txid = d->txid;
	d->delivery.msgid = d->msgid;
	d->delivery.mail = &d->mail;
	d->delivery.sha256 = spool_sha256_hex(d->delivery.spool);
	d->delivery.cfg = d->cfg;
	d->delivery.lhlo = d->lhlo;
	d->delivery.client_addr = d->client_addr;
	d->delivery.xforward_name = d->xforward_name;
	d->delivery.xforward_addr = d->xforward_addr;
	d->delivery.queue_id = d->queue_id;
	d->rcpts = req->rcpts;
	d->rcpt_count = req->rcpt_count;
	d->delivery.rcpts = d->rcpts;
	d->delivery.rcpt_count = d->rcpt_count;
	req->rcpts = NULL;

	build_targets(d);
	d->rcpts_pending = d->rcpt_count;
	if (d->rcpts_pending > 0)
		unanswered++;

	if (req->base != NULL && d->cfg->delivery_deadline_ms > 0) {
		struct timeval tv = { .tv_sec = d->cfg->delivery_deadline_ms / 1000,
				      .tv_usec = (d->cfg->delivery_deadline_ms % 1000) * 1000 };
		d->deadline = evtimer_new(req->base, deadline_expired, d);
		if (d->deadline != NULL)
			evtimer_add(d->deadline, &tv);
	}
	/* One job per request of a batch driver (per backend when it makes one request), one per
	 * target otherwise: split_jobs() marked where each starts. */
	d->jobs = xcalloc(d->target_count, sizeof(*d->jobs));
	for (size_t t = 0; t < d->target_count;) {
		struct backend_runtime *b = d->rt->backends[d->target_backend[t]];
		size_t count = 1;
		while (t + count < d->target_count && !d->target_job_start[t + count])
			count++;
		struct dispatch_job *job = &d->jobs[d->job_count++];
		job->job.run = job_run;
		job->job.done = job_done;
		job->dispatch = d;
		job->backend = b;
		job->first = t;
		job->count = count;
		t += count;
	}
	/* Count every job, plus one for this function, before running any: an inline job must
	 * not free d while we still walk the list. */
	d->jobs_pending = d->job_count + 1;
	size_t job_count = d->job_count;
	struct dispatch_job *jobs = d->jobs;
	for (size_t j = 0; j < job_count; j++) {
		struct dispatch_job *job = &jobs[j];
		struct backend_runtime *b = job->backend;
		if (b->inst->driver->inline_deliver) {
			job_run(&job->job);
			job_done(&job->job); /* may free d on the last job */
			continue;
		}
		pool_submit(backend_runtime_pool(b), &job->job);
	}
	d->jobs_pending--;
	if (job_count > 0 && d->jobs_pending == 0 && d->rcpts_pending == 0) {
		/* Everything ran inline and every result has been reported. */
		dispatch_free(d);
		return NULL;
	}
	if (job_count == 0) {
		/* No target at all cannot happen (every route has a backend); be safe. */
		for (size_t i = 0; i < d->rcpt_count; i++) {
			struct status st;
			status_must(&st, 451, "4.3.0", "internal error: no target");
			reply_for_recipient(d->cfg, NULL, d->rcpts[i].rcpt, d->txid, &st);
			if (--d->rcpts_pending == 0)
				unanswered--;
			if (d->cb != NULL)
				d->cb(d->ctx, i, &st);
		}
		dispatch_free(d);
		return NULL;
	}
	return d;
}

void dispatch_detach(struct dispatch *d)
{
	if (d == NULL)
		return;
	d->cb = NULL;
	d->ctx = NULL;
}
