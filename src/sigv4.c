/*
 * sigv4 - AWS Signature Version 4 (see include/sigv4.h for the algorithm and the rules).
 *
 * Bounded output buffers everywhere: a small string builder that records overflow once and
 * lets the caller check at the end, so no step needs its own length arithmetic.
 */
#include "sigv4.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#define SIGV4_MAX_PARAMS 64
#define SIGV4_NAME_MAX 128

struct sbuf {
	char *out;
	size_t size, len;
	bool overflow;
};

static void sb_init(struct sbuf *b, char *out, size_t size)
{
	b->out = out;
	b->size = size;
	b->len = 0;
	b->overflow = size == 0;
	if (size > 0)
		out[0] = '\0';
}

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
	if (b->overflow)
		return;
	if (n >= b->size - b->len) {
		b->overflow = true;
		return;
	}
	memcpy(b->out + b->len, s, n);
	b->len += n;
	b->out[b->len] = '\0';
}

static void sb_str(struct sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

static void sb_char(struct sbuf *b, char c)
{
	sb_add(b, &c, 1);
}

static int sb_done(struct sbuf *b)
{
	if (b->overflow) {
		if (b->size > 0)
			b->out[0] = '\0';
		return -1;
	}
	return (int)b->len;
}

/* RFC 3986 section 2.3 unreserved characters; AWS encodes everything else. */
static bool unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '.' || c == '_' || c == '~';
}

static void sb_encode(struct sbuf *b, const char *in, size_t len, bool keep_slash)
{
	static const char hex[] = "0123456789ABCDEF";

	for (size_t i = 0; i < len && !b->overflow; i++) {
		unsigned char c = (unsigned char)in[i];
		if (unreserved(c) || (keep_slash && c == '/')) {
			sb_char(b, (char)c);
		} else {
			char pct[3] = { '%', hex[c >> 4], hex[c & 0x0f] };
			sb_add(b, pct, 3);
		}
	}
}

void sigv4_amz_date(time_t t, char out[SIGV4_AMZ_DATE_SIZE])
{
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL ||
	    strftime(out, SIGV4_AMZ_DATE_SIZE, "%Y%m%dT%H%M%SZ", &tm) == 0)
		snprintf(out, SIGV4_AMZ_DATE_SIZE, "19700101T000000Z");
}

int sigv4_uri_encode(const char *in, size_t len, bool keep_slash, char *out, size_t size)
{
	struct sbuf b;

	sb_init(&b, out, size);
	sb_encode(&b, in, len, keep_slash);
	return sb_done(&b);
}

struct enc_param {
	char name[3 * SIGV4_NAME_MAX + 1];
	char *value;              /* encoded, heap */
};

static int cmp_param(const void *a, const void *b)
{
	const struct enc_param *x = a, *y = b;
	int r = strcmp(x->name, y->name);
	return r != 0 ? r : strcmp(x->value, y->value);
}

int sigv4_canonical_query(const struct sigv4_param *query, size_t count, char *out, size_t size)
{
	struct enc_param params[SIGV4_MAX_PARAMS];
	struct sbuf b;
	int result = -1;
	size_t done = 0;

	sb_init(&b, out, size);
	if (count > SIGV4_MAX_PARAMS) {
		b.overflow = true;
		return sb_done(&b);
	}
	for (; done < count; done++) {
		const char *v = query[done].value != NULL ? query[done].value : "";
		size_t vlen = strlen(v);
		if (sigv4_uri_encode(query[done].name, strlen(query[done].name), false,
				     params[done].name, sizeof(params[done].name)) < 0)
			goto out;
		params[done].value = malloc(3 * vlen + 1);
		if (params[done].value == NULL ||
		    sigv4_uri_encode(v, vlen, false, params[done].value, 3 * vlen + 1) < 0) {
			free(params[done].value);
			goto out;
		}
	}
	qsort(params, count, sizeof(params[0]), cmp_param);
	for (size_t i = 0; i < count; i++) {
		if (i > 0)
			sb_char(&b, '&');
		sb_str(&b, params[i].name);
		sb_char(&b, '=');   /* always, even for "uploads" (curl's bug) */
		sb_str(&b, params[i].value);
	}
	result = sb_done(&b);
out:
	for (size_t i = 0; i < done; i++)
		free(params[i].value);
	if (result < 0 && size > 0)
		out[0] = '\0';
	return result;
}

