/*
 * imapconn - one blocking IMAP client connection: the protocol over an imap_transport stream.
 *
 * Owns: the libetpan session, which owns the stream (imap_transport: socket, TLS, io_clock).
 * Here: the greeting and STARTTLS, the login modes (LOGIN, SASL PLAIN with an authorization
 * id, Dovecot's "user*master"), APPEND through libetpan, APPEND and MULTIAPPEND written by hand
 * with LITERAL+ (the libetpan internals that needs are behind etpan_private.h), CREATE and
 * SUBSCRIBE, EXAMINE + UID SEARCH, LIST, NOOP, and the mapping of IMAP answers and response
 * codes to replies.
 *
 * Error contract: functions return 0/-1 (NULL for open) and fill a status plus a short reason.
 */
#include "imapconn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <libetpan/libetpan.h>

#include "base64.h"
#include "etpan_private.h"
#include "oauth2.h"
#include "secret.h"

struct imapconn {
	mailimap *imap;
	bool broken;
	bool literal_started;       /* the last APPEND began to send message bytes */
	struct io_clock clock;      /* read by the stream before each read and write */
	char user[256];
	char host[256], port[16];   /* for OAUTHBEARER's host and port */
	time_t last_used;
};

static void conn_fail_stream(struct imapconn *conn, struct status *st_r, const char *what,
			     int r, char *reason, size_t reason_size)
{
	conn->broken = true;
	status_must(st_r, 451, "4.4.2", "Connection to IMAP server lost");
	snprintf(reason, reason_size, "%s: libetpan error %d", what, r);
}

struct imapconn *imapconn_open(const struct imap_endpoint *ep, int64_t deadline_ms,
			       struct status *st_r, char *reason, size_t reason_size)
{
	struct imapconn *conn = calloc(1, sizeof(*conn));
	mailstream *stream;

	if (conn == NULL) {
		status_must(st_r, 451, "4.3.0", "Local error in processing");
		snprintf(reason, reason_size, "out of memory");
		return NULL;
	}
	conn->clock.timeout_ms = ep->timeout_ms;
	snprintf(conn->host, sizeof(conn->host), "%s", ep->host);
	snprintf(conn->port, sizeof(conn->port), "%s", ep->port);
	conn->clock.deadline_ms = deadline_ms;
	stream = imap_transport_open(ep, &conn->clock, st_r, reason, reason_size);
	if (stream == NULL) {
		free(conn);
		return NULL;
	}
	conn->imap = mailimap_new(0, NULL);
	if (conn->imap == NULL) {
		mailstream_close(stream);
		free(conn);
		status_must(st_r, 451, "4.3.0", "Local error in processing");
		snprintf(reason, reason_size, "out of memory");
		return NULL;
	}
	mailimap_set_timeout(conn->imap, ep->timeout_ms / 1000 > 0 ? ep->timeout_ms / 1000 : 1);
	int r = mailimap_connect(conn->imap, stream); /* the session owns the stream now */
	if (r != MAILIMAP_NO_ERROR_AUTHENTICATED && r != MAILIMAP_NO_ERROR_NON_AUTHENTICATED) {
		status_must(st_r, 451, "4.4.2", "IMAP server did not greet");
		snprintf(reason, reason_size, "greeting from %s:%s: libetpan error %d", ep->host,
			 ep->port, r);
		mailimap_free(conn->imap);
		free(conn);
		return NULL;
	}
	if (ep->security == IMAP_TLS_STARTTLS) {
		r = mailimap_starttls(conn->imap);
		if (r != MAILIMAP_NO_ERROR) {
			status_must(st_r, 451, "4.7.0", "IMAP server refused STARTTLS");
			snprintf(reason, reason_size, "STARTTLS at %s: libetpan error %d", ep->host, r);
			imapconn_close(&conn);
			return NULL;
		}
		if (imap_transport_starttls(conn->imap->imap_stream, ep, &conn->clock, st_r, reason,
					    reason_size) < 0) {
			imapconn_close(&conn);
			return NULL;
		}
	}
	conn->last_used = time(NULL);
	return conn;
}

