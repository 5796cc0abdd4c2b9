/*
 * conn - the I/O of one LMTP client connection (conn.h): bufferevent, reads, batched writes,
 * deadlines, TLS and the close.
 */
#include "conn.h"

#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "log.h"
#include "tls.h"

/* While the owner waits for its backends, the input buffer may fill up to this much before
 * libevent stops reading from the socket (pipelined commands after the final dot). */
#define CONN_INPUT_HIGH (256 * 1024)

/*
 * libevent 2.1 reads at most 4096 bytes a loop turn (EVBUFFER_MAX_READ in evbuffer_read), so a
 * 5 MB message took over a thousand turns, each an epoll_wait, an ioctl, a readv and a timeout
 * re-armed. conn_read_ahead() reads 64 KiB at a time while the socket has bytes and the turn's
 * share lasts (the owner starts it at CONN_READ_SHARE). What it cannot read is left to the
 * bufferevent: EAGAIN (it is still armed), end of file and errors (the next read sees them
 * again and reports them the usual way).
 */
#define CONN_READ_AHEAD (64 * 1024)

static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);
static void on_deadline(evutil_socket_t fd, short what, void *arg);
static void close_when_written(evutil_socket_t fd, short what, void *arg);

/* --- output --- */

static void flush(struct conn *c)
{
	size_t sent = 0;

	if (c->out_len == 0)
		return;
	if (c->direct && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
		ssize_t n = send(bufferevent_getfd(c->bev), c->out, c->out_len,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0)
			sent = (size_t)n;
		/* An error (EAGAIN, a reset) is left to the bufferevent: it retries or reports. */
	}
	if (sent < c->out_len)
		evbuffer_add(bufferevent_get_output(c->bev), c->out + sent, c->out_len - sent);
	c->out_len = 0;
}

void conn_write(struct conn *c, const char *data, size_t len)
{
	if (c->out_len + len > sizeof(c->out)) {
		flush(c);
		if (len > sizeof(c->out)) {
			evbuffer_add(bufferevent_get_output(c->bev), data, len);
			return;
		}
	}
	memcpy(c->out + c->out_len, data, len);
	c->out_len += len;
	if (!c->batch)
		flush(c);
}

static void on_flush_event(evutil_socket_t fd, short what, void *arg)
{
	flush(arg);
}

/* Write what is queued once the current loop turn's callbacks are done: the dispatcher reports
 * a transaction's recipients one by one, and their replies should leave in one write. */
static void flush_soon(struct conn *c)
{
	if (c->out_len == 0)
		return;
	if (c->flush_event == NULL)
		c->flush_event = event_new(c->base, -1, 0, on_flush_event, c);
	if (c->flush_event != NULL)
		event_active(c->flush_event, EV_TIMEOUT, 1);
	else
		flush(c);
}

bool conn_batch_begin(struct conn *c)
{
	bool was_open = c->batch;

	c->batch = true;
	return was_open;
}

void conn_batch_end(struct conn *c, bool was_open, enum conn_flush when)
{
	c->batch = was_open;
	if (was_open)
		return;
	if (when == CONN_FLUSH_SOON)
		flush_soon(c);
	else
		flush(c);
}

/* Bytes not yet handed to the kernel: with a STARTTLS filter, the encrypted bytes wait in the
 * underlying bufferevent after our own output is empty. */
static size_t unsent(const struct conn *c)
{
	size_t n = evbuffer_get_length(bufferevent_get_output(c->bev));
	struct bufferevent *under = bufferevent_get_underlying(c->bev);

	if (under != NULL)
		n += evbuffer_get_length(bufferevent_get_output(under));
	return n;
}

/* --- input --- */

struct evbuffer *conn_input(struct conn *c)
{
	/* Fetched each time by the owner: STARTTLS replaces the bufferevent. */
	return bufferevent_get_input(c->bev);
}

bool conn_read_ahead(struct conn *c, size_t *share)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	struct evbuffer_iovec v;

	if (!c->direct || c->eof || *share == 0)
		return false;
	if (evbuffer_reserve_space(in, CONN_READ_AHEAD, &v, 1) < 1)
		return false;
	ssize_t n = recv(bufferevent_getfd(c->bev), v.iov_base, v.iov_len, MSG_DONTWAIT);
	if (n <= 0) {
		evbuffer_commit_space(in, NULL, 0);
		return false;
	}
	v.iov_len = (size_t)n;
	evbuffer_commit_space(in, &v, 1);
	*share = (size_t)n >= *share ? 0 : *share - (size_t)n;
	return true;
}

void conn_resume_reading(struct conn *c)
{
	if (!c->eof)
		bufferevent_enable(c->bev, EV_READ);
}

/* --- timeouts --- */

static long long mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void conn_set_write_timeout(struct conn *c, long long ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	/* Setting timeouts re-adds the events: only when the value changes (a reload). */
	if (ms == c->timeout_write_ms)
		return;
	c->timeout_write_ms = ms;
	bufferevent_set_timeouts(c->bev, NULL, &tv);
}

