/*
 * webhook_sign - Standard Webhooks ids, secrets, HMAC-SHA256 and Ed25519 signatures (see
 * webhook_sign.h), with OpenSSL's EVP digest, MAC and signature interfaces.
 */
#include "webhook_sign.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/pem.h>

#include "base64.h"
#include "secret.h"

int webhook_secret_decode(const char *text, unsigned char **key_r, size_t *key_len_r)
{
	size_t len = strlen(text);

	while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' ' ||
			   text[len - 1] == '\t'))
		len--;
	if (len == 0)
		return -1;
	if (len > 6 && strncmp(text, "whsec_", 6) == 0) {
		const char *b64 = text + 6;
		size_t b64_len = len - 6;
		if (b64_len > 4096)
			return -1;
		unsigned char *key = malloc(b64_len);
		if (key == NULL)
			return -1;
		ssize_t n = base64_decode(b64, b64_len, key);
		if (n <= 0) {
			explicit_bzero(key, b64_len);
			free(key);
			return -1;
		}
		*key_r = key;
		*key_len_r = (size_t)n;
		return 0;
	}
	unsigned char *key = malloc(len);
	if (key == NULL)
		return -1;
	memcpy(key, text, len);
	*key_r = key;
	*key_len_r = len;
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int webhook_event_id(const char *sha256_hex, const char *const *rcpts, size_t count,
		     char id_r[WEBHOOK_ID_SIZE])
{
	const char **sorted = malloc((count ? count : 1) * sizeof(*sorted));
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char digest[32];
	unsigned int dlen = 0;
	int ret = -1;

	if (sorted == NULL || md == NULL)
		goto out;
	memcpy(sorted, rcpts, count * sizeof(*sorted));
	qsort(sorted, count, sizeof(*sorted), cmp_str);
	if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(md, sha256_hex, strlen(sha256_hex)) != 1)
		goto out;
	for (size_t i = 0; i < count; i++) {
		if (EVP_DigestUpdate(md, "\n", 1) != 1 ||
		    EVP_DigestUpdate(md, sorted[i], strlen(sorted[i])) != 1)
			goto out;
	}
	if (EVP_DigestFinal_ex(md, digest, &dlen) != 1 || dlen != 32)
		goto out;
	memcpy(id_r, "msg_", 4);
	for (size_t i = 0; i < 32; i++)
		snprintf(id_r + 4 + 2 * i, 3, "%02x", digest[i]);
	ret = 0;
out:
	EVP_MD_CTX_free(md);
	free(sorted);
	return ret;
}

int webhook_ed25519_key_load(const char *path, EVP_PKEY **key_r, char *error_r,
			     size_t error_size)
{
	char *text = secret_read_file(path, error_r, error_size);
	EVP_PKEY *key = NULL;

	*key_r = NULL;
	if (text == NULL)
		return -1;
	BIO *bio = BIO_new_mem_buf(text, (int)strlen(text));
	if (bio != NULL) {
		/* no passphrase callback: an encrypted key fails here instead of prompting */
		key = PEM_read_bio_PrivateKey(bio, NULL, NULL, (void *)"");
		BIO_free(bio);
	}
	secret_free(&text);
	if (key == NULL) {
		snprintf(error_r, error_size,
			 "%s: not a PEM private key (make one with openssl genpkey -algorithm ed25519)",
			 path);
		return -1;
	}
	if (EVP_PKEY_get_id(key) != EVP_PKEY_ED25519) {
		snprintf(error_r, error_size, "%s: not an Ed25519 key (it is %s)", path,
			 EVP_PKEY_get0_type_name(key) ? EVP_PKEY_get0_type_name(key) : "unknown");
		EVP_PKEY_free(key);
		return -1;
	}
	*key_r = key;
	return 0;
}

void webhook_ed25519_key_free(EVP_PKEY **key)
{
	EVP_PKEY_free(*key); /* OpenSSL clears private key material when it frees it */
	*key = NULL;
}

struct webhook_signer {
	EVP_MAC *mac;
	EVP_MAC_CTX *ctx[2];
	size_t count;
	/* Ed25519: the keys, and the content so far ("id.timestamp." + body) */
	EVP_PKEY *ed_keys[WEBHOOK_ED25519_KEYS_MAX];
	size_t ed_count;
	unsigned char *content;
	size_t content_len, content_cap;
	char head[WEBHOOK_ID_SIZE + 32];
	size_t head_len;
};

static void signer_free(struct webhook_signer *s)
{
	if (s == NULL)
		return;
	for (size_t i = 0; i < s->count; i++)
		EVP_MAC_CTX_free(s->ctx[i]);
	EVP_MAC_free(s->mac);
	free(s->content);
	free(s);
}

/* Keep a copy of the content for the Ed25519 signatures (grows geometrically). */
static int content_append(struct webhook_signer *s, const void *data, size_t len)
{
	if (len > s->content_cap - s->content_len) {
		size_t cap = s->content_cap ? s->content_cap : 64 * 1024;
		while (cap - s->content_len < len) {
			if (cap > SIZE_MAX / 2)
				return -1;
			cap *= 2;
		}
		unsigned char *n = realloc(s->content, cap);
		if (n == NULL)
			return -1;
		s->content = n;
		s->content_cap = cap;
	}
	memcpy(s->content + s->content_len, data, len);
	s->content_len += len;
	return 0;
}

