/*
 * conn - the I/O of one LMTP client connection: its bufferevent (plain socket, implicit TLS or
 * STARTTLS), reads, batched writes, the deadline of the phase in which the client owes us
 * bytes, and the close once the last reply is written. It knows nothing of LMTP: the session
 * (session.c) decides what to say and when to close, and learns what happened on the
 * connection through struct conn_events.
 *
 * Writes. conn_write() collects bytes in the connection's own buffer; outside a batch they
 * leave at once, inside one (conn_batch_begin()/conn_batch_end(): every pipelined command of
 * one read, every recipient reply known in one loop turn) in one write at its end (RFC 2920).
 * On a plain socket with nothing queued in the bufferevent that write is a send() of our own:
 * the bufferevent would arm and disarm EV_WRITE around every reply, two epoll_ctl calls each
 * (docs/performance.md). What send() does not take, and everything under TLS, goes to the
 * bufferevent after anything already queued there, so the order holds.
 *
 * Reads. The bufferevent reads into conn_input(); the owner parses from there. libevent 2.1
 * reads at most 4096 bytes a loop turn, so during DATA and BDAT the owner calls
 * conn_read_ahead() to read on by itself from a plain socket (64 KiB a call).
 *
 * Timeouts. Reads have no idle timeout but a deadline per phase (conn_deadline_*): bytes that
 * trickle in do not push it back (slowloris); only the owner does, for a complete command line
 * or for data arriving at a minimum rate. Writes have an idle timeout (conn_set_write_timeout):
 * a client that stops reading its replies is reported through write_timeout.
 *
 * Owns: the bufferevent (and with it the socket and the TLS state), the flush, close and
 * deadline events, and the unsent reply bytes. struct conn is embedded in its owner (no
 * allocation of its own); its fields are this module's: use the functions below.
 *
 * Errors: conn_open() and the STARTTLS calls return -1 on a setup failure (no memory, no TLS
 * context); conn_open() then has closed the socket. Write errors are never returned: a failed
 * send() leaves the bytes to the bufferevent, which retries or reports the error through
 * conn_events.lost. Each conn_events callback may free the owner and the conn with it: conn
 * touches nothing after calling one.
 */
#ifndef LMTPGW_CONN_H
#define LMTPGW_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bufferevent;
struct event;
struct event_base;
struct evbuffer;

/* What the deadline callback is told, for its log line. */
struct conn_deadline_expired {
	const char *phase;          /* as given to conn_deadline_start(), or "data" */
	uint64_t data_bytes;        /* data phase: bytes received in it */
	long long data_elapsed_ms;  /* data phase: since conn_deadline_data_start() */
	size_t pending_bytes;       /* unparsed input (a partial line: a trickling client) */
};

/* The owner's callbacks; each gets the owner pointer given to conn_open(). */
struct conn_events {
	void (*input)(void *owner);      /* bytes arrived in conn_input() */
	void (*input_end)(void *owner);  /* the client half-closed; it may still read replies */
	void (*lost)(void *owner);       /* reset or error: nothing more can be sent */
	void (*write_timeout)(void *owner);  /* queued bytes not taken within the write timeout */
	void (*deadline)(void *owner, const struct conn_deadline_expired *expired);
	void (*closed)(void *owner);     /* after conn_close(): all written (or given up on) */
};

struct conn {
	const struct conn_events *events;
	void *owner;
	const char *log_id;             /* the owner's id for conn's own log lines */
	struct event_base *base;
	struct bufferevent *bev;
	bool tls;                       /* encrypted (implicit TLS or after STARTTLS) */
	bool direct;                    /* plain socket: writes may go out with send() */
	bool batch;                     /* inside a batch: writes wait for its end */
	bool eof;                       /* the client half-closed */
	bool closing;                   /* conn_close() called: close once written */
	bool output_paused;             /* the owner stopped on conn_output_full(): resume it */
	size_t out_len;
	char out[1024];                 /* bytes not yet written: one write per batch */
	struct event *flush_event;      /* conn_batch_end(CONN_FLUSH_SOON); made when first used */
	long long timeout_write_ms;     /* what the bufferevent has now (-1: not set yet) */
	struct event *deadline_timer;
	long long deadline_us;          /* CLOCK_MONOTONIC microseconds; 0: none */
	long long deadline_armed_us;    /* when the timer fires; earlier is fine, it re-arms */
	const char *deadline_phase;
	long long phase_started_us;     /* start of the data phase */
	uint64_t phase_bytes;           /* bytes received in the data phase */
	struct event *close_timer;      /* after conn_close(): waits for a TLS filter's bytes */
	unsigned close_polls;
	void *starttls_ssl;             /* SSL * between conn_starttls_prepare() and _start() */
	char tls_info[128];             /* "TLSv1.3 TLS_AES_256_GCM_SHA384" once shaken hands */
};

