/*
 * oauth2 - OAuth2 access tokens for a backend: where they come from (a grant), and a cache of
 * them per identity shared by the backend's workers.
 *
 * Token sources (oauth2_grant):
 *   token_file          a file another program keeps current (first line: the token); re-read
 *                       when it changes (inode, size or modification time)
 *   client_credentials  RFC 6749 4.4 (Microsoft 365 app-only access): one token for every
 *                       mailbox. The client authenticates with a secret, or with a
 *                       certificate: an RS256 client assertion (RFC 7523 2.2, RFC 7521 4.2;
 *                       Microsoft's "certificate credentials") signed with its private key,
 *                       header x5t = the certificate's SHA-1 thumbprint (refresh_token too)
 *   refresh_token       RFC 6749 6: one account's refresh token, from a file
 *   jwt_bearer          RFC 7523 with a Google service account key (JSON): an RS256 assertion
 *                       signed here (OpenSSL) whose `sub` is the mailbox user (domain-wide
 *                       delegation): one token per mailbox
 * Token endpoint requests go over libcurl (http.h) with TLS verified (oauth2_ca_file or the
 * system store). Secrets (client secret, refresh token, private key) come from mode-600 files
 * (secret.h), tokens are handed out as copies the caller wipes; none of them is ever logged or
 * put into a status or reason.
 *
 * The cache: one entry per identity (the subject for jwt_bearer, one shared entry otherwise,
 * at most oauth2_max_identities: then expired, then least recently used entries are dropped),
 * refreshed before it expires (oauth2_refresh_margin, at most a quarter of the lifetime). One
 * request is in flight per identity: while it runs, a still-valid token is handed out; with
 * none, other workers wait for it (mutex + condition variable) and share its result, token or
 * failure, so 32 workers make one request. A failed refresh keeps the valid token until it
 * expires and is retried after a short back-off. Times are on CLOCK_MONOTONIC. A caller whose
 * login was refused passes the refused token back: it is not handed out again; the first such
 * caller obtains a new one, the others wait for it.
 *
 * A failure to obtain a token (endpoint unreachable, refusing, answering nonsense) is 451 4.7.0
 * (ours to fix, never a bounce); oauth2_token says whether it concerns every identity (callers
 * mark that for the circuit breaker) or only the subject (jwt_bearer invalid_grant).
 * Thread-safe. Metric: lmtpgw_oauth2_token_requests_total{backend,result}.
 */
#ifndef LMTPGW_OAUTH2_H
#define LMTPGW_OAUTH2_H

#include <stddef.h>

#include "conftable.h"
#include "status.h"

enum oauth2_grant {
	OAUTH2_GRANT_NONE,
	OAUTH2_GRANT_CLIENT_CREDENTIALS,
	OAUTH2_GRANT_REFRESH_TOKEN,
	OAUTH2_GRANT_JWT_BEARER,
	OAUTH2_GRANT_TOKEN_FILE,
};
extern const char *const oauth2_grant_words[];

/* The oauth2_* keys a backend block takes (OAUTH2_CONF_KEYS puts them into its table). */
struct oauth2_settings {
	int grant;                     /* enum oauth2_grant */
	char *token_url;
	char *client_id;
	char *client_secret_file;
	char *client_certificate_file;
	char *client_key_file;
	char *scope;
	char *refresh_token_file;
	char *token_file;
	char *key_file;
	long long max_identities;      /* jwt_bearer: cached mailboxes at most */
	char *ca_file;
	long long timeout;
	long long refresh_margin;
};

#define OAUTH2_CONF_KEYS(type, member)                                                            \
	{ "oauth2_grant", CONF_ENUM, offsetof(type, member.grant), "none", 0, 0,                  \
	  "OAuth2 token source: none, client_credentials, refresh_token, jwt_bearer or "          \
	  "token_file", oauth2_grant_words },                                                      \
	{ "oauth2_token_url", CONF_STRING, offsetof(type, member.token_url), NULL, 1, 0,          \
	  "token endpoint (https://); jwt_bearer: default token_uri of the key file", NULL },     \
	{ "oauth2_client_id", CONF_STRING, offsetof(type, member.client_id), NULL, 1, 0,          \
	  "client (application) id at the authorization server", NULL },                         \
	{ "oauth2_client_secret_file", CONF_STRING, offsetof(type, member.client_secret_file),    \
	  NULL, 1, 0, "file holding the client secret (first line); not readable by others",      \
	  NULL },                                                                                  \
	{ "oauth2_client_certificate_file", CONF_STRING,                                          \
	  offsetof(type, member.client_certificate_file), NULL, 1, 0,                              \
	  "client_credentials, refresh_token: PEM certificate registered with the application; "  \
	  "authenticate with a signed client assertion instead of a client secret", NULL },       \
	{ "oauth2_client_key_file", CONF_STRING, offsetof(type, member.client_key_file), NULL, 1,  \
	  0, "PEM RSA private key of oauth2_client_certificate_file; not readable by others",     \
	  NULL },                                                                                  \
	{ "oauth2_scope", CONF_STRING, offsetof(type, member.scope), NULL, 1, 0,                  \
	  "scope requested (space-separated)", NULL },                                            \
	{ "oauth2_refresh_token_file", CONF_STRING, offsetof(type, member.refresh_token_file),    \
	  NULL, 1, 0, "refresh_token: file holding the refresh token; not readable by others",    \
	  NULL },                                                                                  \
	{ "oauth2_token_file", CONF_STRING, offsetof(type, member.token_file), NULL, 1, 0,        \
	  "token_file: file whose first line is the access token, kept current by another "       \
	  "program; not readable by others", NULL },                                               \
	{ "oauth2_key_file", CONF_STRING, offsetof(type, member.key_file), NULL, 1, 0,            \
	  "jwt_bearer: service account key (JSON: client_email, private_key, ...); not readable " \
	  "by others", NULL },                                                                     \
	{ "oauth2_max_identities", CONF_INT, offsetof(type, member.max_identities), "10000", 1,   \
	  1000000, "jwt_bearer: mailboxes whose tokens are cached at most (then the expired, "    \
	  "then the least recently used are dropped)", NULL },                                     \
	{ "oauth2_ca_file", CONF_STRING, offsetof(type, member.ca_file), NULL, 1, 0,              \
	  "PEM CA certificates to verify the token endpoint (default: the system store)", NULL }, \
	{ "oauth2_timeout", CONF_DURATION, offsetof(type, member.timeout), "10s", 100, 120000,    \
	  "time limit of one token endpoint request", NULL },                                      \
	{ "oauth2_refresh_margin", CONF_DURATION, offsetof(type, member.refresh_margin), "300s",  \
	  0, 86400000, "refresh a token this long before it expires (at most a quarter of its "   \
	  "lifetime)", NULL }

