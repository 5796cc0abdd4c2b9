/*
 * test_s3 - the S3 driver's pieces: status mapping per design.md, the bounded XML error
 * parse, key checks, metadata header values, the checksum encoding, and the driver's
 * configuration refusals (open() without network).
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "s3_answer.h"
#include "s3_fields.h"

static void mapped(long http, const char *code, int want_code, const char *want_enh)
{
	struct status st = { 0 };

	cr_assert_eq(s3_map_status(http, code, &st), -1, "%ld %s", http, code);
	cr_assert_eq(st.code, want_code, "%ld %s -> %d", http, code, st.code);
	cr_assert_str_eq(st.enhanced, want_enh, "%ld %s", http, code);
}

Test(s3, status_mapping)
{
	struct status st = { 0 };

	cr_assert_eq(s3_map_status(200, "", &st), 0);
	cr_assert_eq(s3_map_status(204, NULL, &st), 0);
	cr_assert_eq(s3_map_status(412, "PreconditionFailed", &st), 1);
	mapped(403, "SignatureDoesNotMatch", 451, "4.7.0");
	mapped(403, "AccessDenied", 451, "4.7.0");
	mapped(403, "InvalidAccessKeyId", 451, "4.7.0");
	mapped(404, "NoSuchBucket", 451, "4.3.0");
	mapped(404, "NoSuchKey", 451, "4.3.0");
	mapped(400, "EntityTooLarge", 552, "5.3.4");
	mapped(413, "", 552, "5.3.4");
	mapped(400, "BadDigest", 451, "4.3.0");
	mapped(400, "XAmzContentSHA256Mismatch", 451, "4.3.0");
	mapped(400, "InvalidRequest", 451, "4.3.0");
	mapped(503, "SlowDown", 451, "4.4.5");
	mapped(429, "", 451, "4.4.5");
	mapped(500, "InternalError", 451, "4.3.0");
	mapped(501, "NotImplemented", 451, "4.3.0");
	mapped(411, "MissingContentLength", 451, "4.3.0");
	mapped(301, "PermanentRedirect", 451, "4.3.0");
	mapped(0, NULL, 451, "4.3.0");
}

Test(s3, object_lock_refusal)
{
	cr_assert(s3_is_object_lock_refusal(400, "InvalidRequest",
					    "Bucket is missing Object Lock Configuration"));
	cr_assert(!s3_is_object_lock_refusal(400, "InvalidRequest", "Missing required header"));
	cr_assert(!s3_is_object_lock_refusal(403, "InvalidRequest", "Object Lock"));
}

Test(s3, xml_error_parse)
{
	const char *body = "<?xml version=\"1.0\"?>\n<Error><Code>SignatureDoesNotMatch</Code>"
			   "<Message>a &lt;b&gt; &amp; c</Message><RequestId>4442587FB7D0A2F9"
			   "</RequestId></Error>";
	struct s3_error e = { "x", "x", "x" };
	char small[5];

	s3_parse_error(body, strlen(body), &e);
	cr_assert_str_eq(e.code, "SignatureDoesNotMatch");
	cr_assert_str_eq(e.message, "a <b> & c");
	cr_assert_str_eq(e.request_id, "4442587FB7D0A2F9");
	/* bounded: truncated to the buffer, and only within len */
	cr_assert(s3_xml_value(body, strlen(body), "Code", small, sizeof(small)));
	cr_assert_str_eq(small, "Sign");
	cr_assert(!s3_xml_value(body, 40, "Code", small, sizeof(small)));
	cr_assert_str_eq(small, "");
	cr_assert(!s3_xml_value("<Code>unterminated", 18, "Code", small, sizeof(small)));
	cr_assert(!s3_xml_value(NULL, 0, "Code", small, sizeof(small)));
	s3_parse_error("", 0, &e);
	cr_assert_str_eq(e.code, "");
	cr_assert_str_eq(e.request_id, "");
}

Test(s3, key_check)
{
	const char *error;

	cr_assert_eq(s3_key_check("2024/03/05/abc.eml", &error), 0);
	cr_assert_eq(s3_key_check("a%40b.test/x.eml", &error), 0);
	cr_assert_eq(s3_key_check("", &error), -1);
	cr_assert_eq(s3_key_check("/abs", &error), -1);
	cr_assert_eq(s3_key_check("a//b", &error), -1);
	cr_assert_eq(s3_key_check("a/../b", &error), -1);
	cr_assert_eq(s3_key_check("a/./b", &error), -1);
	cr_assert_eq(s3_key_check("a/", &error), -1);
	cr_assert_eq(s3_key_check("a\nb", &error), -1);
	cr_assert_eq(s3_key_check("..a/b..", &error), 0);
	char *long_key = malloc(S3_KEY_MAX + 2);
	memset(long_key, 'k', S3_KEY_MAX + 1);
	long_key[S3_KEY_MAX + 1] = '\0';
	cr_assert_eq(s3_key_check(long_key, &error), -1);
	long_key[S3_KEY_MAX] = '\0';
	cr_assert_eq(s3_key_check(long_key, &error), 0);
	free(long_key);
}

