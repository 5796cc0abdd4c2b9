/*
 * dispatcher - runs a transaction's targets on their backends and folds the results.
 *
 * For every recipient, one target per backend of its route. Targets of inline drivers run at
 * once; the others go to their backend's pool, batched per backend when the driver takes
 * batches. A target with a fallback (router.h) that fails, or whose breaker is open at
 * dispatch, is delivered to its fallback backend, whose result then stands for it. When the
 * last target of a recipient is known the required targets' results are folded (all ok -> ok;
 * any temporary -> that 4xx; else the permanent 5xx; soft bounce turns 5xx into 4xx;
 * best-effort targets are only logged and counted), one log line is written for the
 * recipient, and the caller's callback gets the reply. The dispatch
 * owns the delivery data handed to it and frees it when every target is finished, even when
 * the session went away (dispatch_detach).
 *
 * Deadline: when the configuration's delivery_deadline passes before a recipient's targets
 * have all finished, that recipient is answered 451 4.4.7 at once (so the MTA never times out
 * first and resends); the late results are still logged when they come.
 */
#ifndef LMTPGW_DISPATCHER_H
#define LMTPGW_DISPATCHER_H

#include <stdbool.h>
#include <stddef.h>

#include "backend.h"
#include "status.h"

struct backend_runtime;
struct dispatch;
struct event_base;
struct runtime;

/* Called on the loop thread once per recipient, in any order. */
typedef void dispatch_result_fn(void *ctx, size_t rcpt_index, const struct status *reply);

struct dispatch_request {
	struct event_base *base;       /* for the delivery deadline timer */
	struct runtime *rt;            /* a reference is taken */
	struct delivery delivery;      /* trace, sender, ids: copied; spool ownership passes */
	struct recipient *rcpts;       /* ownership passes (malloc'd array) */
	size_t rcpt_count;
	const char *queue_id;          /* for the log, may be NULL */
	const char *client;            /* for the log: peer description */
};

/* Start delivering. Results arrive through cb (possibly before this returns, for inline
 * drivers). Returns the dispatch handle, valid until the last result was reported. */
struct dispatch *dispatch_start(struct dispatch_request *req, dispatch_result_fn *cb, void *ctx);

/* The session is gone: no more callbacks; the dispatch frees itself when its targets finish. */
void dispatch_detach(struct dispatch *dispatch);

/* Transactions being delivered (for graceful shutdown), and those of them that still owe the
 * client a reply (the others only wait for late results after the deadline). */
unsigned dispatch_in_flight(void);
unsigned dispatch_unanswered(void);

/* RCPT-time verification by a backend whose verify() blocks: run it in the backend's pool and
 * call cb on the loop thread with verify()'s result (0, or -1 and the status). */
typedef void dispatch_verify_fn(void *ctx, int result, const struct status *st);
struct dispatch_verify;
struct dispatch_verify *dispatch_verify_start(struct runtime *rt, struct backend_runtime *backend,
					      const struct recipient *rcpt,
					      const struct verify_context *vctx,
					      dispatch_verify_fn *cb, void *ctx);
/* The session went away: no callback; the job frees itself when it finishes. */
void dispatch_verify_detach(struct dispatch_verify *verify);

/* Circuit breaker: true while the backend is taken as down (after breaker_failures consecutive
 * connection-level failures, for breaker_cooloff); its recipients then get 451 4.4.1 at RCPT. */
bool dispatch_backend_down(const struct backend_runtime *backend);

#endif
