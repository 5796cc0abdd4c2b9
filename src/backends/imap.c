/*
 * imap - delivery by IMAP APPEND into any IMAP server's mailboxes.
 *
 * Each target is appended as the recipient's IMAP user (login_mode "master": one admin
 * credential impersonating every user; "user": each user's own password from a file;
 * "shared": one account, folders chosen by template). The message is handed to libetpan as
 * one contiguous block: the spool file is mapped behind the trace headers, never copied
 * (spool_view_prefixed). INTERNALDATE is the time the message was received.
 *
 * Connections are pooled per login identity and reused across messages and recipients; an
 * idle one is checked with NOOP before reuse, and one that failed is never reused. A target is
 * ok only after the tagged OK to APPEND (design.md guarantees); every doubt is 4xx.
 *
 * Secrets are read from files at open (refused when others may read them), kept once, and
 * wiped at close. They are never logged.
 */
#include "backend.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/evp.h>

#include "imapconn.h"
#include "oauth2.h"
#include "secret.h"

/* The words of the enum keys, in the order of their C enums. */
enum login_kind { LOGIN_MASTER, LOGIN_USER, LOGIN_SHARED };
static const char *const login_modes[] = { "master", "user", "shared", NULL };
enum master_kind { MASTER_AUTO, MASTER_SASL, MASTER_DOVECOT };
static const char *const master_formats[] = { "auto", "sasl", "dovecot", NULL };
enum auth_kind { AUTH_PASSWORD, AUTH_XOAUTH2, AUTH_OAUTHBEARER };
static const char *const auth_mechanisms[] = { "password", "xoauth2", "oauthbearer", NULL };
enum search_kind { SEARCH_UNCERTAIN, SEARCH_ALWAYS };
static const char *const dedupe_searches[] = { "uncertain", "always", NULL };

struct imap_settings {
	char *url;
	bool allow_plaintext;
	char *ca_file;
	char *ca_path;
	int login_mode;                /* enum login_kind */
	int master_format;             /* enum master_kind */
	char *login;
	char *password_file;
	char *passwords_file;
	char *user;
	char *folder;
	bool folder_from_detail;
	char *detail_folder;
	struct conf_strlist flags;
	bool create_folders;
	bool subscribe;
	bool fallback_to_inbox;
	bool overquota_permanent;
	bool unknown_user_permanent;
	bool verify_recipients;
	long long verify_cache;
	bool dedupe;
	int dedupe_search;             /* enum search_kind */
	long long timeout;
	long long idle_timeout;
	long long max_idle;
	long long multiappend;
	int auth_mechanism;            /* enum auth_kind */
	struct oauth2_settings oauth2;
};

static const struct conf_key imap_keys[] = {
	{ "url", CONF_STRING, offsetof(struct imap_settings, url), NULL, 1, 0,
	  "server: imaps://host[:993] (TLS) or imap://host[:143] (STARTTLS required)" },
	{ "allow_plaintext", CONF_BOOL, offsetof(struct imap_settings, allow_plaintext), "false", 1,
	  0, "imap:// without TLS; accepted only for a loopback server" },
	{ "ca_file", CONF_STRING, offsetof(struct imap_settings, ca_file), NULL, 1, 0,
	  "PEM file of CA certificates to verify the server (default: the system store)" },
	{ "ca_path", CONF_STRING, offsetof(struct imap_settings, ca_path), NULL, 1, 0,
	  "directory of hashed CA certificates to verify the server" },
	{ "login_mode", CONF_ENUM, offsetof(struct imap_settings, login_mode), "master", 0, 0,
	  "master (admin impersonates each user), user (own passwords) or shared (one account)",
	  login_modes },
	{ "master_format", CONF_ENUM, offsetof(struct imap_settings, master_format), "auto", 0, 0,
	  "master login: sasl (PLAIN with authorization id), dovecot (LOGIN user*admin) or auto",
	  master_formats },
	{ "login", CONF_STRING, offsetof(struct imap_settings, login), NULL, 1, 0,
	  "the admin (master) user, or the shared account" },
	{ "password_file", CONF_STRING, offsetof(struct imap_settings, password_file), NULL, 1, 0,
	  "file holding the password of 'login' (first line); not readable by others" },
	{ "passwords_file", CONF_STRING, offsetof(struct imap_settings, passwords_file), NULL, 1, 0,
	  "login_mode user: file of user:password lines; not readable by others" },
	{ "user", CONF_STRING, offsetof(struct imap_settings, user), "%{local}", 1, 0,
	  "IMAP user of a recipient (template)" },
	{ "folder", CONF_STRING, offsetof(struct imap_settings, folder), "INBOX", 1, 0,
	  "folder to append to (template)" },
	{ "folder_from_detail", CONF_BOOL, offsetof(struct imap_settings, folder_from_detail),
	  "false", 1, 0, "user+detail goes to the folder detail_folder" },
	{ "detail_folder", CONF_STRING, offsetof(struct imap_settings, detail_folder), "%{detail}",
	  1, 0, "folder for user+detail when folder_from_detail (template, e.g. \"INBOX.%{detail}\")" },
	{ "flags", CONF_STRING_LIST, offsetof(struct imap_settings, flags), NULL, 1, 0,
	  "flags and keywords set on appended messages, e.g. [\"\\\\Seen\", \"$Gateway\"]" },
	{ "create_folders", CONF_BOOL, offsetof(struct imap_settings, create_folders), "true", 1, 0,
	  "on [TRYCREATE], create the folder and append again once" },
	{ "subscribe", CONF_BOOL, offsetof(struct imap_settings, subscribe), "true", 1, 0,
	  "subscribe to folders we create" },
	{ "fallback_to_inbox", CONF_BOOL, offsetof(struct imap_settings, fallback_to_inbox), "true",
	  1, 0, "when the server refuses the folder, or the +detail cannot name one, deliver into "
	  "INBOX" },
	{ "overquota_permanent", CONF_BOOL, offsetof(struct imap_settings, overquota_permanent),
	  "false", 1, 0, "answer [OVERQUOTA] with 552 5.2.2 (bounce) instead of 452 4.2.2" },
	{ "unknown_user_permanent", CONF_BOOL,
	  offsetof(struct imap_settings, unknown_user_permanent), "false", 1, 0,
	  "master login: take [AUTHORIZATIONFAILED] (admin accepted, user refused) as an unknown "
	  "user, 550 5.1.1; otherwise 451 4.7.0. An account without INBOX: 550 5.1.1, else 450 4.1.1" },
	{ "verify_recipients", CONF_BOOL, offsetof(struct imap_settings, verify_recipients), "false",
	  1, 0, "log in as each new recipient at RCPT time and check its INBOX exists, so an "
	  "unknown user is refused there "
	  "(with unknown_user_permanent: 550 5.1.1); the connection then serves the delivery" },
	{ "verify_cache", CONF_DURATION, offsetof(struct imap_settings, verify_cache), "60s", 0,
	  86400000, "how long a verification result is remembered" },
	{ "dedupe", CONF_BOOL, offsetof(struct imap_settings, dedupe), "false", 1, 0,
	  "add an X-Lmtpgw-Id header; after an APPEND of unknown outcome, search for it before "
	  "appending the same message again" },
	{ "dedupe_search", CONF_ENUM, offsetof(struct imap_settings, dedupe_search), "uncertain", 0,
	  0, "with dedupe: search for the X-Lmtpgw-Id before an APPEND only after an APPEND of "
	  "unknown outcome (uncertain), or before every APPEND (always: no second copy through "
	  "instances that share no dedupe_db, at one search per message)", dedupe_searches },
	{ "timeout", CONF_DURATION, offsetof(struct imap_settings, timeout), "30s", 1000, 600000,
	  "budget of one delivery attempt (connect, login, APPEND, ...) and per-read/write "
	  "timeout" },
	{ "idle_timeout", CONF_DURATION, offsetof(struct imap_settings, idle_timeout), "60s", 0,
	  3600000, "close pooled connections idle longer than this" },
	{ "max_idle", CONF_INT, offsetof(struct imap_settings, max_idle), "16", 0, 1024,
	  "pooled idle connections kept at most" },
	{ "multiappend", CONF_INT, offsetof(struct imap_settings, multiappend), "16", 1, 1000,
	  "most concurrent deliveries to one folder sent as one APPEND command (MULTIAPPEND with "
	  "LITERAL+, when the server offers both); 1 appends every message alone" },
	{ "auth_mechanism", CONF_ENUM, offsetof(struct imap_settings, auth_mechanism), "password",
	  0, 0, "password (LOGIN / SASL PLAIN), or xoauth2 / oauthbearer with an OAuth2 token "
	  "from the oauth2_* keys (login_mode user or shared)", auth_mechanisms },
	OAUTH2_CONF_KEYS(struct imap_settings, oauth2),
	{ NULL, 0, 0, NULL, 0, 0, NULL },
};


