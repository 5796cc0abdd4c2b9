/*
 * test_sigv4 - our SigV4 signer against AWS's published test vectors and against botocore.
 *
 * The vectors below (request, canonical request, string to sign, Authorization) are copied
 * from the AWS SigV4 test suite as shipped in awslabs/aws-c-auth,
 * tests/aws-signing-test-suite/v4/<name>/ (Apache License 2.0, Copyright Amazon.com, Inc. or
 * its affiliates). Only expected values are copied; the suite itself is not vendored. All use
 * AKIDEXAMPLE / wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY, us-east-1, service "service",
 * 2015-08-30T12:36:00Z, unsigned body (the hash of the empty payload).
 *
 * The randomized cross-check runs tests/unit/sigv4_botocore.py (botocore's S3SigV4Auth) and
 * signs the same requests here; it is skipped when botocore is not installed (Debian
 * python3-botocore).
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "sigv4.h"

#define AK "AKIDEXAMPLE"
#define SK "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
#define DATE "20150830T123600Z"
#define CRED_PREFIX "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "

static void check_auth(const struct sigv4_request *req, const char *token, const char *expected)
{
	struct sigv4_credentials cred = { AK, SK, token };
	char auth[1024];

	int n = sigv4_authorization(req, &cred, DATE, "us-east-1", "service", auth, sizeof(auth));
	cr_assert_gt(n, 0);
	cr_assert_str_eq(auth, expected);
}

/* get-vanilla: canonical request, string to sign and signature. */
Test(sigv4, get_vanilla)
{
	const struct sigv4_param h[] = { { "Host", "example.amazonaws.com" },
					 { "X-Amz-Date", DATE } };
	struct sigv4_request req = { .method = "GET", .path = "/", .headers = h, .header_count = 2,
				     .payload_hash = SIGV4_EMPTY_SHA256 };
	char canon[1024], signed_headers[256], sts[512];

	cr_assert_gt(sigv4_canonical_request(&req, canon, sizeof(canon), signed_headers,
					     sizeof(signed_headers)), 0);
	cr_assert_str_eq(canon, "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n"
				"\nhost;x-amz-date\n" SIGV4_EMPTY_SHA256);
	cr_assert_str_eq(signed_headers, "host;x-amz-date");
	cr_assert_gt(sigv4_string_to_sign(DATE, "us-east-1", "service", canon, sts, sizeof(sts)), 0);
	cr_assert_str_eq(sts, "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/"
			      "aws4_request\n"
			      "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63");
	check_auth(&req, NULL,
		   CRED_PREFIX "SignedHeaders=host;x-amz-date, Signature="
			       "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
}

/* get-utf8: GET /\u1234 -> /%E1%88%B4 */
Test(sigv4, get_utf8)
{
	const struct sigv4_param h[] = { { "Host", "example.amazonaws.com" },
					 { "X-Amz-Date", DATE } };
	struct sigv4_request req = { .method = "GET", .path = "/\xe1\x88\xb4", .headers = h,
				     .header_count = 2, .payload_hash = SIGV4_EMPTY_SHA256 };
	char canon[1024];

	cr_assert_gt(sigv4_canonical_request(&req, canon, sizeof(canon), NULL, 0), 0);
	cr_assert(strncmp(canon, "GET\n/%E1%88%B4\n\n", 16) == 0, "%s", canon);
	check_auth(&req, NULL,
		   CRED_PREFIX "SignedHeaders=host;x-amz-date, Signature="
			       "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85");
}

/* get-space-unnormalized: GET /example space/ */
Test(sigv4, get_space_unnormalized)
{
	const struct sigv4_param h[] = { { "Host", "example.amazonaws.com" },
					 { "X-Amz-Date", DATE } };
	struct sigv4_request req = { .method = "GET", .path = "/example space/", .headers = h,
				     .header_count = 2, .payload_hash = SIGV4_EMPTY_SHA256 };

	check_auth(&req, NULL,
		   CRED_PREFIX "SignedHeaders=host;x-amz-date, Signature="
			       "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741");
}

/* get-vanilla-query-order-key-case: ?Param2=value2&Param1=value1 is sorted. */
Test(sigv4, get_vanilla_query_order_key_case)
{
	const struct sigv4_param h[] = { { "Host", "example.amazonaws.com" },
					 { "X-Amz-Date", DATE } };
	const struct sigv4_param q[] = { { "Param2", "value2" }, { "Param1", "value1" } };
	struct sigv4_request req = { .method = "GET", .path = "/", .query = q, .query_count = 2,
				     .headers = h, .header_count = 2,
				     .payload_hash = SIGV4_EMPTY_SHA256 };
	char canon[1024];

	cr_assert_gt(sigv4_canonical_request(&req, canon, sizeof(canon), NULL, 0), 0);
	cr_assert(strstr(canon, "GET\n/\nParam1=value1&Param2=value2\nhost:") == canon, "%s",
		  canon);
	check_auth(&req, NULL,
		   CRED_PREFIX "SignedHeaders=host;x-amz-date, Signature="
			       "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500");
}

/* get-vanilla-utf8-query: ?\u1234=bar */
Test(sigv4, get_vanilla_utf8_query)
{
	const struct sigv4_param h[] = { { "Host", "example.amazonaws.com" },
					 { "X-Amz-Date", DATE } };
	const struct sigv4_param q[] = { { "\xe1\x88\xb4", "bar" } };
	struct sigv4_request req = { .method = "GET", .path = "/", .query = q, .query_count = 1,
				     .headers = h, .header_count = 2,
				     .payload_hash = SIGV4_EMPTY_SHA256 };

	check_auth(&req, NULL,
		   CRED_PREFIX "SignedHeaders=host;x-amz-date, Signature="
			       "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04");
}

/* get-vanilla-with-session-token: the token is a signed header. */
Test(sigv4, get_vanilla_with_session_token)
{
	const char *token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
	const struct sigv4_param h[] = { { "Host", "example.amazonaws.com" },
					 { "X-Amz-Security-Token", token },
					 { "X-Amz-Date", DATE } };
	struct sigv4_request req = { .method = "GET", .path = "/", .headers = h, .header_count = 3,
				     .payload_hash = SIGV4_EMPTY_SHA256 };

	check_auth(&req, token,
		   CRED_PREFIX "SignedHeaders=host;x-amz-date;x-amz-security-token, Signature="
			       "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8");
}

/* post-header-key-sort: My-Header1 sorts between host and x-amz-date. */
Test(sigv4, post_header_key_sort)
{
	const struct sigv4_param h[] = { { "Host", "example.amazonaws.com" },
					 { "My-Header1", "value1" },
					 { "X-Amz-Date", DATE } };
	struct sigv4_request req = { .method = "POST", .path = "/", .headers = h, .header_count = 3,
				     .payload_hash = SIGV4_EMPTY_SHA256 };

	check_auth(&req, NULL,
		   CRED_PREFIX "SignedHeaders=host;my-header1;x-amz-date, Signature="
			       "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c");
}

/* get-header-value-trim: values trimmed, inner runs of spaces collapsed. */
Test(sigv4, get_header_value_trim)
{
	const struct sigv4_param h[] = { { "Host", "example.amazonaws.com" },
					 { "My-Header1", " value1" },
					 { "My-Header2", " \"a   b   c\"" },
					 { "X-Amz-Date", DATE } };
	struct sigv4_request req = { .method = "GET", .path = "/", .headers = h, .header_count = 4,
				     .payload_hash = SIGV4_EMPTY_SHA256 };
	char canon[1024];

	cr_assert_gt(sigv4_canonical_request(&req, canon, sizeof(canon), NULL, 0), 0);
	cr_assert(strstr(canon, "\nmy-header1:value1\nmy-header2:\"a b c\"\n") != NULL, "%s", canon);
	check_auth(&req, NULL,
		   CRED_PREFIX "SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature="
			       "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736");
}

/* S3 specifics the suite (a generic service) does not cover. */
Test(sigv4, s3_query_and_path_rules)
{
	char out[256];
	const struct sigv4_param q[] = { { "uploads", "" } };
	const struct sigv4_param q2[] = { { "uploadId", "a/b+c=" }, { "partNumber", "10" } };

	cr_assert_eq(sigv4_canonical_query(q, 1, out, sizeof(out)), 8);
	cr_assert_str_eq(out, "uploads=");
	cr_assert_gt(sigv4_canonical_query(q2, 2, out, sizeof(out)), 0);
	cr_assert_str_eq(out, "partNumber=10&uploadId=a%2Fb%2Bc%3D");
	cr_assert_eq(sigv4_canonical_query(NULL, 0, out, sizeof(out)), 0);
	cr_assert_str_eq(out, "");
	cr_assert_gt(sigv4_uri_encode("/b/2024/a%40b c~.eml", 20, true, out, sizeof(out)), 0);
	cr_assert_str_eq(out, "/b/2024/a%2540b%20c~.eml");
	cr_assert_gt(sigv4_uri_encode("a/b", 3, false, out, sizeof(out)), 0);
	cr_assert_str_eq(out, "a%2Fb");
	/* no normalization: "//" and "." survive */
	cr_assert_gt(sigv4_uri_encode("/b//./x", 7, true, out, sizeof(out)), 0);
	cr_assert_str_eq(out, "/b//./x");
	/* overflow: -1 and empty output, never a partial value */
	cr_assert_eq(sigv4_uri_encode("abc def", 7, true, out, 5), -1);
	cr_assert_str_eq(out, "");
}

Test(sigv4, amz_date_and_overflow)
{
	char d[SIGV4_AMZ_DATE_SIZE], small[16];
	const struct sigv4_param h[] = { { "Host", "example.amazonaws.com" } };
	struct sigv4_request req = { .method = "GET", .path = "/", .headers = h, .header_count = 1,
				     .payload_hash = SIGV4_EMPTY_SHA256 };
	struct sigv4_credentials cred = { AK, SK, NULL };

	sigv4_amz_date((time_t)1440938160, d);
	cr_assert_str_eq(d, DATE);
	cr_assert_eq(sigv4_canonical_request(&req, small, sizeof(small), NULL, 0), -1);
	cr_assert_str_eq(small, "");
	cr_assert_eq(sigv4_authorization(&req, &cred, DATE, "us-east-1", "s3", small,
					 sizeof(small)), -1);
	cr_assert_str_eq(small, "");
}

/* Randomized: botocore's S3SigV4Auth and ours must agree on every request. */
Test(sigv4, botocore_cross_check)
{
	const char *script = "tests/unit/sigv4_botocore.py";
	char cmd[512];
	FILE *f = fopen(script, "r");

	if (f == NULL)
		cr_skip_test("%s not found (run from the source root)", script);
	fclose(f);
	/* Debian's python3-botocore lives with /usr/bin/python3; fall back to PATH's python3. */
	snprintf(cmd, sizeof(cmd),
		 "if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import botocore' 2>/dev/null; "
		 "then /usr/bin/python3 %s 300 4242; else python3 %s 300 4242; fi",
		 script, script);
	FILE *p = popen(cmd, "r");
	cr_assert_not_null(p);
	char line[16384];
	int count = 0;
	while (fgets(line, sizeof(line), p) != NULL) {
		json_error_t err;
		json_t *j = json_loads(line, 0, &err);
		cr_assert_not_null(j, "bad JSON from %s: %s", script, err.text);
		struct sigv4_param q[16], h[32];
		json_t *jq = json_object_get(j, "query"), *jh = json_object_get(j, "headers");
		size_t nq = json_array_size(jq), nh = json_array_size(jh);
		cr_assert(nq <= 16 && nh <= 32);
		for (size_t i = 0; i < nq; i++) {
			q[i].name = json_string_value(json_array_get(json_array_get(jq, i), 0));
			q[i].value = json_string_value(json_array_get(json_array_get(jq, i), 1));
		}
		for (size_t i = 0; i < nh; i++) {
			h[i].name = json_string_value(json_array_get(json_array_get(jh, i), 0));
			h[i].value = json_string_value(json_array_get(json_array_get(jh, i), 1));
		}
		struct sigv4_request req = {
			.method = json_string_value(json_object_get(j, "method")),
			.path = json_string_value(json_object_get(j, "path")),
			.query = q, .query_count = nq, .headers = h, .header_count = nh,
			.payload_hash = json_string_value(json_object_get(j, "payload_hash")),
		};
		struct sigv4_credentials cred = {
			json_string_value(json_object_get(j, "access_key")),
			json_string_value(json_object_get(j, "secret_key")),
			json_string_value(json_object_get(j, "token")),
		};
		char auth[1024];
		cr_assert_gt(sigv4_authorization(&req, &cred,
						 json_string_value(json_object_get(j, "amz_date")),
						 json_string_value(json_object_get(j, "region")), "s3",
						 auth, sizeof(auth)), 0);
		cr_assert_str_eq(auth, json_string_value(json_object_get(j, "authorization")),
				 "request %d differs from botocore: %s", count, line);
		json_decref(j);
		count++;
	}
	int status = pclose(p);
	if (count == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 77)
		cr_skip_test("botocore not installed (apt-get install python3-botocore)");
	cr_assert_eq(status, 0, "%s failed (status %d)", script, status);
	cr_assert_eq(count, 300);
}
