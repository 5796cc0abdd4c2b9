/*
 * deliver - `lmtpgw [-c FILE] deliver [-f SENDER] [--] RECIPIENT... < message`
 * (include/deliver.h; docs/deliver.md for the operator's side).
 *
 * One process, one message: load the configuration and open the backends (runtime), drop
 * privileges like the daemon, then do what an LMTP transaction does, with the same modules:
 * MAIL (envelope_parse_mail), RCPT per argument (envelope_parse_rcpt, recipient_route, the
 * backends' verify), the content into a spool (memory, then an unlinked file: bounded memory
 * whatever the size) with the header scanner (loop guard, Message-ID), the whole-message checks
 * (spool error 451 4.3.0, too big 552 5.3.4, loop 554 5.4.6), the trace block, and the
 * dispatcher on a private event loop with the backends' worker pools until every recipient is
 * answered. Every final reply is built by reply_for_recipient(), so soft_bounce and the texts
 * are the daemon's.
 *
 * Standard input is the message itself (no SMTP dot-stuffing, no end-of-data line): MDAs get
 * it that way from Postfix pipe(8), Exim and OpenSMTPD, usually with LF line ends. A LF that is
 * not preceded by CR becomes CRLF (the stored form the daemon gets over LMTP); CRLF and bare CR
 * stay as they are; a message that does not end with a line end gets CRLF, as an LMTP client
 * adds one before the final dot.
 *
 * Owns: the runtime reference, the event base, the spool until the dispatcher takes it.
 * Errors: every problem before a reply is known is EX_TEMPFAIL (75), so an MTA keeps the mail.
 */
#include "deliver.h"

#include <errno.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "address.h"
#include "backend.h"
#include "config.h"
#include "data.h"
#include "dispatcher.h"
#include "envelope.h"
#include "format.h"
#include "log.h"
#include "pool.h"
#include "privileges.h"
#include "recipient.h"
#include "reply.h"
#include "runtime.h"
#include "server.h"
#include "spool.h"
#include "status.h"

/* Standard input is read in blocks of this size; after LF -> CRLF a block is at most twice. */
#define DELIVER_READ_BLOCK 65536

struct deliver_rcpt {
	const char *arg;           /* as given on the command line */
	struct recipient r;        /* parsed and routed (r.rcpt "" when the syntax was bad) */
	bool accepted;             /* passed RCPT: handed to the dispatcher */
	bool answered;
	struct status reply;       /* the final reply, as the daemon would have sent it */
};

struct deliver {
	struct event_base *base;
	struct runtime *rt;
	const struct config *cfg;
	char session_id[24];
	char txid[40];
	char client[48];           /* for the log lines: "deliver(uid=N)" */
	unsigned uid;              /* the invoking user, for the Received line */
	pid_t parent;              /* the process that started us, normally the MTA writing stdin */
	struct address from;
	char from_str[ADDRESS_PATH_MAX + 1];
	struct mail_params mail;
	struct deliver_rcpt *rcpts;
	size_t rcpt_count;
	size_t *dispatch_to_rcpt;  /* the dispatcher's recipient index -> rcpts[] index */
	size_t waiting;            /* recipients the dispatcher still owes a reply */
	/* a verification that runs in a backend's pool (imap verify_recipients) */
	bool verify_done;
	int verify_result;
	struct status verify_status;
};

static void usage(FILE *out)
{
	fprintf(out, "usage: lmtpgw [-c FILE] [-d] deliver [--syslog] [-f SENDER | --sender-env VAR]\n"
		     "                    [-a RECIPIENT]... [--] RECIPIENT... < message\n"
		     "  -f SENDER           envelope sender (\"\" or \"<>\": the null sender; default:\n"
		     "                      the invoking user at the configured hostname)\n"
		     "  --sender-env VAR    the envelope sender from environment variable VAR\n"
		     "                      (Exim's pipe transport: SENDER)\n"
		     "  -a RECIPIENT        a recipient (also one that starts with '-')\n"
		     "  --syslog            log to syslog (as the daemon) instead of standard error\n"
		     "  --                  everything after it is a recipient\n"
		     "exit: 0 stored for every recipient, 75 any doubt, 67/65/73/77/76/69 refused "
		     "(lmtpgw(8))\n");
}