struct user_password {
	char *user;
	char *password;
};

struct imap_state {
	char name[64];
	struct imap_endpoint ep;
	enum login_kind login_kind;
	enum master_kind master_kind;
	atomic_int master_resolved;   /* auto mode: 0 unknown, else the enum that worked */
	char *login;
	char *password;               /* of login; wiped at close */
	struct user_password *users;  /* login_mode user */
	size_t user_count;
	struct template *user_tmpl, *folder_tmpl, *detail_tmpl;
	struct oauth2_source *oauth2;  /* auth_mechanism xoauth2 / oauthbearer */
	char flags[512];
	struct imap_settings set;

	pthread_mutex_t lock;         /* guards idle[] and verified[] */
	struct verified {
		char user[128];
		bool exists;
		time_t expires;
	} verified[256];              /* small cache of RCPT-time verifications, by user hash */
	struct uncertain {
		char id[65];
		time_t until;
	} uncertain[256];             /* APPENDs whose outcome is unknown (dedupe), by id hash */
	struct imapconn **idle;
	size_t idle_count;

	pthread_mutex_t batch_lock;   /* guards queues and every waiter in them */
	pthread_cond_t batch_done;
	struct append_queue *queues;  /* one per account and folder with deliveries in flight */
	atomic_bool no_multiappend;   /* the server lacks MULTIAPPEND or LITERAL+: skip batching */
};

static int load_passwords(struct imap_state *st, const char *path, char *error_r,
			  size_t error_size)
{
	char *text = secret_read_file(path, error_r, error_size);
	char *save = NULL;

	if (text == NULL)
		return -1;
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		line[strcspn(line, "\r")] = '\0';
		if (line[0] == '\0' || line[0] == '#')
			continue;
		char *colon = strchr(line, ':');
		if (colon == NULL || colon == line) {
			snprintf(error_r, error_size, "%s: expected user:password lines", path);
			explicit_bzero(text, strlen(text));
			free(text);
			return -1;
		}
		*colon = '\0';
		struct user_password *n = realloc(st->users, (st->user_count + 1) * sizeof(*n));
		if (n == NULL) {
			explicit_bzero(text, strlen(text));
			free(text);
			snprintf(error_r, error_size, "out of memory");
			return -1;
		}
		st->users = n;
		st->users[st->user_count].user = strdup(line);
		st->users[st->user_count].password = strdup(colon + 1);
		st->user_count++;
	}
	explicit_bzero(text, strlen(text));
	free(text);
	return 0;
}

static void imap_close(void *state);

static int compile(const char *text, const char *key, struct template **t, char *error_r,
		   size_t error_size)
{
	const char *error;

	if (template_compile(text, t, &error) < 0) {
		snprintf(error_r, error_size, "%s: %s", key, error);
		return -1;
	}
	return 0;
}