Test(s3, meta_values_are_ascii)
{
	char out[64];

	s3_meta_value("alice@example.test", 256, out, sizeof(out));
	cr_assert_str_eq(out, "alice@example.test");
	s3_meta_value("j\xc3\xb6rg 100%\r\n", 256, out, sizeof(out));
	cr_assert_str_eq(out, "j%C3%B6rg 100%25%0D%0A");
	s3_meta_value("ends with space ", 256, out, sizeof(out));
	cr_assert_str_eq(out, "ends with space%20");
	s3_meta_value("abcdef", 3, out, sizeof(out));
	cr_assert_str_eq(out, "abc");
	s3_meta_value("\x01\x02\x03\x04", 256, out, 8);   /* never a partial escape */
	cr_assert_str_eq(out, "%01%02");
	s3_meta_value(NULL, 10, out, sizeof(out));
	cr_assert_str_eq(out, "");
}

Test(s3, checksum_b64)
{
	char out[48];

	/* SHA-256("") in base64, as S3 documents it */
	cr_assert_eq(s3_checksum_b64("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
				     out, sizeof(out)), 0);
	cr_assert_str_eq(out, "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
	cr_assert_eq(s3_checksum_b64("xyz", out, sizeof(out)), -1);
	cr_assert_eq(s3_checksum_b64("g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
				     out, sizeof(out)), -1);
}

/* open() refusals, through the driver table like config.c does. */
static const struct backend_driver *s3_driver(void)
{
	const struct backend_driver *d = backend_driver_find("s3");
	cr_assert_not_null(d);
	return d;
}

static int open_with(const char *const *kv, char *err, size_t err_size)
{
	const struct backend_driver *d = s3_driver();
	void *set = calloc(1, d->settings_size), *state = NULL;
	char e[256];

	cr_assert_eq(conf_defaults(d->keys, set, e, sizeof(e)), 0, "%s", e);
	for (size_t i = 0; kv[i] != NULL; i += 2) {
		const struct conf_key *k = d->keys;
		while (k->name != NULL && strcmp(k->name, kv[i]) != 0)
			k++;
		cr_assert_not_null(k->name, "no key %s", kv[i]);
		cr_assert_eq(conf_parse_value(k, kv[i + 1], set, e, sizeof(e)), 0, "%s", e);
	}
	int r = d->open(set, "t", &state, err, err_size);
	if (r == 0)
		d->close(state);
	conf_release(d->keys, set);
	free(set);
	return r;
}

Test(s3, open_refusals)
{
	char err[512];

	setenv("AWS_ACCESS_KEY_ID", "AKIDTEST", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env", 1);
	const char *ok[] = { "endpoint", "https://s3.example.test", "bucket", "mail", NULL };
	cr_assert_eq(open_with(ok, err, sizeof(err)), 0, "%s", err);
	const char *http[] = { "endpoint", "http://s3.example.test", "bucket", "mail", NULL };
	cr_assert_eq(open_with(http, err, sizeof(err)), -1);
	cr_assert(strstr(err, "allow_http") != NULL, "%s", err);
	const char *path[] = { "endpoint", "https://s3.example.test/x", "bucket", "mail", NULL };
	cr_assert_eq(open_with(path, err, sizeof(err)), -1);
	const char *bucket[] = { "endpoint", "https://s3.example.test", "bucket", "Mail_Box", NULL };
	cr_assert_eq(open_with(bucket, err, sizeof(err)), -1);
	const char *rkey[] = { "endpoint", "https://h", "bucket", "mail", "key", "%{rcpt}.eml", NULL };
	cr_assert_eq(open_with(rkey, err, sizeof(err)), -1);
	cr_assert(strstr(err, "recipient") != NULL, "%s", err);
	const char *nokey[] = { "endpoint", "https://h", "bucket", "mail", "mode", "recipient", NULL };
	cr_assert_eq(open_with(nokey, err, sizeof(err)), -1);
	const char *lock[] = { "endpoint", "https://h", "bucket", "mail", "object_lock_mode",
			       "COMPLIANCE", NULL };
	cr_assert_eq(open_with(lock, err, sizeof(err)), -1);
	cr_assert(strstr(err, "retention_days") != NULL, "%s", err);
	const char *kms_aes[] = { "endpoint", "https://h", "bucket", "mail", "sse", "AES256",
				  "sse_kms_key_id", "k", NULL };
	cr_assert_eq(open_with(kms_aes, err, sizeof(err)), -1);
	cr_assert(strstr(err, "aws:kms") != NULL, "%s", err);
	const char *kms[] = { "endpoint", "https://h", "bucket", "mail", "sse_kms_key_id", "k", NULL };
	cr_assert_eq(open_with(kms, err, sizeof(err)), -1);
	const char *tags[] = { "endpoint", "https://h", "bucket", "mail", "tags", "novalue", NULL };
	cr_assert_eq(open_with(tags, err, sizeof(err)), -1);
	unsetenv("AWS_SECRET_ACCESS_KEY");
	cr_assert_eq(open_with(ok, err, sizeof(err)), -1);
	cr_assert(strstr(err, "no credentials") != NULL, "%s", err);
	unsetenv("AWS_ACCESS_KEY_ID");
}