void imapconn_close(struct imapconn **connp)
{
	struct imapconn *conn = *connp;

	if (conn == NULL)
		return;
	*connp = NULL;
	if (!conn->broken && conn->imap->imap_state >= MAILIMAP_STATE_AUTHENTICATED)
		mailimap_logout(conn->imap);
	mailimap_free(conn->imap);
	free(conn);
}

/* The resp-text-code atom of the last response, e.g. "OVERQUOTA", or "". */
static const char *response_code(const struct imapconn *conn)
{
	const struct mailimap_response_info *info = etpan_response_info(conn->imap);

	if (info != NULL && info->rsp_atom != NULL)
		return info->rsp_atom;
	return "";
}

static const char *response_text(const struct imapconn *conn)
{
	return etpan_response_text(conn->imap);
}

static bool stream_error(int r)
{
	return r == MAILIMAP_ERROR_STREAM || r == MAILIMAP_ERROR_PARSE || r == MAILIMAP_ERROR_FATAL ||
	       r == MAILIMAP_ERROR_PROTOCOL || r == MAILIMAP_ERROR_BAD_STATE ||
	       r == MAILIMAP_ERROR_MEMORY;
}

/* AUTHENTICATE XOAUTH2 / OAUTHBEARER written by hand: libetpan 1.9 has XOAUTH2 only with an
 * initial response and no way to answer the server's error continuation. Without SASL-IR (RFC
 * 4959) the exchange works on every server: command, "+", the base64 response, then either the
 * tagged answer or an error continuation (base64 JSON, RFC 7628 3.2.2) that the client must
 * answer -- an empty line for XOAUTH2, %x01 for OAUTHBEARER -- before the tagged NO.
 * Returns 0 (logged in), 1 (the server refused: tagged NO/BAD), -1 (stream lost). The token
 * is in no log line and is wiped after sending. */
static int sasl_bearer(struct imapconn *conn, enum imap_login_mode mode, const char *user,
		       const char *token)
{
	bool xoauth2 = mode == IMAP_LOGIN_XOAUTH2;
	char *raw = xoauth2 ? oauth2_sasl_xoauth2(user, token)
			    : oauth2_sasl_oauthbearer(user, conn->host, conn->port, token);
	if (raw == NULL)
		return -1;
	size_t raw_len = strlen(raw);
	size_t enc_size = base64_encoded_size(raw_len) + 3;
	char *enc = malloc(enc_size);
	if (enc == NULL) {
		secret_free(&raw);
		return -1;
	}
	size_t n = base64_encode(raw, raw_len, enc);
	secret_free(&raw);
	memcpy(enc + n, "\r\n", 2);
	const char *command = xoauth2 ? "AUTHENTICATE XOAUTH2\r\n" : "AUTHENTICATE OAUTHBEARER\r\n";
	int rc = -1;
	const char *line;
	enum etpan_tagged answer;
	if (etpan_command_begin(conn->imap) < 0 ||
	    etpan_command_write(conn->imap, command, strlen(command)) < 0 ||
	    etpan_command_flush(conn->imap) < 0 || (line = etpan_read_line(conn->imap)) == NULL)
		goto out;
	if (line[0] != '+') {
		/* mechanism refused at once */
		answer = etpan_parse_tagged(conn->imap);
		rc = answer == ETPAN_TAGGED_LOST ? -1 : 1;
		goto out;
	}
	if (etpan_command_write(conn->imap, enc, n + 2) < 0 || etpan_command_flush(conn->imap) < 0 ||
	    (line = etpan_read_line(conn->imap)) == NULL)
		goto out;
	if (line[0] == '+') {
		const char *reply = xoauth2 ? "\r\n" : "AQ==\r\n";
		if (etpan_command_write(conn->imap, reply, strlen(reply)) < 0 ||
		    etpan_command_flush(conn->imap) < 0)
			goto out;
		answer = etpan_read_tagged(conn->imap);
	} else {
		answer = etpan_parse_tagged(conn->imap);
	}
	if (answer == ETPAN_TAGGED_LOST)
		goto out;
	rc = answer == ETPAN_TAGGED_OK ? 0 : 1;
	if (rc == 0)
		etpan_set_authenticated(conn->imap);
out:
	secret_free_bytes(enc, enc_size);
	return rc;
}