/* --- exit status --- */

int deliver_sysexit(const struct status *st)
{
	if (st == NULL)
		return EX_TEMPFAIL;
	switch (status_class_of(st)) {
	case STATUS_OK:
		return EX_OK;
	case STATUS_PERMFAIL:
		break;
	default:
		return EX_TEMPFAIL;
	}
	/* RFC 3463: class.subject.detail; the subject says what was refused. */
	unsigned subject = 0, detail = 0;
	if (sscanf(st->enhanced, "5.%u.%u", &subject, &detail) != 2)
		return EX_UNAVAILABLE;
	switch (subject) {
	case 1: /* addressing: 5.1.3 / 5.1.7 bad syntax is the data's fault, the rest no user */
		return detail == 3 || detail == 7 ? EX_DATAERR : EX_NOUSER;
	case 2: /* mailbox: full, disabled, message too big for it */
		return EX_CANTCREAT;
	case 3: /* mail system: 5.3.4 message too big; others (system not capable) */
		return detail == 4 ? EX_DATAERR : EX_UNAVAILABLE;
	case 5: /* mail delivery protocol */
		return EX_PROTOCOL;
	case 6: /* message content or media */
		return EX_DATAERR;
	case 7: /* security or policy */
		return EX_NOPERM;
	default: /* 5.0.x other, 5.4.x routing (5.4.6 loop) */
		return EX_UNAVAILABLE;
	}
}

int deliver_exit_status(const struct status *const *replies, unsigned count)
{
	bool stored = false, refused = false, same = true;
	int permanent = -1;

	for (unsigned i = 0; i < count; i++) {
		int ex = deliver_sysexit(replies[i]);
		if (ex == EX_TEMPFAIL)
			return EX_TEMPFAIL; /* any doubt: the MTA retries */
		if (ex == EX_OK) {
			stored = true;
			continue;
		}
		refused = true;
		if (permanent >= 0 && permanent != ex)
			same = false;
		permanent = ex;
	}
	if (!refused)
		return count > 0 ? EX_OK : EX_TEMPFAIL;
	/* Some stored, some refused: one exit status speaks for all recipients of the call, and
	 * a bounce would also bounce those a retry stores again. Keep the mail queued. */
	if (stored)
		return EX_TEMPFAIL;
	/* Refused for different reasons: any one specific code would misstate the others (a
	 * "user unknown" bounce for an existing user); the generic permanent one does not. */
	return same ? permanent : EX_UNAVAILABLE;
}

/* --- refusals and replies --- */

static void log_refusal(const struct deliver *d, const char *stage, const struct deliver_rcpt *dr,
			const struct backend_instance *backend)
{
	char esc_rcpt[LOG_ESC_SIZE], esc_from[LOG_ESC_SIZE], esc_text[LOG_ESC_SIZE];

	if (log_get_level() < LOG_LEVEL_INFO)
		return;
	log_escape(esc_text, sizeof(esc_text), dr->reply.text, strlen(dr->reply.text), 200);
	log_info("event=refused stage=%s session=%s tx=%s client=%s from=<%s> %s=%s%s%s result=%s "
		 "reply=\"%d %s %s\"%s%s",
		 stage, d->session_id, d->txid, d->client, log_esc(esc_from, d->from_str),
		 dr->r.rcpt[0] ? "rcpt" : "arg", dr->r.rcpt[0] ? "<" : "\"",
		 log_esc(esc_rcpt, dr->r.rcpt[0] ? dr->r.rcpt : dr->arg),
		 dr->r.rcpt[0] ? ">" : "\"",
		 status_class_of(&dr->reply) == STATUS_PERMFAIL ? "permfail" : "tempfail",
		 dr->reply.code, dr->reply.enhanced, esc_text, backend != NULL ? " backend=" : "",
		 backend != NULL ? backend->name : "");
}

