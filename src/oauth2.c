/*
 * oauth2 - token sources and the per-identity token cache (oauth2.h says what and why).
 *
 * Owns: the HTTP client of the token endpoint, the secrets read at open (wiped at free), the
 * cache entries. Locking: one mutex guards every entry; a token request runs outside it with
 * the entry marked `fetching`, and waiters sleep on the condition variable until it is done.
 */
#include "oauth2.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "base64.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "secret.h"

const char *const oauth2_grant_words[] = { "none", "client_credentials", "refresh_token",
					   "jwt_bearer", "token_file", NULL };

#define JWT_BEARER_GRANT "urn:ietf:params:oauth:grant-type:jwt-bearer"
#define RESPONSE_MAX (64 * 1024)
#define DEFAULT_LIFETIME_S 3600
/* expires_in beyond a day is taken as a day: providers issue access tokens for an hour or so
 * (Google 3600 s, Microsoft 60-90 min), a longer answer is a mistake or hostile, and asking
 * once a day costs nothing (a token revoked earlier is refused at login and replaced). The
 * bound also keeps the millisecond arithmetic far from overflow. */
#define LIFETIME_MAX_S 86400
/* A refresh that failed while the token is still valid is asked again after this long, not
 * by every delivery (each would wait up to oauth2_timeout for an endpoint that is down). */
#define REFRESH_RETRY_MS 5000

struct entry {
	char *identity;                /* subject, or "" when one token serves everyone */
	char *token;                   /* secret; NULL when none */
	/* CLOCK_MONOTONIC (mono_ms): a clock step neither expires nor revives a token */
	int64_t expires_at_ms;         /* hand it out until then (token_file: no expiry) */
	int64_t refresh_at_ms;         /* ask for a new one from then on (refresh margin) */
	int64_t retry_at_ms;           /* a refresh failed: not again before then */
	int64_t last_used_ms;          /* for eviction when the table is full */
	bool fetching;                 /* a request for this identity is in flight */
	unsigned generation;           /* +1 at the end of every request */
	bool last_failed;              /* the last request failed: its status and reason */
	enum oauth2_failure last_failure;
	struct status last_status;
	char last_reason[256];
	/* token_file: the file the token came from */
	ino_t ino;
	off_t size;
	struct timespec mtime;
};

struct oauth2_source {
	enum oauth2_grant grant;
	char backend[64];
	char *token_url;
	char *client_id;
	char *scope;
	char *client_secret;           /* secret */
	EVP_PKEY *client_key;          /* certificate credentials: the private key (secret) */
	char client_x5t[32];           /* and the certificate's SHA-1 thumbprint, base64url */
	char *refresh_token;           /* secret; replaced when the server rotates it */
	char *refresh_token_file;      /* where it came from; a rotated one is written back */
	char *token_file;
	char *sa_email;                /* jwt_bearer: the service account */
	char *sa_key_id;
	EVP_PKEY *sa_key;              /* its private key */
	long long refresh_margin_ms;
	/* jwt_bearer: cached identities (mailboxes) at most (oauth2_max_identities). When the
	 * table is full, entries without a valid token go first, then the one used least
	 * recently: its next delivery asks anew. */
	size_t max_identities;
	struct http_client *http;

	pthread_mutex_t lock;
	pthread_cond_t done;
	struct entry *entries;
	size_t entry_count;
};

static void fail_status(struct status *st_r)
{
	status_must(st_r, 451, "4.7.0", "OAuth2 token not available");
}

/* Wall-clock time: only for what the server reads (JWT iat and exp). */
static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The cache's clock: steps of the wall clock (NTP, an admin) neither expire nor revive a
 * token. */
static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *xstrdup_or_null(const char *s)
{
	return s == NULL ? NULL : strdup(s);
}

/* --- service account key (Google's JSON key file) --- */

static int load_service_account(struct oauth2_source *src, const char *path, char *error_r,
				size_t error_size)
{
	char *text = secret_read_file(path, error_r, error_size);
	if (text == NULL)
		return -1;
	json_error_t jerr;
	json_t *doc = json_loads(text, 0, &jerr);
	secret_free(&text);
	if (doc == NULL || !json_is_object(doc)) {
		snprintf(error_r, error_size, "%s: not a JSON service account key (line %d)", path,
			 jerr.line);
		json_decref(doc);
		return -1;
	}
	const char *email = json_string_value(json_object_get(doc, "client_email"));
	const char *pem = json_string_value(json_object_get(doc, "private_key"));
	const char *kid = json_string_value(json_object_get(doc, "private_key_id"));
	const char *uri = json_string_value(json_object_get(doc, "token_uri"));
	if (email == NULL || pem == NULL) {
		snprintf(error_r, error_size, "%s: needs client_email and private_key", path);
		json_decref(doc);
		return -1;
	}
	BIO *bio = BIO_new_mem_buf(pem, -1);
	src->sa_key = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
	BIO_free(bio);
	/* jansson's copy of the key text is freed with doc: wipe it first */
	OPENSSL_cleanse((char *)pem, strlen(pem));
	if (src->sa_key == NULL || EVP_PKEY_base_id(src->sa_key) != EVP_PKEY_RSA) {
		snprintf(error_r, error_size, "%s: private_key is not a PEM RSA key", path);
		json_decref(doc);
		return -1;
	}
	src->sa_email = strdup(email);
	src->sa_key_id = xstrdup_or_null(kid);
	if (src->token_url == NULL && uri != NULL)
		src->token_url = strdup(uri);
	json_decref(doc);
	return 0;
}

