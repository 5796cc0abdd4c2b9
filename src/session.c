/*
 * session - one LMTP connection's protocol: the RFC 2033 state machine, the command table, the
 * transaction, and what each reply says.
 *
 * Parts: the connection's I/O (bytes in and out, deadlines, TLS, the close) is conn.c, which
 * calls back through session_conn_events; the post-DATA replies wait in a reply_queue; every
 * final refusal passes reply_policy_final() (reply.c); recipients are routed by router.c and
 * messages handed to dispatcher.c.
 *
 * Owns: its struct conn (embedded), the command line buffer, the current transaction (sender,
 * recipients, spool, XFORWARD attributes; freed only by tx_free()) and the reply queue. The
 * transaction's spool and recipients pass to the dispatcher at the end of data; from then on
 * the session only keeps the reply slots, so a client that hangs up while its message is being
 * stored cannot free anything a worker still reads.
 *
 * Commands: the table gives each verb its allowed states; handle_line() checks sequence (503)
 * before a handler runs, and every handler checks syntax (501/555), then limits (452/552), and
 * only then changes state (style.md, "check, then proceed"). Every reply is built by the status
 * module, so each carries an enhanced status code (RFC 2034); the exceptions RFC 2034 allows
 * are the greeting and the LHLO reply.
 *
 * Errors: every failure the client can still hear of gets a reply; local failures (memory,
 * spool) are 4xx. The session closes itself only after QUIT, a timeout, too many errors, a BDAT
 * it cannot follow (501) or store (421), a failed STARTTLS, or shutdown; a client gone in the
 * middle of a message stores nothing. A session is freed from a conn callback or the loop,
 * never while session_process() runs its commands (freed_in_process defers it).
 */
#include "session.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "address.h"
#include "backend.h"
#include "conn.h"
#include "data.h"
#include "dispatcher.h"
#include "envelope.h"
#include "format.h"
#include "log.h"
#include "metrics.h"
#include "peers.h"
#include "reply.h"
#include "reply_queue.h"
#include "router.h"
#include "runtime.h"
#include "server.h"
#include "spool.h"
#include "status.h"

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

/* XFORWARD attributes (Postfix XFORWARD_README): the MTA's own client and queue id, for the log
 * lines and the delivery. They describe one transaction: given before MAIL, they move onto the
 * transaction MAIL starts and go with it. */
struct xforward {
	bool given;
	char ident[64];                 /* IDENT: the MTA's queue id */
	char client[160];               /* "NAME[ADDR]": the MTA's client */
	char name[80];
	char addr[80];
};

/* From MAIL to the end of the message or RSET; freed only by tx_free(). */
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
	struct xforward xforward;       /* as given before its MAIL */
};

struct session {
	struct server *srv;
	struct session *prev, *next;
	struct conn conn;               /* the client connection's I/O */
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
	struct xforward xforward_next;  /* XFORWARD given for the next transaction */
	bool is_unix;
	bool trusted;                   /* in trusted_networks or on a unix socket: XFORWARD allowed */
	bool peer_counted;              /* counted in srv->peers */
	struct transaction *tx;

	/* a RCPT whose verification runs in a worker */
	struct dispatch_verify *verify;
	struct recipient pending_rcpt;
	size_t pending_k;

	/* post-DATA replies, filled in any order, written in RCPT order */
	struct dispatch *dispatch;
	char dispatch_txid[40];         /* its transaction's id (the transaction is gone), for logs */
	bool client_gone_logged;        /* event=client_gone_during_delivery written for it */
	struct reply_queue replies;
};

static void session_process(struct session *s, enum conn_flush at_end);
static void session_free(struct session *s);

/* --- replies --- */