int imapconn_login(struct imapconn *conn, enum imap_login_mode mode, const char *user,
		   const char *admin, const char *password, struct status *st_r, char *reason,
		   size_t reason_size)
{
	int r;

	switch (mode) {
	case IMAP_LOGIN_XOAUTH2:
	case IMAP_LOGIN_OAUTHBEARER: {
		int sr = sasl_bearer(conn, mode, user, password);
		r = sr == 0 ? MAILIMAP_NO_ERROR : sr < 0 ? MAILIMAP_ERROR_STREAM : MAILIMAP_ERROR_LOGIN;
		break;
	}
	case IMAP_LOGIN_PLAIN_AUTHZID:
		r = mailimap_authenticate(conn->imap, "PLAIN", NULL, NULL, NULL, user, admin,
					  password, NULL);
		break;
	case IMAP_LOGIN_MASTER_SUFFIX: {
		char login[600];
		snprintf(login, sizeof(login), "%s*%s", user, admin);
		r = mailimap_login(conn->imap, login, password);
		break;
	}
	default:
		r = mailimap_login(conn->imap, user, password);
		break;
	}
	if (r == MAILIMAP_NO_ERROR) {
		snprintf(conn->user, sizeof(conn->user), "%s", user);
		return 0;
	}
	if (stream_error(r)) {
		conn_fail_stream(conn, st_r, "login", r, reason, reason_size);
		return -1;
	}
	const char *code = response_code(conn);
	/* A failed login is ours to fix (the gateway's credential) unless the server says the
	 * user does not exist: never bounce on doubt. */
	if (strcasecmp(code, "NONEXISTENT") == 0)
		status_must(st_r, 550, "5.1.1", "no such IMAP user");
	else if (strcasecmp(code, "LIMIT") == 0)
		/* RFC 5530 [LIMIT] at login: Dovecot's mail_max_userip_connections (too many
		 * connections of this user from this address). It passes when connections close
		 * and says nothing about the credential (not X.7.0, which would also make the
		 * OAuth2 login refresh its token and the master login try its other form). RFC
		 * 3463 X.3.2 "system not accepting network messages", whose examples include
		 * "excessive load": the host holding the mailbox takes no more for now. Not X.4.5
		 * (congestion): X.4.x tells the circuit breaker (dispatcher.c) that the backend as
		 * a whole is unreachable, and one user's many clients must not take it down for
		 * every other user. */
		status_must(st_r, 451, "4.3.2", "Too many connections to the IMAP server");
	else if (strcasecmp(code, "UNAVAILABLE") == 0)
		/* RFC 5530 [UNAVAILABLE]: a subsystem (e.g. the user database) is down. X.3.0: the
		 * mail system that normally accepts mail has a (temporary) problem. */
		status_must(st_r, 451, "4.3.0", "IMAP server temporarily unavailable");
	else if (strcasecmp(code, "INUSE") == 0)
		/* RFC 5530 [INUSE]: the account is locked by another session. X.2.0, the mailbox's
		 * state, as for a refused APPEND (imap_map_append_failure). */
		status_must(st_r, 451, "4.2.0", "IMAP account in use");
	else
		status_must(st_r, 451, "4.7.0", "IMAP login failed");
	snprintf(reason, reason_size, "login as %s (mode %d): error %d [%s] %.120s", user, (int)mode,
		 r, code, response_text(conn));
	return -1;
}

