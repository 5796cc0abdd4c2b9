/*
 * webhook - delivery by HTTP POST to an API (a mail-to-API bridge), signed per Standard Webhooks.
 *
 * One request per message for every target of this backend in the transaction (mode
 * "message"; targets whose URL template expands differently get one request per URL), or one
 * per recipient (mode "recipient"). The dispatcher hands each request to deliver() as its own
 * pool job (webhook_request_key), so a transaction's requests run concurrently within the
 * backend's concurrency, each bounded by its own timeout. The body is the message as
 * message/rfc822, multipart/form-data, or JSON with or without the parsed MIME structure
 * (format; webhook_body.h), signed per Standard Webhooks (webhook_sign.h). Streamed bodies are
 * read twice: once for the HMAC, once by curl.
 *
 * The answer becomes each recipient's status (webhook_answer.h); 2xx only on the receiver's
 * 2xx, any doubt 4xx. Secrets (signing keys, Ed25519 private keys, bearer token, basic auth)
 * are read from files at open (refused when group or others may read them), never logged, and
 * wiped at close.
 *
 * With verify_url, each new recipient is first checked at RCPT (webhook_verify, in a worker,
 * the session holding its pipeline): a small signed JSON POST whose answer maps by the same
 * rules as a delivery's; answers that are the receiver's verdict refuse or accept, failures
 * (timeout, 5xx, no answer) accept or defer per verify_on_error. Definitive answers are
 * cached for verify_cache_ttl in a bounded table, keyed on the expanded URL, the sender and the
 * recipient together.
 */
#include "backend.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <pthread.h>
#include <sys/stat.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "base64.h"
#include "http.h"
#include "log.h"
#include "oauth2.h"
#include "secret.h"
#include "webhook_answer.h"
#include "webhook_body.h"
#include "webhook_sign.h"

/* --- the driver --------------------------------------------------------------------------- */

struct webhook_settings {
	char *url;
	bool allow_http;
	char *ca_file;
	char *client_cert_file;
	char *client_key_file;
	bool follow_redirects;
	int format;                    /* enum webhook_format */
	int mode;                      /* enum webhook_mode */
	struct conf_strlist secret_files;
	char *bearer_token_file;
	char *basic_auth_file;
	struct conf_strlist headers;
	long long timeout;
	long long connect_timeout;
	long long max_response;
	long long attachment_max;
	struct conf_strlist ed25519_key_files;
	char *verify_url;
	long long verify_timeout;
	long long verify_cache_ttl;
	int verify_on_error;           /* enum webhook_verify_on_error */
	struct oauth2_settings oauth2; /* optional OAuth2 bearer token (client credentials, ...) */
};

/* What a verification that got no verdict (timeout, 5xx, no answer) does with the recipient. */
enum webhook_verify_on_error { WEBHOOK_VERIFY_ACCEPT, WEBHOOK_VERIFY_DEFER };
static const char *const webhook_verify_on_error_words[] = { "accept", "defer", NULL };

/* One request for all of a transaction's targets with the same URL, or one per recipient. */
enum webhook_mode { WEBHOOK_MODE_MESSAGE, WEBHOOK_MODE_RECIPIENT };

/* The allowed words of the enum keys, in the order of their C enums. */
static const char *const webhook_format_words[] = { "raw", "json", "json-parsed", "multipart",
						    NULL };
static const char *const webhook_mode_words[] = { "message", "recipient", NULL };
_Static_assert(sizeof(webhook_format_words) / sizeof(webhook_format_words[0]) ==
		       WEBHOOK_FORMAT_MULTIPART + 2, "one word per enum webhook_format");

static const struct conf_key webhook_keys[] = {
	{ "url", CONF_STRING, offsetof(struct webhook_settings, url), NULL, 1, 0,
	  "endpoint, a template (https://; http:// only with allow_http)" },
	{ "allow_http", CONF_BOOL, offsetof(struct webhook_settings, allow_http), "false", 1, 0,
	  "allow plain http:// (tests, loopback receivers)" },
	{ "ca_file", CONF_STRING, offsetof(struct webhook_settings, ca_file), NULL, 1, 0,
	  "PEM file of CA certificates to verify the receiver (default: the system store)" },
	{ "client_cert_file", CONF_STRING, offsetof(struct webhook_settings, client_cert_file), NULL,
	  1, 0, "PEM client certificate for mutual TLS" },
	{ "client_key_file", CONF_STRING, offsetof(struct webhook_settings, client_key_file), NULL, 1,
	  0, "PEM private key of client_cert_file; not readable by others" },
	{ "follow_redirects", CONF_BOOL, offsetof(struct webhook_settings, follow_redirects),
	  "false", 1, 0, "follow up to 5 redirects (same schemes as url); otherwise 3xx is 451" },
	{ "format", CONF_ENUM, offsetof(struct webhook_settings, format), "json", 0, 0,
	  "body: raw, json, json-parsed or multipart", webhook_format_words },
	{ "mode", CONF_ENUM, offsetof(struct webhook_settings, mode), "message", 0, 0,
	  "message (one request for all recipients) or recipient (one request each)",
	  webhook_mode_words },
	{ "secret_files", CONF_STRING_LIST, offsetof(struct webhook_settings, secret_files), NULL, 1,
	  0, "1 or 2 files with Standard Webhooks signing secrets (whsec_BASE64 or raw)" },
	{ "bearer_token_file", CONF_STRING, offsetof(struct webhook_settings, bearer_token_file),
	  NULL, 1, 0, "file with a token sent as Authorization: Bearer" },
	{ "basic_auth_file", CONF_STRING, offsetof(struct webhook_settings, basic_auth_file), NULL, 1,
	  0, "file with user:password sent as HTTP basic authorization" },
	{ "headers", CONF_STRING_LIST, offsetof(struct webhook_settings, headers), NULL, 1, 0,
	  "extra request headers, \"Name: value\"" },
	{ "timeout", CONF_DURATION, offsetof(struct webhook_settings, timeout), "60s", 1000, 3600000,
	  "whole request, upload and answer included" },
	{ "connect_timeout", CONF_DURATION, offsetof(struct webhook_settings, connect_timeout),
	  "10s", 100, 600000, "TCP and TLS connect" },
	{ "max_response", CONF_SIZE, offsetof(struct webhook_settings, max_response), "64K", 1024,
	  16 * 1024 * 1024, "answer body bytes read at most" },
	{ "attachment_max", CONF_SIZE, offsetof(struct webhook_settings, attachment_max), "10M", 0,
	  1LL << 30, "json-parsed: attachments larger than this are listed without content" },
	{ "ed25519_key_files", CONF_STRING_LIST,
	  offsetof(struct webhook_settings, ed25519_key_files), NULL, 1, 0,
	  "Ed25519 private keys (PEM) for v1a, signatures, one each (rotation); chmod 600" },
	{ "verify_url", CONF_STRING, offsetof(struct webhook_settings, verify_url), NULL, 1, 0,
	  "check each recipient at RCPT with a POST here (a template like url)" },
	{ "verify_timeout", CONF_DURATION, offsetof(struct webhook_settings, verify_timeout), "5s",
	  100, 60000, "whole verification request" },
	{ "verify_cache_ttl", CONF_DURATION, offsetof(struct webhook_settings, verify_cache_ttl),
	  "60s", 0, 86400000, "how long an accepting or refusing verification answer is reused" },
	{ "verify_on_error", CONF_ENUM, offsetof(struct webhook_settings, verify_on_error), "accept",
	  0, 0, "verification without a verdict: accept (delivery decides) or defer (451 4.4.x)",
	  webhook_verify_on_error_words },
	OAUTH2_CONF_KEYS(struct webhook_settings, oauth2),
	{ NULL, 0, 0, NULL, 0, 0, NULL },
};