/* base64url without padding (RFC 7515 2) of len bytes into out (room for 4/3 len + 4). */
static void b64url_encode(const unsigned char *data, size_t len, char *out)
{
	size_t n = base64_encode(data, len, out);
	while (n > 0 && out[n - 1] == '=')
		n--;
	for (size_t i = 0; i < n; i++)
		out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
	out[n] = '\0';
}

/* Certificate credentials: the certificate (its thumbprint names the key to the server) and
 * its private key, which must belong together. */
static int load_client_certificate(struct oauth2_source *src, const struct oauth2_settings *set,
				   char *error_r, size_t error_size)
{
	const char *cert_path = set->client_certificate_file, *key_path = set->client_key_file;
	X509 *cert = NULL;
	int rc = -1;

	if (cert_path == NULL || key_path == NULL) {
		snprintf(error_r, error_size, "oauth2_client_certificate_file and "
			 "oauth2_client_key_file go together");
		return -1;
	}
	FILE *f = fopen(cert_path, "re");
	if (f == NULL) {
		snprintf(error_r, error_size, "%s: %s", cert_path, strerror(errno));
		return -1;
	}
	cert = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (cert == NULL) {
		snprintf(error_r, error_size, "%s: not a PEM certificate", cert_path);
		return -1;
	}
	char *pem = secret_read_file(key_path, error_r, error_size);
	if (pem == NULL)
		goto out;
	BIO *bio = BIO_new_mem_buf(pem, -1);
	src->client_key = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
	BIO_free(bio);
	secret_free(&pem);
	if (src->client_key == NULL || EVP_PKEY_base_id(src->client_key) != EVP_PKEY_RSA) {
		snprintf(error_r, error_size, "%s: not a PEM RSA private key (unencrypted)",
			 key_path);
		goto out;
	}
	if (X509_check_private_key(cert, src->client_key) != 1) {
		snprintf(error_r, error_size, "%s: not the private key of %s", key_path, cert_path);
		goto out;
	}
	/* x5t (RFC 7515 4.1.7): base64url of the SHA-1 digest of the DER certificate, which is
	 * what Microsoft's identity platform looks the key up by */
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;
	if (X509_digest(cert, EVP_sha1(), md, &md_len) != 1 || md_len != 20) {
		snprintf(error_r, error_size, "%s: cannot compute its thumbprint", cert_path);
		goto out;
	}
	b64url_encode(md, md_len, src->client_x5t);
	rc = 0;
out:
	X509_free(cert);
	return rc;
}

