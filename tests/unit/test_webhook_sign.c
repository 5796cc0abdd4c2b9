/* Unit tests for webhook_sign (include/webhook_sign.h): Standard Webhooks secrets, ids and
 * signatures (the spec's published example as oracle), and the signer over a spool reader with
 * a suffix (the multipart body's tail). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>

#include "base64.h"
#include "spool.h"
#include "webhook_sign.h"

Test(webhook_sign, secret_decode)
{
	unsigned char *key;
	size_t len;

	cr_assert_eq(webhook_secret_decode("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n", &key, &len), 0);
	cr_assert_eq(len, 24);
	free(key);
	cr_assert_eq(webhook_secret_decode("whsec_YWJj\r\n", &key, &len), 0);
	cr_assert_eq(len, 3);
	cr_assert(memcmp(key, "abc", 3) == 0);
	free(key);
	cr_assert_eq(webhook_secret_decode("whsec_YWI=", &key, &len), 0);
	cr_assert_eq(len, 2);
	free(key);
	cr_assert_eq(webhook_secret_decode("plain secret\n", &key, &len), 0);
	cr_assert_eq(len, 12);
	cr_assert(memcmp(key, "plain secret", 12) == 0);
	free(key);
	cr_assert_eq(webhook_secret_decode("\n", &key, &len), -1);
	cr_assert_eq(webhook_secret_decode("whsec_not*base64", &key, &len), -1);
	cr_assert_eq(webhook_secret_decode("whsec_abc", &key, &len), -1);
}

/* The example of the Standard Webhooks specification. */
Test(webhook_sign, signature_spec_vector)
{
	unsigned char *key;
	size_t len;
	char sig[128];
	const char *body = "{\"test\": 2432232314}";

	cr_assert_eq(webhook_secret_decode("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &key, &len), 0);
	const unsigned char *keys[1] = { key };
	struct webhook_signer *s =
		webhook_signer_new(keys, &len, 1, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330);
	cr_assert_not_null(s);
	/* in two pieces: the HMAC is incremental */
	cr_assert_eq(webhook_signer_update(s, body, 5), 0);
	cr_assert_eq(webhook_signer_update(s, body + 5, strlen(body) - 5), 0);
	cr_assert_eq(webhook_signer_finish(&s, sig, sizeof(sig)), 0);
	cr_assert_str_eq(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
	free(key);
}

Test(webhook_sign, signature_two_secrets)
{
	const unsigned char *keys[2] = { (const unsigned char *)"rawsecret",
					 (const unsigned char *)"other" };
	size_t lens[2] = { 9, 5 };
	char sig[256];
	struct webhook_signer *s = webhook_signer_new(keys, lens, 2, "id1", 5);

	cr_assert_eq(webhook_signer_update(s, "body", 4), 0);
	cr_assert_eq(webhook_signer_finish(&s, sig, sizeof(sig)), 0);
	cr_assert(strncmp(sig, "v1,v75ilwBlwkUfy/SLjggQWHqewAvsC7H4BW6pNaR6kbw= v1,", 51) == 0,
		  "%s", sig);
	cr_assert_eq(strlen(sig), 51 + 44);
}

Test(webhook_sign, event_id_sorted_and_stable)
{
	char a[WEBHOOK_ID_SIZE], b[WEBHOOK_ID_SIZE], c[WEBHOOK_ID_SIZE];
	char sha[65];
	const char *r1[] = { "b@y.test", "a@x.test" }, *r2[] = { "a@x.test", "b@y.test" };
	const char *r3[] = { "a@x.test" };

	memset(sha, 'a', 64);
	sha[64] = '\0';
	cr_assert_eq(webhook_event_id(sha, r1, 2, a), 0);
	cr_assert_eq(webhook_event_id(sha, r2, 2, b), 0);
	cr_assert_eq(webhook_event_id(sha, r3, 1, c), 0);
	cr_assert_str_eq(a, "msg_69ced7685ed212fdb2ef5e4b0a1a47aa232bb02771ab5a37963e5bf4668f7d89");
	cr_assert_str_eq(a, b);
	cr_assert_str_neq(a, c);
}

Test(webhook_sign, reader_suffix)
{
	struct spool *sp = spool_new(4, "/tmp", 1 << 20); /* spills to a file at once */
	const char *err;
	char back[64];
	ssize_t n;
	size_t got = 0;

	cr_assert_not_null(sp);
	cr_assert_eq(spool_write(sp, "0123456789", 10, &err), 0);
	cr_assert_eq(spool_finish(sp, &err), 0);
	struct spool_reader r;
	spool_reader_init(&r, sp, "HEAD", 4);
	spool_reader_set_suffix(&r, "TAIL", 4);
	cr_assert_eq(spool_reader_total(&r), 18);
	while ((n = spool_reader_read(&r, back + got, 3)) > 0)
		got += (size_t)n;
	cr_assert_eq(got, 18);
	cr_assert(memcmp(back, "HEAD0123456789TAIL", 18) == 0);
	/* seek into the suffix, as curl's rewind does */
	r.pos = 15;
	n = spool_reader_read(&r, back, sizeof(back));
	cr_assert_eq(n, 3);
	cr_assert(memcmp(back, "AIL", 3) == 0);
	/* the signer reads the whole reader and rewinds it */
	const unsigned char *keys[1] = { (const unsigned char *)"k" };
	size_t lens[1] = { 1 };
	char s1[128], s2[128];
	struct webhook_signer *s = webhook_signer_new(keys, lens, 1, "id", 1);
	cr_assert_eq(webhook_signer_update_reader(s, &r), 0);
	cr_assert_eq(r.pos, 0);
	webhook_signer_finish(&s, s1, sizeof(s1));
	s = webhook_signer_new(keys, lens, 1, "id", 1);
	webhook_signer_update(s, "HEAD0123456789TAIL", 18);
	webhook_signer_finish(&s, s2, sizeof(s2));
	cr_assert_str_eq(s1, s2);
	spool_free(&sp);
}

/* Ed25519 (v1a,): a key written as PEM (mode 600) loads; the signature, one per key after the
 * HMAC ones, verifies over "id.timestamp.body" fed in pieces; other key types are refused. */
static char *write_key(EVP_PKEY *key, const char *name)
{
	static char path[256];
	snprintf(path, sizeof(path), "/tmp/lmtpgw-unit-%d-%s.pem", (int)getpid(), name);
	FILE *f = fopen(path, "w");
	cr_assert(f != NULL);
	cr_assert_eq(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
	fclose(f);
	chmod(path, 0600);
	return path;
}

Test(webhook_sign, ed25519_sign_and_verify)
{
	EVP_PKEY *gen = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	EVP_PKEY *key;
	char err[300], sig[WEBHOOK_SIGNATURE_SIZE];
	const unsigned char *hkeys[1] = { (const unsigned char *)"k" };
	size_t hlens[1] = { 1 };

	cr_assert(gen != NULL);
	const char *path = write_key(gen, "ed");
	cr_assert_eq(webhook_ed25519_key_load(path, &key, err, sizeof(err)), 0, "%s", err);
	struct webhook_signer *s = webhook_signer_new(hkeys, hlens, 1, "msg_1", 1700000000);
	cr_assert(s != NULL);
	EVP_PKEY *eds[2] = { key, key };
	cr_assert_eq(webhook_signer_add_ed25519(s, eds, 2), 0);
	cr_assert_eq(webhook_signer_update(s, "hel", 3), 0);
	cr_assert_eq(webhook_signer_update(s, "lo", 2), 0);
	cr_assert_eq(webhook_signer_finish(&s, sig, sizeof(sig)), 0);
	/* "v1,<44> v1a,<88> v1a,<88>" */
	cr_assert_eq(strncmp(sig, "v1,", 3), 0, "%s", sig);
	const char *v1a = strstr(sig, " v1a,");
	cr_assert(v1a != NULL, "%s", sig);
	v1a += 5;
	cr_assert_eq(strcspn(v1a, " "), 88, "%s", sig);
	unsigned char raw[66];
	cr_assert_eq(base64_decode(v1a, 88, raw), 64);
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	const char *signed_content = "msg_1.1700000000.hello";
	cr_assert_eq(EVP_DigestVerifyInit(md, NULL, NULL, NULL, gen), 1);
	cr_assert_eq(EVP_DigestVerify(md, raw, 64, (const unsigned char *)signed_content,
				      strlen(signed_content)), 1);
	EVP_MD_CTX_free(md);
	webhook_ed25519_key_free(&key);
	cr_assert(key == NULL);
	unlink(path);
	/* loose mode refused */
	path = write_key(gen, "loose");
	chmod(path, 0644);
	cr_assert_eq(webhook_ed25519_key_load(path, &key, err, sizeof(err)), -1);
	cr_assert(strstr(err, "chmod 600") != NULL, "%s", err);
	unlink(path);
	EVP_PKEY_free(gen);
	/* an EC key is a PEM private key, but not Ed25519 */
	EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	cr_assert(ec != NULL);
	path = write_key(ec, "ec");
	cr_assert_eq(webhook_ed25519_key_load(path, &key, err, sizeof(err)), -1);
	cr_assert(strstr(err, "not an Ed25519 key") != NULL, "%s", err);
	cr_assert(key == NULL);
	unlink(path);
	EVP_PKEY_free(ec);
}

Test(webhook_sign, request_ids_differ)
{
	char a[WEBHOOK_ID_SIZE], b[WEBHOOK_ID_SIZE];

	cr_assert_eq(webhook_request_id("vrf_", "{}", 2, 5, a), 0);
	cr_assert_eq(webhook_request_id("vrf_", "{}", 2, 5, b), 0);
	cr_assert_eq(strncmp(a, "vrf_", 4), 0);
	cr_assert_eq(strlen(a), 68);
	cr_assert_str_neq(a, b);
	cr_assert_eq(webhook_request_id("verify_", "{}", 2, 5, a), -1);
}
