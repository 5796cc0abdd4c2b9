/*
 * s3_answer - what an S3 answer says: the fields of its XML body (a bounded scrape, no XML
 * library) and the LMTP status an HTTP answer of S3 maps to. Pure: no I/O, no logging.
 */
#ifndef LMTPGW_S3_ANSWER_H
#define LMTPGW_S3_ANSWER_H

#include <stdbool.h>
#include <stddef.h>

#include "status.h"

/* The fields of an S3 error body we log, each truncated to fit, "" when absent:
 * <Error><Code>..</Code><Message>..</Message><RequestId>..</RequestId></Error> */
struct s3_error {
	char code[64];
	char message[256];
	char request_id[128];
};

/* Text between <tag> and </tag> in the first len bytes of body, truncated to size, with the
 * five XML entities decoded. Returns false (and "") when the element is absent. No XML library:
 * S3's answers are small, flat and machine-written; only the first occurrence is read. */
bool s3_xml_value(const char *body, size_t len, const char *tag, char *out, size_t size);
void s3_parse_error(const char *body, size_t len, struct s3_error *err_r);

/* Map an HTTP answer of S3 to a status (design.md, "Default status mapping"):
 *   2xx -> returns 0 (*st_r untouched)
 *   412 -> returns 1 (the key exists; the caller decides what that means)
 *   otherwise -> returns -1 with *st_r set:
 *     403 (SignatureDoesNotMatch, AccessDenied, InvalidAccessKeyId, ...) 451 4.7.0;
 *     404 NoSuchBucket (and any 404) 451 4.3.0; 400 EntityTooLarge and 413 552 5.3.4;
 *     400 BadDigest / XAmzContentSHA256Mismatch / InvalidDigest 451 4.3.0;
 *     503 (SlowDown, ServiceUnavailable) and 429 451 4.4.5; other 5xx 451 4.3.0;
 *     any other answer 451 4.3.0 (misconfiguration is temporary). */
int s3_map_status(long http_status, const char *code, struct status *st_r);

/* True when an error is S3 refusing Object Lock headers (bucket without Object Lock). */
bool s3_is_object_lock_refusal(long http_status, const char *code, const char *message);

#endif
