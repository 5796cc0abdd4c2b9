/*
 * pool - bounded worker threads for blocking backend work, with completion on the event loop.
 *
 * Each pool owns its threads and its job FIFO. Finished jobs of every pool go to one completion
 * list; an eventfd wakes the loop, which calls done() for each in the order they finished.
 * Threads start on first use, so a configured backend nobody routes to costs nothing.
 */
#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"

struct pool {
	char name[64];
	unsigned max_threads;
	unsigned started;
	pthread_t *threads;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct pool_job *head, *tail;
	unsigned busy;        /* queued + running; touched under lock */
	bool stopping;
};

static struct {
	pthread_mutex_t lock;
	struct pool_job *head, *tail;
	int fd;
	struct event *ev;
} completion = { PTHREAD_MUTEX_INITIALIZER, NULL, NULL, -1, NULL };

static void completion_drain(evutil_socket_t fd, short what, void *arg)
{
	uint64_t count;
	struct pool_job *list;

	if (read(fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
		log_warn("event=pool_eventfd_read error=\"%s\"", strerror(errno));
	pthread_mutex_lock(&completion.lock);
	list = completion.head;
	completion.head = completion.tail = NULL;
	pthread_mutex_unlock(&completion.lock);
	while (list != NULL) {
		struct pool_job *next = list->next;
		list->next = NULL;
		list->done(list);
		list = next;
	}
}

int pool_completion_init(struct event_base *base)
{
	completion.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (completion.fd < 0)
		return -1;
	completion.ev = event_new(base, completion.fd, EV_READ | EV_PERSIST, completion_drain, NULL);
	if (completion.ev == NULL || event_add(completion.ev, NULL) < 0) {
		close(completion.fd);
		completion.fd = -1;
		errno = ENOMEM;
		return -1;
	}
	return 0;
}

void pool_completion_shutdown(void)
{
	if (completion.ev != NULL) {
		/* Run what is left, so every owner gets its done() call. */
		completion_drain(completion.fd, EV_READ, NULL);
		event_free(completion.ev);
		completion.ev = NULL;
	}
	if (completion.fd >= 0) {
		close(completion.fd);
		completion.fd = -1;
	}
}

static void completion_post(struct pool_job *job)
{
	uint64_t one = 1;

	job->next = NULL;
	pthread_mutex_lock(&completion.lock);
	if (completion.tail != NULL)
		completion.tail->next = job;
	else
		completion.head = job;
	completion.tail = job;
	pthread_mutex_unlock(&completion.lock);
	while (write(completion.fd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
}

static void *worker_main(void *arg)
{
	struct pool *pool = arg;

	pthread_mutex_lock(&pool->lock);
	for (;;) {
		while (pool->head == NULL && !pool->stopping)
			pthread_cond_wait(&pool->wake, &pool->lock);
		if (pool->head == NULL)
			break;
		struct pool_job *job = pool->head;
		pool->head = job->next;
		if (pool->head == NULL)
			pool->tail = NULL;
		pthread_mutex_unlock(&pool->lock);

		job->run(job);
		completion_post(job);

		pthread_mutex_lock(&pool->lock);
		pool->busy--;
	}
	pthread_mutex_unlock(&pool->lock);
	return NULL;
}

struct pool *pool_new(const char *name, unsigned threads)
{
	struct pool *pool = calloc(1, sizeof(*pool));

	if (pool == NULL)
		return NULL;
	pool->threads = calloc(threads ? threads : 1, sizeof(pthread_t));
	if (pool->threads == NULL) {
		free(pool);
		return NULL;
	}
	snprintf(pool->name, sizeof(pool->name), "%s", name);
	pool->max_threads = threads ? threads : 1;
	pthread_mutex_init(&pool->lock, NULL);
	pthread_cond_init(&pool->wake, NULL);
	return pool;
}

void pool_submit(struct pool *pool, struct pool_job *job)
{
	job->next = NULL;
	pthread_mutex_lock(&pool->lock);
	if (pool->tail != NULL)
		pool->tail->next = job;
	else
		pool->head = job;
	pool->tail = job;
	pool->busy++;
	/* Start another thread while there is more work than threads, up to the limit. */
	if (pool->started < pool->max_threads && pool->busy > pool->started) {
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		pthread_attr_setstacksize(&attr, 1024 * 1024);
		if (pthread_create(&pool->threads[pool->started], &attr, worker_main, pool) == 0)
			pool->started++;
		else
			log_error("event=pool_thread_failed pool=%s error=\"%s\"", pool->name,
				  strerror(errno));
		pthread_attr_destroy(&attr);
	}
	pthread_cond_signal(&pool->wake);
	pthread_mutex_unlock(&pool->lock);
	if (pool->started == 0) {
		/* Could not start a single thread: run here rather than lose the job. */
		log_error("event=pool_no_threads pool=%s action=run_inline", pool->name);
		pthread_mutex_lock(&pool->lock);
		pool->head = pool->tail = NULL;
		pool->busy--;
		pthread_mutex_unlock(&pool->lock);
		job->run(job);
		completion_post(job);
	}
}

unsigned pool_busy(const struct pool *pool)
{
	return pool->busy;
}

void pool_free(struct pool **poolp)
{
	struct pool *pool = *poolp;

	if (pool == NULL)
		return;
	*poolp = NULL;
	pthread_mutex_lock(&pool->lock);
	pool->stopping = true;
	pthread_cond_broadcast(&pool->wake);
	pthread_mutex_unlock(&pool->lock);
	for (unsigned i = 0; i < pool->started; i++)
		pthread_join(pool->threads[i], NULL);
	pthread_mutex_destroy(&pool->lock);
	pthread_cond_destroy(&pool->wake);
	free(pool->threads);
	free(pool);
}
