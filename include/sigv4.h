/*
 * sigv4 - AWS Signature Version 4 for header-signed requests (S3 and S3-compatible stores).
 *
 * Our own signer on OpenSSL HMAC-SHA256, because curl 7.88's CURLOPT_AWS_SIGV4 leaves the query
 * unsorted, signs "?uploads" without '=' and does not encode the path (checked against real S3's rules; docs/backends/s3.md). It follows the
 * AWS "Create a signed AWS API request" steps:
 *
 *   CanonicalRequest = Method \n CanonicalURI \n CanonicalQuery \n CanonicalHeaders \n
 *                      SignedHeaders \n HexPayloadHash
 *   StringToSign     = "AWS4-HMAC-SHA256" \n AmzDate \n Date/Region/Service/aws4_request \n
 *                      Hex(SHA256(CanonicalRequest))
 *   SigningKey       = HMAC(HMAC(HMAC(HMAC("AWS4" + Secret, Date), Region), Service),
 *                      "aws4_request")
 *   Signature        = Hex(HMAC(SigningKey, StringToSign))
 *
 * URI encoding is S3's: every byte but the RFC 3986 unreserved characters (and '/' in a path)
 * becomes %XX with upper-case hex; the path is encoded once and never normalized (S3 keys may
 * hold "//" or "."). The query is encoded the same way (including '/'), sorted by name then
 * value, and every parameter has '=' even with an empty value ("uploads="). Header names are
 * lower-cased and sorted, values trimmed with inner runs of spaces collapsed, repeated names
 * joined with ','. Every header given is signed: the caller passes host, x-amz-date,
 * x-amz-content-sha256, x-amz-security-token and whatever else it sends.
 *
 * The canonical path and query built here are also the ones to put on the wire (the caller
 * uses sigv4_uri_encode() and sigv4_canonical_query()), so what is signed is what is sent.
 *
 * Error contract: functions return the length written (without NUL), or -1 when the output
 * does not fit (or on an OpenSSL failure); the output is then "" (never a partial value).
 * Nothing here logs, and no secret is kept past a call (derived keys are wiped).
 */
#ifndef LMTPGW_SIGV4_H
#define LMTPGW_SIGV4_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define SIGV4_AMZ_DATE_SIZE 17   /* "20150830T123600Z" + NUL */
#define SIGV4_HEX_SHA256_SIZE 65 /* 64 hex digits + NUL */
/* The SHA-256 of an empty payload, for bodyless requests. */
#define SIGV4_EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

/* A raw (unencoded) name and value: a query parameter or a header. */
struct sigv4_param {
	const char *name;
	const char *value;
};

struct sigv4_request {
	const char *method;                  /* "PUT" */
	const char *path;                    /* raw path, starts with '/': "/bucket/a b.eml" */
	const struct sigv4_param *query;     /* raw names and values, any order */
	size_t query_count;
	const struct sigv4_param *headers;   /* every header to sign, names in any case */
	size_t header_count;
	const char *payload_hash;            /* hex SHA-256 of the body, or "UNSIGNED-PAYLOAD" */
};

struct sigv4_credentials {
	const char *access_key;
	const char *secret_key;
	const char *session_token;           /* NULL or "": none (the caller signs the header) */
};

/* "YYYYMMDDTHHMMSSZ" of t (UTC) into out[SIGV4_AMZ_DATE_SIZE]. */
void sigv4_amz_date(time_t t, char out[SIGV4_AMZ_DATE_SIZE]);

/* URI-encode len bytes of in (AWS rules above); '/' is kept when keep_slash. */
int sigv4_uri_encode(const char *in, size_t len, bool keep_slash, char *out, size_t size);

/* "a=1&b=&c=x%2Fy": encoded, sorted, '=' always; "" for no parameters. */
int sigv4_canonical_query(const struct sigv4_param *query, size_t count, char *out, size_t size);

/* The canonical request; the signed-headers list ("host;x-amz-date") is also written to
 * signed_r when it is not NULL. */
int sigv4_canonical_request(const struct sigv4_request *req, char *out, size_t size,
			    char *signed_r, size_t signed_size);

/* The string to sign for a canonical request. */
int sigv4_string_to_sign(const char *amz_date, const char *region, const char *service,
			 const char *canonical_request, char *out, size_t size);

/* The signing key for a date "YYYYMMDD" (the first 8 characters of amz_date are used). */
int sigv4_signing_key(const char *secret_key, const char *amz_date, const char *region,
		      const char *service, uint8_t key_r[32]);

/* The value of the Authorization header:
 * "AWS4-HMAC-SHA256 Credential=AK/20150830/us-east-1/s3/aws4_request,
 *  SignedHeaders=host;x-amz-date, Signature=<64 hex>" (one line). */
int sigv4_authorization(const struct sigv4_request *req, const struct sigv4_credentials *cred,
			const char *amz_date, const char *region, const char *service, char *out,
			size_t size);

/* Lower-case hex of 32 bytes into out[SIGV4_HEX_SHA256_SIZE]. */
void sigv4_hex(const uint8_t digest[32], char out[SIGV4_HEX_SHA256_SIZE]);

/* SHA-256 of a memory block as lower-case hex. */
void sigv4_sha256_hex(const void *data, size_t len, char out[SIGV4_HEX_SHA256_SIZE]);

#endif