/* A recipient refused before delivery: the reply policy, its reply, the log line. */
static void refuse(struct deliver *d, struct deliver_rcpt *dr, const char *stage,
		   const struct backend_instance *backend, struct status *st)
{
	reply_for_recipient(d->cfg, backend, dr->r.rcpt[0] ? dr->r.rcpt : dr->arg, d->txid, st);
	dr->reply = *st;
	dr->answered = true;
	dr->accepted = false;
	log_refusal(d, stage, dr, backend);
}

/* Every accepted recipient gets the same refusal of the message (too big, loop, spool). */
static void refuse_message(struct deliver *d, int code, const char *enhanced, const char *text)
{
	for (size_t i = 0; i < d->rcpt_count; i++) {
		if (!d->rcpts[i].accepted)
			continue;
		struct status st;
		status_must(&st, code, enhanced, "%s", text);
		refuse(d, &d->rcpts[i], "data", NULL, &st);
	}
}

/* One line per recipient, in command-line order: "<rcpt>: CODE X.Y.Z text". */
static void print_replies(const struct deliver *d)
{
	for (size_t i = 0; i < d->rcpt_count; i++) {
		const struct deliver_rcpt *dr = &d->rcpts[i];
		char shown[ADDRESS_PATH_MAX + 1];
		const char *name = dr->r.rcpt[0] ? dr->r.rcpt : dr->arg;
		size_t k = 0;

		/* An argument that failed to parse is shown printable only (it reaches MTA logs
		 * and bounces). */
		for (; name[k] != '\0' && k < sizeof(shown) - 1; k++)
			shown[k] = (unsigned char)name[k] < 0x20 || name[k] == 0x7f ? '?' : name[k];
		shown[k] = '\0';
		if (dr->answered)
			printf("<%s>: %d %s %s\n", shown, dr->reply.code, dr->reply.enhanced,
			       dr->reply.text);
		else
			printf("<%s>: 451 4.3.0 <%s> no result (delivery unfinished) [%s]\n", shown,
			       shown, d->txid);
	}
	fflush(stdout);
}

static int exit_status(const struct deliver *d)
{
	const struct status **replies = calloc(d->rcpt_count, sizeof(*replies));

	if (replies == NULL)
		return EX_TEMPFAIL;
	for (size_t i = 0; i < d->rcpt_count; i++)
		replies[i] = d->rcpts[i].answered ? &d->rcpts[i].reply : NULL;
	int ex = deliver_exit_status(replies, (unsigned)d->rcpt_count);
	free(replies);
	return ex;
}

/* --- envelope --- */

static bool has_8bit(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s >= 0x80)
			return true;
	return false;
}

/* "x", "<x>" -> "<x>" into buf; false when it does not fit. */
static bool as_path(const char *in, char *buf, size_t size)
{
	int n = snprintf(buf, size, in[0] == '<' ? "%s" : "<%s>", in);
	return n >= 0 && (size_t)n < size;
}

/* MAIL: the sender as the daemon parses it (the same syntax, SMTPUTF8 when needed). */
/* The sender comes from the MTA's recipe (-f ${sender}, --sender-env), not from a client: one
 * we cannot parse is a mismatch between the recipe and us, so it defers (451 4.1.7, exit 75)
 * rather than bounce a message the MTA accepted. MAILER-DAEMON is how Postfix's pipe(8) names
 * the null sender unless null_sender= is set. */