static void reply_status(struct session *s, const struct status *st)
{
	char buf[STATUS_TEXT_MAX + 64];
	size_t n = status_format(st, false, buf, sizeof(buf));

	conn_write(&s->conn, buf, n);
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

static void timeouts_for_state(struct session *s);

/* The last reply is queued: close once it is written. */
static void session_close(struct session *s)
{
	s->state = STATE_CLOSING;
	conn_close(&s->conn); /* calls session_closed() from the loop */
}

/* Queue a last reply and close once it is written. */
static void reply_and_close(struct session *s, int code, const char *enhanced, const char *text)
{
	reply(s, code, enhanced, "%s %s", s->srv->cfg->hostname, text);
	session_close(s);
}

/* --- timeouts --- */

/*
 * Reads have no idle timeout: every phase in which the client owes us bytes has a deadline
 * (conn.h). A command line must be complete within timeout_command (timeout_greeting before
 * LHLO) of the previous line or reply, however its bytes trickle in. A DATA or BDAT phase
 * starts with timeout_data; each byte received adds 1/min_data_rate s, and the deadline never
 * lies more than timeout_data ahead (Postfix's smtpd_per_request_deadline with
 * smtpd_min_data_rate). While the client waits for us (a verification, a delivery) there is
 * none. Writes keep an idle timeout (timeout_command): a client that stops reading its replies
 * is dropped.
 */

/* A complete command line was read: the next one has its full time again. */
static void deadline_next_command(struct session *s)
{
	const struct config *cfg = s->srv->cfg;

	if (s->state == STATE_FRESH)
		conn_deadline_start(&s->conn, "greeting", cfg->timeout_greeting_ms);
	else
		conn_deadline_start(&s->conn, "command", cfg->timeout_command_ms);
}

/* n bytes of DATA/BDAT arrived: credit them at min_data_rate, up to timeout_data ahead. */
static void deadline_data_received(struct session *s, size_t n)
{
	const struct config *cfg = s->srv->cfg;

	conn_deadline_data_received(&s->conn, n, cfg->min_data_rate, cfg->timeout_data_ms);
}

static void timeouts_for_state(struct session *s)
{
	const struct config *cfg = s->srv->cfg;

	conn_set_write_timeout(&s->conn, cfg->timeout_command_ms);
	switch (s->state) {
	case STATE_DATA:
	case STATE_BDAT:
		conn_deadline_data_start(&s->conn, cfg->timeout_data_ms);
		break;
	case STATE_VERIFYING:
	case STATE_DELIVERING:
	case STATE_CLOSING:
		/* The client waits for us: its silence is no fault (style.md item 12). Closing:
		 * reads are off, the write timeout covers a client that does not read. */
		conn_deadline_clear(&s->conn);
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

static void xforward_clear(struct xforward *xf)
{
	xf->given = false;
	xf->ident[0] = '\0';
	xf->client[0] = '\0';
	xf->name[0] = '\0';
	xf->addr[0] = '\0';
}

/* The one way a transaction ends early (RSET, LHLO, STARTTLS, a refusal of the whole message,
 * a timeout, a half-close): the transaction and any XFORWARD given for the next one go. */
static void session_reset_tx(struct session *s)
{
	/* A RCPT-time verification still running answers for this transaction only: it must not
	 * call back into the next one, or into none (a write timeout while verifying). */
	if (s->verify != NULL) {
		dispatch_verify_detach(s->verify);
		s->verify = NULL;
	}
	xforward_clear(&s->xforward_next);
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
 * Each refusal is also counted in lmtpgw_recipients_total, by the class of the reply sent (soft
 * bounce applied): a refused recipient gets no other final reply, so counting it here and the
 * delivered ones in the dispatcher counts every recipient once (metrics.h).
 */
static void log_refusal(struct session *s, const char *stage, const char *rcpt, const char *arg,
			const struct backend_instance *backend, const struct status *st)
{
	const struct transaction *tx = s->tx;
	const struct xforward *xf = tx != NULL ? &tx->xforward : &s->xforward_next;
	char esc_rcpt[LOG_ESC_SIZE], esc_from[LOG_ESC_SIZE], esc_text[LOG_ESC_SIZE];
	char esc_qid[LOG_ESC_SIZE], esc_xf[LOG_ESC_SIZE], esc_arg[LOG_ESC_SIZE];

	metrics_recipient_result(st); /* whatever the log level */
	if (log_get_level() < LOG_LEVEL_INFO)
		return; /* nothing would be written: do not build the line */
	log_escape(esc_text, sizeof(esc_text), st->text, strlen(st->text), 200);
	if (rcpt != NULL)
		format(esc_arg, sizeof(esc_arg), "rcpt=<%s>", log_esc(esc_rcpt, rcpt));
	else
		format(esc_arg, sizeof(esc_arg), "arg=\"%s\"", log_esc(esc_rcpt, arg ? arg : ""));
	log_info("event=refused stage=%s session=%s tx=%s%s%s client=%s%s%s from=<%s> %s "
		 "result=%s reply=\"%d %s %s\"%s%s",
		 stage, s->id, tx != NULL ? tx->id : "-", xf->ident[0] ? " qid=" : "",
		 xf->ident[0] ? log_esc(esc_qid, xf->ident) : "", s->peer,
		 xf->client[0] ? " xforward_client=" : "",
		 xf->client[0] ? log_esc(esc_xf, xf->client) : "",
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
	const struct status *st;

	while ((st = reply_queue_take(&s->replies)) != NULL)
		reply_status(s, st);
	if (!reply_queue_done(&s->replies))
		return;
	/* Every recipient answered: the transaction is over. */
	reply_queue_close(&s->replies);
	s->dispatch = NULL;
	if (s->state == STATE_CLOSING)
		return; /* a timeout closed the session meanwhile: these were its last replies */
	s->state = STATE_READY;
	timeouts_for_state(s);
	if (s->srv->stopping && evbuffer_get_length(conn_input(&s->conn)) == 0) {
		/* Shutting down: the transaction is done, do not wait for the client's next one. */
		reply_and_close(s, 421, "4.3.2", "Service shutting down, try again later");
		return;
	}
	server_check_idle(s->srv);
}

static void delivery_result(void *ctx, size_t index, const struct status *st)
{
	struct session *s = ctx;

	reply_queue_fill(&s->replies, index, st);
	bool was_open = conn_batch_begin(&s->conn);
	flush_replies(s);
	/* The replies leave once this loop turn's callbacks are done: more recipients' results
	 * may follow, and the dispatcher finishes its bookkeeping first (a client holding all its
	 * replies finds no delivery in flight). */
	conn_batch_end(&s->conn, was_open, CONN_FLUSH_SOON);
	if (s->state == STATE_READY && !s->processing) {
		/* Commands may have been pipelined behind the final dot. */
		conn_resume_reading(&s->conn);
		session_process(s, CONN_FLUSH_SOON);
	}
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
		if (!tx->bdat_failed) /* else logged and counted at the refused chunk */
			log_refusal(s, "data", tx->rcpts[i].rcpt, NULL, NULL, &st);
	}
	session_reset_tx(s);
}

/* A BDAT chunk before LAST made the message too big. The client sends no more BDAT after an
 * error reply (RFC 3030 section 2): this reply may be the message's only answer, so each
 * recipient gets its event=refused line (and its count) now, with the reply sent. A client that
 * sends BDAT LAST anyway gets a reply per recipient, not logged again (bdat_failed). */
static void refuse_bdat_chunk(struct session *s)
{
	struct transaction *tx = s->tx;
	struct status st;

	tx->bdat_failed = true;
	status_must(&st, 552, "5.3.4", "Message too big for system");
	reply_policy_final(tx->cfg, NULL, &st);
	reply_status(s, &st);
	for (size_t i = 0; i < tx->rcpt_count; i++)
		log_refusal(s, "data", tx->rcpts[i].rcpt, NULL, NULL, &st);
}

static size_t build_trace(struct session *s, char *buf, size_t size)
{
	struct transaction *tx = s->tx;
	bool tls = conn_is_tls(&s->conn);
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
			 tx->mail.smtputf8 ? (tls ? "UTF8LMTPS" : "UTF8LMTP") : (tls ? "LMTPS" : "LMTP"),
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
			.xforward_name = tx->xforward.name,
			.xforward_addr = tx->xforward.addr,
			.tls = conn_is_tls(&s->conn),
		},
		.rcpts = tx->rcpts,
		.rcpt_count = tx->rcpt_count,
		.client = s->peer, /* the XFORWARD client is logged beside it */
		.queue_id = tx->xforward.ident,
	};
	size_t count = tx->rcpt_count;

	if (reply_queue_open(&s->replies, count) < 0) {
		reply_all_recipients(s, 451, "4.3.0", "Local error in processing (memory)");
		return;
	}
	s->messages++;
	metrics_transaction(spool_size(tx->spool));
	/* Ownership of spool and recipients passes to the dispatch. */
	tx->spool = NULL;
	tx->rcpts = NULL;
	tx->rcpt_count = 0;
	s->state = STATE_DELIVERING;
	timeouts_for_state(s);
	snprintf(s->dispatch_txid, sizeof(s->dispatch_txid), "%s", tx->id);
	s->client_gone_logged = false;
	/* req points into tx (sender, ids): the dispatch copies them before tx goes. */
	struct dispatch *dispatch = dispatch_start(&req, delivery_result, s);
	tx_free(&s->tx);
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

/* The command states (the others read content or wait, and parse no command line), as bits. */
#define IN(state) (1u << (state))
#define IN_ANY_COMMAND_STATE (IN(STATE_FRESH) | IN(STATE_READY) | IN(STATE_MAIL))

enum command_flags {
	CMD_WHILE_STOPPING = 1 << 0, /* still served outside a transaction after SIGTERM (QUIT);
				      * any other command gets 421 there */
};

/*
 * A row of the command table. handle_line() checks, in this order: the verb is known (else
 * 500), LHLO came first unless `states` has STATE_FRESH (503 "Send LHLO first"), the server
 * is not stopping (421, see CMD_WHILE_STOPPING), `permitted` if the row has one, then the
 * sequence: the session's state is in `states` (else 503 5.5.1 with `wrong_state`). Only then
 * does the handler run, which checks syntax (501), then limits, then changes state.
 */
struct command {
	const char *verb;
	void (*handler)(struct session *s, char *args);
	unsigned states;          /* IN(...) of the states the command is allowed in */
	const char *wrong_state;  /* the 503 text in another command state after LHLO */
	/* Checks that answer before the sequence check (the peer is not offered the command):
	 * returns false once it has replied. NULL: none. */
	bool (*permitted)(struct session *s, const char *args);
	unsigned flags;           /* enum command_flags */
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
	if (cfg->tls_ctx != NULL && !conn_is_tls(&s->conn) && !s->is_unix)
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
			conn_write(&s->conn, line,
				   (size_t)len < sizeof(line) ? (size_t)len : sizeof(line) - 1);
	}
}

static void cmd_mail(struct session *s, char *args)
{
	struct address from;
	struct mail_params params;
	struct status st;

	/* Sequence and shutdown checked by handle_line(): READY, so no transaction yet. */
	if (s->srv->cfg->tls_required && !conn_is_tls(&s->conn) && !s->is_unix) {
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
	if (s->xforward_next.given) {
		tx->xforward = s->xforward_next;
		xforward_clear(&s->xforward_next);
	}
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

	s->verify = NULL;
	if (tx == NULL || s->state != STATE_VERIFYING)
		return; /* the transaction ended meanwhile (session_reset_tx detaches; be safe) */
	const struct backend_instance *b =
		&tx->cfg->backends[s->pending_rcpt.rule->targets[s->pending_k].backend];

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
		session_process(s, CONN_FLUSH_NOW); /* pipelined commands waited behind this RCPT */
}

/* Check a routed recipient against its backends from target index `from` on (breaker, then
 * each backend's verification), then accept it. A verification that talks to the store runs
 * in a worker: the session holds its pipeline meanwhile, so replies stay in order.
 * Only required targets without a fallback can refuse here: a best-effort target's failure
 * never changes the reply, and a target with a fallback hands a failure to its fallback. */
static void rcpt_check(struct session *s, const struct recipient *r, size_t from)
{
	struct transaction *tx = s->tx;
	struct status st;
	const struct verify_context vctx = { .sender = tx->from_str, .client_addr = s->peer_ip,
					     .lhlo = s->lhlo, .session_id = s->id, .txid = tx->id };

	for (size_t k = from; k < r->rule->target_count; k++) {
		const struct route_target *target = &r->rule->targets[k];
		if (!target->required || target->fallback >= 0)
			continue;
		const struct backend_instance *b = &tx->cfg->backends[target->backend];
		struct backend_runtime *br = tx->rt->backends[target->backend];
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
			s->verify = dispatch_verify_start(tx->rt, br, r, &vctx, rcpt_verified, s);
			return;
		}
		if (b->driver->verify(br->state, r, &vctx, &st) < 0) {
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
	r.rule = recipient_route(&r, tx->cfg->router, tx->cfg->lowercase_local_part,
				 tx->cfg->subaddress_separator);
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
	if (s->state != STATE_MAIL) {
		/* The table lets BDAT in anywhere: out of sequence, the chunk is still read so the
		 * stream stays in sync, and its 503 comes at the chunk's end (bdat_chunk_done()). */
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
		s->state = s->lhlo[0] ? STATE_READY : STATE_FRESH; /* BDAT is allowed before LHLO */
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
		refuse_bdat_chunk(s);
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
static bool xforward_permitted(struct session *s, const char *args)
{
	if (xforward_allowed(s))
		return true;
	/* Postfix refuses the same way (smtpd_authorized_xforward_hosts), before the sequence. */
	reply(s, 550, "5.7.0", "XFORWARD not permitted");
	if (s->srv->cfg->xforward)
		log_info("session=%s event=xforward_refused client=%s reason=not_trusted", s->id,
			 s->peer);
	return false;
}

static void cmd_xforward(struct session *s, char *args)
{
	struct xforward *xf = &s->xforward_next;
	char ident[sizeof(xf->ident)] = "", name[sizeof(xf->name)] = "", addr[sizeof(xf->addr)] = "";
	bool has_ident = false, has_name = false, has_addr = false;

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
		snprintf(xf->ident, sizeof(xf->ident), "%s", ident);
	if (has_name)
		snprintf(xf->name, sizeof(xf->name), "%s", name);
	if (has_addr)
		snprintf(xf->addr, sizeof(xf->addr), "%s", addr);
	if (xf->name[0] || xf->addr[0])
		snprintf(xf->client, sizeof(xf->client), "%s[%s]", xf->name[0] ? xf->name : "unknown",
			 xf->addr[0] ? xf->addr : "unknown");
	xf->given = true;
	reply(s, 250, "2.0.0", "OK");
}

/* STARTTLS answers these before the transaction check (what clients have always seen). */
static bool starttls_permitted(struct session *s, const char *args)
{
	if (has_args(args)) {
		reply(s, 501, "5.5.4", "Syntax: STARTTLS");
		return false;
	}
	if (s->srv->cfg->tls_ctx == NULL || s->is_unix) {
		reply(s, 454, "4.7.0", "TLS not available");
		return false;
	}
	if (conn_is_tls(&s->conn)) {
		reply(s, 503, "5.5.1", "TLS already active");
		return false;
	}
	return true;
}

/* RFC 3207: STARTTLS, then the client starts over with LHLO. */
static void cmd_starttls(struct session *s, char *args)
{
	const struct config *cfg = s->srv->cfg;

	if (conn_starttls_prepare(&s->conn, cfg->tls_ctx) < 0) {
		reply(s, 454, "4.7.0", "TLS not available now");
		return;
	}
	reply(s, 220, "2.0.0", "Ready to start TLS");
	/* The 220 leaves in clear text; what was pipelined behind STARTTLS is dropped. */
	if (conn_starttls_start(&s->conn) < 0) {
		reply_and_close(s, 421, "4.7.0", "TLS setup failed");
		return;
	}
	session_reset_tx(s);
	s->lhlo[0] = '\0';
	s->state = STATE_FRESH;
	timeouts_for_state(s);
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
	session_close(s);
}

/* The LMTP command table (RFC 2033 4). HELO and EHLO are absent on purpose: 500 (RFC 2033 4.1). */
static const struct command commands[] = {
	{ "LHLO", cmd_lhlo, IN_ANY_COMMAND_STATE, NULL, NULL, 0 },
	{ "MAIL", cmd_mail, IN(STATE_READY), "Nested MAIL command", NULL, 0 },
	{ "RCPT", cmd_rcpt, IN(STATE_MAIL), "MAIL first", NULL, 0 },
	{ "DATA", cmd_data, IN(STATE_MAIL), "MAIL first", NULL, 0 },
	/* Anywhere: its chunk is always read, to stay in sync (cmd_bdat). */
	{ "BDAT", cmd_bdat, IN_ANY_COMMAND_STATE, NULL, NULL, 0 },
	{ "RSET", cmd_rset, IN_ANY_COMMAND_STATE, NULL, NULL, 0 },
	{ "NOOP", cmd_noop, IN_ANY_COMMAND_STATE, NULL, NULL, 0 },
	{ "VRFY", cmd_vrfy, IN_ANY_COMMAND_STATE, NULL, NULL, 0 },
	{ "HELP", cmd_help, IN_ANY_COMMAND_STATE, NULL, NULL, 0 },
	{ "QUIT", cmd_quit, IN_ANY_COMMAND_STATE, NULL, NULL, CMD_WHILE_STOPPING },
	{ "XFORWARD", cmd_xforward, IN(STATE_READY), "XFORWARD only outside a mail transaction",
	  xforward_permitted, 0 },
	{ "STARTTLS", cmd_starttls, IN(STATE_FRESH) | IN(STATE_READY),
	  "STARTTLS not allowed inside a mail transaction", starttls_permitted, 0 },
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
	if (s->state == STATE_FRESH && !(cmd->states & IN(STATE_FRESH))) {
		reply(s, 503, "5.5.1", "Send LHLO first");
		return;
	}
	if (s->srv->stopping && s->tx == NULL && !(cmd->flags & CMD_WHILE_STOPPING)) {
		reply_and_close(s, 421, "4.3.2", "Service shutting down, try again later");
		return;
	}
	if (cmd->permitted != NULL && !cmd->permitted(s, args))
		return;
	if (!(cmd->states & IN(s->state))) {
		reply(s, 503, "5.5.1", "%s", cmd->wrong_state);
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

/* After the client half-closed: once every command it sent is answered (deliveries included,
 * RFC 2033 4.2: each recipient's reply is owed), close. An unfinished message stores nothing. */
static void session_eof_check(struct session *s)
{
	if (!conn_input_ended(&s->conn) || s->state == STATE_DELIVERING ||
	    s->state == STATE_VERIFYING || s->state == STATE_CLOSING)
		return;
	if (s->state == STATE_DATA || s->state == STATE_BDAT) {
		log_info("session=%s tx=%s event=lost_during_data stored=none", s->id,
			 s->tx != NULL ? s->tx->id : "-");
		session_free(s);
		return;
	}
	session_reset_tx(s);
	session_close(s);
}

/* Inside DATA and BDAT, read on past libevent's 4 KiB a turn, up to this much a turn (fair to
 * other sessions; conn_read_ahead()). */
#define SESSION_READ_SHARE (1024 * 1024)

static bool reading_content(const struct session *s)
{
	return s->state == STATE_DATA || (s->state == STATE_BDAT && s->tx->bdat_left > 0);
}

/* Handle everything the client sent so far, as one batch of replies written at_end. */
static void session_process(struct session *s, enum conn_flush at_end)
{
	size_t read_share = SESSION_READ_SHARE;
	bool was_open = conn_batch_begin(&s->conn);

	s->processing = true;
	for (;;) {
		/* Fetched each time: STARTTLS replaces the bufferevent. */
		struct evbuffer *in = conn_input(&s->conn);
		if (s->errors > (unsigned)s->srv->cfg->max_errors && s->state != STATE_CLOSING &&
		    s->state != STATE_DELIVERING && s->state != STATE_VERIFYING) {
			reply_and_close(s, 421, "4.7.0", "Too many errors, closing connection");
			break;
		}
		if (s->state == STATE_CLOSING || s->state == STATE_DELIVERING ||
		    s->state == STATE_VERIFYING)
			break;
		if (evbuffer_get_length(in) == 0 && !(s->state == STATE_BDAT && s->tx->bdat_left == 0) &&
		    !(reading_content(s) && conn_read_ahead(&s->conn, &read_share)))
			break;
		/* Memory stays bounded when a client pipelines commands and reads no replies: no
		 * next command while its replies pile up (conn calls us again once they drain). */
		if (!reading_content(s) && conn_output_full(&s->conn))
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
	conn_batch_end(&s->conn, was_open, at_end);
	session_eof_check(s);
}

/* --- connection events (conn.h) --- */

static void session_input(void *owner)
{
	session_process(owner, CONN_FLUSH_NOW);
}

/*
 * The client hung up after its final dot while the backends still store: the delivery goes on,
 * but the replies may never reach the client, whose MTA will then retry (a second copy, never a
 * loss). Logged once per delivery, when first noticed: how=eof for a FIN (a client that only
 * half-closed may still read its replies), how=reset for a RST or a failed connection.
 */
static void log_client_gone(struct session *s, const char *how)
{
	if (s->dispatch == NULL || s->client_gone_logged)
		return;
	s->client_gone_logged = true;
	log_info("session=%s tx=%s event=client_gone_during_delivery how=%s", s->id,
		 s->dispatch_txid, how);
}

/* A half-close: the client may still read. Answer everything it sent first. */
static void session_input_end(void *owner)
{
	struct session *s = owner;

	/* Nothing else marks a FIN during delivery: the session waits for the results. */
	if (s->state == STATE_DELIVERING)
		log_client_gone(s, "eof");
	if (!s->processing)
		session_process(s, CONN_FLUSH_NOW);
}

static void session_lost(void *owner)
{
	struct session *s = owner;

	if (s->tx != NULL && (s->state == STATE_DATA || s->state == STATE_BDAT))
		log_info("session=%s tx=%s event=lost_during_data stored=none", s->id, s->tx->id);
	log_client_gone(s, "reset");
	session_free(s);
}

static void session_write_timeout(void *owner)
{
	struct session *s = owner;

	log_info("session=%s event=timeout phase=write state=%d", s->id, (int)s->state);
	if (s->state == STATE_CLOSING) {
		session_free(s);
		return;
	}
	/* RFC 5321 4.5.3.2: close with 421; a transaction in progress is dropped whole. */
	session_reset_tx(s);
	reply_and_close(s, 421, "4.4.2", "Timeout, closing connection");
}

/* The current phase's deadline passed. */
static void session_deadline(void *owner, const struct conn_deadline_expired *expired)
{
	struct session *s = owner;

	if (s->state == STATE_CLOSING)
		return;
	bool data_phase = strcmp(expired->phase, "data") == 0;
	metrics_deadline_expired(data_phase ? METRICS_DEADLINE_DATA : METRICS_DEADLINE_COMMAND);
	if (data_phase) {
		log_info("session=%s tx=%s event=timeout phase=data bytes=%llu elapsed_ms=%lld "
			 "min_data_rate=%lld stored=none",
			 s->id, s->tx != NULL ? s->tx->id : "-",
			 (unsigned long long)expired->data_bytes, expired->data_elapsed_ms,
			 s->srv->cfg->min_data_rate);
	} else {
		/* A partial line still waiting means a client trickling bytes (slowloris). */
		log_info("session=%s event=timeout phase=%s pending_bytes=%zu", s->id,
			 expired->phase, expired->pending_bytes);
	}
	/* RFC 5321 4.5.3.2: close with 421; a transaction in progress is dropped whole. */
	session_reset_tx(s);
	reply_and_close(s, 421, "4.4.2", "Timeout, closing connection");
}

/* Everything is written after session_close(). */
static void session_closed(void *owner)
{
	session_free(owner);
}

static const struct conn_events session_conn_events = {
	.input = session_input,
	.input_end = session_input_end,
	.lost = session_lost,
	.write_timeout = session_write_timeout,
	.deadline = session_deadline,
	.closed = session_closed,
};

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
		log_client_gone(s, "closed"); /* unless said already (a FIN or RST came first) */
		dispatch_detach(s->dispatch);
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
	if (s->peer_counted)
		peers_remove(&srv->peers, s->peer_ip);
	conn_free(&s->conn);
	reply_queue_close(&s->replies);
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
	if (s->line == NULL) {
		close(fd);
		free(s);
		return NULL;
	}
	if (conn_open(&s->conn, srv->base, fd, implicit_tls ? srv->cfg->tls_ctx : NULL,
		      &session_conn_events, s, s->id) < 0) {
		free(s->line);
		free(s);
		return NULL;
	}
	srv->connections++;
	metrics_connection_opened();
	/* Session ids: the start time and a counter, in hex (8 + 4 digits), unique across restarts
	 * of one host unless it accepts more than 65536 connections within one second. */
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
	timeouts_for_state(s);
	log_info("session=%s event=connect client=%s", s->id, s->peer);
	/* RFC 2033 4 / RFC 5321 4.2: the greeting has no enhanced code (RFC 2034). */
	char greeting[512];
	int n = format(greeting, sizeof(greeting), "220 %s LMTP lmtpgw ready (session %s)\r\n",
		       srv->cfg->hostname, s->id);
	if (n > 0)
		conn_write(&s->conn, greeting,
			   (size_t)n < sizeof(greeting) ? (size_t)n : sizeof(greeting) - 1);
	return s;
}

void session_stop_all(struct server *srv)
{
	struct session *s = srv->sessions;

	while (s != NULL) {
		/* The close is from the loop (conn_close()), but take the next one first anyway. */
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
