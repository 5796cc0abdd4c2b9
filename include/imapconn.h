/*
 * imapconn - one blocking IMAP client connection: the protocol client (libetpan) over the
 * socket and OpenSSL TLS of imap_transport.
 *
 * Opening a connection reads the greeting and, for imap://, sends STARTTLS before
 * imap_transport secures and verifies the stream. Credentials are only ever sent on a verified
 * TLS session, or on plain text when the caller explicitly allowed it for a loopback server.
 *
 * Every failing call fills a status (design.md mapping) and a short reason for the log. A
 * connection whose stream failed is marked broken and must be closed, not reused.
 * Used from worker threads: nothing here touches global state except OpenSSL's (thread-safe).
 */
#ifndef LMTPGW_IMAPCONN_H
#define LMTPGW_IMAPCONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "status.h"
/* The endpoint, the TLS context and imap_deadline_after() for imapconn_open. */
#include "imap_transport.h"
/* Mailbox names passed to the functions below are already modified UTF-7 (imap_mutf7.h); the
 * header is included here for the driver, which encodes them. */
#include "imap_mutf7.h"

struct imapconn;

/* Connect, secure, read the greeting. NULL on failure with *st_r (451 4.4.1 refused or
 * unreachable, 451 4.4.2 lost, 451 4.7.5 certificate not trusted, ...) and reason. Every
 * read and write waits at most ep->timeout_ms and never past deadline_ms (0: no deadline);
 * the deadline stays with the connection until imapconn_set_deadline changes it. */
struct imapconn *imapconn_open(const struct imap_endpoint *ep, int64_t deadline_ms,
			       struct status *st_r, char *reason, size_t reason_size);

/* The budget of the next commands (0: only the per-read/write timeout). While a message
 * literal is being written, each write that made progress pushes the deadline to one timeout
 * after it, so a big message is bounded by inactivity rather than by the budget. */
void imapconn_set_deadline(struct imapconn *conn, int64_t deadline_ms);
void imapconn_close(struct imapconn **conn);

enum imap_login_mode {
	IMAP_LOGIN_PLAIN_AUTHZID,   /* SASL PLAIN: authzid = user, authcid = admin */
	IMAP_LOGIN_MASTER_SUFFIX,   /* LOGIN "user*admin" (Dovecot master users) */
	IMAP_LOGIN_USER,            /* LOGIN user password */
	IMAP_LOGIN_XOAUTH2,         /* SASL XOAUTH2: user + OAuth2 token (password) */
	IMAP_LOGIN_OAUTHBEARER,     /* SASL OAUTHBEARER (RFC 7628): user + token (password) */
};

/* Log in. On failure, *st_r is 451 4.7.0 (our credential: never a bounce) unless the server
 * said unambiguously that the user does not exist (550 5.1.1) or gave a temporary reason that
 * is no credential failure: [LIMIT] 451 4.3.2, [UNAVAILABLE] 451 4.3.0, [INUSE] 451 4.2.0.
 * Only 451 4.7.0 means "the credential was refused". With XOAUTH2 and OAUTHBEARER, password is
 * the access token; the server's error continuation (RFC 7628 3.2.3) is answered as each
 * mechanism wants, and the connection stays usable for another attempt. */
int imapconn_login(struct imapconn *conn, enum imap_login_mode mode, const char *user,
		   const char *admin, const char *password, struct status *st_r, char *reason,
		   size_t reason_size);

struct imap_append_result {
	uint32_t uidvalidity;
	uint32_t uid;
	bool trycreate;             /* the server said [TRYCREATE] */
	char code[32];              /* the response code of a NO (RFC 5530 atom), or "" */
	bool refused;               /* MULTIAPPEND: a tagged BAD (nothing stored; the connection
	                             * is not reused, so imapconn_broken() is true too) */
};

/* APPEND data into mailbox with flags (space-separated, e.g. "\\Seen $Label") and INTERNALDATE.
 * overquota_permanent picks 552 5.2.2 instead of 452 4.2.2. */
int imapconn_append(struct imapconn *conn, const char *mailbox, const char *flags,
		    time_t internaldate, const char *data, size_t len, bool overquota_permanent,
		    struct imap_append_result *res_r, struct status *st_r, char *reason,
		    size_t reason_size);

/* One message of a MULTIAPPEND. */
struct imap_append_item {
	const char *data;
	size_t len;
	time_t internaldate;
	uint32_t uid;               /* out: from APPENDUID; 0 when the server gave none */
};

/* Can one APPEND command carry several messages into mailbox on this connection? The server
 * must offer MULTIAPPEND (RFC 3502) and LITERAL+ (RFC 7888), and the name must fit a quoted
 * string. */
bool imapconn_can_multiappend(struct imapconn *conn, const char *mailbox);

/* Append every item into mailbox with one command, all or none (RFC 3502): the server then
 * syncs and locks the mailbox once for the batch instead of once a message. 0 on success
 * (uids and res_r->uidvalidity filled when the server has UIDPLUS); -1 with *st_r and reason
 * (res_r->trycreate on [TRYCREATE]; imapconn_broken() when the outcome is unknown). */
int imapconn_multiappend(struct imapconn *conn, const char *mailbox, const char *flags,
			 struct imap_append_item *items, size_t count, bool overquota_permanent,
			 struct imap_append_result *res_r, struct status *st_r, char *reason,
			 size_t reason_size);

/* CREATE (an existing mailbox counts as success) and optionally SUBSCRIBE. */
int imapconn_create(struct imapconn *conn, const char *mailbox, bool subscribe, char *reason,
		    size_t reason_size);

/* Is a message whose header `name` has `value` in mailbox? 1 yes (its UID in *uid_r), 0 no,
 * -1 could not tell (reason set). Uses EXAMINE, so the mailbox stays unchanged. */
int imapconn_find_header(struct imapconn *conn, const char *mailbox, const char *name,
			 const char *value, uint32_t *uid_r, char *reason, size_t reason_size);

/* Does LIST "" mailbox name an existing mailbox? 1 yes, 0 no, -1 could not tell (reason set).
 * mailbox must hold no LIST wildcard. */
int imapconn_folder_exists(struct imapconn *conn, const char *mailbox, char *reason,
			   size_t reason_size);

/* NOOP as a health check of an idle connection. */
int imapconn_noop(struct imapconn *conn);

/* True when the server sent something while we were idle (an untagged BYE, or the connection
 * closed): the connection must be checked with NOOP before reuse. */
bool imapconn_peer_spoke(const struct imapconn *conn);

/* Did the last APPEND (or MULTIAPPEND) begin to send message bytes? When it failed before,
 * the server cannot have stored anything: the command may be retried on another connection. */
bool imapconn_literal_started(const struct imapconn *conn);

bool imapconn_broken(const struct imapconn *conn);
const char *imapconn_login_user(const struct imapconn *conn);
time_t imapconn_last_used(const struct imapconn *conn);

/* Map an IMAP response code (RFC 5530) of a failed APPEND to a reply; exposed for tests. */
void imap_map_append_failure(const char *code, bool overquota_permanent, struct status *st_r);

/* True for a response text that means over quota without saying so in a code (Cyrus's bare
 * "Over quota"); exposed for tests. */
bool imap_text_means_overquota(const char *text);

#endif