static int parse_sender(struct deliver *d, const char *sender, bool utf8, struct status *st)
{
	char path[ADDRESS_PATH_MAX + 3], arg[ADDRESS_PATH_MAX + 32];

	if (strcasecmp(sender, "MAILER-DAEMON") == 0)
		sender = "";
	if (!as_path(sender, path, sizeof(path))) {
		status_must(st, 451, "4.1.7", "Sender address not understood: too long");
		return -1;
	}
	format(arg, sizeof(arg), "FROM:%s%s", path, utf8 ? " SMTPUTF8" : "");
	if (envelope_parse_mail(arg, 0, &d->from, &d->mail, st) < 0) {
		char why[sizeof(st->text)];
		format(why, sizeof(why), "%s", st->text);
		status_must(st, 451, "4.1.7", "Sender address not understood: %s", why);
		return -1;
	}
	address_format(&d->from, d->from_str, sizeof(d->from_str));
	return 0;
}

static void on_verified(void *ctx, int result, const struct status *st)
{
	struct deliver *d = ctx;

	d->verify_done = true;
	d->verify_result = result;
	if (st != NULL)
		d->verify_status = *st;
}

/* RCPT: syntax, route, each backend's verification; as session.c's cmd_rcpt/rcpt_check. */
static void check_recipient(struct deliver *d, struct deliver_rcpt *dr, size_t accepted_so_far)
{
	char path[ADDRESS_PATH_MAX + 3], arg[ADDRESS_PATH_MAX + 8];
	struct status st;

	memset(&dr->r, 0, sizeof(dr->r));
	if (!as_path(dr->arg, path, sizeof(path))) {
		status_must(&st, 501, "5.1.3", "Bad recipient address syntax: too long");
		st.kind = STATUS_KIND_PROTOCOL;
		refuse(d, dr, "rcpt", NULL, &st);
		return;
	}
	format(arg, sizeof(arg), "TO:%s", path);
	if (envelope_parse_rcpt(arg, d->mail.smtputf8, &dr->r.addr, &dr->r.params, &st) < 0) {
		refuse(d, dr, "rcpt", NULL, &st);
		return;
	}
	if (accepted_so_far >= (size_t)d->cfg->max_recipients) {
		address_format(&dr->r.addr, dr->r.rcpt, sizeof(dr->r.rcpt));
		status_must(&st, 452, "4.5.3", "Too many recipients");
		refuse(d, dr, "rcpt", NULL, &st);
		return;
	}
	dr->r.rule = recipient_route(&dr->r, d->cfg->router, d->cfg->lowercase_local_part,
				     d->cfg->subaddress_separator);
	if (dr->r.rule == NULL) {
		status_must(&st, 550, "5.1.1", "User unknown (no route)");
		refuse(d, dr, "rcpt", NULL, &st);
		return;
	}
	const struct verify_context vctx = { .sender = d->from_str, .client_addr = "local",
					     .lhlo = "", .session_id = d->session_id,
					     .txid = d->txid };
	/* A fresh process has no circuit breaker history: every backend is tried. As in the
	 * daemon, only required targets without a fallback may refuse here. */
	for (size_t k = 0; k < dr->r.rule->target_count; k++) {
		const struct route_target *target = &dr->r.rule->targets[k];
		const struct backend_instance *b = &d->cfg->backends[target->backend];
		struct backend_runtime *br = d->rt->backends[target->backend];
		int result;

		if (!target->required || target->fallback >= 0 || b->driver->verify == NULL)
			continue;
		if (b->driver->verify_blocking) {
			d->verify_done = false;
			dispatch_verify_start(d->rt, br, &dr->r, &vctx, on_verified, d);
			while (!d->verify_done)
				event_base_loop(d->base, EVLOOP_ONCE);
			result = d->verify_result;
			st = d->verify_status;
		} else {
			result = b->driver->verify(br->state, &dr->r, &vctx, &st);
		}
		if (result < 0) {
			refuse(d, dr, "rcpt", b, &st);
			return;
		}
	}
	dr->accepted = true;
}

/* --- the message --- */

struct stdin_spool {
	struct spool *spool;
	struct header_scan headers;
	const char *error;         /* first spool error, reported once at the end */
	int error_errno;
	pid_t parent;              /* the process that started us (and writes the message) */
};