struct webhook_key {
	unsigned char *bytes;
	size_t len;
};

/* One remembered verification answer (a slot of a fixed table: bounded memory; a key hashing
 * to a taken slot replaces the answer there). The key is the SHA-256 of the expanded URL, the
 * sender and the recipient (verify_cache_key): an answer is the receiver's word on that
 * question only, and the question carries the sender (mail_from) and whatever the URL
 * template put in the URL (%{sender}, %{session}, %{txid}). */
#define WEBHOOK_VERIFY_KEY_SIZE 32
struct verify_entry {
	unsigned char key[WEBHOOK_VERIFY_KEY_SIZE];
	int64_t expires_ms;            /* monotonic; 0: empty */
	bool accepted;
	struct status refusal;         /* when not accepted */
};
#define WEBHOOK_VERIFY_CACHE_SLOTS 1024

struct webhook_state {
	char name[64];
	struct webhook_settings set;
	struct template *url;
	enum webhook_format format;
	bool per_recipient;
	struct webhook_key keys[2];
	size_t key_count;
	EVP_PKEY *ed_keys[WEBHOOK_ED25519_KEYS_MAX];
	size_t ed_key_count;
	char *authorization;           /* "Authorization: ..." line, or NULL; wiped at close */
	struct http_client *http;
	/* RCPT-time verification (verify_url set) */
	struct template *verify_url;
	struct http_client *verify_http;  /* its own timeouts: verify_timeout */
	pthread_mutex_t verify_lock;      /* guards verify_cache: verifications run in workers */
	bool verify_lock_ready;
	struct verify_entry *verify_cache; /* WEBHOOK_VERIFY_CACHE_SLOTS, NULL without a TTL */
	struct oauth2_source *oauth2;  /* NULL without oauth2_grant */
};

static void webhook_close(void *state);

static bool header_line_ok(const char *h)
{
	const char *colon = strchr(h, ':');

	if (colon == NULL || colon == h)
		return false;
	for (const char *p = h; p < colon; p++) {
		if (!(isalnum((unsigned char)*p) || strchr("!#$%&'*+-.^_`|~", *p) != NULL))
			return false;
	}
	for (const char *p = colon + 1; *p; p++) {
		if ((unsigned char)*p < ' ' && *p != '\t')
			return false;
	}
	static const char *const reserved[] = { "content-type", "content-length", "webhook-id",
						"webhook-timestamp", "webhook-signature",
						"idempotency-key", "transfer-encoding", "host" };
	for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++) {
		size_t n = strlen(reserved[i]);
		if ((size_t)(colon - h) == n && strncasecmp(h, reserved[i], n) == 0)
			return false;
	}
	return true;
}

/* The Standard Webhooks signing secrets: the current one and, while rotating, the next. */
static int load_signing_keys(struct webhook_state *st, char *error_r, size_t error_size)
{
	const struct conf_strlist *files = &st->set.secret_files;

	if (files->count > 2) {
		snprintf(error_r, error_size, "secret_files: at most 2 (the current and the next)");
		return -1;
	}
	for (size_t i = 0; i < files->count; i++) {
		char *text = secret_read_file(files->items[i], error_r, error_size);
		if (text == NULL)
			return -1;
		int r = webhook_secret_decode(text, &st->keys[i].bytes, &st->keys[i].len);
		secret_free_bytes(text, strlen(text));
		if (r < 0) {
			snprintf(error_r, error_size, "%s: not a usable secret (whsec_BASE64 or raw)",
				 files->items[i]);
			return -1;
		}
		st->key_count++;
	}
	return 0;
}

/* The Ed25519 private keys for v1a, signatures: one signature per key (rotation). */
static int load_ed25519_keys(struct webhook_state *st, char *error_r, size_t error_size)
{
	const struct conf_strlist *files = &st->set.ed25519_key_files;

	if (files->count > WEBHOOK_ED25519_KEYS_MAX) {
		snprintf(error_r, error_size, "ed25519_key_files: at most %d",
			 WEBHOOK_ED25519_KEYS_MAX);
		return -1;
	}
	for (size_t i = 0; i < files->count; i++) {
		if (webhook_ed25519_key_load(files->items[i], &st->ed_keys[i], error_r, error_size) < 0)
			return -1;
		st->ed_key_count++;
	}
	return 0;
}

