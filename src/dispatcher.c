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
 *
 * Roles (router.h): a recipient's reply follows its required targets only; a best-effort
 * target's failure goes to the log line and a metric. A target with a fallback that fails
 * (any non-2xx, or its breaker open at dispatch) is delivered again to the fallback backend,
 * as a job of its own launched from the loop when the target's result comes in; the
 * fallback's result then stands for the target (fold_recipient, target_result).
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
	const struct route_target **target_route; /* each target's route entry: role, fallback */
	bool *target_skipped;         /* breaker open at dispatch: not tried (may fail unreplied) */
	/* Per target, only when a route of the transaction names a fallback (else NULL): */
	struct target *fallback_targets; /* the fallback's delivery of target ti */
	unsigned char *fallback_state;   /* enum fallback_state */
	size_t fallbacks_queued;

	struct dispatch_job *jobs;
	size_t job_count;
	size_t jobs_pending;
	size_t rcpts_pending;

	dispatch_result_fn *cb;
	void *ctx;
	struct timespec started;
};

enum fallback_state { FALLBACK_NONE, FALLBACK_QUEUED, FALLBACK_RUNNING, FALLBACK_DONE };

/* The deliveries of failed targets to their fallback backend: one deliver() call, its own
 * copies of the targets (a batch needs them contiguous). */
struct fallback_job {
	struct pool_job job;          /* first: the pool hands us back this pointer */
	struct dispatch *dispatch;
	struct backend_runtime *backend;
	size_t count;
	size_t *primary;              /* primary[k]: the target that targets[k] stands in for */
	struct target targets[];
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
	free(d->fallback_targets);
	free(d->fallback_state);
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

/* The result of target ti as its recipient sees it: the target's own, or, once the target
 * failed and its fallback ran, the fallback's (backend_r says whose). When the fallback refused
 * for good the target's own failure stands: temporary, a retry may find the target back;
 * permanent, both refused. NULL while the target or its fallback still runs. */
static const struct status *target_result(const struct dispatch *d, size_t ti, unsigned *backend_r,
					  bool *by_fallback_r)
{
	const struct status *own = &d->targets[ti].status;

	*backend_r = d->target_backend[ti];
	*by_fallback_r = false;
	if (!d->target_done[ti])
		return NULL;
	if (d->fallback_state == NULL || d->fallback_state[ti] == FALLBACK_NONE)
		return own;
	if (d->fallback_state[ti] != FALLBACK_DONE)
		return NULL;
	const struct status *fb = &d->fallback_targets[ti].status;
	if (status_class_of(fb) != STATUS_OK && status_class_of(fb) != STATUS_TEMPFAIL)
		return own;
	*backend_r = (unsigned)d->target_route[ti]->fallback;
	*by_fallback_r = true;
	return fb;
}

/* Fold one recipient's required targets into one bare reply: all ok -> ok; any temporary ->
 * the first temporary; otherwise the first permanent. Best-effort targets never decide it (a
 * route has a required target: config.c). Soft bounce was applied per target already.
 * Returns the backend whose verdict it is (NULL for the session's own: expired, several
 * stores). */
static const struct backend_instance *fold_recipient(struct dispatch *d, size_t ri,
						     struct status *reply)
{
	size_t first = d->rcpt_target_start[ri], end = d->rcpt_target_start[ri + 1];
	const struct status *temp = NULL, *perm = NULL, *stored_st = NULL;
	unsigned temp_b = 0, perm_b = 0, stored_b = 0;
	size_t stored = 0;
	bool stored_by_fallback = false;
	static struct status expired;