struct canon_header {
	char name[SIGV4_NAME_MAX];
	const char *value;
};

static int cmp_header(const void *a, const void *b)
{
	const struct canon_header *x = a, *y = b;
	return strcmp(x->name, y->name);
}

/* Trim the value and collapse runs of spaces/tabs into one space (AWS "Trimall"). */
static void sb_trimmed(struct sbuf *b, const char *v)
{
	bool space = false;

	while (*v == ' ' || *v == '\t')
		v++;
	for (; *v != '\0'; v++) {
		if (*v == ' ' || *v == '\t') {
			space = true;
			continue;
		}
		if (space)
			sb_char(b, ' ');
		space = false;
		sb_char(b, *v);
	}
}

int sigv4_canonical_request(const struct sigv4_request *req, char *out, size_t size,
			    char *signed_r, size_t signed_size)
{
	struct canon_header h[SIGV4_MAX_PARAMS];
	char signed_headers[2048];
	struct sbuf b, s;
	size_t n = req->header_count;

	sb_init(&b, out, size);
	sb_init(&s, signed_headers, sizeof(signed_headers));
	if (signed_r != NULL && signed_size > 0)
		signed_r[0] = '\0';
	if (n > SIGV4_MAX_PARAMS)
		b.overflow = true;
	for (size_t i = 0; i < n && !b.overflow; i++) {
		size_t len = strlen(req->headers[i].name);
		if (len == 0 || len >= sizeof(h[i].name)) {
			b.overflow = true;
			break;
		}
		for (size_t k = 0; k <= len; k++) {
			char c = req->headers[i].name[k];
			h[i].name[k] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
		}
		h[i].value = req->headers[i].value != NULL ? req->headers[i].value : "";
	}
	if (b.overflow)
		return sb_done(&b);
	/* Insertion sort: stable, so repeated names keep their order when joined with ','. */
	for (size_t i = 1; i < n; i++) {
		struct canon_header x = h[i];
		size_t k = i;
		while (k > 0 && cmp_header(&h[k - 1], &x) > 0) {
			h[k] = h[k - 1];
			k--;
		}
		h[k] = x;
	}

	sb_str(&b, req->method);
	sb_char(&b, '\n');
	const char *path = req->path != NULL && req->path[0] != '\0' ? req->path : "/";
	sb_encode(&b, path, strlen(path), true);
	sb_char(&b, '\n');
	if (b.overflow)
		return sb_done(&b);
	int q = sigv4_canonical_query(req->query, req->query_count, b.out + b.len, b.size - b.len);
	if (q < 0)
		b.overflow = true;
	else
		b.len += (size_t)q;
	sb_char(&b, '\n');
	for (size_t i = 0; i < n; i++) {
		bool repeat = i > 0 && strcmp(h[i].name, h[i - 1].name) == 0;
		if (repeat) {
			sb_char(&b, ',');
		} else {
			if (i > 0)
				sb_char(&b, '\n');
			sb_str(&b, h[i].name);
			sb_char(&b, ':');
			if (s.len > 0)
				sb_char(&s, ';');
			sb_str(&s, h[i].name);
		}
		sb_trimmed(&b, h[i].value);
	}
	sb_str(&b, "\n\n");
	sb_str(&b, s.out);
	sb_char(&b, '\n');
	sb_str(&b, req->payload_hash != NULL ? req->payload_hash : SIGV4_EMPTY_SHA256);
	if (s.overflow)
		b.overflow = true;
	if (signed_r != NULL && !b.overflow &&
	    snprintf(signed_r, signed_size, "%s", signed_headers) >= (int)signed_size)
		b.overflow = true;
	return sb_done(&b);
}

void sigv4_hex(const uint8_t digest[32], char out[SIGV4_HEX_SHA256_SIZE])
{
	static const char hex[] = "0123456789abcdef";

	for (size_t i = 0; i < 32; i++) {
		out[2 * i] = hex[digest[i] >> 4];
		out[2 * i + 1] = hex[digest[i] & 0x0f];
	}
	out[64] = '\0';
}

