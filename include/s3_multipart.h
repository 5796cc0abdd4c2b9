/*
 * s3_multipart - an object stored as an S3 multipart upload: CreateMultipartUpload (SHA256
 * checksums declared), each part hashed and then streamed from its window of the spool,
 * CompleteMultipartUpload with If-None-Match: *; the upload is aborted on any failure, so no
 * incomplete upload is left behind unless the abort fails too (logged).
 */
#ifndef LMTPGW_S3_MULTIPART_H
#define LMTPGW_S3_MULTIPART_H

#include <stddef.h>
#include <stdint.h>

#include "s3_client.h"

#define S3_MAX_PARTS 10000          /* S3's limit; part_size grows to stay within it */

/* Store total bytes of reader from offset at key in parts of part_size bytes (or more). oh: the object's
 * headers (s3.c). 0 stored (*res filled), 1 the key exists (412 at Complete), -1 failed
 * (*st_r, reason). */
int s3_put_multipart(struct s3_client *c, const char *key, struct spool_reader *reader,
		     uint64_t offset, uint64_t total, uint64_t part_size, const struct sigv4_param *oh,
		     size_t oh_count, struct s3_result *res, struct status *st_r, char *reason,
		     size_t reason_size);

#endif