void imap_map_append_failure(const char *code, bool overquota_permanent, struct status *st_r)
{
	/* RFC 5530 response codes; anything unknown is temporary (design.md). */
	if (strcasecmp(code, "OVERQUOTA") == 0) {
		if (overquota_permanent)
			status_must(st_r, 552, "5.2.2", "Mailbox full");
		else
			status_must(st_r, 452, "4.2.2", "Mailbox full");
	} else if (strcasecmp(code, "LIMIT") == 0 || strcasecmp(code, "TOOBIG") == 0) {
		status_must(st_r, 552, "5.3.4", "Message too big for mailbox");
	} else if (strcasecmp(code, "NOPERM") == 0) {
		status_must(st_r, 451, "4.7.1", "No permission to store into the mailbox");
	} else if (strcasecmp(code, "INUSE") == 0) {
		status_must(st_r, 451, "4.2.0", "Mailbox in use");
	} else {
		/* UNAVAILABLE, SERVERBUG, NONEXISTENT without TRYCREATE, none at all, ... */
		status_must(st_r, 451, "4.3.0", "IMAP server refused the message");
	}
}

static struct mailimap_flag_list *build_flags(const char *flags)
{
	struct mailimap_flag_list *list = mailimap_flag_list_new_empty();
	char buf[512];
	char *save = NULL;

