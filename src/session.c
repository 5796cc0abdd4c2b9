/*
 * session - one LMTP connection: the RFC 2033 state machine, its transaction, its replies.
 *
 * Owns: the bufferevent, the current transaction (sender, recipients, spool) and the table of
 * post-DATA replies. The transaction's spool and recipients pass to the dispatcher at the end of
 * data; from then on the session only keeps the reply slots, so a client that hangs up while
 * its message is being stored cannot free anything a worker still reads.
 *
 * Every handler checks sequence (503), then syntax (501/555), then limits (452/552), and only
 * then changes state (style.md, "check, then proceed"). Every reply is built by the status
 * module, so each carries an enhanced status code (RFC 2034); the exceptions RFC 2034 allows
 * are the greeting and the LHLO reply.
 */
#include "session.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "address.h"
#include "backend.h"
#include "data.h"
#include "dispatcher.h"
#include "envelope.h"
#include "format.h"
#include "log.h"
#include "metrics.h"
#include "peers.h"
#include "reply.h"
#include "router.h"
#include "runtime.h"
#include "server.h"
#include "spool.h"
#include "status.h"
#include "tls.h"

/* While the session waits for its backends, the input buffer may fill up to this much before
 * libevent stops reading from the socket (pipelined commands after the final dot). */
#define SESSION_INPUT_HIGH (256 * 1024)

enum session_state {
	STATE_FRESH,      /* before LHLO */
	STATE_READY,      /* after LHLO, no transaction */
	STATE_MAIL,       /* MAIL accepted; RCPTs may follow */
	STATE_DATA,       /* reading DATA content */
	STATE_BDAT,       /* reading a BDAT chunk */
	STATE_VERIFYING,  /* a backend checks a recipient (RCPT held) */
	STATE_DELIVERING, /* waiting for the backends' answers */
	STATE_CLOSING,    /* last reply queued; close when written */
};

struct transaction {
	char id[40];
	struct runtime *rt;             /* the runtime (settings + backends) it started with */
	const struct config *cfg;       /* rt->cfg */
	struct address from;
	char from_str[ADDRESS_PATH_MAX + 1];
	struct mail_params mail;
	struct recipient *rcpts;
	size_t rcpt_count, rcpt_cap;
	struct spool *spool;
	struct data_decoder decoder;
	struct header_scan headers;
	const char *spool_error;        /* first spool write error, reported at the end */
	int spool_errno;
	uint64_t bdat_left;             /* bytes of the current chunk still to read */
	bool bdat_last;                 /* current chunk is the last */
	bool bdat_used;                 /* BDAT seen in this transaction (DATA not allowed then) */
	bool bdat_failed;               /* a chunk got an error reply: the rest is discarded */
	bool bdat_discard;              /* chunk read only to stay in sync (no MAIL or no RCPT) */
	time_t received;
};

struct session {
	struct server *srv;
	struct session *prev, *next;
	struct bufferevent *bev;
	char id[24];
	char peer[96];
	char peer_ip[64];
	char lhlo[256];
	enum session_state state;
	unsigned errors;
	unsigned tx_seq;
	unsigned long long messages;
	bool processing;                /* inside session_process(): no re-entry */
	bool freed_in_process;          /* free requested while processing */
	char *line;                     /* command line buffer, max_command_line + 1 */
	size_t line_max;
	bool skipping;                  /* discarding an over-long command line up to its LF */
	bool eof;                       /* the client half-closed: answer what it sent, then close */
	char xf_ident[64];              /* XFORWARD IDENT: the MTA's queue id, for the log */
	char xf_client[160];            /* XFORWARD NAME/ADDR: the MTA's client, for the log */
	char xf_name[80];
	char xf_addr[80];
	bool is_unix;
	bool trusted;                   /* in trusted_networks or on a unix socket: XFORWARD allowed */
	bool peer_counted;              /* counted in srv->peers */
	bool tls;                       /* the connection is encrypted (STARTTLS or lmtps:) */
	bool direct;                    /* plain socket: replies may go out with send() */
	bool hold_output;               /* a batch of replies is being queued: flush at its end */
	bool defer_flush;               /* session_process() ends with flush_soon(), not a write */
	size_t out_len;
	char out[1024];                 /* replies not yet written: one write per batch */
	struct event *flush_event;      /* writes replies queued outside session_process() */
	long long timeout_write_ms;     /* what the bufferevent has now (-1: not set yet) */
	/* The deadline of the current phase: a command line, or a DATA/BDAT phase. Unlike the
	 * bufferevent's idle timeout, bytes that arrive do not push it back (slowloris): only a
	 * complete command line, or data at min_data_rate, does. */
	struct event *deadline_timer;
	long long deadline_us;          /* CLOCK_MONOTONIC microseconds; 0: none */
	long long deadline_armed_us;    /* when the timer fires; earlier is fine, it re-arms */
	const char *deadline_phase;     /* "greeting", "command" or "data", for the log */
	long long phase_started_us;
	uint64_t phase_bytes;           /* bytes received in the current DATA/BDAT phase */
	struct event *close_timer;      /* waits for a STARTTLS filter's bytes to leave */
	unsigned close_polls;
	char tls_info[128];             /* "TLSv1.3 TLS_AES_256_GCM_SHA384" once shaken hands */
	struct transaction *tx;

	/* a RCPT whose verification runs in a worker */
	struct dispatch_verify *verify;
	struct recipient pending_rcpt;
	size_t pending_k;

	/* post-DATA replies, filled in any order, written in RCPT order */
	struct dispatch *dispatch;
	struct status *replies;
	bool *reply_ready;
	size_t reply_count, reply_next;
};

static void session_process(struct session *s);
static void session_free(struct session *s);

/* --- output --- */

/*
 * Replies collect in s->out while a batch of work runs (every pipelined command of one read,
 * every recipient's post-DATA reply known at once) and leave in one write at its end
 * (RFC 2920). On a plain socket with nothing queued in the bufferevent, that write is a
 * send() of our own: the bufferevent would arm and disarm EV_WRITE around every reply, two
 * epoll_ctl calls each (docs/performance.md). Whatever send() does not take, and everything
 * under TLS, goes to the bufferevent, after anything already queued there, so order holds.
 */
static void out_flush(struct session *s)
{
	size_t sent = 0;

	if (s->out_len == 0)
		return;
	if (s->direct && evbuffer_get_length(bufferevent_get_output(s->bev)) == 0) {
		ssize_t n = send(bufferevent_getfd(s->bev), s->out, s->out_len,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0)
			sent = (size_t)n;
		/* An error (EAGAIN, a reset) is left to the bufferevent: it retries or reports. */
	}
	if (sent < s->out_len)
		evbuffer_add(bufferevent_get_output(s->bev), s->out + sent, s->out_len - sent);
	s->out_len = 0;
}

static void out_add(struct session *s, const char *data, size_t len)
{
	if (s->out_len + len > sizeof(s->out)) {
		out_flush(s);
		if (len > sizeof(s->out)) {
			evbuffer_add(bufferevent_get_output(s->bev), data, len);
			return;
		}
	}
	memcpy(s->out + s->out_len, data, len);
	s->out_len += len;
}

/* --- replies --- */

static void reply_status(struct session *s, const struct status *st)
{
	char buf[STATUS_TEXT_MAX + 64];
	size_t n = status_format(st, false, buf, sizeof(buf));

	out_add(s, buf, n);
	if (!s->processing && !s->hold_output)
		out_flush(s);
	/* Only protocol errors count towards max_errors: an unknown recipient or a full mailbox is
	 * the MTA's normal business, not a misbehaving client. */
	if ((st->code >= 500 && st->code <= 504) || st->code == 555)
		s->errors++;
	if (log_get_level() >= LOG_LEVEL_DEBUG) {
		char esc[LOG_ESC_SIZE];
		log_debug("session=%s event=reply reply=\"%s\"", s->id,
			  log_escape(esc, sizeof(esc), buf, n - 2, 300));
	}
}

