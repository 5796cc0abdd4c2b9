/*
 * s3_fields - checks and encodings of what goes into an S3 request from configuration and
 * mail: object keys, bucket names, header tokens, x-amz-meta-* values, the x-amz-tagging value
 * and the x-amz-checksum-sha256 value. Pure.
 */
#ifndef LMTPGW_S3_FIELDS_H
#define LMTPGW_S3_FIELDS_H

#include <stdbool.h>
#include <stddef.h>

#include "conftable.h"

#define S3_KEY_MAX 1024            /* bytes of an object key (S3's limit) */

/* Check an expanded object key: 1..S3_KEY_MAX bytes, no control bytes, not starting with
 * '/', no empty, "." or ".." segment (stores and proxies normalize those). 0 or -1 with a
 * static reason. */
int s3_key_check(const char *key, const char **error_r);

/* S3's bucket naming rules: 3 to 63 of a-z, 0-9, '-' and '.', not starting or ending with
 * '-' or '.'. */
bool s3_bucket_name_ok(const char *bucket);

/* A value we may send as is in a header and sign: printable ASCII without spaces
 * (credentials, storage class, KMS key id). */
bool s3_token_ok(const char *s);

/* A value for an x-amz-meta-* header: printable ASCII is kept except '%', everything else
 * (8-bit, controls, '%') becomes %XX; at most max_in input bytes are used. S3 user metadata
 * must be ASCII for SigV4. out always NUL-terminated. */
void s3_meta_value(const char *in, size_t max_in, char *out, size_t size);

/* The x-amz-tagging value of "key=value" strings: "k=v&k2=v2", each side percent-encoded;
 * malloc'd into *tagging_r (NULL for an empty list). 0, or -1 with a message. */
int s3_tagging(const struct conf_strlist *tags, char **tagging_r, char *error_r,
	       size_t error_size);

/* Base64 of the 32 bytes written as 64 hex digits (x-amz-checksum-sha256); out >= 45 bytes.
 * Returns -1 when hex is not 64 hex digits. */
int s3_checksum_b64(const char *hex, char *out, size_t size);

#endif