/* The Authorization header line from bearer_token_file or basic_auth_file (one at most). */
static int load_authorization(struct webhook_state *st, char *error_r, size_t error_size)
{
	const struct webhook_settings *set = &st->set;

	if (set->bearer_token_file != NULL && set->basic_auth_file != NULL) {
		snprintf(error_r, error_size, "bearer_token_file and basic_auth_file exclude each other");
		return -1;
	}
	if (set->bearer_token_file == NULL && set->basic_auth_file == NULL)
		return 0;
	const char *path = set->bearer_token_file ? set->bearer_token_file : set->basic_auth_file;
	char *line = secret_read_line(path, 0, error_r, error_size);
	if (line == NULL)
		return -1;
	size_t len = strlen(line);
	size_t cap = len * 2 + 64;
	st->authorization = malloc(cap);
	if (st->authorization == NULL) {
		secret_free_bytes(line, len);
		snprintf(error_r, error_size, "out of memory");
		return -1;
	}
	if (set->bearer_token_file != NULL) {
		snprintf(st->authorization, cap, "Authorization: Bearer %s", line);
	} else {
		if (strchr(line, ':') == NULL) {
			secret_free_bytes(line, len);
			snprintf(error_r, error_size, "%s: expected user:password", path);
			return -1;
		}
		size_t n = (size_t)snprintf(st->authorization, cap, "Authorization: Basic ");
		base64_encode(line, len, st->authorization + n);
	}
	secret_free_bytes(line, len);
	for (const char *p = st->authorization; *p; p++) {
		if ((unsigned char)*p < ' ' || (unsigned char)*p == 0x7f) {
			snprintf(error_r, error_size, "%s: control characters in the secret", path);
			return -1;
		}
	}
	return 0;
}

static int check_extra_headers(const struct conf_strlist *headers, char *error_r,
			       size_t error_size)
{
	for (size_t i = 0; i < headers->count; i++) {
		if (!header_line_ok(headers->items[i])) {
			snprintf(error_r, error_size,
				 "headers: \"%.60s\" is not a \"Name: value\" line we may send",
				 headers->items[i]);
			return -1;
		}
	}
	return 0;
}