static void reply(struct session *s, int code, const char *enhanced, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void reply(struct session *s, int code, const char *enhanced, const char *fmt, ...)
{
	struct status st;
	va_list ap;
	int r;

	/* One formatting pass, straight into the status (the hot path of every command). */
	va_start(ap, fmt);
	r = status_vmake(&st, code, enhanced, fmt, ap);
	va_end(ap);
	if (r < 0)
		log_error("session=%s event=bug invalid_reply=%d/%s", s->id, code,
			  enhanced ? enhanced : "");
	reply_status(s, &st);
}

static void close_when_flushed(evutil_socket_t fd, short what, void *arg);

static void on_flush_event(evutil_socket_t fd, short what, void *arg)
{
	out_flush(arg);
}

/* Write what is queued once the current loop turn's callbacks are done: the dispatcher reports
 * a transaction's recipients one by one, and their replies should leave in one write. */
static void flush_soon(struct session *s)
{
	if (s->out_len == 0)
		return;
	if (s->flush_event == NULL)
		s->flush_event = event_new(s->srv->base, -1, 0, on_flush_event, s);
	if (s->flush_event != NULL)
		event_active(s->flush_event, EV_TIMEOUT, 1);
	else
		out_flush(s);
}

/* Free the session from the loop, once the output is written: never under a caller's feet
 * (reply_and_close runs inside callbacks that touch the session after it returns). */
static void close_soon(struct session *s)
{
	/* close_timer exists from session_new() on: this cannot fail halfway. */
	if (!evtimer_pending(s->close_timer, NULL)) {
		struct timeval now = { 0, 0 };
		evtimer_add(s->close_timer, &now);
	}
}

static void deadline_clear(struct session *s);

/* Queue a last reply and close once it is written. */
static void reply_and_close(struct session *s, int code, const char *enhanced, const char *text)
{
	reply(s, code, enhanced, "%s %s", s->srv->cfg->hostname, text);
	s->state = STATE_CLOSING;
	bufferevent_disable(s->bev, EV_READ);
	deadline_clear(s); /* the write timeout covers a client that does not read this */
	out_flush(s);
	close_soon(s);
}

/* --- timeouts --- */

/*
 * Reads have no idle timeout: every phase in which the client owes us bytes has a deadline.
 * A command line must be complete within timeout_command (timeout_greeting before LHLO) of the
 * previous line or reply, however its bytes trickle in. A DATA or BDAT phase starts with
 * timeout_data; each byte received adds 1/min_data_rate s, and the deadline never lies more than
 * timeout_data ahead (Postfix's smtpd_per_request_deadline with smtpd_min_data_rate). While the
 * client waits for us (a verification, a delivery) there is none. Writes keep an idle timeout
 * (timeout_command): a client that stops reading its replies is dropped.
 */
static long long mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void deadline_arm(struct session *s, long long at_us)
{
	long long left = at_us - mono_us();
	struct timeval tv;

	if (left < 0)
		left = 0;
	tv.tv_sec = (time_t)(left / 1000000);
	tv.tv_usec = (suseconds_t)(left % 1000000);
	s->deadline_armed_us = at_us;
	evtimer_add(s->deadline_timer, &tv);
}

/* Set the deadline. A later one needs no timer change (the timer, when it fires early, sees
 * the new deadline and waits on): one evtimer_add per timeout period, not per command. */
static void deadline_set(struct session *s, const char *phase, long long at_us)
{
	s->deadline_us = at_us;
	s->deadline_phase = phase;
	if (s->deadline_armed_us != 0 && s->deadline_armed_us <= at_us &&
	    evtimer_pending(s->deadline_timer, NULL))
		return;
	deadline_arm(s, at_us);
}

static void deadline_clear(struct session *s)
{
	s->deadline_us = 0;
	s->deadline_armed_us = 0;
	evtimer_del(s->deadline_timer);
}

/* A complete command line was read: the next one has its full time again. */
static void deadline_next_command(struct session *s)
{
	const struct config *cfg = s->srv->cfg;
	bool greeting = s->state == STATE_FRESH;

	deadline_set(s, greeting ? "greeting" : "command",
		     mono_us() + (greeting ? cfg->timeout_greeting_ms : cfg->timeout_command_ms) * 1000);
}

/* n bytes of DATA/BDAT arrived: credit them at min_data_rate, up to timeout_data ahead. */
static void deadline_data_received(struct session *s, size_t n)
{
	const struct config *cfg = s->srv->cfg;
	long long now = mono_us(), cap = now + cfg->timeout_data_ms * 1000, at;

	if (n == 0)
		return;
	s->phase_bytes += n;
	if (cfg->min_data_rate > 0) {
		at = s->deadline_us + (long long)n * 1000000 / cfg->min_data_rate;
		if (at > cap)
			at = cap;
	} else {
		at = cap; /* no minimum rate: an idle timeout */
	}
	deadline_set(s, "data", at);
}

static void set_write_timeout(struct session *s)
{
	long long wms = s->srv->cfg->timeout_command_ms;
	struct timeval wtv = { .tv_sec = wms / 1000, .tv_usec = (wms % 1000) * 1000 };

	/* Setting timeouts re-adds the events: only when the value changes (a reload). */
	if (wms == s->timeout_write_ms)
		return;
	s->timeout_write_ms = wms;
	bufferevent_set_timeouts(s->bev, NULL, &wtv);
}

static void timeouts_for_state(struct session *s)
{
	const struct config *cfg = s->srv->cfg;

	set_write_timeout(s);
	switch (s->state) {
	case STATE_DATA:
	case STATE_BDAT:
		s->phase_started_us = mono_us();
		s->phase_bytes = 0;
		deadline_set(s, "data", s->phase_started_us + cfg->timeout_data_ms * 1000);
		break;
	case STATE_VERIFYING:
	case STATE_DELIVERING:
	case STATE_CLOSING:
		/* The client waits for us: its silence is no fault (style.md item 12). Closing:
		 * reads are off, the write timeout covers a client that does not read. */
		deadline_clear(s);
		break;
	default:
		deadline_next_command(s);
		break;
	}
}

/* --- transaction --- */

static void tx_free(struct transaction **txp)
{
	struct transaction *tx = *txp;

	if (tx == NULL)
		return;
	*txp = NULL;
	spool_free(&tx->spool);
	free(tx->rcpts);
	tx->cfg = NULL;
	runtime_unref(&tx->rt);
	free(tx);
}

static void session_reset_tx(struct session *s)
{
	/* XFORWARD attributes describe one transaction (Postfix XFORWARD_README). */
	s->xf_ident[0] = '\0';
	s->xf_client[0] = '\0';
	s->xf_name[0] = '\0';
	s->xf_addr[0] = '\0';
	tx_free(&s->tx);
	if (s->state != STATE_FRESH && s->state != STATE_CLOSING)
		s->state = STATE_READY;
}

static int tx_start_spool(struct session *s)
{
	struct transaction *tx = s->tx;
	const struct config *cfg = tx->cfg;

	tx->spool = spool_new((size_t)cfg->spool_memory_max, cfg->spool_dir,
			      (uint64_t)cfg->max_message_size);
	if (tx->spool == NULL)
		return -1;
	if (!tx->rt->need_sha256)
		spool_skip_digest(tx->spool);
	data_decoder_init(&tx->decoder);
	header_scan_init(&tx->headers);
	tx->received = time(NULL);
	return 0;
}

static int spool_sink(void *ctx, const char *data, size_t len)
{
	struct transaction *tx = ctx;
	const char *error;

	if (tx->spool_error != NULL)
		return 0; /* keep reading to the end; the error is reported once */
	if (tx->headers.in_header)
		header_scan_feed(&tx->headers, data, len);
	if (spool_write(tx->spool, data, len, &error) < 0) {
		tx->spool_error = error;
		tx->spool_errno = errno;
	}
	return 0;
}

/* --- refusals --- */

static const char *result_name(const struct status *st)
{
	return status_class_of(st) == STATUS_PERMFAIL ? "permfail" : "tempfail";
}

/*
 * One line per refused recipient, with the fields and names of the delivery line
 * (dispatcher.c), so that a grep for rcpt=<...> tells what became of every recipient:
 *   event=refused stage=rcpt session= tx= [qid=] client= [xforward_client=] from=<> rcpt=<>
 *   result= reply="..." [backend=]
 * stage is "rcpt" (refused at RCPT) or "data" (refused after the message, before any
 * delivery). A RCPT too malformed to have an address is logged with its argument as arg="...".
 */
static void log_refusal(struct session *s, const char *stage, const char *rcpt, const char *arg,
			const struct backend_instance *backend, const struct status *st)
{
	const struct transaction *tx = s->tx;
	char esc_rcpt[LOG_ESC_SIZE], esc_from[LOG_ESC_SIZE], esc_text[LOG_ESC_SIZE];
	char esc_qid[LOG_ESC_SIZE], esc_xf[LOG_ESC_SIZE], esc_arg[LOG_ESC_SIZE];

	if (log_get_level() < LOG_LEVEL_INFO)
		return; /* nothing would be written: do not build the line */
	log_escape(esc_text, sizeof(esc_text), st->text, strlen(st->text), 200);
	if (rcpt != NULL)
		format(esc_arg, sizeof(esc_arg), "rcpt=<%s>", log_esc(esc_rcpt, rcpt));
	else
		format(esc_arg, sizeof(esc_arg), "arg=\"%s\"", log_esc(esc_rcpt, arg ? arg : ""));
	log_info("event=refused stage=%s session=%s tx=%s%s%s client=%s%s%s from=<%s> %s "
		 "result=%s reply=\"%d %s %s\"%s%s",
		 stage, s->id, tx != NULL ? tx->id : "-", s->xf_ident[0] ? " qid=" : "",
		 s->xf_ident[0] ? log_esc(esc_qid, s->xf_ident) : "", s->peer,
		 s->xf_client[0] ? " xforward_client=" : "",
		 s->xf_client[0] ? log_esc(esc_xf, s->xf_client) : "",
		 tx != NULL ? log_esc(esc_from, tx->from_str) : "", esc_arg, result_name(st),
		 st->code, st->enhanced, esc_text, backend != NULL ? " backend=" : "",
		 backend != NULL ? backend->name : "");
}

/* A recipient refused at RCPT (no route, a verification, the breaker, a limit): the reply
 * policy, the reply, the log line. */
static void rcpt_refuse(struct session *s, const char *rcpt, const struct backend_instance *backend,
			struct status *st)
{
	reply_for_recipient(s->tx->cfg, backend, rcpt, NULL, st);
	reply_status(s, st);
	log_refusal(s, "rcpt", rcpt, NULL, backend, st);
}

/* A message refused by the session itself (too big, at MAIL or at a BDAT chunk). */
static void reply_refusal(struct session *s, const struct config *cfg, int code,
			  const char *enhanced, const char *text)
{
	struct status st;

	status_must(&st, code, enhanced, "%s", text);
	reply_policy_final(cfg, NULL, &st);
	reply_status(s, &st);
}

/* --- post-DATA replies --- */

static void flush_replies(struct session *s)
{
	while (s->reply_next < s->reply_count && s->reply_ready[s->reply_next]) {
		reply_status(s, &s->replies[s->reply_next]);
		s->reply_next++;
	}
	if (s->reply_next < s->reply_count)
		return;
	/* Every recipient answered: the transaction is over. */
	free(s->replies);
	free(s->reply_ready);
	s->replies = NULL;
	s->reply_ready = NULL;
	s->reply_count = s->reply_next = 0;
	s->dispatch = NULL;
	if (s->state == STATE_CLOSING)
		return; /* a timeout closed the session meanwhile: these were its last replies */
	s->state = STATE_READY;
	timeouts_for_state(s);
	if (s->srv->stopping &&
	    evbuffer_get_length(bufferevent_get_input(s->bev)) == 0) {
		/* Shutting down: the transaction is done, do not wait for the client's next one. */
		reply_and_close(s, 421, "4.3.2", "Service shutting down, try again later");
		return;
	}
	server_check_idle(s->srv);
}

static void delivery_result(void *ctx, size_t index, const struct status *st)
{
	struct session *s = ctx;

	s->replies[index] = *st;
	s->reply_ready[index] = true;
	bool held = s->hold_output;
	s->hold_output = true;
	flush_replies(s);
	s->hold_output = held;
	/* The replies leave once this loop turn's callbacks are done: more recipients' results
	 * may follow, and the dispatcher finishes its bookkeeping first (a client holding all its
	 * replies finds no delivery in flight). */
	if (s->state == STATE_READY && !s->processing) {
		/* Commands may have been pipelined behind the final dot. */
		if (!s->eof)
			bufferevent_enable(s->bev, EV_READ);
		s->defer_flush = true;
		session_process(s);
		return;
	}
	if (!s->processing && !held)
		flush_soon(s);
}

/* Same reply for every recipient (too big, loop, spool error): no delivery. */
static void reply_all_recipients(struct session *s, int code, const char *enhanced,
				 const char *text)
{
	struct transaction *tx = s->tx;

	for (size_t i = 0; i < tx->rcpt_count; i++) {
		struct status st;
		status_make(&st, code, enhanced, "%s", text);
		reply_for_recipient(tx->cfg, NULL, tx->rcpts[i].rcpt, tx->id, &st);
		reply_status(s, &st);
		log_refusal(s, "data", tx->rcpts[i].rcpt, NULL, NULL, &st);
	}
	session_reset_tx(s);
}

static size_t build_trace(struct session *s, char *buf, size_t size)
{
	struct transaction *tx = s->tx;
	/* The loop thread alone builds trace headers: one cached date per second. */
	static time_t date_sec = (time_t)-1;
	static char date[64];

	char from_ip[80];
	if (strcmp(s->peer_ip, "unix") == 0)
		format(from_ip, sizeof(from_ip), "unix socket");
	else
		format(from_ip, sizeof(from_ip), strchr(s->peer_ip, ':') ? "[IPv6:%s]" : "[%s]",
		       s->peer_ip);
	if (tx->received != date_sec) {
		struct tm tm;
		localtime_r(&tx->received, &tm);
		strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
		date_sec = tx->received;
	}
	/* RFC 5321 4.4: Return-Path, then our Received line on top. */
	int n = format(buf, size,
			 "Return-Path: <%s>\r\n"
			 "Received: from %s (%s)\r\n"
			 "\tby %s (lmtpgw) with %s id %s;\r\n"
			 "\t%s\r\n",
			 tx->from_str, s->lhlo[0] ? s->lhlo : "unknown", from_ip,
			 tx->cfg->hostname,
			 /* RFC 3848 / RFC 6531 protocol names */
			 tx->mail.smtputf8 ? (s->tls ? "UTF8LMTPS" : "UTF8LMTP") : (s->tls ? "LMTPS" : "LMTP"),
			 tx->id, date);
	return n < 0 ? 0 : (size_t)n < size ? (size_t)n : size - 1;
}

/* The whole message is in: check it, then hand it to the dispatcher. */
static void end_of_message(struct session *s)
{
	struct transaction *tx = s->tx;
	const char *error;

	if (tx->rcpt_count == 0) {
		/* RFC 2033 4.3: BDAT LAST with no successful RCPT returns zero replies. */
		session_reset_tx(s);
		return;
	}
	if (tx->spool_error == NULL && spool_finish(tx->spool, &error) < 0) {
		tx->spool_error = error;
		tx->spool_errno = errno;
	}
	if (tx->spool_error != NULL) {
		log_error("session=%s tx=%s event=spool_error error=\"%s: %s\"", s->id, tx->id,
			  tx->spool_error, strerror(tx->spool_errno));
		reply_all_recipients(s, 451, "4.3.0", "Local error in processing (spool)");
		return;
	}
	if (spool_too_big(tx->spool)) {
		reply_all_recipients(s, 552, "5.3.4", "Message too big for system");
		return;
	}
	if (tx->headers.received_count > (unsigned)tx->cfg->max_received_headers) {
		reply_all_recipients(s, 554, "5.4.6", "Too many Received headers: mail loop");
		return;
	}

	char trace[2048];
	struct dispatch_request req = {
		.base = s->srv->base,
		.rt = tx->rt,
		.delivery = {
			.spool = tx->spool,
			.trace = trace,
			.trace_len = build_trace(s, trace, sizeof(trace)),
			.delivered_to = tx->cfg->delivered_to,
			.sender = tx->from_str,
			.mail = &tx->mail,
			.session_id = s->id,
			.txid = tx->id,
			.msgid = tx->headers.msgid,
			.received = tx->received,
			.lhlo = s->lhlo,
			.client_addr = s->peer_ip,
			.xforward_name = s->xf_name,
			.xforward_addr = s->xf_addr,
			.tls = s->tls,
		},
		.rcpts = tx->rcpts,
		.rcpt_count = tx->rcpt_count,
		.client = s->peer, /* the XFORWARD client is logged beside it */
		.queue_id = s->xf_ident,
	};
	size_t count = tx->rcpt_count;

	s->replies = calloc(count, sizeof(*s->replies));
	s->reply_ready = calloc(count, sizeof(*s->reply_ready));
	if (s->replies == NULL || s->reply_ready == NULL) {
		free(s->replies);
		free(s->reply_ready);
		s->replies = NULL;
		s->reply_ready = NULL;
		reply_all_recipients(s, 451, "4.3.0", "Local error in processing (memory)");
		return;
	}
	s->reply_count = count;
	s->reply_next = 0;
	s->messages++;
	metrics_transaction(spool_size(tx->spool));
	/* Ownership of spool and recipients passes to the dispatch. */
	tx->spool = NULL;
	tx->rcpts = NULL;
	tx->rcpt_count = 0;
	s->state = STATE_DELIVERING;
	timeouts_for_state(s);
	/* req points into tx (sender, ids): the dispatch copies them before tx goes. */
	struct dispatch *dispatch = dispatch_start(&req, delivery_result, s);
	tx_free(&s->tx);
	s->xf_ident[0] = '\0';
	s->xf_client[0] = '\0';
	s->xf_name[0] = '\0';
	s->xf_addr[0] = '\0';
	/* Inline backends may have answered everything already (then the dispatch is gone). */
	s->dispatch = s->state == STATE_DELIVERING ? dispatch : NULL;
}

/* --- commands --- */

/* XFORWARD (Postfix) lets the client put another client's name in our logs and archives:
 * only with `xforward` on, and only for peers we trust (trusted_networks, unix sockets), as
 * Postfix's smtpd_authorized_xforward_hosts. Others are not offered it and get 550 5.7.0. */
static bool xforward_allowed(const struct session *s)
{
	return s->srv->cfg->xforward && s->trusted;
}

struct command {
	const char *verb;
	void (*handler)(struct session *s, char *args);
	bool before_lhlo;    /* allowed before LHLO */
};

static bool has_args(const char *args)
{
	return args != NULL && args[0] != '\0';
}

static void cmd_lhlo(struct session *s, char *args)
{
	const struct config *cfg = s->srv->cfg;

	if (!has_args(args) || strlen(args) > 255 || strpbrk(args, " \t") != NULL) {
		reply(s, 501, "5.5.4", "Syntax: LHLO hostname");
		return;
	}
	for (const char *p = args; *p; p++) {
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f || *p == '(' || *p == ')') {
			reply(s, 501, "5.5.4", "Invalid LHLO hostname");
			return;
		}
	}
	snprintf(s->lhlo, sizeof(s->lhlo), "%s", args);
	session_reset_tx(s);
	s->state = STATE_READY;
	timeouts_for_state(s);

	char size[40];
	const char *lines[16];
	size_t n = 0;

	snprintf(size, sizeof(size), "SIZE %lld", cfg->max_message_size);
	lines[n++] = cfg->hostname;
	lines[n++] = "PIPELINING";
	lines[n++] = "ENHANCEDSTATUSCODES";
	lines[n++] = "8BITMIME";
	lines[n++] = size;
	lines[n++] = "CHUNKING";
	lines[n++] = "BINARYMIME";
	lines[n++] = "SMTPUTF8";
	if (cfg->tls_ctx != NULL && !s->tls && !s->is_unix)
		lines[n++] = "STARTTLS";
	if (xforward_allowed(s))
		lines[n++] = "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE";
	/* RFC 3461: a server offering DSN must send "delivered" notices when asked; lmtpgw sends
	 * no mail, so DSN is offered only when the admin says the store or the MTA covers it. */
	if (cfg->dsn)
		lines[n++] = "DSN";
	/* RFC 2034: the LHLO reply carries no enhanced status codes. */
	for (size_t i = 0; i < n; i++) {
		char line[512];
		int len = format(line, sizeof(line), "250%c%s\r\n", i + 1 < n ? '-' : ' ', lines[i]);
		if (len > 0)
			out_add(s, line, (size_t)len < sizeof(line) ? (size_t)len : sizeof(line) - 1);
	}
}