static void spool_out(struct stdin_spool *in, const char *data, size_t len)
{
	if (in->error != NULL || len == 0)
		return;
	if (in->headers.in_header)
		header_scan_feed(&in->headers, data, len);
	if (spool_write(in->spool, data, len, &in->error) < 0)
		in->error_errno = errno;
}

/* True when the process that started us has exited or is exiting. A dying process closes its
 * files (our end of file) before we are given to a new parent, so getppid() alone can still
 * name it: Linux marks it PF_EXITING in /proc/PID/stat from the start of its exit on. */
static bool parent_gone(pid_t parent)
{
	char path[64], stat[1024];

	if (getppid() != parent)
		return true;
	snprintf(path, sizeof(path), "/proc/%ld/stat", (long)parent);
	FILE *f = fopen(path, "re");
	if (f == NULL)
		return false; /* no /proc: only the check above */
	size_t n = fread(stat, 1, sizeof(stat) - 1, f);
	fclose(f);
	stat[n] = '\0';
	/* "pid (comm) state ppid pgrp session tty_nr tpgid flags ...": comm may hold anything,
	 * so fields are counted from its last ')'. */
	const char *p = strrchr(stat, ')');
	char state = 0;
	unsigned long flags = 0;
	if (p == NULL || sscanf(p + 1, " %c %*d %*d %*d %*d %*d %lu", &state, &flags) != 2)
		return false;
	return state == 'Z' || state == 'X' || (flags & 0x4UL) != 0; /* PF_EXITING */
}

/*
 * Read standard input to its end into the spool, LF -> CRLF where the CR is missing. Returns 0,
 * or -1 when standard input could not be read (errno set): then nothing may be delivered.
 */
static int read_message(struct stdin_spool *in)
{
	static char block[DELIVER_READ_BLOCK], out[2 * DELIVER_READ_BLOCK];
	char before = '\n';   /* the byte before the current one, across blocks */
	bool empty = true;

	for (;;) {
		ssize_t n = read(STDIN_FILENO, block, sizeof(block));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0)
			break;
		size_t o = 0;
		const char *p = block, *end = block + n;
		while (p < end) {
			const char *lf = memchr(p, '\n', (size_t)(end - p));
			const char *stop = lf != NULL ? lf : end;
			memcpy(out + o, p, (size_t)(stop - p));
			o += (size_t)(stop - p);
			if (lf == NULL)
				break;
			char prev = lf > block ? lf[-1] : before;
			if (prev != '\r')
				out[o++] = '\r';
			out[o++] = '\n';
			p = lf + 1;
		}
		before = block[n - 1];
		empty = false;
		spool_out(in, out, o);
	}
	/* A pipe has no end-of-data mark: end of file is also what a writer that died half-way
	 * leaves. The MTA that writes the message is the process that started us; if it is gone,
	 * this may be a part of the message, and the MTA, which never saw our exit status, will
	 * try again: store nothing. */
	if (parent_gone(in->parent)) {
		errno = EPIPE;
		return -1;
	}
	/* An LMTP client ends the content with CRLF before the final dot; so do we. */
	if (!empty && before != '\n')
		spool_out(in, "\r\n", 2);
	return 0;
}

/* Read standard input to its end without keeping it: an MTA writing the message to a command
 * that exits early may report the broken pipe instead of the exit status. */
static void drain_stdin(void)
{
	static char block[DELIVER_READ_BLOCK];
	ssize_t n;

	while ((n = read(STDIN_FILENO, block, sizeof(block))) != 0)
		if (n < 0 && errno != EINTR)
			break;
}