	if (list == NULL || flags == NULL)
		return list;
	snprintf(buf, sizeof(buf), "%s", flags);
	for (char *tok = strtok_r(buf, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		struct mailimap_flag *f;
		if (strcasecmp(tok, "\\Seen") == 0)
			f = mailimap_flag_new_seen();
		else if (strcasecmp(tok, "\\Flagged") == 0)
			f = mailimap_flag_new_flagged();
		else if (strcasecmp(tok, "\\Answered") == 0)
			f = mailimap_flag_new_answered();
		else if (strcasecmp(tok, "\\Draft") == 0)
			f = mailimap_flag_new_draft();
		else if (strcasecmp(tok, "\\Deleted") == 0)
			f = mailimap_flag_new_deleted();
		else if (tok[0] == '\\')
			continue; /* an unknown system flag is refused at config time */
		else
			f = mailimap_flag_new_flag_keyword(strdup(tok));
		if (f != NULL && mailimap_flag_list_add(list, f) != MAILIMAP_NO_ERROR)
			mailimap_flag_free(f);
	}
	return list;
}

static bool literal_plus_ok(struct imapconn *conn, const char *mailbox);

/*
 * Cyrus IMAP (checked with 3.6.1) refuses an APPEND over quota with a bare "NO Over quota": no
 * [OVERQUOTA] code (RFC 5530). Only that exact text, the whole of the response text, counts:
 * anything longer or different stays "refused" (451 4.3.0), never a guess towards a bounce.
 */
bool imap_text_means_overquota(const char *text)
{
	size_t len = strlen(text);

	while (len > 0 && (text[len - 1] == ' ' || text[len - 1] == '\r' || text[len - 1] == '\n'))
		len--;
	return len == strlen("Over quota") && strncasecmp(text, "Over quota", len) == 0;
}

/* The server answered NO to an APPEND: [TRYCREATE] (the caller may create the folder), or the
 * RFC 5530 code mapped to a reply. Always -1. */
static int append_refused(struct imapconn *conn, const char *command, const char *mailbox,
			  const char *what, bool overquota_permanent,
			  struct imap_append_result *res_r, struct status *st_r, char *reason,
			  size_t reason_size)
{
	const struct mailimap_response_info *info = etpan_response_info(conn->imap);
	const char *code = response_code(conn);

	res_r->trycreate = info != NULL && info->rsp_trycreate;
	if (code[0] == '\0' && imap_text_means_overquota(response_text(conn)))
		code = "OVERQUOTA";
	if (res_r->trycreate)
		status_must(st_r, 451, "4.3.0", "IMAP folder does not exist");
	else
		imap_map_append_failure(code, overquota_permanent, st_r);
	snprintf(reason, reason_size, "%s to %s: %s [%s] %.120s", command, mailbox, what,
		 res_r->trycreate ? "TRYCREATE" : code, response_text(conn));
	return -1;
}

int imapconn_append(struct imapconn *conn, const char *mailbox, const char *flags,
		    time_t internaldate, const char *data, size_t len, bool overquota_permanent,
		    struct imap_append_result *res_r, struct status *st_r, char *reason,
		    size_t reason_size)
{
	if (literal_plus_ok(conn, mailbox)) {
		/* One write and no "+" round trip, and the literal without libetpan's copy. */
		struct imap_append_item item = { .data = data, .len = len,
						 .internaldate = internaldate };
		int r = imapconn_multiappend(conn, mailbox, flags, &item, 1, overquota_permanent,
					     res_r, st_r, reason, reason_size);
		res_r->uid = item.uid;
		return r;
	}

	struct tm tm;
	struct mailimap_flag_list *flag_list = build_flags(flags);
	struct mailimap_date_time *date;
	uint32_t uidvalidity = 0, uid = 0;

	memset(res_r, 0, sizeof(*res_r));
	gmtime_r(&internaldate, &tm);
	date = mailimap_date_time_new(tm.tm_mday, tm.tm_mon + 1, tm.tm_year + 1900, tm.tm_hour,
				      tm.tm_min, tm.tm_sec, 0);
	/* libetpan sends the literal itself: from here on we cannot tell what reached the server,
	 * and each write of it is progress. */
	conn->literal_started = true;
	conn->clock.extend_on_write = true;
	int r = mailimap_uidplus_append(conn->imap, mailbox, flag_list, date, data, len,
					&uidvalidity, &uid);
	conn->clock.extend_on_write = false;
	if (flag_list != NULL)
		mailimap_flag_list_free(flag_list);
	if (date != NULL)
		mailimap_date_time_free(date);
	conn->last_used = time(NULL);
	if (r == MAILIMAP_NO_ERROR) {
		res_r->uidvalidity = uidvalidity;
		res_r->uid = uid;
		return 0;
	}
	if (stream_error(r)) {
		/* Lost mid-APPEND: the server may or may not have stored it; 4xx, the MTA retries. */
		conn_fail_stream(conn, st_r, "append", r, reason, reason_size);
		return -1;
	}
	char what[32];
	snprintf(what, sizeof(what), "error %d", r);
	int refused = append_refused(conn, "append", mailbox, what, overquota_permanent, res_r,
				     st_r, reason, reason_size);
	snprintf(res_r->code, sizeof(res_r->code), "%s", response_code(conn));
	return refused;
}

/*
 * MULTIAPPEND. libetpan has no MULTIAPPEND (RFC 3502) and no LITERAL+ (RFC 7888), so the
 * command is written here and only the tagged answer is parsed by libetpan, through the few
 * session internals of etpan_private.h.
 */

/* APPEND written by hand needs LITERAL+ and a mailbox name that fits a quoted string. */
static bool literal_plus_ok(struct imapconn *conn, const char *mailbox)
{
	if (conn->broken || !mailimap_has_extension(conn->imap, "LITERAL+"))
		return false;
	/* Written as a quoted string: printable ASCII without quote and backslash only (anything
	 * else needs a literal, which the single APPEND path sends). */
	for (const unsigned char *p = (const unsigned char *)mailbox; *p != '\0'; p++) {
		if (*p < 0x20 || *p > 0x7e || *p == '"' || *p == '\\')
			return false;
	}
	return mailbox[0] != '\0';
}

bool imapconn_can_multiappend(struct imapconn *conn, const char *mailbox)
{
	return mailimap_has_extension(conn->imap, "MULTIAPPEND") &&
	       literal_plus_ok(conn, mailbox);
}

static int stream_put(struct imapconn *conn, const char *text, size_t len)
{
	return etpan_command_write(conn->imap, text, len);
}

/* Is every CR of data followed by LF and every LF preceded by CR? Then libetpan's conversion
 * of bare CR and LF to CRLF (a loop over every byte, twice: once to count, once to send; 40%
 * of lmtpgw's CPU for 5 MB messages) would change nothing, and the bytes go out as they are.
 * Two memchr a line. */
static bool crlf_clean(const char *data, size_t len)
{
	const char *p = data, *end = data + len;

	while (p < end) {
		const char *cr = memchr(p, '\r', (size_t)(end - p));
		const char *stop = cr != NULL ? cr : end;
		if (memchr(p, '\n', (size_t)(stop - p)) != NULL)
			return false; /* an LF without its CR */
		if (cr == NULL)
			return true;
		if (cr + 1 >= end || cr[1] != '\n')
			return false; /* a CR without its LF */
		p = cr + 2;
	}
	return true;
}

/* The literal's octet count as sent, and the sending: raw when already CRLF-clean. */
static size_t literal_size(const char *data, size_t len, bool clean)
{
	return clean ? len : etpan_literal_crlf_size(data, len);
}

static int literal_send(struct imapconn *conn, const char *data, size_t len, bool clean)
{
	if (clean)
		return len == 0 ? 0 : stream_put(conn, data, len);
	return etpan_literal_write_crlf(conn->imap, data, len);
}

/* The uid-set of APPENDUID ("5:12" or "5,7,9:10"), expanded in order into uids[count]. */
static void apnd_uids(struct imapconn *conn, uint32_t *uidvalidity_r, uint32_t *uids,
		      size_t count)
{
	const struct mailimap_response_info *info = etpan_response_info(conn->imap);
	size_t n = 0;

	*uidvalidity_r = 0;
	if (info == NULL || info->rsp_extension_list == NULL)
		return;
	for (clistiter *cur = clist_begin(info->rsp_extension_list); cur != NULL;
	     cur = clist_next(cur)) {
		struct mailimap_extension_data *ext = clist_content(cur);
		if (ext->ext_extension != &mailimap_extension_uidplus ||
		    ext->ext_type != MAILIMAP_UIDPLUS_RESP_CODE_APND)
			continue;
		struct mailimap_uidplus_resp_code_apnd *apnd = ext->ext_data;
		*uidvalidity_r = apnd->uid_uidvalidity;
		if (apnd->uid_set == NULL)
			return;
		for (clistiter *it = clist_begin(apnd->uid_set->set_list); it != NULL && n < count;
		     it = clist_next(it)) {
			struct mailimap_set_item *item = clist_content(it);
			/* "7:5" is the range 5 to 7 (RFC 3501 9, RFC 4315 3) */
			uint64_t lo = item->set_first, hi = item->set_last;
			if (lo > hi) {
				uint64_t swap = lo;
				lo = hi;
				hi = swap;
			}
			for (uint64_t u = lo; u <= hi && n < count; u++)
				uids[n++] = (uint32_t)u;
		}
		if (n != count) /* not one UID a message: name none rather than wrong ones */
			memset(uids, 0, count * sizeof(*uids));
		return;
	}
}

int imapconn_multiappend(struct imapconn *conn, const char *mailbox, const char *flags,
			 struct imap_append_item *items, size_t count, bool overquota_permanent,
			 struct imap_append_result *res_r, struct status *st_r, char *reason,
			 size_t reason_size)
{
	static const char months[][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	char head[700];

	memset(res_r, 0, sizeof(*res_r));
	conn->literal_started = false;
	for (size_t i = 0; i < count; i++)
		items[i].uid = 0;
	if (!literal_plus_ok(conn, mailbox) ||
	    (count > 1 && !mailimap_has_extension(conn->imap, "MULTIAPPEND"))) {
		/* This connection's own capabilities, whatever another connection announced: a
		 * non-synchronizing literal to a server without LITERAL+ (RFC 7888) would be read
		 * as commands. Nothing was sent: refused whole, the caller sends each alone. */
		res_r->refused = true;
		status_must(st_r, 451, "4.3.0", "IMAP server refused the APPEND");
		snprintf(reason, reason_size, "multiappend to %s: no LITERAL+/MULTIAPPEND here",
			 mailbox);
		return -1;
	}
	int n = snprintf(head, sizeof(head), "APPEND \"%s\"", mailbox);
	if (etpan_command_begin(conn->imap) < 0 || n < 0 || (size_t)n >= sizeof(head) ||
	    stream_put(conn, head, (size_t)n) < 0)
		goto stream_failed;
	for (size_t i = 0; i < count; i++) {
		struct tm tm;
		gmtime_r(&items[i].internaldate, &tm);
		bool clean = crlf_clean(items[i].data, items[i].len);
		size_t size = literal_size(items[i].data, items[i].len, clean);
		/* Each message: SP [flag-list SP] date-time SP literal+ (RFC 3502 3, RFC 7888). */
		n = snprintf(head, sizeof(head), " %s%s%s\"%02d-%s-%04d %02d:%02d:%02d +0000\" {%zu+}\r\n",
			     flags[0] ? "(" : "", flags, flags[0] ? ") " : "", tm.tm_mday,
			     months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
			     tm.tm_sec, size);
		if (n < 0 || (size_t)n >= sizeof(head) || stream_put(conn, head, (size_t)n) < 0 ||
		    size > UINT32_MAX)
			goto stream_failed;
		/* From the first message byte on, a failure leaves the outcome unknown; until
		 * then the server cannot have stored anything (imapconn_literal_started). */
		conn->literal_started = true;
		conn->clock.extend_on_write = true;
		if (literal_send(conn, items[i].data, items[i].len, clean) < 0)
			goto stream_failed;
	}
	if (stream_put(conn, "\r\n", 2) < 0 || etpan_command_flush(conn->imap) < 0)
		goto stream_failed;
	conn->clock.extend_on_write = false;
	enum etpan_tagged answer = etpan_read_tagged(conn->imap);
	conn->last_used = time(NULL);
	if (answer == ETPAN_TAGGED_LOST)
		goto stream_failed;
	if (answer == ETPAN_TAGGED_BAD) {
		/* libetpan's answer to a tagged BAD (and to a foreign tag, which a server in sync
		 * does not send): the command was refused whole, nothing stored (RFC 3501 7.1.3,
		 * RFC 3502). Not reused, in case it was the foreign tag. */
		conn->broken = true;
		res_r->refused = true;
		status_must(st_r, 451, "4.3.0", "IMAP server refused the APPEND");
		snprintf(reason, reason_size, "multiappend of %zu to %s: BAD %.120s", count, mailbox,
			 response_text(conn));
		return -1;
	}
	if (answer == ETPAN_TAGGED_OK) {
		uint32_t *uids = calloc(count, sizeof(*uids));
		if (uids != NULL) {
			apnd_uids(conn, &res_r->uidvalidity, uids, count);
			for (size_t i = 0; i < count; i++)
				items[i].uid = uids[i];
			free(uids);
		}
		return 0;
	}
	/* NO: nothing of the batch was stored (RFC 3502 6.3.11: all or none). */
	char what[32];
	snprintf(what, sizeof(what), "%zu messages", count);
	int refused = append_refused(conn, "multiappend", mailbox, what, overquota_permanent,
				     res_r, st_r, reason, reason_size);
	snprintf(res_r->code, sizeof(res_r->code), "%s", response_code(conn));
	return refused;

stream_failed:
	/* Lost mid-command: any of the messages may or may not be stored; 4xx, the MTA retries. */
	conn->clock.extend_on_write = false;
	conn_fail_stream(conn, st_r, "multiappend", MAILIMAP_ERROR_STREAM, reason, reason_size);
	return -1;
}

int imapconn_create(struct imapconn *conn, const char *mailbox, bool subscribe, char *reason,
		    size_t reason_size)
{
	int r = mailimap_create(conn->imap, mailbox);

	if (r != MAILIMAP_NO_ERROR) {
		if (stream_error(r)) {
			conn->broken = true;
			snprintf(reason, reason_size, "create %s: libetpan error %d", mailbox, r);
			return -1;
		}
		if (strcasecmp(response_code(conn), "ALREADYEXISTS") != 0) {
			snprintf(reason, reason_size, "create %s: [%s] %.120s", mailbox,
				 response_code(conn), response_text(conn));
			return -1;
		}
	}
	if (subscribe) {
		r = mailimap_subscribe(conn->imap, mailbox);
		if (stream_error(r)) {
			conn->broken = true;
			snprintf(reason, reason_size, "subscribe %s: libetpan error %d", mailbox, r);
			return -1;
		}
	}
	return 0;
}

int imapconn_find_header(struct imapconn *conn, const char *mailbox, const char *name,
			 const char *value, uint32_t *uid_r, char *reason, size_t reason_size)
{
	int r = mailimap_examine(conn->imap, mailbox);

	if (r != MAILIMAP_NO_ERROR) {
		if (stream_error(r))
			conn->broken = true;
		snprintf(reason, reason_size, "examine %s: error %d [%s]", mailbox, r,
			 response_code(conn));
		return -1;
	}
	struct mailimap_search_key *key = mailimap_search_key_new_header(strdup(name), strdup(value));
	clist *result = NULL;
	r = key != NULL ? mailimap_uid_search(conn->imap, NULL, key, &result) : MAILIMAP_ERROR_MEMORY;
	if (key != NULL)
		mailimap_search_key_free(key);
	if (r != MAILIMAP_NO_ERROR) {
		if (stream_error(r))
			conn->broken = true;
		snprintf(reason, reason_size, "uid search header %s: error %d", name, r);
		return -1;
	}
	int found = 0;
	if (result != NULL && clist_begin(result) != NULL) {
		*uid_r = *(uint32_t *)clist_content(clist_begin(result));
		found = 1;
	}
	if (result != NULL)
		mailimap_search_result_free(result);
	/* Leave the selected state: APPEND works in either, and a later EXAMINE replaces it. */
	return found;
}

int imapconn_folder_exists(struct imapconn *conn, const char *mailbox, char *reason,
			   size_t reason_size)
{
	clist *list = NULL;
	int r = mailimap_list(conn->imap, "", mailbox, &list);

	if (r != MAILIMAP_NO_ERROR) {
		if (stream_error(r))
			conn->broken = true;
		snprintf(reason, reason_size, "list %s: error %d [%s] %.120s", mailbox, r,
			 response_code(conn), response_text(conn));
		return -1;
	}
	conn->last_used = time(NULL);
	int found = list != NULL && clist_begin(list) != NULL;
	if (list != NULL)
		mailimap_list_result_free(list);
	return found;
}

int imapconn_noop(struct imapconn *conn)
{
	int r = mailimap_noop(conn->imap);

	if (r != MAILIMAP_NO_ERROR) {
		conn->broken = true;
		return -1;
	}
	conn->last_used = time(NULL);
	return 0;
}

bool imapconn_peer_spoke(const struct imapconn *conn)
{
	return imap_transport_peer_spoke(conn->imap->imap_stream);
}

void imapconn_set_deadline(struct imapconn *conn, int64_t deadline_ms)
{
	conn->clock.deadline_ms = deadline_ms;
}

bool imapconn_literal_started(const struct imapconn *conn)
{
	return conn->literal_started;
}

bool imapconn_broken(const struct imapconn *conn)
{
	return conn->broken;
}

const char *imapconn_login_user(const struct imapconn *conn)
{
	return conn->user;
}

time_t imapconn_last_used(const struct imapconn *conn)
{
	return conn->last_used;
}