	/* Only the loop thread folds, so one static status for "still running" is safe. */
	status_must(&expired, 451, "4.4.7", "delivery time expired, try again later");
	for (size_t k = first; k < end; k++) {
		size_t ti = d->rcpt_targets[k];
		unsigned b;
		bool by_fallback;
		const struct status *st = target_result(d, ti, &b, &by_fallback);
		if (st != NULL && status_class_of(st) == STATUS_OK) {
			stored++;
			stored_st = st;
			stored_b = b;
			stored_by_fallback = by_fallback;
			continue;
		}
		if (!d->target_route[ti]->required)
			continue; /* best-effort: logged and counted by report_recipient */
		if (st == NULL)
			st = &expired;
		if (status_class_of(st) == STATUS_TEMPFAIL && temp == NULL) {
			temp = st;
			temp_b = b;
		} else if (status_class_of(st) != STATUS_TEMPFAIL && perm == NULL) {
			perm = st;
			perm_b = b;
		}
	}
	if (temp != NULL) {
		*reply = *temp;
		return temp == &expired ? NULL : &d->cfg->backends[temp_b];
	} else if (perm != NULL) {
		*reply = *perm;
		return &d->cfg->backends[perm_b];
	} else if (stored == 1 && !stored_by_fallback) {
		*reply = *stored_st; /* one store: its own words and reference */
		return &d->cfg->backends[stored_b];
	} else {
		/* Every store by name; a fallback as "FALLBACK in place of TARGET". */
		char names[STATUS_TEXT_MAX] = "";
		size_t len = 0;
		for (size_t k = first; k < end && len < sizeof(names); k++) {
			size_t ti = d->rcpt_targets[k];
			unsigned b;
			bool by_fallback;
			const struct status *st = target_result(d, ti, &b, &by_fallback);
			if (st == NULL || status_class_of(st) != STATUS_OK)
				continue;
			int n = by_fallback ? format(names + len, sizeof(names) - len,
						     "%s%s in place of %s", len > 0 ? ", " : "",
						     d->cfg->backends[b].name,
						     d->cfg->backends[d->target_backend[ti]].name)
					    : format(names + len, sizeof(names) - len, "%s%s",
						     len > 0 ? ", " : "", d->cfg->backends[b].name);
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
	char best_effort_failed[256] = "", fallbacks[256] = "";
	size_t be_len = 0, fb_len = 0;
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
		unsigned rb;
		bool by_fallback;
		const struct status *st = target_result(d, ti, &rb, &by_fallback);
		if (!d->target_route[ti]->required && st != NULL && status_class_of(st) != STATUS_OK) {
			n = format(best_effort_failed + be_len, sizeof(best_effort_failed) - be_len,
				   "%s%s", be_len > 0 ? "," : " best_effort_failed=",
				   d->cfg->backends[b].name);
			if (n > 0 && (size_t)n < sizeof(best_effort_failed) - be_len)
				be_len += (size_t)n;
		}
		if (d->fallback_state == NULL || d->fallback_state[ti] == FALLBACK_NONE)
			continue;
		/* The fallback's own entry right after the target it stands in for. */
		const struct target *f = &d->fallback_targets[ti];
		const char *fb_name = d->cfg->backends[d->target_route[ti]->fallback].name;
		n = format(fallbacks + fb_len, sizeof(fallbacks) - fb_len, "%s%s>%s",
			   fb_len > 0 ? "," : " fallback=", d->cfg->backends[b].name, fb_name);
		if (n > 0 && (size_t)n < sizeof(fallbacks) - fb_len)
			fb_len += (size_t)n;
		n = d->fallback_state[ti] == FALLBACK_DONE
			    ? format(targets + len, sizeof(targets) - len, ",%s:%d:%s:%s", fb_name,
				     f->status.code, f->status.enhanced, f->ref[0] ? f->ref : "-")
			    : format(targets + len, sizeof(targets) - len, ",%s:running", fb_name);
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
		 "reply=\"%d %s %s\" targets=\"%s\"%s%s size=%llu delay=%lld.%s%lld",
		 d->session_id, d->txid, d->queue_id[0] ? " qid=" : "",
		 d->queue_id[0] ? log_esc(esc_qid, d->queue_id) : "", d->client, xclient,
		 log_esc(esc_from, d->sender), log_esc(esc_rcpt, d->rcpts[ri].rcpt),
		 class_name(reply), reply->code, reply->enhanced, esc_text, esc_targets,
		 best_effort_failed, fallbacks, (unsigned long long)spool_size(d->delivery.spool),
		 delay_ms / 1000,
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
static void breaker_account(struct backend_runtime *b, const struct status *st,
			    bool backend_failure_flagged)
{
	const char *name = b->inst->name;

	/* 4.7.0 is left out: a login refused for one unknown user looks the same as a wrong
	 * admin password, and must not let a few such recipients take the backend down. */
	bool backend_failure = status_class_of(st) == STATUS_TEMPFAIL &&
			       (strncmp(st->enhanced, "4.4.", 4) == 0 ||
				strcmp(st->enhanced, "4.7.5") == 0 || backend_failure_flagged);

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
	for (size_t k = d->rcpt_target_start[ri]; k < d->rcpt_target_start[ri + 1]; k++) {
		size_t ti = d->rcpt_targets[k];
		unsigned b;
		bool by_fallback;
		const struct status *st = target_result(d, ti, &b, &by_fallback);
		if (!d->target_route[ti]->required && st != NULL && status_class_of(st) != STATUS_OK)
			metrics_best_effort_failure(d->cfg->backends[d->target_backend[ti]].name);
	}
	d->rcpt_reported[ri] = true;
	if (--d->rcpts_pending == 0)
		unanswered--;
	if (d->rcpts_pending == 0 && d->deadline != NULL)
		event_del(d->deadline);
	if (d->cb != NULL)
		d->cb(d->ctx, ri, &reply);
}

/* One of recipient ri's targets has its final result (its fallback's, when it has one and
 * failed): report the recipient when it was the last. */
static void target_settled(struct dispatch *d, size_t ri, const char *backend,
			   const struct status *st)
{
	d->rcpt_pending[ri]--;
	if (d->rcpt_reported[ri]) {
		/* Answered 451 4.4.7 at the deadline already. A late success means a copy is stored
		 * that the MTA will send again: say so loudly. */
		char esc[LOG_ESC_SIZE];
		(status_class_of(st) == STATUS_OK ? log_warn : log_info)(
			"event=late_result session=%s tx=%s rcpt=<%s> backend=%s reply=\"%d %s\" "
			"note=%s",
			d->session_id, d->txid, log_esc(esc, d->rcpts[ri].rcpt), backend, st->code,
			st->enhanced,
			status_class_of(st) == STATUS_OK ? "stored_after_deadline_duplicate_likely"
							 : "none_stored");
		return;
	}
	if (d->rcpt_pending[ri] > 0)
		return;
	report_recipient(d, ri);
}

static void count_result(struct dispatch *d, unsigned b, const struct target *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	metrics_target_result(d->cfg->backends[b].name, &t->status,
			      (double)(now.tv_sec - d->started.tv_sec) +
				      (double)(now.tv_nsec - d->started.tv_nsec) / 1e9);
	if (t->duplicate)
		metrics_duplicate_suppressed(d->cfg->backends[b].name);
	/* A copy found in the memory of stored copies never reached the store: it says nothing
	 * of the backend's health (retries of stored mail must not keep a down backend "up"). */
	if (!t->same_failure && !t->duplicate)
		breaker_account(d->rt->backends[b], &t->status, t->backend_failure);
}

/* A target's verdict is in: apply the reply policy (soft bounce); hand a failure to the
 * target's fallback (launch_fallbacks) unless the recipient was answered at the deadline
 * already; else settle it. */
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
	/* A target skipped for an open breaker was not tried: no latency, nothing to count. */
	if (!d->target_skipped[ti])
		count_result(d, d->target_backend[ti], t);
	if (status_class_of(&t->status) != STATUS_OK && d->target_route[ti]->fallback >= 0 &&
	    !d->rcpt_reported[ri]) {
		d->fallback_state[ti] = FALLBACK_QUEUED;
		d->fallbacks_queued++;
		return;
	}
	target_settled(d, ri, b->name, &t->status);
}

/* The fallback of target ti has its result (in fallback_targets[ti]). */
static void fallback_finished(struct dispatch *d, size_t ti)
{
	struct target *f = &d->fallback_targets[ti];
	unsigned fb = (unsigned)d->target_route[ti]->fallback;
	const struct backend_instance *b = &d->cfg->backends[fb];
	const char *primary = d->cfg->backends[d->target_backend[ti]].name;
	const struct status *own = &d->targets[ti].status;
	size_t ri = (size_t)(f->rcpt - d->rcpts);
	char esc_rcpt[LOG_ESC_SIZE], esc_own[LOG_ESC_SIZE], esc_ref[LOG_ESC_SIZE];

	if (f->status.code == 0)
		status_must(&f->status, 451, "4.3.0", "internal error: backend %s gave no result",
			    b->name);
	reply_policy_final(d->cfg, b, &f->status);
	d->fallback_state[ti] = FALLBACK_DONE;
	count_result(d, fb, f);
	if (status_class_of(&f->status) == STATUS_OK)
		metrics_fallback_delivery(primary, b->name);
	/* A warning either way: the target failed, and an admin should know where the message
	 * went (or that it went nowhere and the reply says so). */
	log_warn("event=fallback session=%s tx=%s rcpt=<%s> backend=%s fallback=%s "
		 "failed=\"%d %s %s\" result=%s reply=\"%d %s\" ref=%s",
		 d->session_id, d->txid, log_esc(esc_rcpt, d->rcpts[ri].rcpt), primary, b->name,
		 own->code, own->enhanced, log_esc(esc_own, own->text), class_name(&f->status),
		 f->status.code, f->status.enhanced, log_esc(esc_ref, f->ref[0] ? f->ref : "-"));
	target_settled(d, ri, b->name, &f->status);
}

static void fallback_job_run(struct pool_job *pj)
{
	struct fallback_job *job = (struct fallback_job *)pj;

	/* A fallback (a Maildir quarantine) also remembers what it stored: no second copy when
	 * the MTA retries a recipient that another target deferred (dedupe.h). */
	dedupe_deliver(job->dispatch->rt->dedupe, job->backend->inst, job->backend->state,
		       &job->dispatch->delivery, job->targets, job->count);
}

static void fallback_job_done(struct pool_job *pj)
{
	struct fallback_job *job = (struct fallback_job *)pj;
	struct dispatch *d = job->dispatch;

	for (size_t k = 0; k < job->count; k++) {
		d->fallback_targets[job->primary[k]] = job->targets[k];
		fallback_finished(d, job->primary[k]);
	}
	free(job->primary);
	free(job);
	d->jobs_pending--;
	maybe_free(d);
}

/* Deliver every queued failed target to its fallback: per fallback backend one job (a batch
 * driver: one S3 object or request for them all) or one job per target. Called on the loop
 * while the caller still counts in jobs_pending, so an inline fallback cannot free d. */
static void launch_fallbacks(struct dispatch *d)
{
	while (d->fallbacks_queued > 0) {
		size_t first = 0, count = 0;
		while (d->fallback_state[first] != FALLBACK_QUEUED)
			first++;
		int fb = d->target_route[first]->fallback;
		struct backend_runtime *br = d->rt->backends[fb];
		for (size_t ti = first; ti < d->target_count; ti++)
			count += d->fallback_state[ti] == FALLBACK_QUEUED &&
				 d->target_route[ti]->fallback == fb;
		size_t per_job = br->inst->driver->batch ? count : 1;
		for (size_t ti = first; count > 0;) {
			struct fallback_job *job =
				xcalloc(1, sizeof(*job) + per_job * sizeof(job->targets[0]));
			job->primary = xcalloc(per_job, sizeof(*job->primary));
			job->job.run = fallback_job_run;
			job->job.done = fallback_job_done;
			job->dispatch = d;
			job->backend = br;
			for (; ti < d->target_count && job->count < per_job; ti++) {
				if (d->fallback_state[ti] != FALLBACK_QUEUED ||
				    d->target_route[ti]->fallback != fb)
					continue;
				struct target *t = &job->targets[job->count];
				t->rcpt = d->targets[ti].rcpt;
				t->vars = d->targets[ti].vars;
				job->primary[job->count++] = ti;
				d->fallback_state[ti] = FALLBACK_RUNNING;
				d->fallbacks_queued--;
				count--;
			}
			d->jobs_pending++;
			if (br->inst->driver->inline_deliver) {
				fallback_job_run(&job->job);
				fallback_job_done(&job->job);
			} else {
				pool_submit(backend_runtime_pool(br), &job->job);
			}
		}
	}
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

	for (size_t k = 0; k < job->count; k++)
		target_finished(d, job->first + k);
	launch_fallbacks(d);
	d->jobs_pending--; /* after the fallbacks: an inline one must not free d under us */
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
	/* Ten arrays in one zeroed block, each aligned for any type. */
	size_t rcpts = d->rcpt_count;
	size_t sizes[] = {
		total * sizeof(*d->targets), total * sizeof(*d->target_backend),
		rcpts * sizeof(*d->rcpt_pending), rcpts * sizeof(*d->rcpt_reported),
		total * sizeof(*d->target_done), total * sizeof(*d->rcpt_targets),
		(rcpts + 1) * sizeof(*d->rcpt_target_start), total * sizeof(*d->target_job_start),
		total * sizeof(*d->target_route), total * sizeof(*d->target_skipped),
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
	d->target_route = (const struct route_target **)(void *)(base + offsets[8]);
	d->target_skipped = (bool *)(void *)(base + offsets[9]);

	/* Grouped by backend, so a batch call gets a contiguous slice. While a backend's breaker
	 * is open, its targets that may fail without a refusal (best-effort, or with a fallback)
	 * are not tried: they go after the backend's jobs, outside any, and dispatch_start()
	 * fails them at once (451 4.4.1), which sends them to their fallback. */
	size_t n = 0;
	bool any_fallback = false;
	for (unsigned b = 0; b < d->cfg->backend_count; b++) {
		size_t first = n;
		bool down = dispatch_backend_down(d->rt->backends[b]);
		for (int skipped_pass = 0; skipped_pass < 2; skipped_pass++) {
			for (size_t i = 0; i < d->rcpt_count; i++) {
				const struct route_rule *rule = d->rcpts[i].rule;
				for (size_t k = 0; k < rule->target_count; k++) {
					const struct route_target *rt = &rule->targets[k];
					if (rt->backend != b)
						continue;
					/* A backend named twice in one route delivers once. */
					bool seen = false;
					for (size_t j = 0; j < k; j++)
						seen = seen || rule->targets[j].backend == b;
					bool skip = down && (!rt->required || rt->fallback >= 0);
					if (seen || skip != (skipped_pass == 1))
						continue;
					d->targets[n].rcpt = &d->rcpts[i];
					delivery_vars(&d->delivery, &d->rcpts[i], &d->targets[n].vars);
					d->target_backend[n] = b;
					d->target_skipped[n] = skip;
					d->rcpt_pending[i]++;
					any_fallback = any_fallback || rt->fallback >= 0;
					n++;
				}
			}
			if (skipped_pass == 0)
				split_jobs(d, d->rt->backends[b], first, n);
		}
	}
	d->target_count = n;
	/* Each target's route entry (split_jobs may have reordered the targets). */
	for (size_t t = 0; t < n; t++) {
		const struct route_rule *rule = d->targets[t].rcpt->rule;
		for (size_t k = 0; k < rule->target_count; k++) {
			if (rule->targets[k].backend == d->target_backend[t]) {
				d->target_route[t] = &rule->targets[k];
				break;
			}
		}
	}
	if (any_fallback) {
		d->fallback_targets = xcalloc(n, sizeof(*d->fallback_targets));
		d->fallback_state = xcalloc(n, sizeof(*d->fallback_state));
	}
	/* Per recipient index, in the route's backend order. */
	size_t pos = 0;
	for (size_t i = 0; i < d->rcpt_count; i++) {
		d->rcpt_target_start[i] = pos;
		const struct route_rule *rule = d->rcpts[i].rule;
		for (size_t k = 0; k < rule->target_count; k++) {
			for (size_t t = 0; t < n; t++) {
				if (d->targets[t].rcpt == &d->rcpts[i] &&
				    d->target_backend[t] == rule->targets[k].backend) {
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
	struct verify_context vctx;   /* points into the copies below */
	char sender[ADDRESS_PATH_MAX + 1], client_addr[64], lhlo[256], session_id[40], txid[48];
	int result;
	struct status status;
	dispatch_verify_fn *cb;
	void *ctx;
};

static void verify_run(struct pool_job *pj)
{
	struct dispatch_verify *v = (struct dispatch_verify *)pj;

	v->result = v->backend->inst->driver->verify(v->backend->state, &v->rcpt, &v->vctx,
						     &v->status);
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
					      const struct recipient *rcpt,
					      const struct verify_context *vctx,
					      dispatch_verify_fn *cb, void *ctx)
{
	struct dispatch_verify *v = xcalloc(1, sizeof(*v));

	v->job.run = verify_run;
	v->job.done = verify_done;
	v->rt = runtime_ref(rt);
	v->backend = backend;
	v->rcpt = *rcpt;
	/* The worker may still run when the session is gone: its own copies. */
	format(v->sender, sizeof(v->sender), "%s", vctx->sender);
	format(v->client_addr, sizeof(v->client_addr), "%s", vctx->client_addr);
	format(v->lhlo, sizeof(v->lhlo), "%s", vctx->lhlo);
	format(v->session_id, sizeof(v->session_id), "%s", vctx->session_id);
	format(v->txid, sizeof(v->txid), "%s", vctx->txid);
	v->vctx = (struct verify_context){ .sender = v->sender, .client_addr = v->client_addr,
					   .lhlo = v->lhlo, .session_id = v->session_id,
					   .txid = v->txid };
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
		if (d->target_skipped[t]) {
			t++;
			continue;
		}
		struct backend_runtime *b = d->rt->backends[d->target_backend[t]];
		size_t count = 1;
		while (t + count < d->target_count && !d->target_job_start[t + count] &&
		       !d->target_skipped[t + count])
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
	/* Targets not tried for an open breaker: failed now, on to their fallback. */
	for (size_t t = 0; t < d->target_count; t++) {
		if (!d->target_skipped[t])
			continue;
		status_must(&d->targets[t].status, 451, "4.4.1",
			    "backend %s temporarily unavailable (circuit breaker open)",
			    d->cfg->backends[d->target_backend[t]].name);
		target_finished(d, t);
	}
	if (d->fallback_state != NULL)
		launch_fallbacks(d);
	d->jobs_pending--;
	if (d->target_count > 0 && d->jobs_pending == 0 && d->rcpts_pending == 0) {
		/* Everything ran inline and every result has been reported. */
		dispatch_free(d);
		return NULL;
	}
	if (d->target_count == 0) {
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