struct oauth2_source *oauth2_source_new(const struct oauth2_settings *set, const char *backend,
					char *error_r, size_t error_size)
{
	struct oauth2_source *src = calloc(1, sizeof(*src));

	if (src == NULL) {
		snprintf(error_r, error_size, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&src->lock, NULL);
	pthread_cond_init(&src->done, NULL);
	src->grant = (enum oauth2_grant)set->grant;
	snprintf(src->backend, sizeof(src->backend), "%s", backend);
	src->token_url = xstrdup_or_null(set->token_url);
	src->client_id = xstrdup_or_null(set->client_id);
	src->scope = xstrdup_or_null(set->scope);
	src->refresh_margin_ms = set->refresh_margin;
	src->max_identities = set->max_identities > 0 ? (size_t)set->max_identities : 10000;

	switch (src->grant) {
	case OAUTH2_GRANT_NONE:
		snprintf(error_r, error_size, "oauth2_grant is none");
		goto fail;
	case OAUTH2_GRANT_TOKEN_FILE:
		if (set->token_file == NULL) {
			snprintf(error_r, error_size, "oauth2_grant token_file needs oauth2_token_file");
			goto fail;
		}
		/* Checked now (mode 600), read at each change. */
		char *t = secret_read_line(set->token_file, 0, error_r, error_size);
		if (t == NULL)
			goto fail;
		secret_free(&t);
		src->token_file = strdup(set->token_file);
		return src; /* no token endpoint: no requests to count */
	case OAUTH2_GRANT_CLIENT_CREDENTIALS:
	case OAUTH2_GRANT_REFRESH_TOKEN:
		if (set->client_id == NULL || set->token_url == NULL) {
			snprintf(error_r, error_size, "oauth2_grant %s needs oauth2_client_id and "
				 "oauth2_token_url", oauth2_grant_words[src->grant]);
			goto fail;
		}
		if (set->client_certificate_file != NULL || set->client_key_file != NULL) {
			if (set->client_secret_file != NULL) {
				snprintf(error_r, error_size, "oauth2_client_secret_file and "
					 "oauth2_client_certificate_file exclude each other");
				goto fail;
			}
			if (load_client_certificate(src, set, error_r, error_size) < 0)
				goto fail;
		} else if (src->grant == OAUTH2_GRANT_CLIENT_CREDENTIALS &&
			   set->client_secret_file == NULL) {
			snprintf(error_r, error_size,
				 "oauth2_grant client_credentials needs oauth2_client_secret_file or "
				 "oauth2_client_certificate_file and oauth2_client_key_file");
			goto fail;
		}
		if (set->client_secret_file != NULL) {
			src->client_secret = secret_read_line(set->client_secret_file, 0, error_r,
							      error_size);
			if (src->client_secret == NULL)
				goto fail;
		}
		if (src->grant == OAUTH2_GRANT_REFRESH_TOKEN) {
			if (set->refresh_token_file == NULL) {
				snprintf(error_r, error_size, "oauth2_grant refresh_token needs "
					 "oauth2_refresh_token_file");
				goto fail;
			}
			src->refresh_token = secret_read_line(set->refresh_token_file, 0, error_r,
							      error_size);
			if (src->refresh_token == NULL)
				goto fail;
			src->refresh_token_file = strdup(set->refresh_token_file);
		}
		break;
	case OAUTH2_GRANT_JWT_BEARER:
		if (set->key_file == NULL || set->scope == NULL) {
			snprintf(error_r, error_size,
				 "oauth2_grant jwt_bearer needs oauth2_key_file and oauth2_scope");
			goto fail;
		}
		if (load_service_account(src, set->key_file, error_r, error_size) < 0)
			goto fail;
		if (src->token_url == NULL) {
			snprintf(error_r, error_size, "oauth2_grant jwt_bearer needs oauth2_token_url "
				 "(or token_uri in the key file)");
			goto fail;
		}
		break;
	}
	if (strncmp(src->token_url, "https://", 8) != 0) {
		snprintf(error_r, error_size, "oauth2_token_url must be https://");
		goto fail;
	}
	struct http_options ho = {
		.ca_file = set->ca_file,
		.connect_timeout_ms = set->timeout,
		.timeout_ms = set->timeout,
	};
	src->http = http_client_new(&ho, error_r, error_size);
	if (src->http == NULL)
		goto fail;
	metrics_oauth2_configured(backend);
	return src;
fail:
	oauth2_source_free(&src);
	return NULL;
}

void oauth2_source_free(struct oauth2_source **srcp)
{
	struct oauth2_source *src = *srcp;

	if (src == NULL)
		return;
	*srcp = NULL;
	for (size_t i = 0; i < src->entry_count; i++) {
		free(src->entries[i].identity);
		secret_free(&src->entries[i].token);
	}
	free(src->entries);
	http_client_free(&src->http);
	free(src->token_url);
	free(src->client_id);
	free(src->scope);
	secret_free(&src->client_secret);
	EVP_PKEY_free(src->client_key);
	secret_free(&src->refresh_token);
	free(src->refresh_token_file);
	free(src->token_file);
	free(src->sa_email);
	free(src->sa_key_id);
	EVP_PKEY_free(src->sa_key);
	pthread_mutex_destroy(&src->lock);
	pthread_cond_destroy(&src->done);
	free(src);
}

int oauth2_source_open(const struct oauth2_settings *set, const char *backend,
		       struct oauth2_source **src_r, char *error_r, size_t error_size)
{
	char why[240];

	*src_r = NULL;
	if (set->grant == OAUTH2_GRANT_NONE)
		return 0;
	*src_r = oauth2_source_new(set, backend, why, sizeof(why));
	if (*src_r == NULL) {
		snprintf(error_r, error_size, "oauth2: %s", why);
		return -1;
	}
	return 0;
}

int oauth2_add_bearer(struct oauth2_source *src, const char *refused,
		      struct curl_slist **headers, char **used_r, struct status *st_r,
		      char *reason, size_t reason_size)
{
	char *token = NULL;

	if (used_r != NULL)
		*used_r = NULL;
	if (src == NULL)
		return 0;
	if (oauth2_token(src, NULL, refused, &token, NULL, st_r, reason, reason_size) < 0)
		return -1;
	/* curl copies the line; the copy lives until the list is freed (not wiped: curl's). */
	int r = http_header_add(headers, "Authorization: Bearer %s", token);
	if (r < 0) {
		fail_status(st_r);
		snprintf(reason, reason_size, "out of memory");
	}
	if (r == 0 && used_r != NULL)
		*used_r = token;
	else
		secret_free(&token);
	return r;
}

int oauth2_per_subject(const struct oauth2_source *src)
{
	return src->grant == OAUTH2_GRANT_JWT_BEARER;
}

void oauth2_describe(const struct oauth2_source *src, const char *subject, char *buf,
		     size_t size)
{
	switch (src->grant) {
	case OAUTH2_GRANT_JWT_BEARER:
		snprintf(buf, size, "oauth2 jwt_bearer iss=%s sub=%s scope=%s", src->sa_email,
			 subject != NULL ? subject : "", src->scope);
		break;
	case OAUTH2_GRANT_TOKEN_FILE:
		snprintf(buf, size, "oauth2 token_file %s", src->token_file);
		break;
	default:
		snprintf(buf, size, "oauth2 %s client=%s scope=%s (one token for every mailbox)",
			 oauth2_grant_words[src->grant], src->client_id,
			 src->scope != NULL ? src->scope : "");
		break;
	}
}

/* --- requests --- */

struct buf {
	char *data;
	size_t len, cap;
	bool failed;
};

static void buf_add(struct buf *b, const char *s, size_t n)
{
	if (b->failed)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = (b->len + n + 1) * 2;
		char *d = malloc(cap);
		if (d == NULL) {
			b->failed = true;
			return;
		}
		if (b->data != NULL) {
			memcpy(d, b->data, b->len);
			secret_free_bytes(b->data, b->cap);
		}
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

/* application/x-www-form-urlencoded name=value (RFC 6749 appendix B). */
static void form_add(struct buf *b, const char *name, const char *value)
{
	static const char hex[] = "0123456789ABCDEF";

	if (value == NULL)
		return;
	if (b->len > 0)
		buf_add(b, "&", 1);
	buf_add(b, name, strlen(name));
	buf_add(b, "=", 1);
	for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
		if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
		    *p == '-' || *p == '.' || *p == '_' || *p == '~') {
			buf_add(b, (const char *)p, 1);
		} else {
			char esc[3] = { '%', hex[*p >> 4], hex[*p & 15] };
			buf_add(b, esc, 3);
		}
	}
}