static void cmd_mail(struct session *s, char *args)
{
	struct address from;
	struct mail_params params;
	struct status st;

	if (s->state == STATE_MAIL) {
		reply(s, 503, "5.5.1", "Nested MAIL command");
		return;
	}
	if (s->srv->stopping) {
		reply_and_close(s, 421, "4.3.2", "Service shutting down, try again later");
		return;
	}
	if (s->srv->cfg->tls_required && !s->tls && !s->is_unix) {
		reply(s, 530, "5.7.0", "Must issue a STARTTLS command first");
		return;
	}
	if (envelope_parse_mail(args ? args : "", (uint64_t)s->srv->cfg->max_message_size, &from,
				&params, &st) < 0) {
		/* 552 (SIZE= over the limit) refuses the message; the rest are syntax errors, which
		 * the reply policy leaves alone (reply.h). */
		if (st.code == 552)
			reply_policy_final(s->srv->cfg, NULL, &st);
		reply_status(s, &st);
		return;
	}
	struct transaction *tx = calloc(1, sizeof(*tx));
	if (tx == NULL) {
		reply(s, 451, "4.3.0", "Local error in processing");
		return;
	}
	tx->rt = runtime_ref(s->srv->rt);
	tx->cfg = tx->rt->cfg;
	tx->from = from;
	tx->mail = params;
	address_format(&from, tx->from_str, sizeof(tx->from_str));
	format(tx->id, sizeof(tx->id), "%s.%u", s->id, ++s->tx_seq);
	s->tx = tx;
	s->state = STATE_MAIL;
	reply(s, 250, "2.1.0", "Sender <%s> OK (transaction %s)", tx->from_str, tx->id);
}

