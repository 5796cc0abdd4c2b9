/* oauth2: the SASL strings (RFC 7628 3.1 with RFC 5801 escaping; Google's XOAUTH2), and the
 * settings a token source refuses before any network I/O. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "oauth2.h"
#include "secret.h"

Test(oauth2, xoauth2_initial_response)
{
	char *s = oauth2_sasl_xoauth2("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg");

	cr_assert_str_eq(s, "user=someuser@example.com\001auth=Bearer "
			    "ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg\001\001");
	secret_free(&s);
	cr_assert_null(s);
}

Test(oauth2, oauthbearer_rfc7628_example_and_saslname_escaping)
{
	/* RFC 7628 4.1, the initial client response */
	char *s = oauth2_sasl_oauthbearer("user@example.com", "server.example.com", "143",
					  "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==");
	cr_assert_str_eq(s, "n,a=user@example.com,\001host=server.example.com\001port=143\001"
			    "auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\001\001");
	secret_free(&s);
	/* RFC 5801 4: ',' is =2C and '=' is =3D in a saslname */
	s = oauth2_sasl_oauthbearer("a,b=c", "h", "993", "t");
	cr_assert_str_eq(s, "n,a=a=2Cb=3Dc,\001host=h\001port=993\001auth=Bearer t\001\001");
	secret_free(&s);
}

static char *private_file(const char *text, mode_t mode)
{
	char *path = strdup("/tmp/lmtpgw-oauth2-unit-XXXXXX");
	int fd = mkstemp(path);
	cr_assert(fd >= 0);
	cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	chmod(path, mode);
	return path;
}

static void expect_refused(const struct oauth2_settings *set, const char *words)
{
	char error[256] = "";
	struct oauth2_source *src = oauth2_source_new(set, "b", error, sizeof(error));

	cr_assert_null(src, "accepted, expected: %s", words);
	cr_assert(strstr(error, words) != NULL, "'%s' does not say '%s'", error, words);
}

Test(oauth2, settings_refused_before_any_request)
{
	char *secret = private_file("s3cret\n", 0600), *open_secret = private_file("s3cret\n", 0644);
	struct oauth2_settings set = { .grant = OAUTH2_GRANT_NONE, .timeout = 1000 };

	expect_refused(&set, "none");
	set.grant = OAUTH2_GRANT_CLIENT_CREDENTIALS;
	expect_refused(&set, "oauth2_client_id");
	set.client_id = "app";
	set.token_url = "https://login.example/token";
	expect_refused(&set, "oauth2_client_secret_file");
	set.client_secret_file = open_secret;
	expect_refused(&set, open_secret);          /* readable by others */
	set.client_secret_file = secret;
	set.token_url = "http://login.example/token";
	expect_refused(&set, "https://");
	set.token_url = "https://login.example/token";
	char error[256];
	struct oauth2_source *src = oauth2_source_new(&set, "b", error, sizeof(error));
	cr_assert_not_null(src, "%s", error);
	char d[256];
	oauth2_describe(src, "alice@example.test", d, sizeof(d));
	cr_assert(strstr(d, "client_credentials client=app") != NULL, "%s", d);
	cr_assert(strstr(d, "s3cret") == NULL);
	cr_assert_eq(oauth2_per_subject(src), 0);
	oauth2_source_free(&src);
	cr_assert_null(src);

	set.grant = OAUTH2_GRANT_REFRESH_TOKEN;
	expect_refused(&set, "oauth2_refresh_token_file");
	set.grant = OAUTH2_GRANT_JWT_BEARER;
	expect_refused(&set, "oauth2_key_file");
	set.key_file = secret;
	set.scope = "https://mail.google.com/";
	expect_refused(&set, "not a JSON service account key");
	set.grant = OAUTH2_GRANT_TOKEN_FILE;
	expect_refused(&set, "oauth2_token_file");
	unlink(secret);
	unlink(open_secret);
	free(secret);
	free(open_secret);
}

/* expires_in: an absurd lifetime is clamped to a day (the cache's millisecond arithmetic
 * overflowed with 1e18 * 1000 before), a quoted number is read saturating, nonsense is the
 * default hour. */
static long long lifetime_of(const char *json)
{
	json_error_t jerr;
	json_t *doc = json_loads(json, JSON_DECODE_ANY, &jerr);
	cr_assert_not_null(doc, "%s: %s", json, jerr.text);
	long long s = oauth2_lifetime_s(json_object_get(doc, "expires_in"));
	json_decref(doc);
	return s;
}

Test(oauth2, expires_in_clamped_and_quoted)
{
	cr_assert_eq(lifetime_of("{\"expires_in\": 3599}"), 3599);
	cr_assert_eq(lifetime_of("{\"expires_in\": 1000000000000000000}"), 86400);
	cr_assert_eq(lifetime_of("{\"expires_in\": 9223372036854775807}"), 86400);
	cr_assert_eq(lifetime_of("{\"expires_in\": 1e18}"), 86400);
	cr_assert_eq(lifetime_of("{\"expires_in\": 1e300}"), 86400);
	cr_assert_eq(lifetime_of("{\"expires_in\": 120.5}"), 120);
	cr_assert_eq(lifetime_of("{\"expires_in\": \"3600\"}"), 3600);
	cr_assert_eq(lifetime_of("{\"expires_in\": \"1000000000000000000\"}"), 86400);
	cr_assert_eq(lifetime_of("{\"expires_in\": \"99999999999999999999999999\"}"), 86400);
	cr_assert_eq(lifetime_of("{\"expires_in\": 1}"), 1);
	/* nonsense or absent: the default hour (RFC 6749 5.1: expires_in is only recommended) */
	cr_assert_eq(lifetime_of("{\"expires_in\": 0}"), 3600);
	cr_assert_eq(lifetime_of("{\"expires_in\": -5}"), 3600);
	cr_assert_eq(lifetime_of("{\"expires_in\": \"-5\"}"), 3600);
	cr_assert_eq(lifetime_of("{\"expires_in\": \"36x\"}"), 3600);
	cr_assert_eq(lifetime_of("{\"expires_in\": \"\"}"), 3600);
	cr_assert_eq(lifetime_of("{\"expires_in\": null}"), 3600);
	cr_assert_eq(lifetime_of("{\"expires_in\": true}"), 3600);
	cr_assert_eq(lifetime_of("{}"), 3600);
}