/* base64url without padding (RFC 7515 2). */
static void b64url_add(struct buf *b, const void *data, size_t len)
{
	char *tmp = malloc(base64_encoded_size(len) + 1);
	if (tmp == NULL) {
		b->failed = true;
		return;
	}
	size_t n = base64_encode(data, len, tmp);
	while (n > 0 && tmp[n - 1] == '=')
		n--;
	for (size_t i = 0; i < n; i++)
		tmp[i] = tmp[i] == '+' ? '-' : tmp[i] == '/' ? '_' : tmp[i];
	buf_add(b, tmp, n);
	free(tmp);
}

/* header.claims.signature, RS256 with key (RFC 7515 compact serialization); NULL on failure.
 * Takes header and claims (decref'd). */
static char *jwt_sign(EVP_PKEY *key, json_t *header, json_t *claims)
{
	struct buf jwt = { 0 };
	char *h = NULL, *c = NULL;
	unsigned char *sig = NULL;
	size_t sig_len = 0;
	EVP_MD_CTX *md = NULL;

	if (header == NULL || claims == NULL)
		goto fail;
	h = json_dumps(header, JSON_COMPACT);
	c = json_dumps(claims, JSON_COMPACT);
	if (h == NULL || c == NULL)
		goto out;
	b64url_add(&jwt, h, strlen(h));
	buf_add(&jwt, ".", 1);
	b64url_add(&jwt, c, strlen(c));
	if (jwt.failed)
		goto out;
	md = EVP_MD_CTX_new();
	if (md == NULL || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
	    EVP_DigestSign(md, NULL, &sig_len, (const unsigned char *)jwt.data, jwt.len) != 1)
		goto fail;
	sig = malloc(sig_len);
	if (sig == NULL ||
	    EVP_DigestSign(md, sig, &sig_len, (const unsigned char *)jwt.data, jwt.len) != 1)
		goto fail;
	buf_add(&jwt, ".", 1);
	b64url_add(&jwt, sig, sig_len);
	if (!jwt.failed)
		goto out;
fail:
	jwt.failed = true;
out:
	EVP_MD_CTX_free(md);
	free(sig);
	free(h);
	free(c);
	json_decref(header);
	json_decref(claims);
	if (jwt.failed) {
		if (jwt.data != NULL)
			secret_free_bytes(jwt.data, jwt.cap);
		return NULL;
	}
	return jwt.data;
}

/* The RS256 assertion of RFC 7523 2.1 for subject, signed with the service account's key. */
static char *jwt_assertion(struct oauth2_source *src, const char *subject)
{
	json_t *header = json_pack("{s:s, s:s}", "alg", "RS256", "typ", "JWT");
	json_t *claims = json_pack("{s:s, s:s, s:s, s:I, s:I}", "iss", src->sa_email, "scope",
				   src->scope, "aud", src->token_url, "iat",
				   (json_int_t)(now_ms() / 1000), "exp",
				   (json_int_t)(now_ms() / 1000 + 3600));

	if (header != NULL && src->sa_key_id != NULL)
		json_object_set_new(header, "kid", json_string(src->sa_key_id));
	if (claims != NULL && subject != NULL && subject[0] != '\0')
		json_object_set_new(claims, "sub", json_string(subject));
	return jwt_sign(src->sa_key, header, claims);
}

/* The client assertion of certificate credentials (RFC 7523 2.2; Microsoft identity
 * platform "certificate credentials"): iss = sub = the client id, aud = the token endpoint,
 * a fresh jti (servers refuse a replayed one), valid for 5 minutes. */
static char *client_assertion(struct oauth2_source *src)
{
	unsigned char nonce[16];
	char jti[33];
	static const char hex[] = "0123456789abcdef";
	json_int_t now = (json_int_t)(now_ms() / 1000);

	if (RAND_bytes(nonce, sizeof(nonce)) != 1)
		return NULL;
	for (size_t i = 0; i < sizeof(nonce); i++) {
		jti[2 * i] = hex[nonce[i] >> 4];
		jti[2 * i + 1] = hex[nonce[i] & 15];
	}
	jti[32] = '\0';
	json_t *header = json_pack("{s:s, s:s, s:s}", "alg", "RS256", "typ", "JWT", "x5t",
				   src->client_x5t);
	json_t *claims = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "aud", src->token_url,
				   "iss", src->client_id, "sub", src->client_id, "jti", jti,
				   "iat", now, "nbf", now, "exp", now + 300);
	return jwt_sign(src->client_key, header, claims);
}

#define CLIENT_ASSERTION_TYPE "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

/* The client's identity and proof (RFC 6749 2.3.1 in the body, or RFC 7521 4.2). -1 when the
 * assertion cannot be signed. */
static int client_authentication(struct oauth2_source *src, struct buf *form)
{
	form_add(form, "client_id", src->client_id);
	if (src->client_key == NULL) {
		form_add(form, "client_secret", src->client_secret);
		return 0;
	}
	char *assertion = client_assertion(src);
	if (assertion == NULL)
		return -1;
	form_add(form, "client_assertion_type", CLIENT_ASSERTION_TYPE);
	form_add(form, "client_assertion", assertion);
	secret_free(&assertion);
	return 0;
}