static int imap_open(const void *settings, const char *instance_name, void **state_r,
		     char *error_r, size_t error_size)
{
	const struct imap_settings *set = settings;
	struct imap_state *st = calloc(1, sizeof(*st));

	if (st == NULL) {
		snprintf(error_r, error_size, "out of memory");
		return -1;
	}
	pthread_mutex_init(&st->lock, NULL);
	pthread_mutex_init(&st->batch_lock, NULL);
	pthread_cond_init(&st->batch_done, NULL);
	st->set = *set;
	snprintf(st->name, sizeof(st->name), "%s", instance_name);
	if (set->url == NULL) {
		snprintf(error_r, error_size, "imap needs 'url'");
		goto fail;
	}
	if (imap_endpoint_parse(set->url, set->allow_plaintext, &st->ep, error_r, error_size) < 0)
		goto fail;
	st->ep.timeout_ms = (int)set->timeout;
	if (st->ep.security != IMAP_PLAINTEXT) {
		st->ep.ssl_ctx = imap_tls_context_new(set->ca_file, set->ca_path, error_r, error_size);
		if (st->ep.ssl_ctx == NULL)
			goto fail;
	}
	/* The loader refused any other word (CONF_ENUM). */
	st->login_kind = (enum login_kind)set->login_mode;
	st->master_kind = (enum master_kind)set->master_format;
	if (set->auth_mechanism != AUTH_PASSWORD) {
		/* OAuth2: the login name is the mailbox (its token says who may open it). */
		if (st->login_kind == LOGIN_MASTER) {
			snprintf(error_r, error_size, "auth_mechanism %s needs login_mode user (each "
				 "mailbox logs in with a token) or shared",
				 auth_mechanisms[set->auth_mechanism]);
			goto fail;
		}
		if (st->login_kind == LOGIN_SHARED && set->login == NULL) {
			snprintf(error_r, error_size, "login_mode shared needs login");
			goto fail;
		}
		char why[240];
		st->oauth2 = oauth2_source_new(&set->oauth2, instance_name, why, sizeof(why));
		if (st->oauth2 == NULL) {
			snprintf(error_r, error_size, "auth_mechanism %s: %s",
				 auth_mechanisms[set->auth_mechanism], why);
			goto fail;
		}
		if (set->login != NULL)
			st->login = strdup(set->login);
	} else if (st->login_kind == LOGIN_USER) {
		if (set->passwords_file == NULL) {
			snprintf(error_r, error_size, "login_mode user needs passwords_file");
			goto fail;
		}
		if (load_passwords(st, set->passwords_file, error_r, error_size) < 0)
			goto fail;
	} else {
		if (set->login == NULL || set->password_file == NULL) {
			snprintf(error_r, error_size, "login_mode %s needs login and password_file",
				 login_modes[set->login_mode]);
			goto fail;
		}
		char *text = secret_read_file(set->password_file, error_r, error_size);
		if (text == NULL)
			goto fail;
		text[strcspn(text, "\r\n")] = '\0';
		st->password = text;
		st->login = strdup(set->login);
	}
	if (set->dedupe_search == SEARCH_ALWAYS && !set->dedupe) {
		snprintf(error_r, error_size, "dedupe_search = \"always\" needs dedupe = true");
		goto fail;
	}
	if (compile(set->user, "user", &st->user_tmpl, error_r, error_size) < 0 ||
	    compile(set->folder, "folder", &st->folder_tmpl, error_r, error_size) < 0 ||
	    compile(set->detail_folder, "detail_folder", &st->detail_tmpl, error_r, error_size) < 0)
		goto fail;
	size_t len = 0;
	for (size_t i = 0; i < set->flags.count; i++) {
		const char *f = set->flags.items[i];
		static const char *const system_flags[] = { "\\Seen", "\\Flagged", "\\Answered",
							     "\\Draft", "\\Deleted" };
		bool ok = f[0] != '\0' && strpbrk(f, " (){}%*\"]") == NULL;
		for (const char *p = f; ok && *p; p++)
			ok = (unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f;
		if (ok && f[0] == '\\') {
			ok = false;
			for (size_t k = 0; k < 5; k++)
				ok = ok || strcasecmp(f, system_flags[k]) == 0;
		}
		if (!ok || len + strlen(f) + 2 >= sizeof(st->flags)) {
			snprintf(error_r, error_size, "flags: '%s' is not a usable flag or keyword", f);
			goto fail;
		}
		len += (size_t)snprintf(st->flags + len, sizeof(st->flags) - len, "%s%s",
					len ? " " : "", f);
	}
	*state_r = st;
	return 0;
fail:
	imap_close(st);
	return -1;
}

static void imap_close(void *state)
{
	struct imap_state *st = state;

	if (st == NULL)
		return;
	for (size_t i = 0; i < st->idle_count; i++)
		imapconn_close(&st->idle[i]);
	free(st->idle);
	if (st->ep.ssl_ctx != NULL)
		imap_tls_context_free(st->ep.ssl_ctx);
	secret_free(&st->password);
	oauth2_source_free(&st->oauth2);
	free(st->login);
	for (size_t i = 0; i < st->user_count; i++) {
		free(st->users[i].user);
		secret_free(&st->users[i].password);
	}
	free(st->users);
	template_free(&st->user_tmpl);
	template_free(&st->folder_tmpl);
	template_free(&st->detail_tmpl);
	pthread_mutex_destroy(&st->lock);
	pthread_mutex_destroy(&st->batch_lock);
	pthread_cond_destroy(&st->batch_done);
	free(st);
}

static struct imapconn *connect_as_flagged(struct imap_state *st, const char *identity,
					   int64_t deadline, struct status *status,
					   bool *token_failure_r, char *reason, size_t reason_size);

/* --- connection pool --- */

/* An idle connection of identity, checked, with deadline as its budget; NULL when none. */
static struct imapconn *pool_take(struct imap_state *st, const char *identity, int64_t deadline)
{
	struct imapconn *found = NULL, *expired_list[64];
	size_t expired_count = 0;
	time_t now = time(NULL);

	/* Under the lock only take connections out of the list; close them after it, so no other
	 * worker can see a connection that is being closed. */
	pthread_mutex_lock(&st->lock);
	for (size_t i = st->idle_count; i-- > 0;) {
		struct imapconn *c = st->idle[i];
		bool expired = st->set.idle_timeout > 0 &&
			       (now - imapconn_last_used(c)) * 1000 > st->set.idle_timeout;
		if (expired && expired_count < sizeof(expired_list) / sizeof(expired_list[0])) {
			st->idle[i] = st->idle[--st->idle_count];
			expired_list[expired_count++] = c;
			continue;
		}
		if (found == NULL && !expired && strcmp(imapconn_login_user(c), identity) == 0) {
			st->idle[i] = st->idle[--st->idle_count];
			found = c;
		}
	}
	pthread_mutex_unlock(&st->lock);
	for (size_t i = 0; i < expired_count; i++)
		imapconn_close(&expired_list[i]);
	/* A connection idle for a while may have been dropped by the server: check first, so a
	 * dead one costs a reconnect instead of an APPEND of unknown outcome. A server that said
	 * BYE (or closed) while we were idle is caught at once by a readable socket. The check
	 * spends the attempt's budget: a stalled server is not given a second timeout after it. */
	if (found != NULL)
		imapconn_set_deadline(found, deadline);
	if (found != NULL && (now - imapconn_last_used(found) >= 5 || imapconn_peer_spoke(found)) &&
	    imapconn_noop(found) < 0)
		imapconn_close(&found);
	return found;
}

static void pool_give(struct imap_state *st, struct imapconn *conn)
{
	if (conn == NULL)
		return;
	if (imapconn_broken(conn) || st->set.max_idle == 0) {
		imapconn_close(&conn);
		return;
	}
	imapconn_set_deadline(conn, 0); /* idle: the next attempt sets its own */
	pthread_mutex_lock(&st->lock);
	if (st->idle_count >= (size_t)st->set.max_idle) {
		/* Full: drop the oldest (first) to keep the most recently used. */
		struct imapconn *old = st->idle[0];
		memmove(st->idle, st->idle + 1, (st->idle_count - 1) * sizeof(*st->idle));
		st->idle[st->idle_count - 1] = conn;
		pthread_mutex_unlock(&st->lock);
		imapconn_close(&old);
		return;
	}
	struct imapconn **n = realloc(st->idle, (st->idle_count + 1) * sizeof(*n));
	if (n == NULL) {
		pthread_mutex_unlock(&st->lock);
		imapconn_close(&conn);
		return;
	}
	st->idle = n;
	st->idle[st->idle_count++] = conn;
	pthread_mutex_unlock(&st->lock);
}

static const char *user_password(const struct imap_state *st, const char *user)
{
	for (size_t i = 0; i < st->user_count; i++) {
		if (strcmp(st->users[i].user, user) == 0)
			return st->users[i].password;
	}
	return NULL;
}

/* OAuth2 login as identity: a token from the cache; when the server refuses it, a new token
 * and one more try on the same connection. A token that cannot be had is 451 4.7.0, and
 * *token_failure_r when the failure concerns every user (the circuit breaker counts it: the
 * token endpoint down, the client refused); not when the endpoint refused only this subject
 * (jwt_bearer invalid_grant: no such mailbox), or a few such recipients would take the
 * backend down for everyone. */
static int oauth2_login(struct imap_state *st, struct imapconn *conn, const char *identity,
			struct status *status, bool *token_failure_r, char *reason,
			size_t reason_size)
{
	enum imap_login_mode mode = st->set.auth_mechanism == AUTH_XOAUTH2 ? IMAP_LOGIN_XOAUTH2
									 : IMAP_LOGIN_OAUTHBEARER;
	char *token = NULL, *refused = NULL;
	int r = -1;

	for (int attempt = 0; attempt < 2; attempt++) {
		enum oauth2_failure failure;
		if (oauth2_token(st->oauth2, identity, refused, &token, &failure, status, reason,
				 reason_size) < 0) {
			*token_failure_r = failure == OAUTH2_FAILURE_SOURCE;
			break;
		}
		r = imapconn_login(conn, mode, identity, NULL, token, status, reason, reason_size);
		if (r == 0 || imapconn_broken(conn) || status->code != 451 ||
		    strcmp(status->enhanced, "4.7.0") != 0)
			break;
		/* Refused: perhaps revoked or expired early. Refresh once and retry. */
		secret_free(&refused);
		refused = token;
		token = NULL;
	}
	secret_free(&token);
	secret_free(&refused);
	return r;
}

static struct imapconn *connect_as(struct imap_state *st, const char *identity, int64_t deadline,
				   struct status *status, char *reason, size_t reason_size)
{
	return connect_as_flagged(st, identity, deadline, status, NULL, reason, reason_size);
}

static struct imapconn *connect_as_flagged(struct imap_state *st, const char *identity,
					   int64_t deadline, struct status *status,
					   bool *token_failure_r, char *reason, size_t reason_size)
{
	struct imapconn *conn = imapconn_open(&st->ep, deadline, status, reason, reason_size);
	bool token_failure = false;

	if (token_failure_r != NULL)
		*token_failure_r = false;
	if (conn == NULL)
		return NULL;
	int r;
	if (st->oauth2 != NULL) {
		r = oauth2_login(st, conn, identity, status, &token_failure, reason, reason_size);
		if (token_failure_r != NULL)
			*token_failure_r = token_failure;
		if (r < 0) {
			imapconn_close(&conn);
			return NULL;
		}
		return conn;
	}
	switch (st->login_kind) {
	case LOGIN_USER: {
		const char *password = user_password(st, identity);
		if (password == NULL) {
			/* No password for this user: our configuration, never a bounce. */
			status_must(status, 451, "4.7.0", "No IMAP credential for this user");
			snprintf(reason, reason_size, "user %s not in passwords_file", identity);
			imapconn_close(&conn);
			return NULL;
		}
		r = imapconn_login(conn, IMAP_LOGIN_USER, identity, NULL, password, status, reason,
				   reason_size);
		break;
	}
	case LOGIN_SHARED:
		r = imapconn_login(conn, IMAP_LOGIN_USER, st->login, NULL, st->password, status,
				   reason, reason_size);
		break;
	default: {
		int kind = st->master_kind != MASTER_AUTO ? (int)st->master_kind
							  : atomic_load(&st->master_resolved);
		/* "user*admin": a '*' in the user would make the login name ambiguous. */
		bool suffix_ok = strchr(identity, '*') == NULL;
		if (kind == MASTER_DOVECOT && !suffix_ok) {
			status_must(status, 550, "5.1.3", "IMAP user name not usable with a master login");
			snprintf(reason, reason_size, "user %s contains '*'", identity);
			imapconn_close(&conn);
			return NULL;
		}
		if (kind == MASTER_DOVECOT) {
			r = imapconn_login(conn, IMAP_LOGIN_MASTER_SUFFIX, identity, st->login,
					   st->password, status, reason, reason_size);
			break;
		}
		r = imapconn_login(conn, IMAP_LOGIN_PLAIN_AUTHZID, identity, st->login, st->password,
				   status, reason, reason_size);
		if (r == 0 && kind == 0)
			atomic_store(&st->master_resolved, MASTER_SASL);
		if (r < 0 && kind == 0 && suffix_ok && !imapconn_broken(conn) &&
		    strcmp(status->enhanced, "4.7.0") == 0) {
			/* SASL PLAIN with authzid refused: try Dovecot's user*master form. */
			r = imapconn_login(conn, IMAP_LOGIN_MASTER_SUFFIX, identity, st->login,
					   st->password, status, reason, reason_size);
			if (r == 0)
				atomic_store(&st->master_resolved, MASTER_DOVECOT);
		}
		break;
	}
	}
	if (r < 0) {
		/* Dovecot and Cyrus answer a master login for a user they do not know with
		 * [AUTHORIZATIONFAILED]: the admin credential was fine, the target was not. Only the
		 * admin can say whether that means "no such user" on their server. */
		if (st->login_kind == LOGIN_MASTER && st->set.unknown_user_permanent &&
		    strstr(reason, "[AUTHORIZATIONFAILED]") != NULL)
			status_must(status, 550, "5.1.1", "no such IMAP user");
		imapconn_close(&conn);
		return NULL;
	}
	return conn;
}

/* The id of one message for one mailbox: the same on every retry of the same content. */
static void dedupe_id(const struct delivery *d, const char *user, const char *folder,
		      char out[65])
{
	unsigned char md[32];
	unsigned int len = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();

	out[0] = '\0';
	if (ctx == NULL)
		return;
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	EVP_DigestUpdate(ctx, d->sha256, strlen(d->sha256));
	EVP_DigestUpdate(ctx, "\n", 1);
	EVP_DigestUpdate(ctx, user, strlen(user));
	EVP_DigestUpdate(ctx, "\n", 1);
	EVP_DigestUpdate(ctx, folder, strlen(folder));
	EVP_DigestFinal_ex(ctx, md, &len);
	EVP_MD_CTX_free(ctx);
	for (unsigned i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static unsigned text_hash(const char *text)
{
	unsigned h = 5381;
	for (const char *p = text; *p; p++)
		h = h * 33 + (unsigned char)*p;
	return h;
}

static struct uncertain *uncertain_slot(struct imap_state *st, const char *id)
{
	return &st->uncertain[text_hash(id) % (sizeof(st->uncertain) / sizeof(st->uncertain[0]))];
}

/* Remember (or forget) that an APPEND of this id may have been stored. */
static void uncertain_set(struct imap_state *st, const char *id, bool on)
{
	pthread_mutex_lock(&st->lock);
	struct uncertain *u = uncertain_slot(st, id);
	if (on) {
		snprintf(u->id, sizeof(u->id), "%s", id);
		u->until = time(NULL) + 7 * 86400;
	} else if (strcmp(u->id, id) == 0) {
		u->id[0] = '\0';
	}
	pthread_mutex_unlock(&st->lock);
}

static bool uncertain_get(struct imap_state *st, const char *id)
{
	pthread_mutex_lock(&st->lock);
	struct uncertain *u = uncertain_slot(st, id);
	bool hit = strcmp(u->id, id) == 0 && u->until > time(NULL);
	pthread_mutex_unlock(&st->lock);
	return hit;
}

/* Search the mailbox for this id before appending it? After an APPEND of unknown outcome, or
 * always (dedupe_search): another instance, with no memory shared with this one, may have
 * stored it. */
static bool must_search(struct imap_state *st, const char *id)
{
	return id[0] != '\0' && (st->set.dedupe_search == SEARCH_ALWAYS || uncertain_get(st, id));
}

/* Did the server refuse the folder rather than the message or the moment? Quota, size and
 * "try again later" answers are kept: INBOX would get the same, or the folder may work later. */
static bool folder_refused(const struct imap_append_result *res)
{
	static const char *const not_the_folder[] = { "OVERQUOTA", "LIMIT", "TOOBIG", "INUSE",
						      "UNAVAILABLE", "SERVERBUG", "EXPUNGEISSUE" };

	if (res->trycreate)
		return true;
	for (size_t i = 0; i < sizeof(not_the_folder) / sizeof(not_the_folder[0]); i++) {
		if (strcasecmp(res->code, not_the_folder[i]) == 0)
			return false;
	}
	return true;
}

/* What goes before the spooled message: trace, Delivered-To and, with dedupe, X-Lmtpgw-Id
 * (its value in id, else id is ""). */
static size_t build_prefix(struct imap_state *st, const struct delivery *d, struct target *t,
			   const char *user, const char *folder, char *prefix, size_t size,
			   char id[65])
{
	size_t prefix_len = delivery_prefix(d, t, prefix, size);
	if (prefix_len >= size)
		prefix_len = size - 1;
	id[0] = '\0';
	if (st->set.dedupe) {
		dedupe_id(d, user, folder, id);
		int n = snprintf(prefix + prefix_len, size - prefix_len, "X-Lmtpgw-Id: %s\r\n", id);
		if (n > 0 && (size_t)n < size - prefix_len)
			prefix_len += (size_t)n;
	}
	return prefix_len;
}

/*
 * The reply for an account that has no INBOX: the user does not exist. Cyrus (3.6) accepts a
 * proxy login as any authorization id, answers APPEND INBOX with [TRYCREATE], and lets that
 * user CREATE INBOX: creating it would give every typo and every dictionary attack a mailbox.
 */
static void no_such_account(const struct imap_state *st, struct status *status)
{
	if (st->set.unknown_user_permanent)
		status_must(status, 550, "5.1.1", "no such IMAP user");
	else
		status_must(status, 450, "4.1.1", "no INBOX for this IMAP user");
}

/*
 * After a [TRYCREATE]: may a folder be created here? The account's INBOX is never created,
 * and no other folder either unless the INBOX exists (one LIST, only on [TRYCREATE]). True
 * when nothing may be created, with *status set: no such user, or 451 4.3.0 when the LIST
 * failed. A shared login is one known account: its folders are created as before.
 */
static bool account_missing(const struct imap_state *st, struct imapconn *conn,
			    const char *folder, struct status *status, char *reason,
			    size_t reason_size)
{
	if (st->login_kind == LOGIN_SHARED)
		return false;
	int exists = strcasecmp(folder, "INBOX") == 0
			     ? 0
			     : imapconn_folder_exists(conn, "INBOX", reason, reason_size);
	if (exists == 1)
		return false;
	if (exists < 0) {
		if (imapconn_broken(conn))
			status_must(status, 451, "4.4.2", "Connection to IMAP server lost");
		else
			status_must(status, 451, "4.3.0", "IMAP folder does not exist");
		return true;
	}
	no_such_account(st, status);
	snprintf(reason, reason_size, "no INBOX: [TRYCREATE] for %.200s, nothing created",
		 folder);
	return true;
}

/* One APPEND of one message, with [TRYCREATE] handling and the dedupe check. */
static void deliver_single(struct imap_state *st, const struct delivery *d, struct target *t,
			   const char *user, char *folder, size_t folder_size)
{
	char reason[400], prefix[4096], id[65], refused[512] = "";
	const char *identity = st->login_kind == LOGIN_SHARED ? st->login : user;
	/* One budget for the whole attempt: pool check, connect, login, APPEND, CREATE, ... */
	int64_t deadline = imap_deadline_after((int)st->set.timeout);
	struct imapconn *conn = pool_take(st, identity, deadline);
	bool pooled = conn != NULL;
	if (conn == NULL) {
		conn = connect_as_flagged(st, identity, deadline, &t->status, &t->backend_failure,
					  reason, sizeof(reason));
		if (conn == NULL) {
			snprintf(t->ref, sizeof(t->ref), "user=%s %s", user, reason);
			return;
		}
	}
	size_t prefix_len = build_prefix(st, d, t, user, folder, prefix, sizeof(prefix), id);
	if (id[0]) {
		uint32_t uid = 0;
		const char *found_in = folder;
		int found = must_search(st, id)
				    ? imapconn_find_header(conn, folder, "X-Lmtpgw-Id", id, &uid, reason,
							   sizeof(reason))
				    : 0;
		/* The earlier attempt may have gone to INBOX by fallback_to_inbox (the folder was
		 * refused): look there too, or its copy would be stored again. */
		if (found != 1 && must_search(st, id) && st->set.fallback_to_inbox &&
		    strcasecmp(folder, "INBOX") != 0 && !imapconn_broken(conn)) {
			found_in = "INBOX";
			found = imapconn_find_header(conn, "INBOX", "X-Lmtpgw-Id", id, &uid, reason,
						     sizeof(reason));
		}
		if (found == 1) {
			/* The earlier attempt did store it: do not store it twice. */
			uncertain_set(st, id, false);
			t->duplicate = true; /* counted with the memory's (dedupe.h) */
			status_must(&t->status, 250, "2.0.0", "already stored (%s uid %u)", st->name, uid);
			snprintf(t->ref, sizeof(t->ref), "user=%s folder=%s uid=%u dedupe=found", user,
				 found_in, uid);
			pool_give(st, conn);
			return;
		}
		if (imapconn_broken(conn)) {
			status_must(&t->status, 451, "4.4.2", "Connection to IMAP server lost");
			snprintf(t->ref, sizeof(t->ref), "user=%s %s", user, reason);
			pool_give(st, conn);
			return;
		}
	}
	struct spool_view view;
	if (spool_view_prefixed(d->spool, prefix, prefix_len, &view) < 0) {
		status_from_errno(&t->status, errno, "cannot map message");
		snprintf(t->ref, sizeof(t->ref), "user=%s map failed", user);
		pool_give(st, conn);
		return;
	}
	struct imap_append_result res;
	int r = imapconn_append(conn, folder, st->flags, d->received, view.data, view.len,
				st->set.overquota_permanent, &res, &t->status, reason, sizeof(reason));
	if (r < 0 && pooled && imapconn_broken(conn) && !imapconn_literal_started(conn) &&
	    imap_deadline_after(0) < deadline) {
		/* A pooled connection found dead before any message byte went out: nothing can
		 * have been stored. Replace it and send again, once. */
		imapconn_close(&conn);
		conn = connect_as(st, identity, deadline, &t->status, reason, sizeof(reason));
		if (conn == NULL) {
			spool_view_release(&view);
			snprintf(t->ref, sizeof(t->ref), "user=%s %s", user, reason);
			return;
		}
		r = imapconn_append(conn, folder, st->flags, d->received, view.data, view.len,
				    st->set.overquota_permanent, &res, &t->status, reason,
				    sizeof(reason));
	}
	if (r < 0 && res.trycreate && !imapconn_broken(conn) &&
	    account_missing(st, conn, folder, &t->status, reason, sizeof(reason))) {
		/* Nothing is created for an account that has no INBOX (see account_missing). */
	} else if (r < 0 && res.trycreate && !imapconn_broken(conn)) {
		char create_reason[300] = "";
		/* Never CREATE INBOX, in any login mode: a missing INBOX is an account problem. */
		int created = st->set.create_folders && strcasecmp(folder, "INBOX") != 0
				      ? imapconn_create(conn, folder, st->set.subscribe, create_reason,
							sizeof(create_reason))
				      : -1;
		if (created < 0)
			snprintf(reason, sizeof(reason), "%s", create_reason);
		if (created < 0 && imapconn_broken(conn)) {
			status_must(&t->status, 451, "4.4.2", "Connection to IMAP server lost");
		} else if (created == 0) {
			r = imapconn_append(conn, folder, st->flags, d->received, view.data, view.len,
					    st->set.overquota_permanent, &res, &t->status, reason,
					    sizeof(reason));
		} else if (st->set.fallback_to_inbox && !imapconn_broken(conn) &&
			   strcasecmp(folder, "INBOX") != 0) {
			snprintf(folder, folder_size, "INBOX");
			r = imapconn_append(conn, folder, st->flags, d->received, view.data, view.len,
					    st->set.overquota_permanent, &res, &t->status, reason,
					    sizeof(reason));
			if (r < 0 && res.trycreate && !imapconn_broken(conn))
				account_missing(st, conn, folder, &t->status, reason,
						sizeof(reason));
		}
	} else if (r < 0 && !imapconn_broken(conn) && st->login_kind != LOGIN_SHARED &&
		   t->status.code == 451 && strcmp(t->status.enhanced, "4.3.0") == 0 &&
		   strcasecmp(folder, "INBOX") != 0) {
		/* A refusal without a code for another folder than INBOX: Cyrus answers "NO
		 * Mailbox does not exist" (no [TRYCREATE]) for a folder of a user it does not
		 * know. With no INBOX the answer is "no such user"; otherwise it stands. */
		char list_reason[200];
		if (imapconn_folder_exists(conn, "INBOX", list_reason, sizeof(list_reason)) == 0) {
			no_such_account(st, &t->status);
			size_t used = strlen(reason);
			snprintf(reason + used, sizeof(reason) - used, "; no INBOX");
		}
	}
	if (r < 0 && st->set.fallback_to_inbox && !imapconn_broken(conn) &&
	    strcasecmp(folder, "INBOX") != 0 && folder_refused(&res) &&
	    t->status.code == 451 && (strcmp(t->status.enhanced, "4.3.0") == 0 ||
				      strcmp(t->status.enhanced, "4.7.1") == 0)) {
		/* The server will not take mail into this folder, whatever it said ([CANNOT] for a
		 * name it refuses, [TRYCREATE] again after CREATE, no code at all, ...). A folder
		 * answer that will not change by itself must not defer the message for ever. Only
		 * a folder verdict (451 4.3.0, 4.7.1 for NOPERM) is replaced: a verdict about the
		 * account or the message set above (no such user, over quota) stands. */
		snprintf(refused, sizeof(refused), "%s", folder);
		snprintf(folder, folder_size, "INBOX");
		r = imapconn_append(conn, folder, st->flags, d->received, view.data, view.len,
				    st->set.overquota_permanent, &res, &t->status, reason,
				    sizeof(reason));
	}
	spool_view_release(&view);
	if (id[0]) {
		/* A lost connection mid-APPEND leaves the outcome unknown: check next time. */
		uncertain_set(st, id, r < 0 && imapconn_broken(conn));
	}
	if (r < 0) {
		snprintf(t->ref, sizeof(t->ref), "user=%s %s", user, reason);
	} else {
		status_must(&t->status, 250, "2.0.0", "stored (%s uid %u/%u)",
			    st->name, res.uidvalidity, res.uid);
		snprintf(t->ref, sizeof(t->ref), "user=%s folder=%s uid=%u/%u%s%s", user, folder,
			 res.uidvalidity, res.uid, refused[0] ? " refused_folder=" : "", refused);
	}
	pool_give(st, conn);
}

/*
 * Group commit for APPEND. Dovecot (and other servers) lock and sync a mailbox once per APPEND
 * command, so concurrent appends into one folder run one after another whatever the number of
 * connections; one MULTIAPPEND (RFC 3502) of several messages costs about what one APPEND does
 * (docs/performance.md: 1 KB messages into one Dovecot mailbox, 0.45x Dovecot LMTP one at a
 * time, 1.7-3x in batches of 8-16). So deliveries to the same account and folder queue up:
 * the first one leads, appends whatever has queued meanwhile (up to `multiappend`) in one
 * command, hands every waiter its result, and the next leader takes what queued during that
 * command. Nobody waits for a batch to fill: with one delivery at a time nothing changes.
 * A MULTIAPPEND is all or none: when the server refuses it (a full mailbox, a missing folder,
 * one message too big), every message of the batch goes again alone, through the ordinary
 * path, and gets its own answer. A connection lost mid-command leaves every message of the
 * batch in doubt: 451 4.4.2 for each (and, with dedupe, a search before the next attempt).
 */
/* A message this big goes alone: its bytes cost the server far more than the command does, and
 * in a batch it would hold back the others behind one server process; alone, concurrent big
 * messages go up on parallel connections. A batch stops growing past BATCH_BYTES_MAX. */
#define BATCH_MESSAGE_MAX (1024 * 1024)
#define BATCH_BYTES_MAX (4 * 1024 * 1024)

struct append_waiter {
	struct append_waiter *next;
	struct imap_append_item item;
	struct target *t;
	const char *user;             /* for the log (a shared login has many users) */
	const char *id;               /* dedupe id, or "" */
	int64_t deadline;             /* this delivery's budget, from when it queued */
	bool done;                    /* result in t (or fallback set): the waiter may go */
	bool fallback;                /* deliver alone through deliver_single() */
};

struct append_queue {
	struct append_queue *next;
	char identity[256];
	char folder[512];
	struct append_waiter *head, **tail;
	size_t pending;
	unsigned leaders;             /* batches of this queue being appended now */
	unsigned members;             /* waiters inside append_batched() for this queue */
	bool last_lost;               /* the last batch lost its connection (or none was had) */
};

/* Append one batch within deadline; true when the server was lost (or not reached). */
static bool run_batch(struct imap_state *st, const char *identity, const char *folder,
		      struct append_waiter *batch, size_t count, int64_t deadline)
{
	char reason[400];
	struct status failure;

	/* A batch of one is appended here too (an APPEND with LITERAL+): leading it holds the
	 * queue, so the deliveries arriving meanwhile form the next batch. */
	struct imapconn *conn = pool_take(st, identity, deadline);
	bool pooled = conn != NULL;
	bool token_failure = false;
	if (conn == NULL)
		conn = connect_as_flagged(st, identity, deadline, &failure, &token_failure, reason,
					  sizeof(reason));
	if (conn == NULL) {
		/* Server down or login refused: the same answer for every waiter, as each would
		 * have got alone (without each waiting out its own connect timeout after ours). */
		for (struct append_waiter *w = batch; w != NULL; w = w->next) {
			w->t->status = failure;
			w->t->backend_failure = token_failure;
			w->t->same_failure = w != batch; /* one refused connection */
			snprintf(w->t->ref, sizeof(w->t->ref), "user=%s %s", w->user, reason);
		}
		/* lost: unreachable, timed out, cut (4.4.x); a refused login is an answer */
		return strncmp(failure.enhanced, "4.4.", 4) == 0;
	}
	bool can = imapconn_can_multiappend(conn, folder);
	struct imap_append_item *items = can ? calloc(count, sizeof(*items)) : NULL;
	if (items == NULL) {
		/* No MULTIAPPEND here (or no memory for it): each goes alone. */
		if (!can && !imapconn_can_multiappend(conn, "INBOX"))
			atomic_store(&st->no_multiappend, true); /* the server, not this folder */
		pool_give(st, conn);
		for (struct append_waiter *w = batch; w != NULL; w = w->next)
			w->fallback = true;
		return false;
	}
	size_t i = 0;
	for (struct append_waiter *w = batch; w != NULL; w = w->next)
		items[i++] = w->item;
	struct imap_append_result res;
	int r = imapconn_multiappend(conn, folder, st->flags, items, count,
				     st->set.overquota_permanent, &res, &failure, reason,
				     sizeof(reason));
	if (r < 0 && pooled && !res.refused && imapconn_broken(conn) &&
	    !imapconn_literal_started(conn) && imap_deadline_after(0) < deadline) {
		/* A pooled connection found dead before any message byte went out: nothing can
		 * have been stored. Replace it and send again, once (on failure to reconnect,
		 * every waiter gets that failure). */
		imapconn_close(&conn);
		conn = connect_as(st, identity, deadline, &failure, reason, sizeof(reason));
		if (conn != NULL && !imapconn_can_multiappend(conn, folder)) {
			/* The new connection may be to another server (a restart with other
			 * settings, a balancer): its own capabilities decide. Without LITERAL+ or
			 * MULTIAPPEND each message goes alone, with synchronizing literals. */
			pool_give(st, conn);
			free(items);
			for (struct append_waiter *w = batch; w != NULL; w = w->next)
				w->fallback = true;
			return false;
		}
		if (conn != NULL)
			r = imapconn_multiappend(conn, folder, st->flags, items, count,
						 st->set.overquota_permanent, &res, &failure,
						 reason, sizeof(reason));
	}
	bool lost = r < 0 && !res.refused && (conn == NULL || imapconn_broken(conn));
	bool doubt = lost && conn != NULL; /* no new connection: nothing of the retry was sent */
	i = 0;
	for (struct append_waiter *w = batch; w != NULL; w = w->next, i++) {
		struct target *t = w->t;
		if (r == 0) {
			status_must(&t->status, 250, "2.0.0", "stored (%s uid %u/%u)", st->name,
				    res.uidvalidity, items[i].uid);
			snprintf(t->ref, sizeof(t->ref), "user=%s folder=%s uid=%u/%u batch=%zu",
				 w->user, folder, res.uidvalidity, items[i].uid, count);
		} else if (lost) {
			t->status = failure;
			t->same_failure = i > 0; /* one lost connection, one failure for the breaker */
			snprintf(t->ref, sizeof(t->ref), "user=%s %s", w->user, reason);
		} else {
			w->fallback = true;
		}
		if (w->id[0] && !w->fallback)
			uncertain_set(st, w->id, doubt);
	}
	free(items);
	pool_give(st, conn);
	return lost;
}

/* Queue one mapped message for the account's folder; returns when it has a result (true) or
 * must be delivered alone (false). */
static bool append_batched(struct imap_state *st, const char *identity, const char *user,
			   const char *folder, const struct spool_view *view, time_t received,
			   struct target *t, const char *id)
{
	struct append_waiter me = {
		.item = { .data = view->data, .len = view->len, .internaldate = received },
		.t = t,
		.user = user,
		.id = id,
		.deadline = imap_deadline_after((int)st->set.timeout),
	};
	size_t max = (size_t)st->set.multiappend;
	struct append_queue *q;

	pthread_mutex_lock(&st->batch_lock);
	for (q = st->queues; q != NULL; q = q->next) {
		if (strcmp(q->identity, identity) == 0 && strcmp(q->folder, folder) == 0)
			break;
	}
	if (q == NULL) {
		q = calloc(1, sizeof(*q));
		if (q == NULL) {
			pthread_mutex_unlock(&st->batch_lock);
			return false;
		}
		snprintf(q->identity, sizeof(q->identity), "%s", identity);
		snprintf(q->folder, sizeof(q->folder), "%s", folder);
		q->tail = &q->head;
		q->next = st->queues;
		st->queues = q;
	}
	q->members++;
	*q->tail = &me;
	q->tail = &me.next;
	q->pending++;
	while (!me.done) {
		if (q->pending == 0 || (q->leaders > 0 && q->pending < max)) {
			/* Someone is appending (maybe us among them): wait for the result, or for
			 * our turn to lead what queued behind. */
			pthread_cond_wait(&st->batch_done, &st->batch_lock);
			continue;
		}
		/* Lead: take up to max waiters (and about BATCH_BYTES_MAX) from the head. */
		struct append_waiter *batch = q->head, *last = q->head;
		size_t count = 1, bytes = last->item.len;
		while (count < max && last->next != NULL &&
		       bytes + last->next->item.len <= BATCH_BYTES_MAX) {
			last = last->next;
			bytes += last->item.len;
			count++;
		}
		q->head = last->next;
		if (q->head == NULL)
			q->tail = &q->head;
		last->next = NULL;
		q->pending -= count;
		q->leaders++;
		/* One budget for the batch. After a batch that lost the server (a stall, say), the
		 * time its members already waited in the queue counts: each gets its answer about
		 * one timeout after it arrived, not one more timeout per batch ahead of it. After a
		 * good batch the server is working: a fresh budget, however long the wait was. */
		int64_t deadline = imap_deadline_after((int)st->set.timeout);
		for (struct append_waiter *w = batch; q->last_lost && w != NULL; w = w->next) {
			if (w->deadline < deadline)
				deadline = w->deadline;
		}
		pthread_mutex_unlock(&st->batch_lock);

		bool lost = run_batch(st, identity, folder, batch, count, deadline);

		pthread_mutex_lock(&st->batch_lock);
		q->last_lost = lost;
		q->leaders--;
		for (struct append_waiter *w = batch, *next; w != NULL; w = next) {
			next = w->next; /* w may leave as soon as it is done and we unlock */
			w->done = true;
		}
		pthread_cond_broadcast(&st->batch_done);
	}
	if (--q->members == 0) {
		struct append_queue **pp = &st->queues;
		while (*pp != q)
			pp = &(*pp)->next;
		*pp = q->next;
		free(q);
	}
	pthread_mutex_unlock(&st->batch_lock);
	return !me.fallback;
}

/*
 * Can a +detail name a folder? Not when it holds IMAP list wildcards ("*", "%": a folder named
 * so cannot be listed or selected reliably), control characters, bytes that are not UTF-8, or
 * an empty hierarchy level: a leading, trailing or doubled "." or "/" (the two hierarchy
 * separators servers use; a single one between names makes a subfolder, "lists.linux").
 * Everything else goes to the server, in modified UTF-7.
 */
static bool detail_usable(const char *detail)
{
	char encoded[512];
	bool level_empty = true; /* at the start, and just after a separator */

	for (const unsigned char *p = (const unsigned char *)detail; *p != '\0'; p++) {
		if (*p < 0x20 || *p == 0x7f || *p == '*' || *p == '%')
			return false;
		bool separator = *p == '.' || *p == '/';
		if (separator && level_empty)
			return false;
		level_empty = separator;
	}
	return !level_empty && imap_mutf7_encode(detail, encoded, sizeof(encoded)) == 0;
}

/* A recipient's folder as sent to the server (modified UTF-7, RFC 3501 5.1.3) into folder:
 * detail_folder or folder expanded, or INBOX when the +detail cannot name a folder
 * (*detail_refused_r; without fallback_to_inbox the caller refuses the recipient). -1 with
 * *error_r when a template fails or the name is empty or too long. */
static int folder_of(const struct imap_state *st, const struct recipient *rcpt,
		     const struct template_vars *vars, char *folder, size_t size,
		     bool *detail_refused_r, const char **error_r)
{
	char name[512];
	bool use_detail = st->set.folder_from_detail && rcpt->detail[0] != '\0';

	*detail_refused_r = use_detail && template_uses(st->detail_tmpl, "detail") &&
			    !detail_usable(rcpt->detail);
	if (*detail_refused_r)
		snprintf(name, sizeof(name), "INBOX");
	else if (template_expand(use_detail ? st->detail_tmpl : st->folder_tmpl, vars,
				 TEMPLATE_RAW, name, sizeof(name), error_r) < 0)
		return -1;
	if (name[0] == '\0') {
		*error_r = "empty folder name";
		return -1;
	}
	if (imap_mutf7_encode(name, folder, size) < 0) {
		*error_r = "folder name too long in modified UTF-7";
		return -1;
	}
	return 0;
}

static void deliver_one(struct imap_state *st, const struct delivery *d, struct target *t)
{
	char user[256], folder[512], prefix[4096], id[65];
	const char *error;
	bool detail_refused;
	int resolved = folder_of(st, t->rcpt, &t->vars, folder, sizeof(folder), &detail_refused,
				 &error);

	if (detail_refused && !st->set.fallback_to_inbox) {
		/* This address can never name a folder: a bounce, not retries for days. */
		status_must(&t->status, 550, "5.1.1", "+detail not usable as an IMAP folder name");
		snprintf(t->ref, sizeof(t->ref), "detail refused");
		return;
	}
	if (resolved < 0 ||
	    template_expand(st->user_tmpl, &t->vars, TEMPLATE_RAW, user, sizeof(user), &error) < 0 ||
	    user[0] == '\0') {
		status_must(&t->status, 451, "4.3.0", "cannot resolve IMAP user or folder");
		snprintf(t->ref, sizeof(t->ref), "template");
		return;
	}
	if (st->set.multiappend > 1 && !atomic_load(&st->no_multiappend)) {
		const char *identity = st->login_kind == LOGIN_SHARED ? st->login : user;
		size_t prefix_len = build_prefix(st, d, t, user, folder, prefix, sizeof(prefix), id);
		struct spool_view view;
		/* An APPEND of unknown outcome is searched for first: that one goes alone. */
		if (!must_search(st, id) &&
		    prefix_len + spool_size(d->spool) <= BATCH_MESSAGE_MAX &&
		    spool_view_prefixed(d->spool, prefix, prefix_len, &view) == 0) {
			bool done = append_batched(st, identity, user, folder, &view, d->received, t,
						   id);
			spool_view_release(&view);
			if (done)
				return;
		}
	}
	deliver_single(st, d, t, user, folder, sizeof(folder));
}

static void imap_deliver(void *state, const struct delivery *delivery, struct target *targets,
			 size_t count)
{
	for (size_t i = 0; i < count; i++)
		deliver_one(state, delivery, &targets[i]);
}

/* The account and folder a target's copy goes to (as resolved before delivery: a fallback to
 * INBOX keys by the folder meant): with the recipient and the content, what the memory of
 * stored copies is keyed by (dedupe.h). */
static int imap_dedupe_key(void *state, const struct target *t, char *key, size_t size)
{
	struct imap_state *st = state;
	char user[256], folder[512];
	const char *error;
	bool detail_refused;

	if (folder_of(st, t->rcpt, &t->vars, folder, sizeof(folder), &detail_refused, &error) < 0 ||
	    template_expand(st->user_tmpl, &t->vars, TEMPLATE_RAW, user, sizeof(user), &error) < 0)
		return -1;
	int n = snprintf(key, size, "imap %s:%s\n%s\n%s", st->ep.host, st->ep.port, user, folder);
	return n > 0 && (size_t)n < size ? 0 : -1;
}

static bool imap_uses_sha256(void *state)
{
	struct imap_state *st = state;
	return st->set.dedupe || template_uses(st->user_tmpl, "sha256") ||
	       template_uses(st->folder_tmpl, "sha256") || template_uses(st->detail_tmpl, "sha256");
}

static void imap_explain(void *state, const struct recipient *rcpt,
			 const struct template_vars *vars, char *buf, size_t size)
{
	struct imap_state *st = state;
	char user[256], folder[512];
	const char *error = "";
	bool detail_refused;

	if (template_expand(st->user_tmpl, vars, TEMPLATE_RAW, user, sizeof(user), &error) < 0 ||
	    folder_of(st, rcpt, vars, folder, sizeof(folder), &detail_refused, &error) < 0) {
		snprintf(buf, size, "template: %s", error);
		return;
	}
	if (detail_refused && !st->set.fallback_to_inbox) {
		snprintf(buf, size, "imap: 550 5.1.1, +detail not usable as an IMAP folder name");
		return;
	}
	if (st->oauth2 != NULL) {
		char identity[400];
		const char *login = st->login_kind == LOGIN_SHARED ? st->login : user;
		oauth2_describe(st->oauth2, login, identity, sizeof(identity));
		snprintf(buf, size, "imap %s:%s user=%s folder=%s%s login=%s auth=%s token=\"%s\"",
			 st->ep.host, st->ep.port, login, folder,
			 detail_refused ? " (+detail not usable as a folder name)" : "",
			 st->login_kind == LOGIN_USER ? "own token" : "shared account",
			 auth_mechanisms[st->set.auth_mechanism], identity);
		return;
	}
	snprintf(buf, size, "imap %s:%s user=%s folder=%s%s login=%s", st->ep.host, st->ep.port,
		 st->login_kind == LOGIN_SHARED ? st->login : user, folder,
		 detail_refused ? " (+detail not usable as a folder name)" : "",
		 st->login_kind == LOGIN_MASTER ? "master" :
		 st->login_kind == LOGIN_USER ? "own password" : "shared account");
}

/* Connect and verify TLS; log in where the mode has a credential of its own (shared). A
 * master credential is checked by the first delivery: Dovecot does not let a master user log
 * in as itself. */
static int imap_probe(void *state, char *result, size_t size)
{
	struct imap_state *st = state;
	struct status status;
	char reason[400] = "";
	struct imapconn *conn = imapconn_open(&st->ep, imap_deadline_after((int)st->set.timeout),
					      &status, reason, sizeof(reason));

	if (conn == NULL) {
		snprintf(result, size, "%d %s: %s", status.code, status.enhanced, reason);
		return -1;
	}
	if (st->oauth2 != NULL) {
		/* A token for the shared account, or for `login` as a sample mailbox; without one,
		 * a token is obtained but no login tried (no mailbox to try it on). */
		bool token_failure = false;
		int r;
		if (st->login != NULL) {
			r = oauth2_login(st, conn, st->login, &status, &token_failure, reason,
					 sizeof(reason));
		} else {
			char *token = NULL;
			r = oauth2_token(st->oauth2, NULL, NULL, &token, NULL, &status, reason,
					 sizeof(reason));
			token_failure = r < 0; /* no login named: say it was the token */
			secret_free(&token);
		}
		if (r < 0) {
			imapconn_close(&conn);
			snprintf(result, size, "connected, %s %s failed: %s",
				 token_failure ? "OAuth2 token" : "login as",
				 token_failure ? "request" : st->login, reason);
			return -1;
		}
		snprintf(result, size, "%s:%s reachable, %s, OAuth2 token obtained%s%s",
			 st->ep.host, st->ep.port,
			 st->ep.security == IMAP_PLAINTEXT ? "plain text (loopback)" : "TLS verified",
			 st->login != NULL ? ", login ok as " : "", st->login != NULL ? st->login : "");
		imapconn_close(&conn);
		return 0;
	}
	if (st->login_kind == LOGIN_SHARED &&
	    imapconn_login(conn, IMAP_LOGIN_USER, st->login, NULL, st->password, &status, reason,
			   sizeof(reason)) < 0) {
		imapconn_close(&conn);
		snprintf(result, size, "connected, login as %s failed: %s", st->login, reason);
		return -1;
	}
	snprintf(result, size, "%s:%s reachable, %s%s", st->ep.host, st->ep.port,
		 st->ep.security == IMAP_PLAINTEXT ? "plain text (loopback)" : "TLS verified",
		 st->login_kind == LOGIN_SHARED ? ", login ok" : "");
	imapconn_close(&conn);
	return 0;
}

static struct verified *verified_slot(struct imap_state *st, const char *user)
{
	return &st->verified[text_hash(user) % (sizeof(st->verified) / sizeof(st->verified[0]))];
}

/* RCPT time (in a worker): log in as the recipient's user. Only a definitive refusal (550 from
 * the login mapping) refuses the recipient; anything temporary accepts it and leaves the
 * verdict to the delivery. A successful connection goes to the pool for that delivery. */
static int imap_verify(void *state, const struct recipient *rcpt,
		       const struct verify_context *ctx, struct status *st_r)
{
	struct imap_state *st = state;
	struct delivery d = { .sender = "" };
	struct template_vars vars;
	char user[256], reason[400];
	const char *error;
	time_t now = time(NULL);

	(void)ctx; /* an account exists or not whoever sends */
	if (!st->set.verify_recipients || st->login_kind == LOGIN_SHARED)
		return 0;
	delivery_vars(&d, rcpt, &vars);
	if (template_expand(st->user_tmpl, &vars, TEMPLATE_RAW, user, sizeof(user), &error) < 0 ||
	    user[0] == '\0' || strlen(user) >= sizeof(st->verified[0].user))
		return 0;
	pthread_mutex_lock(&st->lock);
	struct verified *v = verified_slot(st, user);
	bool cached = strcmp(v->user, user) == 0 && v->expires > now;
	bool exists = v->exists;
	pthread_mutex_unlock(&st->lock);
	if (cached) {
		if (exists)
			return 0;
		status_must(st_r, 550, "5.1.1", "no such IMAP user");
		return -1;
	}
	int64_t deadline = imap_deadline_after((int)st->set.timeout);
	struct imapconn *conn = pool_take(st, user, deadline);
	struct status status;
	if (conn == NULL)
		conn = connect_as(st, user, deadline, &status, reason, sizeof(reason));
	exists = conn != NULL;
	if (conn != NULL) {
		/* A login is not enough: Cyrus lets a proxy login act as any user, existing or
		 * not. The account exists when its INBOX does. */
		int inbox = imapconn_folder_exists(conn, "INBOX", reason, sizeof(reason));
		pool_give(st, conn);
		if (inbox < 0)
			return 0; /* not known either way */
		if (inbox == 0) {
			no_such_account(st, &status);
			exists = false;
		}
	}
	if (!exists && status_class_of(&status) != STATUS_PERMFAIL)
		return 0; /* not known either way: accept, the delivery decides */
	pthread_mutex_lock(&st->lock);
	v = verified_slot(st, user);
	snprintf(v->user, sizeof(v->user), "%s", user);
	v->exists = exists;
	v->expires = now + (time_t)(st->set.verify_cache / 1000);
	pthread_mutex_unlock(&st->lock);
	if (exists)
		return 0;
	*st_r = status; /* bare: the session names the recipient (reply.h) */
	return -1;
}

const struct backend_driver backend_imap = {
	.name = "imap",
	.keys = imap_keys,
	.settings_size = sizeof(struct imap_settings),
	.open = imap_open,
	.deliver = imap_deliver,
	.close = imap_close,
	.verify = imap_verify,
	.verify_blocking = true,
	.uses_sha256 = imap_uses_sha256,
	.probe = imap_probe,
	.explain = imap_explain,
	.dedupe_key = imap_dedupe_key,
	/* Deliveries queued behind a folder's MULTIAPPEND wait in their worker without a
	 * connection: more workers make bigger batches across more mailboxes (W2 of
	 * docs/performance.md: 0.63x Dovecot LMTP with 8, 0.91x with 32). */
	.default_concurrency = 32,
};