static void rcpt_check(struct session *s, const struct recipient *r, size_t from);

/* A worker's RCPT-time verification answered. */
static void rcpt_verified(void *ctx, int result, const struct status *st)
{
	struct session *s = ctx;
	struct transaction *tx = s->tx;
	const struct backend_instance *b =
		&tx->cfg->backends[s->pending_rcpt.rule->targets[s->pending_k]];

	s->verify = NULL;
	s->state = STATE_MAIL;
	timeouts_for_state(s);
	if (result < 0) {
		struct status reply_st = *st;
		rcpt_refuse(s, s->pending_rcpt.rcpt, b, &reply_st);
	} else {
		struct recipient r = s->pending_rcpt;
		rcpt_check(s, &r, s->pending_k + 1);
	}
	if (s->state == STATE_MAIL && !s->processing)
		session_process(s); /* pipelined commands waited behind this RCPT */
}

/* Check a routed recipient against its backends from target index `from` on (breaker, then
 * each backend's verification), then accept it. A verification that talks to the store runs
 * in a worker: the session holds its pipeline meanwhile, so replies stay in order. */
static void rcpt_check(struct session *s, const struct recipient *r, size_t from)
{
	struct transaction *tx = s->tx;
	struct status st;

	for (size_t k = from; k < r->rule->target_count; k++) {
		const struct backend_instance *b = &tx->cfg->backends[r->rule->targets[k]];
		struct backend_runtime *br = tx->rt->backends[r->rule->targets[k]];
		if (dispatch_backend_down(br)) {
			/* Circuit breaker open: say so now instead of after DATA. */
			status_must(&st, 451, "4.4.1", "backend %s temporarily unavailable", b->name);
			rcpt_refuse(s, r->rcpt, b, &st);
			return;
		}
		if (b->driver->verify == NULL)
			continue;
		if (b->driver->verify_blocking) {
			s->pending_rcpt = *r;
			s->pending_k = k;
			s->state = STATE_VERIFYING;
			timeouts_for_state(s);
			s->verify = dispatch_verify_start(tx->rt, br, r, rcpt_verified, s);
			return;
		}
		if (b->driver->verify(br->state, r, &st) < 0) {
			rcpt_refuse(s, r->rcpt, b, &st);
			return;
		}
	}
	if (tx->rcpt_count == tx->rcpt_cap) {
		size_t cap = tx->rcpt_cap ? tx->rcpt_cap * 2 : 8;
		struct recipient *n = realloc(tx->rcpts, cap * sizeof(*n));
		if (n == NULL) {
			status_must(&st, 452, "4.3.0", "Local error in processing");
			rcpt_refuse(s, r->rcpt, NULL, &st);
			return;
		}
		tx->rcpts = n;
		tx->rcpt_cap = cap;
	}
	tx->rcpts[tx->rcpt_count++] = *r;
	reply(s, 250, "2.1.5", "<%s> OK", r->rcpt);
}