/* Write token as the new content of path, atomically: a temporary file in the same directory
 * (mode 600 from mkstemp, the old file's owner when we may set it), fsync, rename over the
 * old one, fsync of the directory. Either the old or the new token is in the file, never a
 * torn one. 0, or -1 with errno-based error (no secret in it). */
static int write_secret_file(const char *path, const char *token, char *error, size_t size)
{
	char dir[4096], tmp[4096 + 32];
	const char *slash = strrchr(path, '/');
	struct stat old;
	int fd = -1;

	if (slash == NULL)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == path)
		snprintf(dir, sizeof(dir), "/");
	else
		snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s/.lmtpgw-token.XXXXXX", dir) >= sizeof(tmp)) {
		snprintf(error, size, "path too long");
		return -1;
	}
	fd = mkstemp(tmp);
	if (fd < 0) {
		snprintf(error, size, "cannot create a temporary file in %s: %s", dir,
			 strerror(errno));
		return -1;
	}
	const char *step = "write";
	size_t len = strlen(token);
	bool ok = fchmod(fd, 0600) == 0;
	/* the old file's owner when we may (root); otherwise the file is ours, still mode 600 */
	if (ok && stat(path, &old) == 0 && fchown(fd, old.st_uid, old.st_gid) < 0)
		errno = 0;
	for (size_t off = 0; ok && off < len;) {
		ssize_t n = write(fd, token + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		ok = n > 0;
		off += ok ? (size_t)n : 0;
	}
	ok = ok && write(fd, "\n", 1) == 1;
	if (ok) {
		step = "fsync";
		ok = fsync(fd) == 0;
	}
	if (close(fd) < 0 && ok) {
		step = "close";
		ok = false;
	}
	if (ok) {
		step = "rename";
		ok = rename(tmp, path) == 0;
	}
	if (!ok) {
		snprintf(error, size, "%s: %s", step, strerror(errno));
		unlink(tmp);
		return -1;
	}
	/* the rename itself is durable once the directory is */
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
	return 0;
}

/* Keep a rotated refresh token across restarts. A failure is logged (never the token) and
 * the token in memory stays in use. */
static void save_refresh_token(struct oauth2_source *src, const char *token)
{
	char error[300], esc[LOG_ESC_SIZE];

	if (src->refresh_token_file == NULL)
		return;
	if (write_secret_file(src->refresh_token_file, token, error, sizeof(error)) < 0) {
		log_warn("backend=%s event=oauth2_refresh_token_not_saved file=%s error=\"%s\" "
			 "action=keep_in_memory", src->backend, src->refresh_token_file,
			 log_esc(esc, error));
		return;
	}
	log_info("backend=%s event=oauth2_refresh_token_saved file=%s", src->backend,
		 src->refresh_token_file);
}

long long oauth2_lifetime_s(const json_t *expires_in)
{
	long long s = 0;

	if (json_is_integer(expires_in)) {
		s = json_integer_value(expires_in);
	} else if (json_is_real(expires_in)) {
		double d = json_real_value(expires_in);
		s = d >= LIFETIME_MAX_S ? LIFETIME_MAX_S : d >= 1 ? (long long)d : 0;
	} else if (json_is_string(expires_in)) {
		/* some servers quote it: digits only, saturating (strtoll: LLONG_MAX on overflow) */
		const char *text = json_string_value(expires_in);
		char *end;
		s = text[0] >= '0' && text[0] <= '9' ? strtoll(text, &end, 10) : 0;
		if (s != 0 && *end != '\0')
			s = 0;
	}
	if (s <= 0)
		return DEFAULT_LIFETIME_S;
	return s > LIFETIME_MAX_S ? LIFETIME_MAX_S : s;
}

/* Whom a token endpoint's refusal concerns: with jwt_bearer, invalid_grant is about the
 * assertion's subject (Google: "Invalid email or User ID", a suspended user), unless its
 * description names the assertion itself (Google: "Invalid JWT Signature." for a deleted key,
 * "Invalid JWT: Token must be a short-lived token ..." for a clock far off), which is the same
 * for every subject. Every other refusal (invalid_client, unauthorized_client, invalid_scope,
 * ...) and invalid_grant of the other grants (one client, one refresh token) concerns every
 * identity. The description is only looked at, never logged (it may echo what we sent). */
static enum oauth2_failure refusal_scope(const struct oauth2_source *src, long status,
					 const char *error, const char *description)
{
	if (src->grant == OAUTH2_GRANT_JWT_BEARER && status == 400 && error != NULL &&
	    strcmp(error, "invalid_grant") == 0 &&
	    (description == NULL || (strcasestr(description, "jwt") == NULL &&
				     strcasestr(description, "signature") == NULL &&
				     strcasestr(description, "assertion") == NULL)))
		return OAUTH2_FAILURE_SUBJECT;
	return OAUTH2_FAILURE_SOURCE;
}

/* A token request for subject: 0 with a new token and its lifetime in seconds, or -1 with a
 * reason (no secret in it) and whom the failure concerns. */
