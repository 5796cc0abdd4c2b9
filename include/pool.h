/*
 * pool - bounded worker threads for blocking backend work, with completion on the event loop.
 *
 * A pool has a fixed number of threads (the backend's concurrency), started on first use, and
 * a FIFO of jobs. A job's run() is called in a worker thread; its done() is called later on the
 * event-loop thread, through one eventfd shared by all pools, so a session never sees a result
 * from another thread. pool_completion_init() must have been called on the loop first.
 */
#ifndef LMTPGW_POOL_H
#define LMTPGW_POOL_H

struct event_base;

struct pool_job {
	void (*run)(struct pool_job *job);   /* worker thread */
	void (*done)(struct pool_job *job);  /* event-loop thread, after run() */
	struct pool_job *next;               /* owned by the pool while queued */
};

/* Set up the completion channel on base; returns 0 or -1 (errno). */
int pool_completion_init(struct event_base *base);
void pool_completion_shutdown(void);

struct pool *pool_new(const char *name, unsigned threads);
/* Queue a job (event-loop thread only). */
void pool_submit(struct pool *pool, struct pool_job *job);
/* Jobs queued or running. */
unsigned pool_busy(const struct pool *pool);
/* Let queued jobs finish, stop and join the threads, free. Completions of jobs that finished
 * are still delivered on the loop. */
void pool_free(struct pool **pool);

#endif