static void deadline_arm(struct conn *c, long long at_us)
{
	long long left = at_us - mono_us();
	struct timeval tv;

	if (left < 0)
		left = 0;
	tv.tv_sec = (time_t)(left / 1000000);
	tv.tv_usec = (suseconds_t)(left % 1000000);
	c->deadline_armed_us = at_us;
	evtimer_add(c->deadline_timer, &tv);
}

/* Set the deadline. A later one needs no timer change (the timer, when it fires early, sees
 * the new deadline and waits on): one evtimer_add per timeout period, not per command. */
static void deadline_set(struct conn *c, const char *phase, long long at_us)
{
	c->deadline_us = at_us;
	c->deadline_phase = phase;
	if (c->deadline_armed_us != 0 && c->deadline_armed_us <= at_us &&
	    evtimer_pending(c->deadline_timer, NULL))
		return;
	deadline_arm(c, at_us);
}

void conn_deadline_start(struct conn *c, const char *phase, long long ms)
{
	deadline_set(c, phase, mono_us() + ms * 1000);
}

void conn_deadline_data_start(struct conn *c, long long ms)
{
	c->phase_started_us = mono_us();
	c->phase_bytes = 0;
	deadline_set(c, "data", c->phase_started_us + ms * 1000);
}

void conn_deadline_data_received(struct conn *c, size_t n, long long min_rate, long long max_ms)
{
	long long now = mono_us(), cap = now + max_ms * 1000, at;

	if (n == 0)
		return;
	c->phase_bytes += n;
	if (min_rate > 0) {
		at = c->deadline_us + (long long)n * 1000000 / min_rate;
		if (at > cap)
			at = cap;
	} else {
		at = cap; /* no minimum rate: an idle timeout */
	}
	deadline_set(c, "data", at);
}

void conn_deadline_clear(struct conn *c)
{
	c->deadline_us = 0;
	c->deadline_armed_us = 0;
	evtimer_del(c->deadline_timer);
}

/* The deadline passed (or the timer fired early for a deadline moved on). */
static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	long long now = mono_us();

	if (c->deadline_us == 0 || c->closing)
		return;
	if (now < c->deadline_us) {
		deadline_arm(c, c->deadline_us);
		return;
	}
	struct conn_deadline_expired expired = {
		.phase = c->deadline_phase,
		.data_bytes = c->phase_bytes,
		.data_elapsed_ms = (now - c->phase_started_us) / 1000,
		.pending_bytes = evbuffer_get_length(bufferevent_get_input(c->bev)),
	};
	c->events->deadline(c->owner, &expired);
}

/* --- set-up, TLS --- */

/* Put a (new) bufferevent in place with our callbacks and limits. */
static void attach(struct conn *c, struct bufferevent *bev)
{
	c->bev = bev;
	bufferevent_setcb(bev, on_read, on_write, on_event, c);
	bufferevent_setwatermark(bev, EV_READ, 0, CONN_INPUT_HIGH);
	c->timeout_write_ms = -1; /* a new bufferevent has none */
	bufferevent_enable(bev, EV_READ | EV_WRITE);
}

int conn_open(struct conn *c, struct event_base *base, int fd, void *tls_ctx,
	      const struct conn_events *events, void *owner, const char *log_id)
{
	struct bufferevent *bev;

	memset(c, 0, sizeof(*c));
	c->events = events;
	c->owner = owner;
	c->log_id = log_id;
	c->base = base;
	if (tls_ctx != NULL) {
		SSL *ssl = SSL_new(tls_ctx);
		bev = ssl ? bufferevent_openssl_socket_new(base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
							   BEV_OPT_CLOSE_ON_FREE)
			  : NULL;
		if (bev == NULL && ssl != NULL)
			SSL_free(ssl);
		if (bev != NULL)
			bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
		c->tls = true;
	} else {
		bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
		c->direct = true;
	}
	c->close_timer = evtimer_new(base, close_when_written, c);
	c->deadline_timer = evtimer_new(base, on_deadline, c);
	if (bev == NULL || c->close_timer == NULL || c->deadline_timer == NULL) {
		if (bev != NULL)
			bufferevent_free(bev);
		else
			close(fd);
		if (c->close_timer != NULL)
			event_free(c->close_timer);
		if (c->deadline_timer != NULL)
			event_free(c->deadline_timer);
		memset(c, 0, sizeof(*c));
		return -1;
	}
	attach(c, bev);
	return 0;
}

int conn_starttls_prepare(struct conn *c, void *tls_ctx)
{
	c->starttls_ssl = SSL_new(tls_ctx);
	return c->starttls_ssl != NULL ? 0 : -1;
}