/* Take over fd (connected, non-blocking). tls_ctx: an SSL_CTX * for implicit TLS (lmtps:),
 * or NULL for a plain socket. log_id: the owner's id, read when conn logs (it may be filled
 * after this call). Reading and writing start at once; set the deadline and write timeout
 * next. Returns 0, or -1 with fd closed and nothing left to free. */
int conn_open(struct conn *c, struct event_base *base, int fd, void *tls_ctx,
	      const struct conn_events *events, void *owner, const char *log_id);

/* Free everything, close the socket; unsent bytes are dropped. No callback is made. */
void conn_free(struct conn *c);

/* The input buffer: the owner removes what it has parsed. */
struct evbuffer *conn_input(struct conn *c);

/* Read from a plain socket beyond libevent's 4 KiB a turn (DATA, BDAT): at most 64 KiB into
 * conn_input(), taken from *share (the turn's budget, fair to other sessions). Returns whether
 * bytes were read; false on a TLS connection, after EOF, with *share used up, on EAGAIN and
 * on errors (which the bufferevent then reports as usual). */
bool conn_read_ahead(struct conn *c, size_t *share);

/* Read again after a pause (the bufferevent stops at its input high-water mark while the owner
 * waits for its backends), unless the client half-closed. */
void conn_resume_reading(struct conn *c);

static inline bool conn_input_ended(const struct conn *c)
{
	return c->eof;
}

static inline bool conn_is_tls(const struct conn *c)
{
	return c->tls;
}

/* Replies the client has not taken reach CONN_OUTPUT_HIGH: the owner must stop making more
 * (handle no further command) until the client reads. When this returns true, conn calls
 * events->input again once the queued bytes are written, so the owner resumes where it
 * stopped; its unread input meanwhile backs up to the input high-water mark and libevent stops
 * reading. A client that pipelines commands and never reads its replies thus holds a bounded
 * amount of memory until the write timeout closes it. */
#define CONN_OUTPUT_HIGH (256 * 1024)
bool conn_output_full(struct conn *c);

/* Queue bytes for the client: written at once outside a batch, at the batch's end inside. */
void conn_write(struct conn *c, const char *data, size_t len);

enum conn_flush {
	CONN_FLUSH_NOW,   /* write what is queued before returning */
	CONN_FLUSH_SOON,  /* once this loop turn's callbacks are done (more may join the write) */
};

/* Start a batch; returns whether one was already open (give it to conn_batch_end()). */
bool conn_batch_begin(struct conn *c);

/* End the batch begun by the conn_batch_begin() that returned was_open; the outermost one
 * writes what is queued, now or soon. */
void conn_batch_end(struct conn *c, bool was_open, enum conn_flush when);

/* The idle timeout for writes; the bufferevent is touched only when the value changes. */
void conn_set_write_timeout(struct conn *c, long long ms);

/* A deadline ms from now for the phase named phase (a string literal: "greeting",
 * "command"). A later deadline than the armed one costs no timer change. */
void conn_deadline_start(struct conn *c, const char *phase, long long ms);

/* A data phase starts: deadline ms from now, byte count and clock reset. */
void conn_deadline_data_start(struct conn *c, long long ms);

/* n data bytes arrived: move the deadline on by n / min_rate seconds (min_rate 0: to max_ms
 * from now), never more than max_ms from now (Postfix's smtpd_min_data_rate). */
void conn_deadline_data_received(struct conn *c, size_t n, long long min_rate, long long max_ms);

/* No deadline: the client waits for us. */
void conn_deadline_clear(struct conn *c);

/* STARTTLS, in two steps around the owner's "220 Ready to start TLS". prepare: make the TLS
 * state (-1: none can be made; nothing changed). start: write the queued reply in clear text,
 * drop every input byte that arrived in clear text (RFC 3207 4.2), put the TLS filter in place
 * and reset the write timeout; -1 when the filter cannot be made (the socket stays, plain). */
int conn_starttls_prepare(struct conn *c, void *tls_ctx);
int conn_starttls_start(struct conn *c);

/* Stop reading, clear the deadline, write what is queued and call events->closed once it is
 * written: the write timeout covers a client that does not read; bytes a TLS filter still
 * holds are waited for at most 5 s. */
void conn_close(struct conn *c);

#endif