static int request_token(struct oauth2_source *src, const char *subject, char **token_r,
			 long long *lifetime_r, enum oauth2_failure *failure_r, char *reason,
			 size_t reason_size)
{
	struct buf form = { 0 };
	char *assertion = NULL;

	*failure_r = OAUTH2_FAILURE_SOURCE;

	switch (src->grant) {
	case OAUTH2_GRANT_CLIENT_CREDENTIALS:
	case OAUTH2_GRANT_REFRESH_TOKEN:
		if (src->grant == OAUTH2_GRANT_CLIENT_CREDENTIALS) {
			form_add(&form, "grant_type", "client_credentials");
		} else {
			form_add(&form, "grant_type", "refresh_token");
			form_add(&form, "refresh_token", src->refresh_token);
		}
		if (client_authentication(src, &form) < 0) {
			if (form.data != NULL)
				secret_free_bytes(form.data, form.cap);
			snprintf(reason, reason_size, "cannot sign the client assertion");
			return -1;
		}
		form_add(&form, "scope", src->scope);
		break;
	case OAUTH2_GRANT_JWT_BEARER:
		assertion = jwt_assertion(src, subject);
		if (assertion == NULL) {
			snprintf(reason, reason_size, "cannot sign the JWT assertion");
			return -1;
		}
		form_add(&form, "grant_type", JWT_BEARER_GRANT);
		form_add(&form, "assertion", assertion);
		secret_free(&assertion);
		break;
	default:
		snprintf(reason, reason_size, "no token request for this grant");
		return -1;
	}
	if (form.failed) {
		if (form.data != NULL)
			secret_free_bytes(form.data, form.cap);
		snprintf(reason, reason_size, "out of memory");
		return -1;
	}

	struct curl_slist *headers = NULL;
	http_header_add(&headers, "Content-Type: application/x-www-form-urlencoded");
	http_header_add(&headers, "Accept: application/json");
	struct http_request req = {
		.method = "POST",
		.url = src->token_url,
		.headers = headers,
		.body = form.data,
		.body_len = form.len,
		.response_max = RESPONSE_MAX,
		.no_expect = true,
	};
	struct http_response resp = { 0 };
	struct status st;
	int r = http_perform(src->http, &req, &resp, &st, reason, reason_size);
	http_headers_free(&headers);
	secret_free_bytes(form.data, form.cap);
	if (r < 0) {
		/* reason is the transport's: prefix which endpoint it was */
		char detail[256];
		snprintf(detail, sizeof(detail), "%s", reason);
		snprintf(reason, reason_size, "token endpoint %s: %s", src->token_url, detail);
		return -1;
	}

	json_error_t jerr;
	json_t *doc = resp.body != NULL && !resp.truncated ? json_loads(resp.body, 0, &jerr) : NULL;
	int rc = -1;
	if (resp.status != 200) {
		/* RFC 6749 5.2: {"error": "invalid_client", ...}; the code only, the description
		 * may echo what we sent. */
		const char *error = json_string_value(json_object_get(doc, "error"));
		char word[64] = "";
		if (error != NULL) {
			size_t n = 0;
			for (const char *p = error; *p && n + 1 < sizeof(word); p++)
				word[n++] = (*p >= 'a' && *p <= 'z') || *p == '_' ? *p : '?';
			word[n] = '\0';
		}
		snprintf(reason, reason_size, "token endpoint %s answered %ld %s", src->token_url,
			 resp.status, word);
		*failure_r = refusal_scope(src, resp.status, error,
					   json_string_value(json_object_get(doc, "error_description")));
		goto out;
	}
	const char *token = json_string_value(json_object_get(doc, "access_token"));
	const char *type = json_string_value(json_object_get(doc, "token_type"));
	json_t *expires = json_object_get(doc, "expires_in");
	if (token == NULL || token[0] == '\0' || strpbrk(token, " \r\n\x01") != NULL) {
		snprintf(reason, reason_size, "token endpoint %s: no usable access_token in the answer",
			 src->token_url);
		goto out;
	}
	if (type != NULL && strcasecmp(type, "bearer") != 0) {
		snprintf(reason, reason_size, "token endpoint %s: token_type is not Bearer",
			 src->token_url);
		goto out;
	}
	*lifetime_r = oauth2_lifetime_s(expires);
	*token_r = strdup(token);
	/* A rotated refresh token replaces ours, in memory and in its file: servers that rotate
	 * (Microsoft's identity platform, RFC 9700 4.14.2) may revoke the old one, and a restart
	 * must not start from a revoked token. Only one request is in flight for the single
	 * identity of this grant, so there is one writer at a time. */
	const char *rotated = json_string_value(json_object_get(doc, "refresh_token"));
	if (src->grant == OAUTH2_GRANT_REFRESH_TOKEN && rotated != NULL && rotated[0] != '\0' &&
	    strpbrk(rotated, "\r\n") == NULL && strcmp(rotated, src->refresh_token) != 0) {
		char *copy = strdup(rotated);
		if (copy != NULL) {
			pthread_mutex_lock(&src->lock);
			secret_free(&src->refresh_token);
			src->refresh_token = copy;
			pthread_mutex_unlock(&src->lock);
			save_refresh_token(src, copy);
		}
	}
	rc = *token_r != NULL ? 0 : -1;
	if (rc < 0)
		snprintf(reason, reason_size, "out of memory");
	else
		*failure_r = OAUTH2_FAILURE_NONE;
out:
	/* The answer held the token: wipe it before it is freed. */
	if (resp.body != NULL)
		memset(resp.body, 0, resp.body_len);
	json_decref(doc);
	http_response_free(&resp);
	return rc;
}

/* token_file: the current token of the file, or -1. */
static int read_token_file(struct oauth2_source *src, struct entry *e, char **token_r,
			   char *reason, size_t reason_size)
{
	struct stat sb;
	char error[256];

	if (stat(src->token_file, &sb) < 0) {
		snprintf(reason, reason_size, "token file %s: cannot stat", src->token_file);
		return -1;
	}
	*token_r = secret_read_line(src->token_file, 0, error, sizeof(error));
	if (*token_r == NULL) {
		snprintf(reason, reason_size, "%s", error);
		return -1;
	}
	e->ino = sb.st_ino;
	e->size = sb.st_size;
	e->mtime = sb.st_mtim;
	return 0;
}