struct webhook_signer *webhook_signer_new(const unsigned char *const *keys, const size_t *key_lens,
					  size_t key_count, const char *id, long long timestamp)
{
	struct webhook_signer *s = calloc(1, sizeof(*s));
	char digest_name[] = "SHA256";
	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest_name, 0),
		OSSL_PARAM_construct_end(),
	};

	if (s == NULL || key_count > 2)
		goto fail;
	int head_len = snprintf(s->head, sizeof(s->head), "%s.%lld.", id, timestamp);
	if (head_len < 0 || (size_t)head_len >= sizeof(s->head))
		goto fail;
	s->head_len = (size_t)head_len;
	if (key_count == 0)
		return s;
	s->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	if (s->mac == NULL)
		goto fail;
	for (size_t i = 0; i < key_count; i++) {
		s->ctx[i] = EVP_MAC_CTX_new(s->mac);
		if (s->ctx[i] == NULL)
			goto fail;
		s->count++;
		if (EVP_MAC_init(s->ctx[i], keys[i], key_lens[i], params) != 1 ||
		    EVP_MAC_update(s->ctx[i], (const unsigned char *)s->head, s->head_len) != 1)
			goto fail;
	}
	return s;
fail:
	signer_free(s);
	return NULL;
}

int webhook_signer_add_ed25519(struct webhook_signer *s, EVP_PKEY *const *keys, size_t count)
{
	if (count > WEBHOOK_ED25519_KEYS_MAX || s->ed_count != 0 || s->content_len != 0)
		return -1;
	if (count == 0)
		return 0;
	memcpy(s->ed_keys, keys, count * sizeof(*keys));
	s->ed_count = count;
	return content_append(s, s->head, s->head_len);
}

int webhook_signer_update(struct webhook_signer *s, const void *data, size_t len)
{
	for (size_t i = 0; i < s->count; i++) {
		if (EVP_MAC_update(s->ctx[i], data, len) != 1)
			return -1;
	}
	if (s->ed_count > 0 && content_append(s, data, len) < 0)
		return -1;
	return 0;
}

/* " v1a,BASE64" for one Ed25519 key over the content kept, appended at out + *len. */
static int ed25519_append(struct webhook_signer *s, EVP_PKEY *key, char *out, size_t size,
			  size_t *len)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char sig[64];
	size_t sig_len = sizeof(sig);
	char b64[128];
	int ret = -1;

	/* pure Ed25519: no digest (NULL), one-shot over the whole content (RFC 8032) */
	if (md == NULL || EVP_DigestSignInit(md, NULL, NULL, NULL, key) != 1 ||
	    EVP_DigestSign(md, sig, &sig_len, s->content, s->content_len) != 1 || sig_len != 64)
		goto out;
	base64_encode(sig, sig_len, b64);
	int n = snprintf(out + *len, size - *len, "%sv1a,%s", *len ? " " : "", b64);
	if (n < 0 || (size_t)n >= size - *len)
		goto out;
	*len += (size_t)n;
	ret = 0;
out:
	EVP_MD_CTX_free(md);
	return ret;
}

int webhook_signer_update_reader(struct webhook_signer *s, struct spool_reader *reader)
{
	size_t size = 256 * 1024;
	char *buf = malloc(size);
	ssize_t n;
	int ret = 0;

	if (buf == NULL)
		return -1;
	spool_reader_rewind(reader);
	while ((n = spool_reader_read(reader, buf, size)) > 0) {
		if (webhook_signer_update(s, buf, (size_t)n) < 0) {
			ret = -1;
			break;
		}
	}
	if (n < 0)
		ret = -1;
	spool_reader_rewind(reader);
	free(buf);
	return ret;
}

int webhook_signer_finish(struct webhook_signer **sp, char *out, size_t size)
{
	struct webhook_signer *s = *sp;
	size_t len = 0;
	int ret = 0;

	*sp = NULL;
	out[0] = '\0';
	for (size_t i = 0; i < s->count; i++) {
		unsigned char mac[EVP_MAX_MD_SIZE];
		size_t mac_len = 0;
		char b64[EVP_MAX_MD_SIZE * 2];
		if (EVP_MAC_final(s->ctx[i], mac, &mac_len, sizeof(mac)) != 1) {
			ret = -1;
			break;
		}
		base64_encode(mac, mac_len, b64);
		int n = snprintf(out + len, size - len, "%sv1,%s", i ? " " : "", b64);
		if (n < 0 || (size_t)n >= size - len) {
			ret = -1;
			break;
		}
		len += (size_t)n;
	}
	for (size_t i = 0; ret == 0 && i < s->ed_count; i++)
		ret = ed25519_append(s, s->ed_keys[i], out, size, &len);
	if (ret < 0)
		out[0] = '\0';
	signer_free(s);
	return ret;
}

int webhook_request_id(const char *prefix, const void *body, size_t len, long long timestamp,
		       char id_r[WEBHOOK_ID_SIZE])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char digest[32], nonce[16];
	unsigned int dlen = 0;
	char ts[32];
	int ret = -1;

	/* a body and second shared by two verifications (the same recipient, twice, before the
	 * first answer is cached) still gives two ids: their content is hashed with a counter */
	static _Atomic unsigned long long counter;
	unsigned long long c = ++counter;
	memcpy(nonce, &c, sizeof(c));
	memset(nonce + sizeof(c), 0, sizeof(nonce) - sizeof(c));
	snprintf(ts, sizeof(ts), "%lld", timestamp);
	if (strlen(prefix) != 4 || md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(md, ts, strlen(ts)) != 1 ||
	    EVP_DigestUpdate(md, nonce, sizeof(nonce)) != 1 || EVP_DigestUpdate(md, body, len) != 1 ||
	    EVP_DigestFinal_ex(md, digest, &dlen) != 1 || dlen != 32)
		goto out;
	memcpy(id_r, prefix, 4);
	for (size_t i = 0; i < 32; i++)
		snprintf(id_r + 4 + 2 * i, 3, "%02x", digest[i]);
	ret = 0;
out:
	EVP_MD_CTX_free(md);
	return ret;
}