static void cmd_rcpt(struct session *s, char *args)
{
	struct transaction *tx = s->tx;
	struct recipient r;
	struct status st;

	if (s->state != STATE_MAIL || tx == NULL) {
		reply(s, 503, "5.5.1", "MAIL first");
		return;
	}
	memset(&r, 0, sizeof(r));
	if (envelope_parse_rcpt(args ? args : "", tx->mail.smtputf8, &r.addr, &r.params, &st) < 0) {
		/* A syntax error: no reply policy (reply.h), but the MTA bounces this recipient. */
		reply_status(s, &st);
		log_refusal(s, "rcpt", NULL, args, NULL, &st);
		return;
	}
	if (tx->rcpt_count >= (size_t)tx->cfg->max_recipients) {
		char given[ADDRESS_PATH_MAX + 1];
		address_format(&r.addr, given, sizeof(given));
		status_must(&st, 452, "4.5.3", "Too many recipients");
		rcpt_refuse(s, given, NULL, &st);
		return;
	}
	r.rule = recipient_route(&r, tx->cfg);
	if (r.rule == NULL) {
		status_must(&st, 550, "5.1.1", "User unknown (no route)");
		rcpt_refuse(s, r.rcpt, NULL, &st);
		return;
	}
	rcpt_check(s, &r, 0);
}

static void cmd_data(struct session *s, char *args)
{
	struct transaction *tx = s->tx;

	if (s->state != STATE_MAIL || tx == NULL) {
		reply(s, 503, "5.5.1", "MAIL first");
		return;
	}
	if (tx->rcpt_count == 0) {
		reply(s, 503, "5.5.1", "No valid recipients");
		return;
	}
	if (tx->mail.body == BODY_BINARYMIME || tx->bdat_used) {
		/* RFC 3030 3: BINARYMIME content only with BDAT; no DATA after BDAT. */
		reply(s, 503, "5.5.1", "Use BDAT for this transaction");
		return;
	}
	if (has_args(args)) {
		reply(s, 501, "5.5.4", "Syntax: DATA");
		return;
	}
	if (tx_start_spool(s) < 0) {
		reply(s, 451, "4.3.0", "Local error in processing");
		return;
	}
	s->state = STATE_DATA;
	timeouts_for_state(s);
	reply(s, 354, NULL, "Go ahead, end with <CRLF>.<CRLF>");
}

/*
 * bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ] CR LF
 * chunk-size = 1*DIGIT ; end-marker = "LAST"       (RFC 3030 2)
 */
static int parse_bdat(const char *args, uint64_t *size_r, bool *last_r)
{
	const char *p = args;
	uint64_t size = 0;
	int digits = 0;

	if (p == NULL)
		return -1;
	for (; isdigit((unsigned char)*p); p++, digits++) {
		if (digits >= 19)
			return -1;
		size = size * 10 + (uint64_t)(*p - '0');
	}
	if (digits == 0)
		return -1;
	*last_r = false;
	if (*p == ' ') {
		while (*p == ' ')
			p++;
		if (strcasecmp(p, "LAST") != 0)
			return -1;
		*last_r = true;
	} else if (*p != '\0') {
		return -1;
	}
	*size_r = size;
	return 0;
}

static void cmd_bdat(struct session *s, char *args)
{
	struct transaction *tx = s->tx;
	uint64_t size;
	bool last;

	if (parse_bdat(args, &size, &last) < 0) {
		/* Without a size we cannot find the next command: close cleanly. */
		reply_and_close(s, 501, "5.5.4", "Syntax: BDAT size [LAST]; closing to stay in sync");
		return;
	}
	if (s->state != STATE_MAIL || tx == NULL) {
		/* Read the chunk anyway so the stream stays in sync, then say why. */
		struct transaction *skip = calloc(1, sizeof(*skip));
		if (skip == NULL) {
			reply_and_close(s, 421, "4.3.0", "Local error in processing");
			return;
		}
		skip->bdat_discard = true;
		skip->bdat_left = size;
		skip->bdat_last = last;
		s->tx = skip;
		s->state = STATE_BDAT;
		timeouts_for_state(s);
		return;
	}
	if (!tx->bdat_used) {
		if (tx_start_spool(s) < 0) {
			reply_and_close(s, 421, "4.3.0", "Local error in processing");
			return;
		}
		tx->bdat_used = true;
	}
	tx->bdat_left = size;
	tx->bdat_last = last;
	tx->bdat_discard = tx->rcpt_count == 0 || tx->bdat_failed;
	s->state = STATE_BDAT;
	timeouts_for_state(s);
}

/* A BDAT chunk has been read completely. */
static void bdat_chunk_done(struct session *s)
{
	struct transaction *tx = s->tx;

	if (tx->bdat_discard && tx->spool == NULL) {
		/* No transaction: the chunk was read only to stay in sync. */
		tx_free(&s->tx);
		s->state = s->state == STATE_CLOSING ? STATE_CLOSING : STATE_READY;
		if (s->state != STATE_CLOSING)
			s->state = s->lhlo[0] ? STATE_READY : STATE_FRESH;
		timeouts_for_state(s);
		reply(s, 503, "5.5.1", "MAIL first");
		return;
	}
	s->state = STATE_MAIL;
	timeouts_for_state(s);
	if (tx->rcpt_count == 0) {
		if (tx->bdat_last)
			end_of_message(s); /* zero replies (RFC 2033 4.3) */
		else
			reply(s, 503, "5.5.1", "No valid recipients");
		return;
	}
	if (tx->bdat_failed) {
		/* After an error reply the client should not have sent more; answer each chunk. */
		if (tx->bdat_last)
			reply_all_recipients(s, 552, "5.3.4", "Message too big for system");
		else
			reply_refusal(s, tx->cfg, 552, "5.3.4", "Message too big for system");
		return;
	}
	if (tx->bdat_last) {
		end_of_message(s);
		return;
	}
	if (spool_too_big(tx->spool)) {
		tx->bdat_failed = true;
		reply_refusal(s, tx->cfg, 552, "5.3.4", "Message too big for system");
		return;
	}
	reply(s, 250, "2.0.0", "%" PRIu64 " octets received", spool_received(tx->spool));
}

/* Decode an XFORWARD xtext value (RFC 3461 4 "+XX") into a printable string. */
static int xtext_decode(const char *in, char *out, size_t size)
{
	size_t n = 0;

	for (; *in; in++) {
		int c = (unsigned char)*in;
		if (c == '+') {
			if (!isxdigit((unsigned char)in[1]) || !isxdigit((unsigned char)in[2]))
				return -1;
			char hex[3] = { in[1], in[2], '\0' };
			c = (int)strtol(hex, NULL, 16);
			in += 2;
		}
		if (c < 0x21 || c > 0x7e)
			c = '?';
		if (n + 1 >= size)
			return -1;
		out[n++] = (char)c;
	}
	out[n] = '\0';
	return 0;
}

/*
 * xforward-command = "XFORWARD" 1*( SP attribute-name "=" attribute-value )
 * attribute-name = NAME / ADDR / PORT / PROTO / HELO / IDENT / SOURCE  (Postfix XFORWARD_README)
 */