/* Mutual TLS: the key file private to us, and its certificate given. */
static int check_client_key(const struct webhook_settings *set, char *error_r,
			    size_t error_size)
{
	struct stat sb;

	if (set->client_key_file == NULL)
		return 0;
	if (stat(set->client_key_file, &sb) < 0) {
		snprintf(error_r, error_size, "%s: %s", set->client_key_file, strerror(errno));
		return -1;
	}
	if ((sb.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
		snprintf(error_r, error_size,
			 "%s: key file must not be accessible by group or others (chmod 600)",
			 set->client_key_file);
		return -1;
	}
	if (set->client_cert_file == NULL) {
		snprintf(error_r, error_size, "client_key_file needs client_cert_file");
		return -1;
	}
	return 0;
}

/* RCPT-time verification: its URL template (same schemes as url; only what is known at RCPT),
 * its own HTTP client with the short timeout, and the cache. */
static int verify_open(struct webhook_state *st, const struct http_options *delivery_options,
		       char *error_r, size_t error_size)
{
	const struct webhook_settings *set = &st->set;
	const char *error;

	if (strncasecmp(set->verify_url, "https://", 8) != 0 &&
	    !(set->allow_http && strncasecmp(set->verify_url, "http://", 7) == 0)) {
		snprintf(error_r, error_size, "verify_url must start with https:// (http:// only with "
					      "allow_http = true)");
		return -1;
	}
	if (template_compile(set->verify_url, &st->verify_url, &error) < 0) {
		snprintf(error_r, error_size, "verify_url: %s", error);
		return -1;
	}
	static const char *const later[] = { "sha256", "msgid", "date" };
	for (size_t i = 0; i < sizeof(later) / sizeof(later[0]); i++) {
		if (template_uses(st->verify_url, later[i])) {
			snprintf(error_r, error_size,
				 "verify_url: %%{%s} is not known at RCPT time, before the message",
				 later[i]);
			return -1;
		}
	}
	struct http_options vo = *delivery_options;
	vo.timeout_ms = (long)set->verify_timeout;
	if (vo.connect_timeout_ms > vo.timeout_ms)
		vo.connect_timeout_ms = vo.timeout_ms;
	st->verify_http = http_client_new(&vo, error_r, error_size);
	if (st->verify_http == NULL)
		return -1;
	if (pthread_mutex_init(&st->verify_lock, NULL) != 0) {
		snprintf(error_r, error_size, "cannot create a lock");
		return -1;
	}
	st->verify_lock_ready = true;
	if (set->verify_cache_ttl > 0) {
		st->verify_cache = calloc(WEBHOOK_VERIFY_CACHE_SLOTS, sizeof(*st->verify_cache));
		if (st->verify_cache == NULL) {
			snprintf(error_r, error_size, "out of memory");
			return -1;
		}
	}
	return 0;
}

static int webhook_open(const void *settings, const char *instance_name, void **state_r,
			char *error_r, size_t error_size)
{
	const struct webhook_settings *set = settings;
	struct webhook_state *st = calloc(1, sizeof(*st));
	const char *error;

	if (st == NULL) {
		snprintf(error_r, error_size, "out of memory");
		return -1;
	}
	st->set = *set;
	snprintf(st->name, sizeof(st->name), "%s", instance_name);
	if (set->url == NULL) {
		snprintf(error_r, error_size, "webhook needs 'url'");
		goto fail;
	}
	if (strncasecmp(set->url, "https://", 8) != 0 &&
	    !(set->allow_http && strncasecmp(set->url, "http://", 7) == 0)) {
		snprintf(error_r, error_size, "url must start with https:// (http:// only with "
					      "allow_http = true)");
		goto fail;
	}
	if (template_compile(set->url, &st->url, &error) < 0) {
		snprintf(error_r, error_size, "url: %s", error);
		goto fail;
	}
	st->format = (enum webhook_format)set->format;
	st->per_recipient = set->mode == WEBHOOK_MODE_RECIPIENT;
	if (set->bearer_token_file != NULL && set->oauth2.grant != OAUTH2_GRANT_NONE) {
		snprintf(error_r, error_size, "bearer_token_file and oauth2_grant exclude each other");
		goto fail;
	}
	if (load_signing_keys(st, error_r, error_size) < 0 ||
	    load_ed25519_keys(st, error_r, error_size) < 0 ||
	    load_authorization(st, error_r, error_size) < 0 ||
	    check_extra_headers(&set->headers, error_r, error_size) < 0 ||
	    check_client_key(set, error_r, error_size) < 0 ||
	    oauth2_source_open(&set->oauth2, instance_name, &st->oauth2, error_r, error_size) < 0)
		goto fail;
	struct http_options ho = {
		.ca_file = set->ca_file,
		.connect_timeout_ms = (long)set->connect_timeout,
		.timeout_ms = (long)set->timeout,
		.allow_http = set->allow_http,
		.client_cert_file = set->client_cert_file,
		.client_key_file = set->client_key_file,
		.max_redirects = set->follow_redirects ? 5 : 0,
	};
	st->http = http_client_new(&ho, error_r, error_size);
	if (st->http == NULL)
		goto fail;
	if (set->verify_url != NULL && verify_open(st, &ho, error_r, error_size) < 0)
		goto fail;
	*state_r = st;
	return 0;
fail:
	webhook_close(st);
	return -1;
}

static void webhook_close(void *state)
{
	struct webhook_state *st = state;

	if (st == NULL)
		return;
	http_client_free(&st->http);
	oauth2_source_free(&st->oauth2);
	template_free(&st->url);
	http_client_free(&st->verify_http);
	template_free(&st->verify_url);
	if (st->verify_lock_ready)
		pthread_mutex_destroy(&st->verify_lock);
	free(st->verify_cache);
	for (size_t i = 0; i < st->key_count; i++)
		secret_free_bytes(st->keys[i].bytes, st->keys[i].len);
	for (size_t i = 0; i < st->ed_key_count; i++)
		webhook_ed25519_key_free(&st->ed_keys[i]);
	if (st->authorization != NULL)
		secret_free_bytes(st->authorization, strlen(st->authorization));
	free(st);
}

/* --- one request ------------------------------------------------------------------------- */

/* "X-Lmtpgw-Recipients: a@x, b@y"; NULL on allocation failure. */
static char *recipients_header(const char *const *rcpts, size_t n)
{
	static const char name[] = "X-Lmtpgw-Recipients: ";
	size_t size = sizeof(name), len;

	for (size_t i = 0; i < n; i++)
		size += strlen(rcpts[i]) + 2;
	char *h = malloc(size);
	if (h == NULL)
		return NULL;
	len = (size_t)snprintf(h, size, "%s", name);
	for (size_t i = 0; i < n; i++)
		len += (size_t)snprintf(h + len, size - len, "%s%s", i ? ", " : "", rcpts[i]);
	return h;
}

static int add_line(struct curl_slist **list, const char *line)
{
	struct curl_slist *l = curl_slist_append(*list, line);

	if (l == NULL)
		return -1;
	*list = l;
	return 0;
}

/* Header values from the envelope: keep them single-line and ASCII-safe. */
static void header_safe(const char *in, char *out, size_t size)
{
	size_t o = 0;

	for (; *in && o + 1 < size; in++)
		out[o++] = ((unsigned char)*in < ' ' || *in == 0x7f) ? '?' : *in;
	out[o] = '\0';
}

/* One local failure for the whole request (ref says what, for the log). */
static void fail_all(struct target **tg, size_t n, const char *ref, int code, const char *enh,
		     const char *what)
{
	struct status st;

	if (status_make(&st, code, enh, "%s", what) < 0)
		status_must(&st, 451, "4.3.0", "Local error in processing");
	backend_fail_group(tg, n, &st, ref);
}

/* A signer with every key: the HMAC secrets (v1,) and the Ed25519 keys (v1a,); NULL when there
 * is no key (*none_r) or on failure. */
static struct webhook_signer *signer_start(const struct webhook_state *st, const char *id,
					   long long ts, bool *none_r)
{
	const unsigned char *keys[2] = { st->keys[0].bytes, st->keys[1].bytes };
	size_t lens[2] = { st->keys[0].len, st->keys[1].len };

	*none_r = st->key_count == 0 && st->ed_key_count == 0;
	if (*none_r)
		return NULL;
	struct webhook_signer *signer = webhook_signer_new(keys, lens, st->key_count, id, ts);
	if (signer != NULL &&
	    webhook_signer_add_ed25519(signer, st->ed_keys, st->ed_key_count) < 0) {
		char discard[WEBHOOK_SIGNATURE_SIZE];
		webhook_signer_finish(&signer, discard, sizeof(discard));
		return NULL;
	}
	return signer;
}

/* The webhook-signature value over exactly the bytes sent, into sig ("" without keys). */
static int sign_body(const struct webhook_state *st, const char *id, long long ts,
		     struct webhook_body *body, char *sig, size_t size)
{
	bool none;

	sig[0] = '\0';
	struct webhook_signer *signer = signer_start(st, id, ts, &none);
	if (signer == NULL)
		return none ? 0 : -1;
	int r = body->streamed ? webhook_signer_update_reader(signer, &body->reader)
			       : webhook_signer_update(signer, body->data, body->len);
	/* finish frees the signer, so it runs whatever the update said */
	if (webhook_signer_finish(&signer, sig, size) < 0 || r < 0)
		return -1;
	return 0;
}

/* Every header of the request: content type, Standard Webhooks, envelope, authorization and
 * the configured extra headers. */
static int request_headers(const struct webhook_state *st, const struct delivery *d,
			   const char *const *rcpts, size_t n, const struct webhook_body *body,
			   const char *id, long long ts, const char *sig,
			   struct curl_slist **headers)
{
	char sender[ADDRESS_PATH_MAX + 1], session[128];
	char *rcpt_header = recipients_header(rcpts, n);
	int hr = 0;

	header_safe(d->sender ? d->sender : "", sender, sizeof(sender));
	header_safe(d->session_id ? d->session_id : "", session, sizeof(session));
	hr |= http_header_add(headers, "Content-Type: %s", body->content_type);
	hr |= http_header_add(headers, "User-Agent: lmtpgw");
	hr |= http_header_add(headers, "webhook-id: %s", id);
	hr |= http_header_add(headers, "webhook-timestamp: %lld", ts);
	if (sig[0] != '\0')
		hr |= http_header_add(headers, "webhook-signature: %s", sig);
	hr |= http_header_add(headers, "Idempotency-Key: %s", id);
	hr |= http_header_add(headers, "X-Lmtpgw-Sender: %s", sender);
	hr |= rcpt_header ? add_line(headers, rcpt_header) : -1;
	hr |= http_header_add(headers, "X-Lmtpgw-Session: %s", session);
	hr |= http_header_add(headers, "X-Lmtpgw-Sha256: %s", d->sha256);
	hr |= http_header_add(headers, "X-Lmtpgw-Size: %llu",
			      (unsigned long long)spool_size(d->spool));
	if (st->authorization != NULL)
		hr |= add_line(headers, st->authorization);
	for (size_t i = 0; i < st->set.headers.count; i++)
		hr |= add_line(headers, st->set.headers.items[i]);
	free(rcpt_header);
	return hr != 0 ? -1 : 0;
}

/* Does a 401 answer ask for another bearer token? Plain 401, or RFC 6750 3.1 `WWW-Authenticate:
 * Bearer ... error="invalid_token"` (an expired or revoked token). Another error code
 * (invalid_request, ...) would be refused again with a new token: no retry for it. */
static bool token_refused(const struct webhook_state *st, long http_status,
			  const struct http_response *resp)
{
	if (st->oauth2 == NULL || http_status != 401)
		return false;
	const char *auth = resp != NULL ? http_response_header(resp, "www-authenticate") : NULL;
	const char *error = auth != NULL ? strstr(auth, "error=") : NULL;
	if (error == NULL)
		return true;
	error += strlen("error=");
	if (*error == '"')
		error++;
	return strncmp(error, "invalid_token", strlen("invalid_token")) == 0;
}

/* The answer as webhook_answer reads it, with a reference for the log and the 2xx text: the
 * receiver's X-Request-Id (or Request-Id) when it gives one, sanitized, else our id. Returns
 * the receiver's id header, NULL when none. ans points into resp and ref. */
static const char *answer_of(const struct webhook_state *st, const struct http_response *resp,
			     const char *id, char ref[96], struct webhook_answer *ans)
{
	const char *rid = http_response_header(resp, "x-request-id");

	if (rid == NULL)
		rid = http_response_header(resp, "request-id");
	if (rid != NULL)
		webhook_sanitize_text(rid, strlen(rid), ref, 80);
	else
		snprintf(ref, 96, "%s", id);
	*ans = (struct webhook_answer){
		.http_status = resp->status,
		.content_type = http_response_header(resp, "content-type"),
		.body = resp->body,
		.body_len = resp->body_len,
		.truncated = resp->truncated,
		.retry_after = http_response_header(resp, "retry-after"),
		.ref = ref,
		.backend = st->name,
	};
	return rid;
}

/* POST the request and give every target its status: from the answer (webhook_answer.h), or
 * the transport failure. results: room for n statuses. Returns true when the receiver refused
 * the bearer token (token_refused()): the caller may retry once with a new one. */
static bool post_request(struct webhook_state *st, struct target **tg, size_t n,
			 const char *const *rcpts, const char *url, struct curl_slist *headers,
			 struct webhook_body *body, const char *id, struct status *results)
{
	struct http_request req = {
		.method = "POST",
		.url = url,
		.headers = headers,
		.body = body->streamed ? NULL : body->data,
		.body_len = body->streamed ? 0 : body->len,
		.reader = body->streamed ? &body->reader : NULL,
		.response_max = (size_t)st->set.max_response,
	};
	struct http_response resp = { 0 };
	struct status transport;
	char reason[512];

	if (http_perform(st->http, &req, &resp, &transport, reason, sizeof(reason)) < 0) {
		char esc[LOG_ESC_SIZE];
		log_warn("backend=%s event=webhook_failed id=%s error=\"%s\"", st->name, id,
			 log_esc(esc, reason));
		char ref[sizeof(tg[0]->ref)];
		snprintf(ref, sizeof(ref), "id=%s", id);
		backend_fail_group(tg, n, &transport, ref); /* one request: one breaker event */
		return false;
	}
	char ref[96];
	struct webhook_answer ans;
	const char *rid = answer_of(st, &resp, id, ref, &ans);
	webhook_map_answer(&ans, rcpts, n, results);
	for (size_t i = 0; i < n; i++) {
		tg[i]->status = results[i];
		snprintf(tg[i]->ref, sizeof(tg[i]->ref), "id=%s http=%ld%s%s", id, resp.status,
			 rid ? " ref=" : "", rid ? ref : "");
	}
	bool refused = token_refused(st, resp.status, &resp);
	http_response_free(&resp);
	return refused;
}

/* One request for tg[0..n), all to url: id, body, signature, headers, POST, answer. */
static void deliver_request(struct webhook_state *st, const struct delivery *d,
			    struct target **tg, size_t n, const char *url)
{
	const char **rcpts = calloc(n, sizeof(*rcpts));
	struct status *results = calloc(n, sizeof(*results));
	char id[WEBHOOK_ID_SIZE] = "msg_?", sig[WEBHOOK_SIGNATURE_SIZE], mime_error[200];
	struct webhook_body body = { 0 };
	struct curl_slist *headers = NULL;
	const char *error;
	char *refused_token = NULL;    /* secret: the bearer token sent, refused when 401 */
	long long ts = (long long)time(NULL);

	if (rcpts == NULL || results == NULL) {
		fail_all(tg, n, "out of memory", 451, "4.3.0", "Local error in processing");
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		rcpts[i] = tg[i]->rcpt->rcpt;
	if (webhook_event_id(d->sha256, rcpts, n, id) < 0) {
		fail_all(tg, n, "id failed", 451, "4.3.0", "Local error in processing");
		goto out;
	}
	if (webhook_body_build(st->format, d, tg, n, id, (size_t)st->set.attachment_max, &body,
			       &error, mime_error, sizeof(mime_error)) < 0) {
		if (mime_error[0] != '\0') {
			char esc[LOG_ESC_SIZE];
			log_warn("backend=%s event=webhook_parse id=%s error=\"%s\"", st->name, id,
				 log_esc(esc, mime_error));
		}
		fail_all(tg, n, error, 451, "4.3.0", "Local error in processing");
		goto out;
	}
	if (sign_body(st, id, ts, &body, sig, sizeof(sig)) < 0) {
		fail_all(tg, n, "signing failed", 451, "4.3.0", "Local error in processing");
		goto out;
	}
	/* A receiver that answers 401 to a cached bearer token (expired early, revoked) gets the
	 * same request once more with a new token, as the imap backend logs in once more: the same
	 * webhook-id, timestamp and signature (the receiver dedupes on the id), the same body (a
	 * streamed one is read again from the spool: http_perform starts each request at its
	 * beginning). A second 401 keeps its 451 4.7.0: our credentials, never a bounce. */
	for (int attempt = 0;; attempt++) {
		if (request_headers(st, d, rcpts, n, &body, id, ts, sig, &headers) < 0) {
			fail_all(tg, n, "headers failed", 451, "4.3.0", "Local error in processing");
			break;
		}
		struct status token_failure;
		char why[256], *sent = NULL;
		if (oauth2_add_bearer(st->oauth2, refused_token, &headers, &sent, &token_failure, why,
				      sizeof(why)) < 0) {
			backend_fail_group(tg, n, &token_failure, why);
			for (size_t i = 0; i < n; i++)
				tg[i]->backend_failure = true; /* the token endpoint: the breaker counts it */
			break;
		}
		secret_free(&refused_token);
		refused_token = sent;
		if (!post_request(st, tg, n, rcpts, url, headers, &body, id, results))
			break;
		if (attempt == 1) {
			/* a new token refused too: the receiver does not take ours at all, whoever
			 * the recipient (the breaker counts it) */
			for (size_t i = 0; i < n; i++)
				tg[i]->backend_failure = true;
			break;
		}
		log_info("backend=%s event=webhook_token_refused id=%s action=retry", st->name, id);
		http_headers_free(&headers);
	}
out:
	secret_free(&refused_token);
	webhook_body_free(&body);
	http_headers_free(&headers);
	free(rcpts);
	free(results);
}

static void webhook_deliver(void *state, const struct delivery *d, struct target *targets,
			    size_t count)
{
	struct webhook_state *st = state;
	char (*urls)[2048] = calloc(count, sizeof(*urls));
	struct target **group = calloc(count, sizeof(*group));
	bool *done = calloc(count, sizeof(*done));

	if (urls == NULL || group == NULL || done == NULL) {
		for (size_t i = 0; i < count; i++)
			status_must(&targets[i].status, 451, "4.3.0", "Local error in processing");
		goto out;
	}
	for (size_t i = 0; i < count; i++) {
		const char *error;
		if (template_expand(st->url, &targets[i].vars, TEMPLATE_URL, urls[i], sizeof(urls[i]),
				    &error) < 0) {
			status_must(&targets[i].status, 451, "4.3.0", "cannot build the webhook URL");
			snprintf(targets[i].ref, sizeof(targets[i].ref), "url: %s", error);
			done[i] = true;
		}
	}
	for (size_t i = 0; i < count; i++) {
		if (done[i])
			continue;
		size_t n = 0;
		group[n++] = &targets[i];
		done[i] = true;
		for (size_t j = i + 1; !st->per_recipient && j < count; j++) {
			if (!done[j] && strcmp(urls[i], urls[j]) == 0) {
				group[n++] = &targets[j];
				done[j] = true;
			}
		}
		deliver_request(st, d, group, n, urls[i]);
	}
out:
	free(urls);
	free(group);
	free(done);
}

/* --- RCPT-time verification --------------------------------------------------------------- */

static int64_t monotonic_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The cache key of a verification: SHA-256 over url NUL sender NUL rcpt (C strings hold no NUL,
 * so no two different triples give the same input; a SHA-256 collision is not a concern).
 * A digest rather than the strings: 32 bytes a slot however long the URL. false on failure
 * (then nothing is looked up or stored). */
static bool verify_cache_key(const char *url, const char *sender, const char *rcpt,
			     unsigned char key[WEBHOOK_VERIFY_KEY_SIZE])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned int len = 0;
	bool ok = md != NULL && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
		  EVP_DigestUpdate(md, url, strlen(url) + 1) == 1 &&
		  EVP_DigestUpdate(md, sender, strlen(sender) + 1) == 1 &&
		  EVP_DigestUpdate(md, rcpt, strlen(rcpt)) == 1 &&
		  EVP_DigestFinal_ex(md, key, &len) == 1 && len == WEBHOOK_VERIFY_KEY_SIZE;

	EVP_MD_CTX_free(md);
	return ok;
}

static struct verify_entry *verify_slot(struct webhook_state *st,
					const unsigned char key[WEBHOOK_VERIFY_KEY_SIZE])
{
	uint32_t h = (uint32_t)key[0] | (uint32_t)key[1] << 8 | (uint32_t)key[2] << 16 |
		     (uint32_t)key[3] << 24;

	return &st->verify_cache[h % WEBHOOK_VERIFY_CACHE_SLOTS];
}

/* 1: a cached answer for this URL, sender and recipient (accepted, or *refusal_r); 0: none. */
static int verify_cache_get(struct webhook_state *st, const char *url, const char *sender,
			    const char *rcpt, bool *accepted_r, struct status *refusal_r)
{
	unsigned char key[WEBHOOK_VERIFY_KEY_SIZE];
	int found = 0;

	if (st->verify_cache == NULL || !verify_cache_key(url, sender, rcpt, key))
		return 0;
	pthread_mutex_lock(&st->verify_lock);
	struct verify_entry *e = verify_slot(st, key);
	if (e->expires_ms > monotonic_ms() && memcmp(e->key, key, sizeof(key)) == 0) {
		*accepted_r = e->accepted;
		*refusal_r = e->refusal;
		found = 1;
	}
	pthread_mutex_unlock(&st->verify_lock);
	return found;
}

static void verify_cache_put(struct webhook_state *st, const char *url, const char *sender,
			     const char *rcpt, bool accepted, const struct status *refusal)
{
	unsigned char key[WEBHOOK_VERIFY_KEY_SIZE];

	if (st->verify_cache == NULL || !verify_cache_key(url, sender, rcpt, key))
		return;
	pthread_mutex_lock(&st->verify_lock);
	struct verify_entry *e = verify_slot(st, key);
	memcpy(e->key, key, sizeof(key));
	e->accepted = accepted;
	if (!accepted)
		e->refusal = *refusal;
	e->expires_ms = monotonic_ms() + st->set.verify_cache_ttl;
	pthread_mutex_unlock(&st->verify_lock);
}

/* The request body (docs/backends/webhook.md, "Recipient verification"); NULL on failure. */
static char *verify_body(const struct recipient *rcpt, const struct verify_context *ctx)
{
	json_t *root = json_pack("{s:s, s:i, s:{s:s, s:s, s:s, s:s}, s:{s:s}, s:{s:s, s:s}, s:s, s:s}",
				 "type", "recipient.verify", "version", 1,
				 "recipient", "address", rcpt->rcpt, "local", rcpt->local, "detail",
				 rcpt->detail, "domain", rcpt->domain,
				 "mail_from", "address", ctx->sender,
				 "client", "address", ctx->client_addr, "lhlo", ctx->lhlo,
				 "session", ctx->session_id, "transaction", ctx->txid);
	if (root == NULL)
		return NULL; /* not UTF-8 (jansson checks) or out of memory */
	char *text = json_dumps(root, JSON_COMPACT);
	json_decref(root);
	return text;
}

/* POST the verification; 0 with *resp filled, or -1 with *transport and reason set. */
static int verify_post(struct webhook_state *st, const char *url, const char *body,
		       struct http_response *resp, struct status *transport, char *reason,
		       size_t reason_size, char id[WEBHOOK_ID_SIZE])
{
	char sig[WEBHOOK_SIGNATURE_SIZE] = "";
	struct curl_slist *headers = NULL;
	long long ts = (long long)time(NULL);
	size_t len = strlen(body);
	bool none;
	int hr = 0;

	if (webhook_request_id("vrf_", body, len, ts, id) < 0)
		goto local_error;
	struct webhook_signer *signer = signer_start(st, id, ts, &none);
	if (signer == NULL && !none)
		goto local_error;
	if (signer != NULL) {
		int r = webhook_signer_update(signer, body, len);
		if (webhook_signer_finish(&signer, sig, sizeof(sig)) < 0 || r < 0)
			goto local_error;
	}
	/* As deliveries: a 401 to the bearer token gets one more request with a new token (the
	 * same webhook-id); the second 401 is the answer (no verdict: verify_on_error decides). */
	char *refused_token = NULL;
	int r = -1;
	for (int attempt = 0;; attempt++) {
		hr |= http_header_add(&headers, "Content-Type: application/json");
		hr |= http_header_add(&headers, "User-Agent: lmtpgw");
		hr |= http_header_add(&headers, "webhook-id: %s", id);
		hr |= http_header_add(&headers, "webhook-timestamp: %lld", ts);
		if (sig[0] != '\0')
			hr |= http_header_add(&headers, "webhook-signature: %s", sig);
		if (st->authorization != NULL)
			hr |= add_line(&headers, st->authorization);
		for (size_t i = 0; i < st->set.headers.count; i++)
			hr |= add_line(&headers, st->set.headers.items[i]);
		if (hr != 0) {
			http_headers_free(&headers);
			secret_free(&refused_token);
			goto local_error;
		}
		/* The verification carries the same OAuth2 bearer token as deliveries; no token is
		 * a verification without a verdict (verify_on_error decides). */
		char *sent = NULL;
		if (oauth2_add_bearer(st->oauth2, refused_token, &headers, &sent, transport, reason,
				      reason_size) < 0) {
			r = -1;
			break;
		}
		secret_free(&refused_token);
		refused_token = sent;
		struct http_request req = {
			.method = "POST",
			.url = url,
			.headers = headers,
			.body = body,
			.body_len = len,
			.response_max = (size_t)st->set.max_response,
		};
		r = http_perform(st->verify_http, &req, resp, transport, reason, reason_size);
		http_headers_free(&headers);
		if (r < 0 || attempt == 1 || !token_refused(st, resp->status, resp))
			break;
		log_info("backend=%s event=webhook_token_refused id=%s action=retry", st->name, id);
		http_response_free(resp);
	}
	http_headers_free(&headers);
	secret_free(&refused_token);
	return r;
local_error:
	status_must(transport, 451, "4.3.0", "Local error in processing");
	snprintf(reason, reason_size, "cannot build the verification request");
	return -1;
}

/* A verification without a verdict: accept the recipient (the delivery decides), or defer it
 * with a 451 4.4.x saying why. */
static int verify_no_verdict(struct webhook_state *st, const struct recipient *rcpt,
			     const char *id, const struct status *why, const char *reason,
			     struct status *st_r)
{
	char esc[LOG_ESC_SIZE], esc_rcpt[LOG_ESC_SIZE];
	bool defer = st->set.verify_on_error == WEBHOOK_VERIFY_DEFER;

	log_warn("backend=%s event=webhook_verify_failed id=%s rcpt=<%s> status=\"%d %s\" "
		 "error=\"%s\" action=%s",
		 st->name, id, log_esc(esc_rcpt, rcpt->rcpt), why->code, why->enhanced,
		 log_esc(esc, reason), defer ? "defer" : "accept");
	if (!defer)
		return 0;
	/* the network or the receiver failed us: a 4.4.x (network and routing) code, the
	 * transport's own (4.4.1 connect, 4.4.2 timeout, 4.4.5 busy) when it has one */
	if (strncmp(why->enhanced, "4.4.", 4) == 0)
		status_must(st_r, 451, why->enhanced, "recipient verification failed: %s", why->text);
	else
		status_must(st_r, 451, "4.4.0", "recipient verification failed: %s", why->text);
	return -1;
}

/* RCPT time (in a worker): ask verify_url about the recipient. */
static int webhook_verify(void *state, const struct recipient *rcpt,
			  const struct verify_context *ctx, struct status *st_r)
{
	struct webhook_state *st = state;
	struct delivery d = { .sender = ctx->sender, .session_id = ctx->session_id,
			      .txid = ctx->txid, .sha256 = "", .msgid = "" };
	struct template_vars vars;
	char url[2048], reason[512], id[WEBHOOK_ID_SIZE] = "vrf_?";
	const char *error;
	bool accepted;
	struct status status;

	if (st->verify_url == NULL)
		return 0;
	delivery_vars(&d, rcpt, &vars);
	if (template_expand(st->verify_url, &vars, TEMPLATE_URL, url, sizeof(url), &error) < 0) {
		status_must(&status, 451, "4.3.0", "cannot build the verification URL");
		return verify_no_verdict(st, rcpt, id, &status, error, st_r);
	}
	if (verify_cache_get(st, url, ctx->sender, rcpt->rcpt, &accepted, &status) == 1) {
		char esc[LOG_ESC_SIZE];
		log_debug("backend=%s event=webhook_verify_cached rcpt=<%s> accepted=%s", st->name,
			  log_esc(esc, rcpt->rcpt), accepted ? "yes" : "no");
		if (accepted)
			return 0;
		*st_r = status;
		return -1;
	}
	char *body = verify_body(rcpt, ctx);
	if (body == NULL) {
		status_must(&status, 451, "4.3.0", "Local error in processing");
		return verify_no_verdict(st, rcpt, id, &status, "cannot build the body", st_r);
	}
	struct http_response resp = { 0 };
	int r = verify_post(st, url, body, &resp, &status, reason, sizeof(reason), id);
	free(body);
	if (r < 0)
		return verify_no_verdict(st, rcpt, id, &status, reason, st_r);
	char ref[96];
	struct webhook_answer ans;
	answer_of(st, &resp, id, ref, &ans);
	bool verdict = webhook_map_verify_answer(&ans, rcpt->rcpt, &status);
	long http_status = resp.status;
	http_response_free(&resp);
	if (!verdict) {
		snprintf(reason, sizeof(reason), "no verdict in the answer (HTTP %ld)", http_status);
		return verify_no_verdict(st, rcpt, id, &status, reason, st_r);
	}
	switch (status_class_of(&status)) {
	case STATUS_OK:
		verify_cache_put(st, url, ctx->sender, rcpt->rcpt, true, NULL);
		return 0;
	case STATUS_PERMFAIL:
		verify_cache_put(st, url, ctx->sender, rcpt->rcpt, false, &status);
		break;
	default:
		/* the receiver's own temporary verdict (452 4.2.2 full): never cached, it may
		 * change any moment */
		break;
	}
	*st_r = status; /* bare: the session names the recipient (reply.h) */
	return -1;
}

/* The request a target goes into: its URL (mode message), or none shared (mode recipient).
 * The dispatcher runs each request as its own job, concurrently (backend.h); deliver() still
 * groups by URL itself, for callers that hand it a whole batch. */
static int webhook_request_key(void *state, const struct target *target, char *key, size_t size)
{
	struct webhook_state *st = state;
	const char *error;

	if (st->per_recipient)
		return -1;
	/* A URL that cannot be built fails alone in deliver(). */
	return template_expand(st->url, &target->vars, TEMPLATE_URL, key, size, &error) < 0 ? -1 : 0;
}

static void webhook_explain(void *state, const struct recipient *rcpt,
			    const struct template_vars *vars, char *buf, size_t size)
{
	struct webhook_state *st = state;
	char url[2048];
	const char *error;

	char verify[2100] = "";

	if (st->verify_url != NULL) {
		char vurl[2048];
		if (template_expand(st->verify_url, vars, TEMPLATE_URL, vurl, sizeof(vurl), &error) < 0)
			snprintf(verify, sizeof(verify), ", verify_url: %s", error);
		else
			snprintf(verify, sizeof(verify), ", verified at RCPT by POST %s", vurl);
	}
	if (template_expand(st->url, vars, TEMPLATE_URL, url, sizeof(url), &error) < 0)
		snprintf(buf, size, "url: %s", error);
	else
		snprintf(buf, size, "POST %s (format %s, mode %s%s)", url,
			 webhook_format_words[st->set.format], webhook_mode_words[st->set.mode],
			 verify);
}

/* Any HTTP answer to a HEAD of the URL's fixed part proves the receiver is reachable and its
 * certificate verifies; the status is shown (a receiver may well answer HEAD with 405). */
static int webhook_probe(void *state, char *result, size_t size)
{
	struct webhook_state *st = state;
	const char *src = template_source(st->url);
	char url[2048], reason[400];
	struct http_request req = { .method = "HEAD", .url = url };
	struct http_response resp;
	struct status status;

	snprintf(url, sizeof(url), "%.*s", (int)strcspn(src, "%"), src);
	if (http_perform(st->http, &req, &resp, &status, reason, sizeof(reason)) < 0) {
		snprintf(result, size, "%d %s: %s", status.code, status.enhanced, reason);
		return -1;
	}
	long http_status = resp.status;
	http_response_free(&resp);
	if (st->oauth2 != NULL) {
		/* Every delivery needs a token: the probe gets one too (shown only as obtained). */
		char *token = NULL;
		int r = oauth2_token(st->oauth2, NULL, NULL, &token, NULL, &status, reason,
				     sizeof(reason));
		secret_free(&token);
		if (r < 0) {
			snprintf(result, size, "%s reachable (HEAD answered %ld), OAuth2 token request "
				 "failed: %s", url, http_status, reason);
			return -1;
		}
	}
	snprintf(result, size, "%s reachable (HEAD answered %ld)%s", url, http_status,
		 st->oauth2 != NULL ? ", OAuth2 token obtained" : "");
	return 0;
}

const struct backend_driver backend_webhook = {
	.name = "webhook",
	.keys = webhook_keys,
	.settings_size = sizeof(struct webhook_settings),
	.open = webhook_open,
	.deliver = webhook_deliver,
	.close = webhook_close,
	.probe = webhook_probe,
	.explain = webhook_explain,
	.verify = webhook_verify,
	.verify_blocking = true,
	.batch = true,
	.request_key = webhook_request_key,
};