static size_t build_trace(const struct deliver *d, time_t received, char *buf, size_t size)
{
	char date[64];
	struct tm tm;

	localtime_r(&received, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
	/* RFC 5321 4.4: Return-Path, then our Received line on top. A local submission has no
	 * "from" or "with" clause (as Postfix writes "by host (Postfix, from userid N)"). */
	int n = format(buf, size,
		       "Return-Path: <%s>\r\n"
		       "Received: by %s (lmtpgw deliver, from userid %u)\r\n"
		       "\tid %s;\r\n"
		       "\t%s\r\n",
		       d->from_str, d->cfg->hostname, d->uid, d->txid, date);
	return n < 0 ? 0 : (size_t)n < size ? (size_t)n : size - 1;
}

static void on_result(void *ctx, size_t index, const struct status *reply)
{
	struct deliver *d = ctx;
	struct deliver_rcpt *dr = &d->rcpts[d->dispatch_to_rcpt[index]];

	dr->reply = *reply;
	dr->answered = true;
	d->waiting--;
}

/* Spool standard input, check the whole message, run the dispatcher until every accepted
 * recipient is answered. */
static void deliver_message(struct deliver *d, size_t accepted)
{
	const struct config *cfg = d->cfg;
	struct stdin_spool in = { .parent = d->parent };
	time_t received = time(NULL);

	in.spool = spool_new((size_t)cfg->spool_memory_max, cfg->spool_dir,
			     (uint64_t)cfg->max_message_size);
	if (in.spool == NULL) {
		log_error("session=%s tx=%s event=spool_error error=\"%s\"", d->session_id, d->txid,
			  strerror(errno));
		drain_stdin();
		refuse_message(d, 451, "4.3.0", "Local error in processing (spool)");
		return;
	}
	if (!d->rt->need_sha256)
		spool_skip_digest(in.spool);
	header_scan_init(&in.headers);
	if (read_message(&in) < 0) {
		log_error("session=%s tx=%s event=input_error error=\"reading standard input: %s\"",
			  d->session_id, d->txid,
			  errno == EPIPE ? "the process that wrote it went away" : strerror(errno));
		spool_free(&in.spool);
		refuse_message(d, 451, "4.3.0", "Local error in processing (reading the message)");
		return;
	}
	if (in.error == NULL && spool_finish(in.spool, &in.error) < 0)
		in.error_errno = errno;
	if (in.error != NULL) {
		log_error("session=%s tx=%s event=spool_error error=\"%s: %s\"", d->session_id,
			  d->txid, in.error, strerror(in.error_errno));
		spool_free(&in.spool);
		refuse_message(d, 451, "4.3.0", "Local error in processing (spool)");
		return;
	}
	if (spool_too_big(in.spool)) {
		spool_free(&in.spool);
		refuse_message(d, 552, "5.3.4", "Message too big for system");
		return;
	}
	if (in.headers.received_count > (unsigned)cfg->max_received_headers) {
		spool_free(&in.spool);
		refuse_message(d, 554, "5.4.6", "Too many Received headers: mail loop");
		return;
	}

	struct recipient *rcpts = calloc(accepted, sizeof(*rcpts));
	d->dispatch_to_rcpt = calloc(accepted, sizeof(*d->dispatch_to_rcpt));
	if (rcpts == NULL || d->dispatch_to_rcpt == NULL) {
		free(rcpts);
		spool_free(&in.spool);
		refuse_message(d, 451, "4.3.0", "Local error in processing (memory)");
		return;
	}
	size_t n = 0;
	for (size_t i = 0; i < d->rcpt_count; i++) {
		if (!d->rcpts[i].accepted)
			continue;
		rcpts[n] = d->rcpts[i].r;
		d->dispatch_to_rcpt[n++] = i;
	}
	char trace[2048];
	struct dispatch_request req = {
		.base = d->base,
		.rt = d->rt,
		.delivery = {
			.spool = in.spool,
			.trace = trace,
			.trace_len = build_trace(d, received, trace, sizeof(trace)),
			.delivered_to = cfg->delivered_to,
			.sender = d->from_str,
			.mail = &d->mail,
			.session_id = d->session_id,
			.txid = d->txid,
			.msgid = in.headers.msgid,
			.received = received,
			.lhlo = "",
			.client_addr = "local",
			.xforward_name = "",
			.xforward_addr = "",
			.tls = false,
		},
		.rcpts = rcpts,
		.rcpt_count = n,
		.client = d->client,
		.queue_id = "",
	};
	d->waiting = n;
	/* Ownership of spool and recipients passes to the dispatch. Inline drivers may answer
	 * before it returns. */
	dispatch_start(&req, on_result, d);
	while (d->waiting > 0)
		event_base_loop(d->base, EVLOOP_ONCE);
}

/* --- the command --- */

int deliver_main(const char *config_path, bool debug, int argc, char **argv)
{
	const char *sender = NULL;
	const char **args = calloc((size_t)argc + 1, sizeof(*args));
	size_t arg_count = 0;
	bool options_done = false, to_syslog = false;

	signal(SIGPIPE, SIG_IGN);
	for (int i = 0; i < argc && strcmp(argv[i], "--") != 0; i++)
		to_syslog = to_syslog || strcmp(argv[i], "--syslog") == 0;
	/* MTAs put a command's output (stdout and stderr) into their logs and bounces, OpenSMTPD
	 * its last line only: with --syslog the log lines go where the daemon's go, and the
	 * output is the reply lines alone. */
	log_init("lmtpgw", !to_syslog, debug ? LOG_LEVEL_DEBUG : LOG_LEVEL_INFO);
	if (args == NULL)
		return EX_TEMPFAIL;
	/* A command-line mistake is the admin's (a recipe): EX_TEMPFAIL keeps the mail queued
	 * where EX_USAGE would bounce it with Postfix. */
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		if (options_done || a[0] != '-') {
			args[arg_count++] = a;
		} else if (strcmp(a, "--") == 0) {
			options_done = true;
		} else if (strcmp(a, "--syslog") == 0) {
			continue; /* read above */
		} else if (strcmp(a, "-f") == 0 || strcmp(a, "-a") == 0 ||
			   strcmp(a, "--sender-env") == 0) {
			if (i + 1 >= argc) {
				fprintf(stderr, "lmtpgw deliver: %s needs an argument\n", a);
				usage(stderr);
				free(args);
				return EX_TEMPFAIL;
			}
			if (a[1] == 'f') {
				sender = argv[++i];
			} else if (a[1] == 'a') {
				args[arg_count++] = argv[++i];
			} else {
				/* Exim 4.94+ refuses tainted data ($sender_address) in a pipe
				 * command's arguments, but gives the command the sender in its
				 * environment (SENDER; empty for a bounce). */
				sender = getenv(argv[++i]);
				if (sender == NULL) {
					fprintf(stderr, "lmtpgw deliver: no environment variable %s\n",
						argv[i]);
					free(args);
					return EX_TEMPFAIL;
				}
			}
		} else if (strncmp(a, "-f", 2) == 0) {
			sender = a + 2; /* sendmail's -fSENDER */
		} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout);
			free(args);
			return EX_OK;
		} else {
			fprintf(stderr, "lmtpgw deliver: unknown option '%s'\n", a);
			usage(stderr);
			free(args);
			return EX_TEMPFAIL;
		}
	}
	if (arg_count == 0) {
		fprintf(stderr, "lmtpgw deliver: no recipient\n");
		usage(stderr);
		free(args);
		return EX_TEMPFAIL;
	}

	char error[1024];
	struct config *cfg = config_load(config_path, error, sizeof(error));
	if (cfg == NULL) {
		fprintf(stderr, "lmtpgw: %s\n", error);
		free(args);
		return EX_TEMPFAIL;
	}
	server_apply_log_settings(cfg, debug);

	struct deliver d = { .uid = (unsigned)getuid(), .parent = getppid() };
	char default_sender[ADDRESS_PATH_MAX + 1];
	if (sender == NULL) {
		/* Like sendmail -t without -f: the invoking user at this host (before dropping
		 * privileges, which changes who we are). */
		struct passwd *pw = getpwuid(getuid());
		format(default_sender, sizeof(default_sender), "%s@%s",
		       pw != NULL ? pw->pw_name : "nobody", cfg->hostname);
		sender = default_sender;
	}
	d.rt = runtime_open(cfg, NULL, error, sizeof(error));
	if (d.rt == NULL) {
		fprintf(stderr, "lmtpgw: %s\n", error);
		free(args);
		return EX_TEMPFAIL;
	}
	d.cfg = d.rt->cfg;
	if (privileges_drop(d.cfg, "deliver") < 0) {
		if (to_syslog)
			fprintf(stderr, "lmtpgw: cannot run as this user (see the log)\n");
		runtime_unref(&d.rt);
		free(args);
		return EX_TEMPFAIL;
	}
	d.base = event_base_new();
	if (d.base == NULL || pool_completion_init(d.base) < 0) {
		log_error("event=startup_failed error=\"cannot create event loop\"");
		runtime_unref(&d.rt);
		free(args);
		return EX_TEMPFAIL;
	}
	/* Ids as the daemon's (start time and a counter, in hex); the pid stands in for the
	 * counter, so two deliveries in one second differ. */
	format(d.session_id, sizeof(d.session_id), "%llx%04llx",
	       (unsigned long long)time(NULL) & 0xffffffffULL,
	       (unsigned long long)getpid() & 0xffff);
	format(d.txid, sizeof(d.txid), "%s.1", d.session_id);
	format(d.client, sizeof(d.client), "deliver(uid=%u)", d.uid);

	d.rcpt_count = arg_count;
	d.rcpts = calloc(arg_count, sizeof(*d.rcpts));
	if (d.rcpts == NULL) {
		runtime_unref(&d.rt);
		free(args);
		return EX_TEMPFAIL;
	}
	for (size_t i = 0; i < arg_count; i++)
		d.rcpts[i].arg = args[i];

	bool utf8 = has_8bit(sender);
	for (size_t i = 0; i < arg_count; i++)
		utf8 = utf8 || has_8bit(args[i]);
	/* The null sender: "" (Postfix null_sender=, Exim, OpenSMTPD) or "<>". */
	struct status st;
	log_info("session=%s event=connect client=%s", d.session_id, d.client);
	if (parse_sender(&d, sender, utf8, &st) < 0) {
		format(d.from_str, sizeof(d.from_str), "%s", sender);
		for (size_t i = 0; i < arg_count; i++) {
			struct status each = st;
			format(d.rcpts[i].r.rcpt, sizeof(d.rcpts[i].r.rcpt), "%s", args[i]);
			refuse(&d, &d.rcpts[i], "mail", NULL, &each);
		}
		drain_stdin();
	} else {
		size_t accepted = 0;
		for (size_t i = 0; i < arg_count; i++) {
			check_recipient(&d, &d.rcpts[i], accepted);
			if (d.rcpts[i].accepted)
				accepted++;
		}
		if (accepted > 0)
			deliver_message(&d, accepted);
		else
			drain_stdin();
	}
	int ex = exit_status(&d);
	log_info("session=%s event=disconnect client=%s exit=%d", d.session_id, d.client, ex);
	/* The reply lines come last: where stdout and stderr share a pipe, an MTA that reads
	 * the last line (OpenSMTPD) finds a recipient's reply there. */
	fflush(stderr);
	print_replies(&d);

	if (dispatch_in_flight() > 0) {
		/* The delivery deadline answered for workers still blocked in a backend: nobody
		 * waits for them any more, and joining them could take a backend timeout. */
		log_warn("event=exit_with_late_deliveries count=%u", dispatch_in_flight());
		fflush(stderr);
		_exit(ex);
	}
	runtime_unref(&d.rt);
	pool_completion_shutdown();
	event_base_free(d.base);
	free(d.dispatch_to_rcpt);
	free(d.rcpts);
	free(args);
	return ex;
}