static void cmd_xforward(struct session *s, char *args)
{
	char ident[sizeof(s->xf_ident)] = "", name[80] = "", addr[80] = "";
	bool has_ident = false, has_name = false, has_addr = false;

	if (!xforward_allowed(s)) {
		/* Postfix refuses the same way (smtpd_authorized_xforward_hosts). */
		reply(s, 550, "5.7.0", "XFORWARD not permitted");
		if (s->srv->cfg->xforward)
			log_info("session=%s event=xforward_refused client=%s reason=not_trusted",
				 s->id, s->peer);
		return;
	}
	if (s->state != STATE_READY) {
		reply(s, 503, "5.5.1", "XFORWARD only outside a mail transaction");
		return;
	}
	if (!has_args(args)) {
		reply(s, 501, "5.5.4", "Syntax: XFORWARD attribute=value...");
		return;
	}
	char *save = NULL;
	for (char *tok = strtok_r(args, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		char *eq = strchr(tok, '=');
		char value[256];
		if (eq == NULL || strlen(eq + 1) >= sizeof(value) ||
		    xtext_decode(eq + 1, value, sizeof(value)) < 0) {
			reply(s, 501, "5.5.4", "Bad XFORWARD attribute");
			return;
		}
		*eq = '\0';
		if (strcasecmp(tok, "IDENT") == 0)
			has_ident = snprintf(ident, sizeof(ident), "%s", value) >= 0;
		else if (strcasecmp(tok, "NAME") == 0)
			has_name = snprintf(name, sizeof(name), "%s", value) >= 0;
		else if (strcasecmp(tok, "ADDR") == 0)
			has_addr = snprintf(addr, sizeof(addr), "%s", value) >= 0;
		else if (strcasecmp(tok, "PORT") != 0 && strcasecmp(tok, "PROTO") != 0 &&
			 strcasecmp(tok, "HELO") != 0 && strcasecmp(tok, "SOURCE") != 0) {
			reply(s, 501, "5.5.4", "Unknown XFORWARD attribute");
			return;
		}
	}
	/* Attributes accumulate over several XFORWARD commands (Postfix sends the client in one
	 * and IDENT in another): set only those this one names. */
	if (has_ident && ident[0] && strcmp(ident, "[UNAVAILABLE]") != 0 &&
	    strcmp(ident, "[TEMPUNAVAIL]") != 0)
		snprintf(s->xf_ident, sizeof(s->xf_ident), "%s", ident);
	if (has_name)
		snprintf(s->xf_name, sizeof(s->xf_name), "%s", name);
	if (has_addr)
		snprintf(s->xf_addr, sizeof(s->xf_addr), "%s", addr);
	if (s->xf_name[0] || s->xf_addr[0])
		snprintf(s->xf_client, sizeof(s->xf_client), "%s[%s]",
			 s->xf_name[0] ? s->xf_name : "unknown", s->xf_addr[0] ? s->xf_addr : "unknown");
	reply(s, 250, "2.0.0", "OK");
}

static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);

/* Put the session's bufferevent in place with our callbacks and limits. */
static void session_attach(struct session *s, struct bufferevent *bev)
{
	s->bev = bev;
	bufferevent_setcb(bev, on_read, on_write, on_event, s);
	bufferevent_setwatermark(bev, EV_READ, 0, SESSION_INPUT_HIGH);
	s->timeout_write_ms = -1; /* a new bufferevent has none */
	timeouts_for_state(s);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
}