struct oauth2_source;

/* Check the settings, read the secret files, build the HTTP client (no network I/O). NULL
 * with error_r when grant is none or the settings do not fit together. backend names the
 * metric's row. */
struct oauth2_source *oauth2_source_new(const struct oauth2_settings *set, const char *backend,
					char *error_r, size_t error_size);
void oauth2_source_free(struct oauth2_source **src);

/* For optional use (the webhook): *src_r NULL when grant is none, else as oauth2_source_new.
 * 0, or -1 with error_r (prefixed "oauth2: "). */
int oauth2_source_open(const struct oauth2_settings *set, const char *backend,
		       struct oauth2_source **src_r, char *error_r, size_t error_size);

struct curl_slist;
/* Append "Authorization: Bearer TOKEN" to *headers with a token from src (nothing when src is
 * NULL). refused: a token the receiver just refused (401), or NULL: it is not handed out
 * again (oauth2_token). used_r (may be NULL): a copy of the token sent (free with
 * secret_free), to pass back as refused when the receiver answers 401. 0, or -1 with *st_r
 * (451 4.7.0) and reason. */
int oauth2_add_bearer(struct oauth2_source *src, const char *refused,
		      struct curl_slist **headers, char **used_r, struct status *st_r,
		      char *reason, size_t reason_size);

/* Does the token depend on the subject (jwt_bearer)? Otherwise one token serves everyone. */
int oauth2_per_subject(const struct oauth2_source *src);

/* Which identity a subject's token is for, for `route` and the log: e.g. "client_credentials
 * client=ID scope=S" or "jwt_bearer iss=EMAIL sub=SUBJECT". No secret. */
void oauth2_describe(const struct oauth2_source *src, const char *subject, char *buf,
		     size_t size);

/* Whom a failure to obtain a token concerns (the circuit breaker counts only the first). */
enum oauth2_failure {
	OAUTH2_FAILURE_NONE,
	/* every identity: endpoint unreachable, 5xx or 429, nonsense answer, a client-level
	 * refusal (invalid_client, unauthorized_client, ...), the token file unreadable */
	OAUTH2_FAILURE_SOURCE,
	/* this subject only: jwt_bearer answered 400 invalid_grant (no such mailbox, suspended) */
	OAUTH2_FAILURE_SUBJECT,
};

/* A valid access token for subject (may be NULL unless per subject) into *token_r (free with
 * secret_free). refused: a token the server just refused, or NULL: it is not handed out again.
 * A token whose refresh failed is still handed out until it expires (the refresh is asked
 * again after a short back-off). 0, or -1 with *st_r 451 4.7.0, *failure_r (may be NULL) and
 * a reason without secrets. */
int oauth2_token(struct oauth2_source *src, const char *subject, const char *refused,
		 char **token_r, enum oauth2_failure *failure_r, struct status *st_r, char *reason,
		 size_t reason_size);

/* The lifetime in seconds of a token endpoint answer's expires_in (a JSON integer, real or
 * quoted string; NULL when absent), clamped to [1, 86400]; 3600 when absent or unusable.
 * Exposed for the unit tests. */
struct json_t;
long long oauth2_lifetime_s(const struct json_t *expires_in);

/* The SASL initial responses (unencoded; base64 is the caller's), malloc'd, wiped with
 * secret_free: XOAUTH2 "user=U^Aauth=Bearer T^A^A" and OAUTHBEARER (RFC 7628 3.1)
 * "n,a=U,^Ahost=H^Aport=P^Aauth=Bearer T^A^A" with ',' and '=' of U escaped (RFC 5801).
 * NULL when out of memory. */
char *oauth2_sasl_xoauth2(const char *user, const char *token);
char *oauth2_sasl_oauthbearer(const char *user, const char *host, const char *port,
			      const char *token);

#endif