static bool token_file_changed(const struct oauth2_source *src, const struct entry *e)
{
	struct stat sb;

	if (stat(src->token_file, &sb) < 0)
		return true;
	return sb.st_ino != e->ino || sb.st_size != e->size ||
	       sb.st_mtim.tv_sec != e->mtime.tv_sec || sb.st_mtim.tv_nsec != e->mtime.tv_nsec;
}

static bool entry_has_valid_token(const struct oauth2_source *src, const struct entry *e,
				  int64_t now)
{
	return e->token != NULL && (src->grant == OAUTH2_GRANT_TOKEN_FILE || now < e->expires_at_ms);
}

static void entry_remove(struct oauth2_source *src, size_t i)
{
	free(src->entries[i].identity);
	secret_free(&src->entries[i].token);
	src->entries[i] = src->entries[--src->entry_count];
}

/* Room for one more identity in a full table: drop the entries without a valid token, else
 * the one used least recently. Never one with a request in flight (its waiters look it up
 * again when they wake, by identity). false when every entry has one in flight. */
static bool entries_make_room(struct oauth2_source *src)
{
	int64_t now = mono_ms();
	size_t before = src->entry_count, lru = SIZE_MAX;

	for (size_t i = src->entry_count; i-- > 0;) {
		const struct entry *e = &src->entries[i];
		if (e->fetching)
			continue;
		if (!entry_has_valid_token(src, e, now))
			entry_remove(src, i);
	}
	if (src->entry_count < before)
		return true;
	for (size_t i = 0; i < src->entry_count; i++) {
		if (!src->entries[i].fetching &&
		    (lru == SIZE_MAX || src->entries[i].last_used_ms < src->entries[lru].last_used_ms))
			lru = i;
	}
	if (lru == SIZE_MAX)
		return false;
	entry_remove(src, lru);
	return true;
}

/* The entry of identity, created when new (NULL: out of memory or no room). Pointers into the
 * table stay valid only until the next call: the table grows and entries move. */
static struct entry *entry_for(struct oauth2_source *src, const char *identity)
{
	for (size_t i = 0; i < src->entry_count; i++) {
		if (strcmp(src->entries[i].identity, identity) == 0)
			return &src->entries[i];
	}
	if (src->entry_count >= src->max_identities && !entries_make_room(src))
		return NULL;
	struct entry *n = realloc(src->entries, (src->entry_count + 1) * sizeof(*n));
	if (n == NULL)
		return NULL;
	src->entries = n;
	struct entry *e = &src->entries[src->entry_count];
	memset(e, 0, sizeof(*e));
	e->identity = strdup(identity);
	if (e->identity == NULL)
		return NULL;
	src->entry_count++;
	return e;
}