/* RFC 3207: STARTTLS, then the client starts over with LHLO. */
static void cmd_starttls(struct session *s, char *args)
{
	const struct config *cfg = s->srv->cfg;

	if (has_args(args)) {
		reply(s, 501, "5.5.4", "Syntax: STARTTLS");
		return;
	}
	if (cfg->tls_ctx == NULL || s->is_unix) {
		reply(s, 454, "4.7.0", "TLS not available");
		return;
	}
	if (s->tls) {
		reply(s, 503, "5.5.1", "TLS already active");
		return;
	}
	if (s->state == STATE_MAIL) {
		reply(s, 503, "5.5.1", "STARTTLS not allowed inside a mail transaction");
		return;
	}
	SSL *ssl = SSL_new(cfg->tls_ctx);
	if (ssl == NULL) {
		reply(s, 454, "4.7.0", "TLS not available now");
		return;
	}
	reply(s, 220, "2.0.0", "Ready to start TLS");
	/* The 220 leaves in clear text, before the filter: from here on every byte is TLS. */
	out_flush(s);
	s->direct = false;
	/* Anything pipelined after STARTTLS arrived in clear text: drop it (RFC 3207 4.2,
	 * CVE-2011-0411 class of injection). */
	evbuffer_drain(bufferevent_get_input(s->bev), evbuffer_get_length(bufferevent_get_input(s->bev)));
	struct bufferevent *tls = bufferevent_openssl_filter_new(
		s->srv->base, s->bev, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
	if (tls == NULL) {
		SSL_free(ssl);
		reply_and_close(s, 421, "4.7.0", "TLS setup failed");
		return;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(tls, 1);
	/* The filter keeps the timeouts from now on; the socket's own read timeout would fire
	 * through it while a delivery runs and the client rightly says nothing. */
	bufferevent_set_timeouts(s->bev, NULL, NULL);
	session_reset_tx(s);
	s->lhlo[0] = '\0';
	s->state = STATE_FRESH;
	s->tls = true;
	session_attach(s, tls);
}

static void cmd_rset(struct session *s, char *args)
{
	if (has_args(args)) {
		reply(s, 501, "5.5.4", "Syntax: RSET");
		return;
	}
	session_reset_tx(s);
	reply(s, 250, "2.0.0", "OK");
}

static void cmd_noop(struct session *s, char *args)
{
	reply(s, 250, "2.0.0", "OK");
}

static void cmd_vrfy(struct session *s, char *args)
{
	if (!has_args(args)) {
		reply(s, 501, "5.5.4", "Syntax: VRFY address");
		return;
	}
	/* RFC 5321 3.5.3: 252 when we will accept but do not verify. */
	reply(s, 252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery");
}

static void cmd_help(struct session *s, char *args)
{
	reply(s, 214, "2.0.0", "Commands: LHLO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT%s",
	      xforward_allowed(s) ? " XFORWARD" : "");
}

static void cmd_quit(struct session *s, char *args)
{
	session_reset_tx(s);
	reply(s, 221, "2.0.0", "%s closing connection", s->srv->cfg->hostname);
	s->state = STATE_CLOSING;
	bufferevent_disable(s->bev, EV_READ);
}

/* The LMTP command table (RFC 2033 4). HELO and EHLO are absent on purpose: 500 (RFC 2033 4.1). */
static const struct command commands[] = {
	{ "LHLO", cmd_lhlo, true },
	{ "MAIL", cmd_mail, false },
	{ "RCPT", cmd_rcpt, false },
	{ "DATA", cmd_data, false },
	{ "BDAT", cmd_bdat, true },     /* always reads its chunk, to stay in sync */
	{ "RSET", cmd_rset, true },
	{ "NOOP", cmd_noop, true },
	{ "VRFY", cmd_vrfy, true },
	{ "HELP", cmd_help, true },
	{ "QUIT", cmd_quit, true },
	{ "XFORWARD", cmd_xforward, false },
	{ "STARTTLS", cmd_starttls, true },
};

static void handle_line(struct session *s, char *line, size_t len)
{
	char *verb = line, *args = NULL;

	if (memchr(line, '\0', len) != NULL) {
		reply(s, 500, "5.5.2", "NUL character in command");
		return;
	}
	char *sp = strchr(line, ' ');
	if (sp != NULL) {
		*sp = '\0';
		args = sp + 1;
	}
	const struct command *cmd = NULL;
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcasecmp(verb, commands[i].verb) == 0) {
			cmd = &commands[i];
			break;
		}
	}
	if (cmd == NULL) {
		reply(s, 500, "5.5.2", "Unknown command (this is LMTP: LHLO, MAIL, RCPT, DATA, BDAT, "
				       "RSET, NOOP, VRFY, HELP, QUIT)");
		return;
	}
	/* The verbs that take arguments: parse them with a colon, the rest split on the space. */
	if (s->state == STATE_FRESH && !cmd->before_lhlo) {
		reply(s, 503, "5.5.1", "Send LHLO first");
		return;
	}
	if (s->srv->stopping && s->tx == NULL && cmd->handler != cmd_quit) {
		reply_and_close(s, 421, "4.3.2", "Service shutting down, try again later");
		return;
	}
	cmd->handler(s, args);
}

/* --- input --- */

static bool data_feed(struct session *s, struct evbuffer *in)
{
	struct transaction *tx = s->tx;
	struct evbuffer_iovec vec[16];
	int n = evbuffer_peek(in, -1, NULL, vec, 16);
	size_t consumed = 0;

	for (int i = 0; i < n && i < 16 && !tx->decoder.done; i++) {
		long used = data_decode(&tx->decoder, vec[i].iov_base, vec[i].iov_len, spool_sink, tx);
		if (used < 0)
			break;
		consumed += (size_t)used;
	}
	evbuffer_drain(in, consumed);
	if (!tx->decoder.done) {
		deadline_data_received(s, consumed);
		return consumed > 0;
	}
	s->state = STATE_MAIL;
	end_of_message(s);
	return true;
}

static bool bdat_feed(struct session *s, struct evbuffer *in)
{
	struct transaction *tx = s->tx;
	size_t received = 0;

	while (tx->bdat_left > 0 && evbuffer_get_length(in) > 0) {
		struct evbuffer_iovec vec[16];
		int n = evbuffer_peek(in, -1, NULL, vec, 16);
		size_t consumed = 0;
		for (int i = 0; i < n && i < 16 && tx->bdat_left > 0; i++) {
			size_t take = vec[i].iov_len;
			if (take > tx->bdat_left)
				take = (size_t)tx->bdat_left;
			if (!tx->bdat_discard)
				spool_sink(tx, vec[i].iov_base, take);
			tx->bdat_left -= take;
			consumed += take;
		}
		evbuffer_drain(in, consumed);
		received += consumed;
	}
	if (tx->bdat_left > 0) {
		deadline_data_received(s, received);
		return false;
	}
	bdat_chunk_done(s);
	return true;
}

/* One command line from in, bounded by max_command_line. Returns true if it did something. */
static bool command_feed(struct session *s, struct evbuffer *in)
{
	size_t avail = evbuffer_get_length(in);
	struct evbuffer_ptr eol = evbuffer_search(in, "\n", 1, NULL);

	if (s->skipping) {
		if (eol.pos < 0) {
			evbuffer_drain(in, avail);
			return false;
		}
		evbuffer_drain(in, (size_t)eol.pos + 1);
		s->skipping = false;
		deadline_next_command(s);
		reply(s, 500, "5.5.2", "Line too long");
		return true;
	}
	if (eol.pos < 0) {
		if (avail >= s->line_max) {
			/* Skip to the end of the line, then answer (style.md item 6). */
			evbuffer_drain(in, avail);
			s->skipping = true;
		}
		return false;
	}
	size_t len = (size_t)eol.pos; /* without the LF */
	if (len + 1 > s->line_max) { /* the limit counts CRLF (RFC 5321 4.5.3.1.4) */
		evbuffer_drain(in, len + 1);
		deadline_next_command(s);
		reply(s, 500, "5.5.2", "Line too long");
		return true;
	}
	evbuffer_remove(in, s->line, len + 1);
	if (len > 0 && s->line[len - 1] == '\r')
		len--;
	s->line[len] = '\0';
	if (log_get_level() >= LOG_LEVEL_DEBUG) {
		char esc[LOG_ESC_SIZE];
		log_debug("session=%s event=command line=\"%s\"", s->id,
			  log_escape(esc, sizeof(esc), s->line, len, 200));
	}
	/* The next line's time starts now; a handler that changes the phase (DATA, BDAT, a
	 * verification) sets that phase's deadline instead. */
	deadline_next_command(s);
	handle_line(s, s->line, len);
	return true;
}

static bool session_close_if_flushed(struct session *s);
static size_t unsent(const struct session *s);

/* After the client half-closed: once every command it sent is answered (deliveries included,
 * RFC 2033 4.2: each recipient's reply is owed), close. An unfinished message stores nothing. */
static void session_eof_check(struct session *s)
{
	if (!s->eof || s->state == STATE_DELIVERING || s->state == STATE_VERIFYING ||
	    s->state == STATE_CLOSING)
		return;
	if (s->state == STATE_DATA || s->state == STATE_BDAT) {
		log_info("session=%s tx=%s event=lost_during_data stored=none", s->id,
			 s->tx != NULL ? s->tx->id : "-");
		session_free(s);
		return;
	}
	session_reset_tx(s);
	s->state = STATE_CLOSING;
	session_close_if_flushed(s);
}

/*
 * libevent 2.1 reads at most 4096 bytes a loop turn (EVBUFFER_MAX_READ in evbuffer_read), so a
 * 5 MB message took over a thousand turns, each an epoll_wait, an ioctl, a readv and a timeout
 * re-armed. Inside DATA and BDAT on a plain socket the session reads on by itself, 64 KiB at a
 * time, while the socket has bytes and the turn's share (1 MiB, fair to other sessions) lasts.
 * What it cannot read is left to the bufferevent: EAGAIN (it is still armed), end of file and
 * errors (the next read sees them again and reports them the usual way).
 */
#define SESSION_READ_AHEAD (64 * 1024)
#define SESSION_READ_SHARE (1024 * 1024)

static bool read_ahead(struct session *s, struct evbuffer *in, size_t *share)
{
	struct evbuffer_iovec v;

	if (!s->direct || s->eof || *share == 0 ||
	    !(s->state == STATE_DATA || (s->state == STATE_BDAT && s->tx->bdat_left > 0)))
		return false;
	if (evbuffer_reserve_space(in, SESSION_READ_AHEAD, &v, 1) < 1)
		return false;
	ssize_t n = recv(bufferevent_getfd(s->bev), v.iov_base, v.iov_len, MSG_DONTWAIT);
	if (n <= 0) {
		evbuffer_commit_space(in, NULL, 0);
		return false;
	}
	v.iov_len = (size_t)n;
	evbuffer_commit_space(in, &v, 1);
	*share = (size_t)n >= *share ? 0 : *share - (size_t)n;
	return true;
}

static void session_process(struct session *s)
{
	size_t read_share = SESSION_READ_SHARE;

	s->processing = true;
	for (;;) {
		/* Fetched each time: STARTTLS replaces the bufferevent. */
		struct evbuffer *in = bufferevent_get_input(s->bev);
		if (s->errors > (unsigned)s->srv->cfg->max_errors && s->state != STATE_CLOSING &&
		    s->state != STATE_DELIVERING && s->state != STATE_VERIFYING) {
			reply_and_close(s, 421, "4.7.0", "Too many errors, closing connection");
			break;
		}
		if (s->state == STATE_CLOSING || s->state == STATE_DELIVERING ||
		    s->state == STATE_VERIFYING)
			break;
		if (evbuffer_get_length(in) == 0 && !(s->state == STATE_BDAT && s->tx->bdat_left == 0) &&
		    !read_ahead(s, in, &read_share))
			break;
		bool progress;
		if (s->state == STATE_DATA)
			progress = data_feed(s, in);
		else if (s->state == STATE_BDAT)
			progress = bdat_feed(s, in);
		else
			progress = command_feed(s, in);
		if (!progress)
			break;
	}
	s->processing = false;
	if (s->freed_in_process) {
		session_free(s);
		return;
	}
	if (s->defer_flush) {
		s->defer_flush = false;
		flush_soon(s);
	} else {
		out_flush(s);
	}
	if (s->state == STATE_CLOSING && unsent(s) == 0)
		close_soon(s); /* QUIT and the like: nothing left for the write callback */
	session_eof_check(s);
}

/* --- bufferevent callbacks --- */

static void on_read(struct bufferevent *bev, void *arg)
{
	session_process(arg);
}

/* Bytes not yet handed to the kernel: with a STARTTLS filter, the encrypted bytes wait in the
 * underlying bufferevent after our own output is empty. */
static size_t unsent(const struct session *s)
{
	size_t n = evbuffer_get_length(bufferevent_get_output(s->bev));
	struct bufferevent *under = bufferevent_get_underlying(s->bev);

	if (under != NULL)
		n += evbuffer_get_length(bufferevent_get_output(under));
	return n;
}

/* Free now when nothing is left to send; otherwise the write callback does it. */
static bool session_close_if_flushed(struct session *s)
{
	out_flush(s);
	if (unsent(s) == 0) {
		session_free(s);
		return true;
	}
	return false;
}

static void close_when_flushed(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;

	out_flush(s); /* replies still waiting for a flush event leave first */
	/* Our own output still queued: the write callback frees once it is written, the write
	 * timeout (timeout_command) if the client stops reading. */
	if (evbuffer_get_length(bufferevent_get_output(s->bev)) > 0)
		return;
	/* Only a TLS filter's bytes wait in the socket's buffer, which calls nobody back: poll,
	 * for at most 5 s. */
	if (unsent(s) > 0 && ++s->close_polls < 500) {
		struct timeval tv = { 0, 10000 };
		evtimer_add(s->close_timer, &tv);
		return;
	}
	session_free(s);
}

static void on_write(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;

	if (s->state != STATE_CLOSING)
		return;
	if (unsent(s) == 0) {
		session_free(s);
		return;
	}
	/* The TLS filter drained into the socket's buffer: wait for that one too (no callback
	 * reaches us from it), for at most 5 s. */
	if (!evtimer_pending(s->close_timer, NULL)) {
		struct timeval tv = { 0, 10000 };
		evtimer_add(s->close_timer, &tv);
	}
}

/* The current phase's deadline passed (or the timer fired early for a deadline moved on). */
static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	long long now = mono_us();

	if (s->deadline_us == 0 || s->state == STATE_CLOSING)
		return;
	if (now < s->deadline_us) {
		deadline_arm(s, s->deadline_us);
		return;
	}
	if (strcmp(s->deadline_phase, "data") == 0) {
		long long rate = s->srv->cfg->min_data_rate;
		log_info("session=%s tx=%s event=timeout phase=data bytes=%llu elapsed_ms=%lld "
			 "min_data_rate=%lld stored=none",
			 s->id, s->tx != NULL ? s->tx->id : "-", (unsigned long long)s->phase_bytes,
			 (now - s->phase_started_us) / 1000, rate);
	} else {
		/* A partial line still waiting means a client trickling bytes (slowloris). */
		log_info("session=%s event=timeout phase=%s pending_bytes=%zu", s->id,
			 s->deadline_phase, evbuffer_get_length(bufferevent_get_input(s->bev)));
	}
	/* RFC 5321 4.5.3.2: close with 421; a transaction in progress is dropped whole. */
	session_reset_tx(s);
	reply_and_close(s, 421, "4.4.2", "Timeout, closing connection");
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct session *s = arg;

	if ((what & BEV_EVENT_CONNECTED) && s->tls) {
		char cn[128];
		SSL *ssl = bufferevent_openssl_get_ssl(bev);
		if (ssl != NULL) {
			tls_describe(ssl, s->tls_info, sizeof(s->tls_info), cn, sizeof(cn));
			log_info("session=%s event=tls protocol=\"%s\"%s%s", s->id, s->tls_info,
				 cn[0] ? " client_cn=" : "", cn);
		}
		return;
	}
	if (what & BEV_EVENT_ERROR) {
		unsigned long e = bufferevent_get_openssl_error(bev);
		if (e != 0) {
			char detail[256];
			ERR_error_string_n(e, detail, sizeof(detail));
			log_info("session=%s event=tls_error error=\"%s\"", s->id, detail);
		}
	}

	if (what & BEV_EVENT_TIMEOUT) {
		/* Only writes have an idle timeout: the client does not read our replies. */
		log_info("session=%s event=timeout phase=write state=%d", s->id, (int)s->state);
		if (s->state == STATE_CLOSING) {
			session_free(s);
			return;
		}
		/* RFC 5321 4.5.3.2: close with 421; a transaction in progress is dropped whole. */
		session_reset_tx(s);
		reply_and_close(s, 421, "4.4.2", "Timeout, closing connection");
		return;
	}
	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) && s->state == STATE_CLOSING) {
		/* Our last replies are still being written: the write callback closes. */
		bufferevent_disable(bev, EV_READ);
		if (unsent(s) == 0)
			session_free(s);
		return;
	}
	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR)) {
		/* A half-close: the client may still read. Answer everything it sent first. */
		s->eof = true;
		bufferevent_disable(bev, EV_READ);
		if (!s->processing)
			session_process(s);
		return;
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		if (s->tx != NULL && (s->state == STATE_DATA || s->state == STATE_BDAT))
			log_info("session=%s tx=%s event=lost_during_data stored=none", s->id,
				 s->tx->id);
		session_free(s);
	}
}