void sigv4_sha256_hex(const void *data, size_t len, char out[SIGV4_HEX_SHA256_SIZE])
{
	uint8_t d[32];

	SHA256(data, len, d);
	sigv4_hex(d, out);
}

int sigv4_string_to_sign(const char *amz_date, const char *region, const char *service,
			 const char *canonical_request, char *out, size_t size)
{
	char hash[SIGV4_HEX_SHA256_SIZE];
	struct sbuf b;

	sb_init(&b, out, size);
	if (strlen(amz_date) != SIGV4_AMZ_DATE_SIZE - 1)
		b.overflow = true;
	sigv4_sha256_hex(canonical_request, strlen(canonical_request), hash);
	sb_str(&b, "AWS4-HMAC-SHA256\n");
	sb_str(&b, amz_date);
	sb_char(&b, '\n');
	sb_add(&b, amz_date, 8);
	sb_char(&b, '/');
	sb_str(&b, region);
	sb_char(&b, '/');
	sb_str(&b, service);
	sb_str(&b, "/aws4_request\n");
	sb_str(&b, hash);
	return sb_done(&b);
}

static int hmac(const void *key, size_t key_len, const void *data, size_t len, uint8_t out[32])
{
	unsigned int out_len = 32;

	if (HMAC(EVP_sha256(), key, (int)key_len, data, len, out, &out_len) == NULL ||
	    out_len != 32)
		return -1;
	return 0;
}

int sigv4_signing_key(const char *secret_key, const char *amz_date, const char *region,
		      const char *service, uint8_t key_r[32])
{
	char first[256];
	uint8_t k1[32], k2[32], k3[32];
	int r = -1;

	int n = snprintf(first, sizeof(first), "AWS4%s", secret_key);
	if (n < 0 || (size_t)n >= sizeof(first) || strlen(amz_date) < 8)
		goto out;
	if (hmac(first, (size_t)n, amz_date, 8, k1) < 0 ||
	    hmac(k1, 32, region, strlen(region), k2) < 0 ||
	    hmac(k2, 32, service, strlen(service), k3) < 0 ||
	    hmac(k3, 32, "aws4_request", 12, key_r) < 0)
		goto out;
	r = 0;
out:
	explicit_bzero(first, sizeof(first));
	explicit_bzero(k1, sizeof(k1));
	explicit_bzero(k2, sizeof(k2));
	explicit_bzero(k3, sizeof(k3));
	return r;
}

int sigv4_authorization(const struct sigv4_request *req, const struct sigv4_credentials *cred,
			const char *amz_date, const char *region, const char *service, char *out,
			size_t size)
{
	char canonical[16384], signed_headers[2048], sts[512], sig[SIGV4_HEX_SHA256_SIZE];
	uint8_t key[32], mac[32];
	struct sbuf b;

	sb_init(&b, out, size);
	if (sigv4_canonical_request(req, canonical, sizeof(canonical), signed_headers,
				    sizeof(signed_headers)) < 0 ||
	    sigv4_string_to_sign(amz_date, region, service, canonical, sts, sizeof(sts)) < 0 ||
	    sigv4_signing_key(cred->secret_key, amz_date, region, service, key) < 0) {
		b.overflow = true;
		return sb_done(&b);
	}
	int r = hmac(key, sizeof(key), sts, strlen(sts), mac);
	explicit_bzero(key, sizeof(key));
	if (r < 0) {
		b.overflow = true;
		return sb_done(&b);
	}
	sigv4_hex(mac, sig);
	sb_str(&b, "AWS4-HMAC-SHA256 Credential=");
	sb_str(&b, cred->access_key);
	sb_char(&b, '/');
	sb_add(&b, amz_date, 8);
	sb_char(&b, '/');
	sb_str(&b, region);
	sb_char(&b, '/');
	sb_str(&b, service);
	sb_str(&b, "/aws4_request, SignedHeaders=");
	sb_str(&b, signed_headers);
	sb_str(&b, ", Signature=");
	sb_str(&b, sig);
	return sb_done(&b);
}