int oauth2_token(struct oauth2_source *src, const char *subject, const char *refused,
		 char **token_r, enum oauth2_failure *failure_r, struct status *st_r, char *reason,
		 size_t reason_size)
{
	const char *identity = oauth2_per_subject(src) && subject != NULL ? subject : "";
	enum oauth2_failure failure_scratch;
	bool waited = false;

	if (failure_r == NULL)
		failure_r = &failure_scratch;
	*failure_r = OAUTH2_FAILURE_NONE;
	*token_r = NULL;
	pthread_mutex_lock(&src->lock);
	for (;;) {
		/* entries may move when another identity is added: look it up each round */
		struct entry *e = entry_for(src, identity);
		if (e == NULL) {
			pthread_mutex_unlock(&src->lock);
			fail_status(st_r);
			*failure_r = OAUTH2_FAILURE_SOURCE;
			snprintf(reason, reason_size, "out of memory");
			return -1;
		}
		int64_t now = mono_ms();
		e->last_used_ms = now;
		if (e->token != NULL && src->grant == OAUTH2_GRANT_TOKEN_FILE && !e->fetching &&
		    token_file_changed(src, e))
			secret_free(&e->token);
		/* A refused token is never handed out again, an expired one neither. */
		if (e->token != NULL && ((refused != NULL && strcmp(e->token, refused) == 0) ||
					 !entry_has_valid_token(src, e, now)))
			secret_free(&e->token);
		bool valid = entry_has_valid_token(src, e, now);
		/* Inside the refresh margin one caller asks for a new token (after a failure: not
		 * before the back-off); meanwhile, and when that fails, the valid one is used. */
		bool refresh_due = valid && src->grant != OAUTH2_GRANT_TOKEN_FILE &&
				   now >= e->refresh_at_ms && now >= e->retry_at_ms;
		if (valid && (!refresh_due || e->fetching)) {
			*token_r = strdup(e->token);
			pthread_mutex_unlock(&src->lock);
			if (*token_r == NULL) {
				fail_status(st_r);
				*failure_r = OAUTH2_FAILURE_SOURCE;
				snprintf(reason, reason_size, "out of memory");
				return -1;
			}
			return 0;
		}
		if (e->fetching) {
			/* One request per identity: wait for it and take its result. */
			unsigned generation = e->generation;
			while ((e = entry_for(src, identity)) != NULL && e->fetching &&
			       e->generation == generation)
				pthread_cond_wait(&src->done, &src->lock);
			if (e != NULL && e->generation != generation && e->last_failed &&
			    !entry_has_valid_token(src, e, mono_ms())) {
				*st_r = e->last_status;
				*failure_r = e->last_failure;
				snprintf(reason, reason_size, "%s", e->last_reason);
				pthread_mutex_unlock(&src->lock);
				return -1;
			}
			if (waited)
				refused = NULL; /* a second round: take what the other request got */
			waited = true;
			continue;
		}
		e->fetching = true;
		pthread_mutex_unlock(&src->lock);

		char *token = NULL;
		long long lifetime_s = 0;
		enum oauth2_failure failure = OAUTH2_FAILURE_SOURCE;
		char why[256] = "";
		int r;
		/* The lifetime counts from before the request: the server's clock started then. */
		int64_t asked_ms = mono_ms();
		if (src->grant == OAUTH2_GRANT_TOKEN_FILE) {
			struct entry scratch = { 0 };
			r = read_token_file(src, &scratch, &token, why, sizeof(why));
			if (r == 0 && refused != NULL && strcmp(token, refused) == 0) {
				/* The file still holds the token the server refused. */
				secret_free(&token);
				snprintf(why, sizeof(why), "token file %s: its token was refused; waiting "
					 "for the program that renews it", src->token_file);
				r = -1;
			}
			pthread_mutex_lock(&src->lock);
			e = entry_for(src, identity);
			if (e != NULL && r == 0) {
				e->ino = scratch.ino;
				e->size = scratch.size;
				e->mtime = scratch.mtime;
			}
		} else {
			r = request_token(src, subject, &token, &lifetime_s, &failure, why,
					  sizeof(why));
			metrics_oauth2_token_request(src->backend, r == 0);
			pthread_mutex_lock(&src->lock);
			e = entry_for(src, identity);
		}
		if (e == NULL) {
			secret_free(&token);
			pthread_mutex_unlock(&src->lock);
			fail_status(st_r);
			*failure_r = OAUTH2_FAILURE_SOURCE;
			snprintf(reason, reason_size, "out of memory");
			return -1;
		}
		e->fetching = false;
		e->generation++;
		if (r == 0) {
			secret_free(&e->token);
			e->token = token;
			/* lifetime_s <= LIFETIME_MAX_S: no overflow */
			int64_t lifetime_ms = (int64_t)lifetime_s * 1000;
			int64_t margin = src->refresh_margin_ms;
			if (margin > lifetime_ms / 4)
				margin = lifetime_ms / 4;
			e->expires_at_ms = asked_ms + lifetime_ms;
			e->refresh_at_ms = e->expires_at_ms - margin;
			e->retry_at_ms = 0;
			e->last_failed = false;
			e->last_failure = OAUTH2_FAILURE_NONE;
			*token_r = strdup(token);
		} else {
			e->last_failed = true;
			e->last_failure = failure;
			fail_status(&e->last_status);
			snprintf(e->last_reason, sizeof(e->last_reason), "%s", why);
			if (entry_has_valid_token(src, e, mono_ms())) {
				/* A refresh inside the margin failed: keep the token until it expires,
				 * ask again after the back-off. */
				e->retry_at_ms = mono_ms() + REFRESH_RETRY_MS;
				*token_r = strdup(e->token);
				char esc[LOG_ESC_SIZE];
				log_warn("event=oauth2_refresh_failed backend=%s identity=%s "
					 "valid_for_ms=%lld reason=\"%s\"", src->backend,
					 log_esc(esc, identity[0] ? identity : "-"),
					 (long long)(e->expires_at_ms - mono_ms()), why);
				r = 0;
			}
		}
		pthread_cond_broadcast(&src->done);
		pthread_mutex_unlock(&src->lock);
		if (r < 0 || *token_r == NULL) {
			fail_status(st_r);
			*failure_r = r < 0 ? failure : OAUTH2_FAILURE_SOURCE;
			snprintf(reason, reason_size, "%s", r < 0 ? why : "out of memory");
			return -1;
		}
		return 0;
	}
}

/* --- SASL --- */

/* The end both SASL responses share: "auth=Bearer TOKEN", two ^A; the response, or NULL (then
 * wiped) when out of memory. */
static char *sasl_finish(struct buf *b, const char *token)
{
	buf_add(b, "\001auth=Bearer ", 13);
	buf_add(b, token, strlen(token));
	buf_add(b, "\001\001", 2);
	if (b->failed) {
		if (b->data != NULL)
			secret_free_bytes(b->data, b->cap);
		return NULL;
	}
	return b->data;
}

char *oauth2_sasl_xoauth2(const char *user, const char *token)
{
	struct buf b = { 0 };

	buf_add(&b, "user=", 5);
	buf_add(&b, user, strlen(user));
	return sasl_finish(&b, token);
}

char *oauth2_sasl_oauthbearer(const char *user, const char *host, const char *port,
			      const char *token)
{
	struct buf b = { 0 };

	/* gs2-header "n,a=saslname," with ',' as =2C and '=' as =3D (RFC 5801 4). */
	buf_add(&b, "n,a=", 4);
	for (const char *p = user; *p; p++) {
		if (*p == ',')
			buf_add(&b, "=2C", 3);
		else if (*p == '=')
			buf_add(&b, "=3D", 3);
		else
			buf_add(&b, p, 1);
	}
	buf_add(&b, ",\001host=", 7);
	buf_add(&b, host, strlen(host));
	buf_add(&b, "\001port=", 6);
	buf_add(&b, port, strlen(port));
	return sasl_finish(&b, token);
}