/* --- life cycle --- */

static void session_free(struct session *s)
{
	if (s->processing) {
		s->freed_in_process = true;
		return;
	}
	struct server *srv = s->srv;

	if (s->verify != NULL)
		dispatch_verify_detach(s->verify);
	if (s->dispatch != NULL) {
		/* Backends are still working: they finish, we just stop listening for them. */
		dispatch_detach(s->dispatch);
		log_info("session=%s event=client_gone_during_delivery", s->id);
	}
	tx_free(&s->tx);
	log_info("session=%s event=disconnect messages=%llu", s->id, s->messages);
	metrics_connection_closed();
	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		srv->sessions = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	if (s->close_timer != NULL)
		event_free(s->close_timer);
	if (s->deadline_timer != NULL)
		event_free(s->deadline_timer);
	if (s->peer_counted)
		peers_remove(&srv->peers, s->peer_ip);
	if (s->flush_event != NULL)
		event_free(s->flush_event);
	bufferevent_free(s->bev);
	free(s->replies);
	free(s->reply_ready);
	free(s->line);
	free(s);
	srv->connections--;
	server_check_idle(srv);
}

struct session *session_new(struct server *srv, int fd, const char *peer, const char *peer_ip,
			    bool implicit_tls, bool trusted)
{
	struct session *s = calloc(1, sizeof(*s));

	if (s == NULL) {
		close(fd);
		return NULL;
	}
	s->srv = srv;
	s->line_max = (size_t)srv->cfg->max_command_line;
	s->line = malloc(s->line_max + 2);
	if (implicit_tls) {
		SSL *ssl = SSL_new(srv->cfg->tls_ctx);
		s->bev = ssl ? bufferevent_openssl_socket_new(srv->base, fd, ssl,
							      BUFFEREVENT_SSL_ACCEPTING,
							      BEV_OPT_CLOSE_ON_FREE)
			     : NULL;
		if (s->bev == NULL && ssl != NULL)
			SSL_free(ssl);
		if (s->bev != NULL)
			bufferevent_openssl_set_allow_dirty_shutdown(s->bev, 1);
		s->tls = true;
	} else {
		s->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
		s->direct = true;
	}
	s->close_timer = evtimer_new(srv->base, close_when_flushed, s);
	s->deadline_timer = evtimer_new(srv->base, on_deadline, s);
	if (s->line == NULL || s->bev == NULL || s->close_timer == NULL ||
	    s->deadline_timer == NULL) {
		if (s->bev != NULL)
			bufferevent_free(s->bev);
		else
			close(fd);
		if (s->close_timer != NULL)
			event_free(s->close_timer);
		if (s->deadline_timer != NULL)
			event_free(s->deadline_timer);
		free(s->line);
		free(s);
		return NULL;
	}
	srv->connections++;
	metrics_connection_opened();
	/* Session ids: base-36 start time and a counter, unique across restarts of one host. */
	unsigned long long seq = ++srv->session_seq;
	snprintf(s->id, sizeof(s->id), "%llx%04llx", (unsigned long long)time(NULL) & 0xffffffffULL,
		 seq & 0xffff);
	snprintf(s->peer, sizeof(s->peer), "%s", peer);
	snprintf(s->peer_ip, sizeof(s->peer_ip), "%s", peer_ip);
	s->peer_counted = peers_add(&srv->peers, s->peer_ip);
	s->trusted = trusted;
	s->state = STATE_FRESH;
	s->next = srv->sessions;
	if (srv->sessions != NULL)
		srv->sessions->prev = s;
	srv->sessions = s;

	s->is_unix = strcmp(peer_ip, "unix") == 0;
	session_attach(s, s->bev);
	log_info("session=%s event=connect client=%s", s->id, s->peer);
	/* RFC 2033 4 / RFC 5321 4.2: the greeting has no enhanced code (RFC 2034). */
	char greeting[512];
	int n = format(greeting, sizeof(greeting), "220 %s LMTP lmtpgw ready (session %s)\r\n",
		       srv->cfg->hostname, s->id);
	if (n > 0)
		out_add(s, greeting, (size_t)n < sizeof(greeting) ? (size_t)n : sizeof(greeting) - 1);
	out_flush(s);
	return s;
}

void session_stop_all(struct server *srv)
{
	struct session *s = srv->sessions;

	while (s != NULL) {
		/* reply_and_close may free s: take the next one first. */
		struct session *next = s->next;
		if (s->state == STATE_FRESH || (s->state == STATE_READY && s->tx == NULL))
			reply_and_close(s, 421, "4.3.2", "Service shutting down, try again later");
		s = next;
	}
}

void session_free_all(struct server *srv)
{
	while (srv->sessions != NULL) {
		struct session *s = srv->sessions;
		s->processing = false;
		session_free(s);
	}
}