int conn_starttls_start(struct conn *c)
{
	SSL *ssl = c->starttls_ssl;

	c->starttls_ssl = NULL;
	/* The 220 leaves in clear text, before the filter: from here on every byte is TLS. */
	flush(c);
	c->direct = false;
	/* Anything pipelined after STARTTLS arrived in clear text: drop it (RFC 3207 4.2,
	 * CVE-2011-0411 class of injection). */
	evbuffer_drain(bufferevent_get_input(c->bev),
		       evbuffer_get_length(bufferevent_get_input(c->bev)));
	struct bufferevent *tls = bufferevent_openssl_filter_new(
		c->base, c->bev, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	if (tls == NULL) {
		SSL_free(ssl);
		return -1;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(tls, 1);
	/* The filter keeps the timeouts from now on; the socket's own read timeout would fire
	 * through it while a delivery runs and the client rightly says nothing. */
	bufferevent_set_timeouts(c->bev, NULL, NULL);
	c->tls = true;
	attach(c, tls);
	return 0;
}

/* --- close --- */

void conn_close(struct conn *c)
{
	c->closing = true;
	bufferevent_disable(c->bev, EV_READ);
	conn_deadline_clear(c); /* the write timeout covers a client that does not read */
	flush(c);
	/* Call back from the loop, never under the caller's feet (it may touch its owner after
	 * this returns). close_timer exists from conn_open() on: this cannot fail halfway. */
	if (!evtimer_pending(c->close_timer, NULL)) {
		struct timeval now = { 0, 0 };
		evtimer_add(c->close_timer, &now);
	}
}

static void close_when_written(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	flush(c); /* bytes still waiting for a flush event leave first */
	/* Our own output still queued: the write callback closes once it is written, the write
	 * timeout if the client stops reading. */
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0)
		return;
	/* Only a TLS filter's bytes wait in the socket's buffer, which calls nobody back: poll,
	 * for at most 5 s. */
	if (unsent(c) > 0 && ++c->close_polls < 500) {
		struct timeval tv = { 0, 10000 };
		evtimer_add(c->close_timer, &tv);
		return;
	}
	c->events->closed(c->owner);
}

void conn_free(struct conn *c)
{
	if (c->close_timer != NULL)
		event_free(c->close_timer);
	if (c->deadline_timer != NULL)
		event_free(c->deadline_timer);
	if (c->flush_event != NULL)
		event_free(c->flush_event);
	if (c->starttls_ssl != NULL)
		SSL_free(c->starttls_ssl);
	if (c->bev != NULL)
		bufferevent_free(c->bev);
	memset(c, 0, sizeof(*c));
}

/* --- bufferevent callbacks --- */

static void on_read(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	c->events->input(c->owner);
}

bool conn_output_full(struct conn *c)
{
	if (c->out_len + unsent(c) < CONN_OUTPUT_HIGH)
		return false;
	c->output_paused = true;
	return true;
}

static void on_write(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	if (!c->closing) {
		/* The write buffer drained: an owner that stopped on a full output goes on. */
		if (c->output_paused) {
			c->output_paused = false;
			c->events->input(c->owner);
		}
		return;
	}
	if (unsent(c) == 0) {
		c->events->closed(c->owner);
		return;
	}
	/* The TLS filter drained into the socket's buffer: wait for that one too (no callback
	 * reaches us from it), for at most 5 s. */
	if (!evtimer_pending(c->close_timer, NULL)) {
		struct timeval tv = { 0, 10000 };
		evtimer_add(c->close_timer, &tv);
	}
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	if ((what & BEV_EVENT_CONNECTED) && c->tls) {
		char cn[128];
		SSL *ssl = bufferevent_openssl_get_ssl(bev);
		if (ssl != NULL) {
			tls_describe(ssl, c->tls_info, sizeof(c->tls_info), cn, sizeof(cn));
			log_info("session=%s event=tls protocol=\"%s\"%s%s", c->log_id, c->tls_info,
				 cn[0] ? " client_cn=" : "", cn);
		}
		return;
	}
	if (what & BEV_EVENT_ERROR) {
		unsigned long e = bufferevent_get_openssl_error(bev);
		if (e != 0) {
			char detail[256];
			ERR_error_string_n(e, detail, sizeof(detail));
			log_info("session=%s event=tls_error error=\"%s\"", c->log_id, detail);
		}
	}
	if (what & BEV_EVENT_TIMEOUT) {
		/* Only writes have an idle timeout: the client does not read our replies. libevent
		 * disabled writing on the timeout; enable it again, or the owner's last reply would
		 * never be tried and no second timeout could ever free a connection whose client
		 * stopped reading (it would hold its slot for good). */
		bufferevent_enable(bev, EV_WRITE);
		c->events->write_timeout(c->owner);
		return;
	}
	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) && c->closing) {
		/* Our last replies are still being written: the write callback closes. */
		bufferevent_disable(bev, EV_READ);
		if (unsent(c) == 0)
			c->events->closed(c->owner);
		return;
	}
	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR)) {
		/* A half-close: the client may still read. */
		c->eof = true;
		bufferevent_disable(bev, EV_READ);
		c->events->input_end(c->owner);
		return;
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		c->events->lost(c->owner);
}
