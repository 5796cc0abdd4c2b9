/*
 * s3_multipart - an object as a multipart upload, aborted on any failure (see s3_multipart.h).
 */
#include "s3_multipart.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "s3_answer.h"
#include "s3_fields.h"

/* Every failure after CreateMultipartUpload ends here: a stored upload costs money and
 * blocks nothing, but it should not linger. */
static void abort_upload(struct s3_client *c, const char *key, const char *upload_id)
{
	struct sigv4_param q[] = { { "uploadId", upload_id } };
	struct s3_req r = { .method = "DELETE", .key = key, .query = q, .query_count = 1,
			    .payload_hash = SIGV4_EMPTY_SHA256 };
	struct http_response resp = { 0 };
	struct status ignored;
	char reason[300], esc_key[LOG_ESC_SIZE];

	if (s3_perform(c, &r, &resp, &ignored, reason, sizeof(reason)) < 0 ||
	    (resp.status != 204 && resp.status != 200 && resp.status != 404)) {
		log_warn("backend=%s event=s3_abort_failed key=%s http=%ld (the incomplete upload "
			 "stays until a bucket lifecycle rule removes it)",
			 c->name, log_esc(esc_key, key), resp.status);
	}
	http_response_free(&resp);
}

/* CreateMultipartUpload with the object's headers: the upload id into upload_id. 0 or -1. */
static int create_upload(struct s3_client *c, const char *key, const struct sigv4_param *oh,
			 size_t oh_count, char *upload_id, size_t id_size, struct status *st_r,
			 char *reason, size_t reason_size)
{
	struct sigv4_param h[S3_HEADERS_MAX];
	struct sigv4_param q[] = { { "uploads", "" } };
	struct http_response resp;
	size_t n = 0;

	for (size_t i = 0; i < oh_count && n < S3_HEADERS_MAX - 1; i++)
		h[n++] = oh[i];
	h[n++] = (struct sigv4_param){ "x-amz-checksum-algorithm", "SHA256" };
	struct s3_req r = { .method = "POST", .key = key, .query = q, .query_count = 1,
			    .headers = h, .header_count = n, .payload_hash = SIGV4_EMPTY_SHA256,
			    .body = "", .body_len = 0 };
	if (s3_perform(c, &r, &resp, st_r, reason, reason_size) < 0)
		return -1;
	int m = s3_check_answer(c, "CreateMultipartUpload", key, &resp, st_r, reason,
				reason_size);
	if (m == 0 && !s3_xml_value(resp.body, resp.body_len, "UploadId", upload_id, id_size)) {
		status_must(st_r, 451, "4.3.0", "Archive store answered without an upload id");
		snprintf(reason, reason_size, "CreateMultipartUpload: no UploadId");
		m = -1;
	}
	http_response_free(&resp);
	if (m == 1)
		status_must(st_r, 451, "4.3.0", "Archive store refused the upload");
	return m == 0 ? 0 : -1;
}

/* UploadPart number `number`: len bytes of reader from off, with their checksum. The part's
 * ETag and base64 checksum come back for the Complete request. 0 or -1. */
static int upload_part(struct s3_client *c, const char *key, const char *upload_id,
		       struct spool_reader *reader, size_t number, uint64_t off, uint64_t len,
		       char *etag, size_t etag_size, char *b64, size_t b64_size,
		       struct status *st_r, char *reason, size_t reason_size)
{
	char hex[SIGV4_HEX_SHA256_SIZE], num[16];
	struct http_response resp;

	if (s3_hash_window(reader, off, len, hex) < 0 || s3_checksum_b64(hex, b64, b64_size) < 0) {
		status_must(st_r, 451, "4.3.0", "Local error reading the message");
		snprintf(reason, reason_size, "spool read failed");
		return -1;
	}
	snprintf(num, sizeof(num), "%zu", number);
	struct sigv4_param q[] = { { "partNumber", num }, { "uploadId", upload_id } };
	struct sigv4_param ph[] = { { "x-amz-checksum-sha256", b64 } };
	struct s3_req r = { .method = "PUT", .key = key, .query = q, .query_count = 2,
			    .headers = ph, .header_count = 1, .payload_hash = hex,
			    .reader = reader, .offset = off, .length = len };
	if (s3_perform(c, &r, &resp, st_r, reason, reason_size) < 0)
		return -1;
	int m = s3_check_answer(c, "UploadPart", key, &resp, st_r, reason, reason_size);
	s3_copy_etag(&resp, etag, etag_size);
	http_response_free(&resp);
	if (m == 0 && etag[0] != '\0')
		return 0;
	if (m == 0 || m == 1) {
		status_must(st_r, 451, "4.3.0", "Archive store refused a part");
		if (m == 0)
			snprintf(reason, reason_size, "UploadPart %zu: no ETag", number);
	}
	return -1;
}

/* CompleteMultipartUpload with the part list xml, If-None-Match: *. 0 stored (*res: ETag and
 * version id), 1 the key exists, -1 failed. */
static int complete_upload(struct s3_client *c, const char *key, const char *upload_id,
			   const char *xml, size_t xml_len, struct s3_result *res,
			   struct status *st_r, char *reason, size_t reason_size)
{
	char xml_hash[SIGV4_HEX_SHA256_SIZE];
	struct http_response resp;

	sigv4_sha256_hex(xml, xml_len, xml_hash);
	struct sigv4_param q[] = { { "uploadId", upload_id } };
	struct sigv4_param h[] = { { "Content-Type", "application/xml" },
				   { "If-None-Match", "*" } };
	struct s3_req r = { .method = "POST", .key = key, .query = q, .query_count = 1,
			    .headers = h, .header_count = 2, .payload_hash = xml_hash,
			    .body = xml, .body_len = xml_len };
	/* A transport failure leaves the outcome unknown: the caller aborts (S3 keeps a
	 * completed object; the abort then fails). */
	if (s3_perform(c, &r, &resp, st_r, reason, reason_size) < 0)
		return -1;
	int m = s3_check_answer(c, "CompleteMultipartUpload", key, &resp, st_r, reason,
				reason_size);
	if (m == 0 && memmem(resp.body, resp.body_len, "<Error>", 7) != NULL) {
		/* S3 may answer 200 and report the failure in the body. */
		struct s3_error err = { "", "", "" };
		s3_parse_error(resp.body, resp.body_len, &err);
		status_must(st_r, 451, "4.3.0", "Archive store failed to assemble the upload");
		snprintf(reason, reason_size, "CompleteMultipartUpload http=200 code=%s rid=%s",
			 err.code[0] ? err.code : "-", err.request_id[0] ? err.request_id : "-");
		m = -1;
	}
	if (m == 0) {
		s3_copy_etag(&resp, res->etag, sizeof(res->etag));
		if (res->etag[0] == '\0') {
			char e[80];
			if (s3_xml_value(resp.body, resp.body_len, "ETag", e, sizeof(e)))
				s3_meta_value(e[0] == '"' ? e + 1 : e, 70, res->etag,
					      sizeof(res->etag));
			res->etag[strcspn(res->etag, "\"")] = '\0';
		}
		s3_copy_header(&resp, "x-amz-version-id", res->version, sizeof(res->version));
	}
	http_response_free(&resp);
	return m;
}

int s3_put_multipart(struct s3_client *c, const char *key, struct spool_reader *reader,
		     uint64_t offset, uint64_t total, uint64_t part_size, const struct sigv4_param *oh,
		     size_t oh_count, struct s3_result *res, struct status *st_r, char *reason,
		     size_t reason_size)
{
	char upload_id[512] = "";
	uint64_t part = part_size;
	int m = -1;

	if ((total + part - 1) / part > S3_MAX_PARTS)
		part = (total + S3_MAX_PARTS - 1) / S3_MAX_PARTS;
	size_t parts = (size_t)((total + part - 1) / part);
	if (create_upload(c, key, oh, oh_count, upload_id, sizeof(upload_id), st_r, reason,
			  reason_size) < 0)
		return -1;

	/* "<CompleteMultipartUpload>" + per part about 200 bytes */
	size_t xml_cap = 128 + parts * 200, xml_len = 0;
	char *xml = malloc(xml_cap);
	if (xml == NULL)
		goto oom;
	xml_len += (size_t)snprintf(xml, xml_cap, "<CompleteMultipartUpload xmlns=\"http://s3."
						  "amazonaws.com/doc/2006-03-01/\">");
	for (size_t i = 0; i < parts; i++) {
		uint64_t off = (uint64_t)i * part;
		uint64_t len = total - off < part ? total - off : part;
		off += offset; /* the object is a window of the reader (a journaled original) */
		char b64[48], etag[80];
		if (upload_part(c, key, upload_id, reader, i + 1, off, len, etag, sizeof(etag), b64,
				sizeof(b64), st_r, reason, reason_size) < 0)
			goto abort;
		int w = snprintf(xml + xml_len, xml_cap - xml_len,
				 "<Part><PartNumber>%zu</PartNumber><ETag>\"%s\"</ETag>"
				 "<ChecksumSHA256>%s</ChecksumSHA256></Part>",
				 i + 1, etag, b64);
		if (w < 0 || (size_t)w >= xml_cap - xml_len)
			goto too_long;
		xml_len += (size_t)w;
	}
	int w = snprintf(xml + xml_len, xml_cap - xml_len, "</CompleteMultipartUpload>");
	if (w < 0 || (size_t)w >= xml_cap - xml_len)
		goto too_long;
	xml_len += (size_t)w;
	m = complete_upload(c, key, upload_id, xml, xml_len, res, st_r, reason, reason_size);
	free(xml);
	if (m != 0)
		abort_upload(c, key, upload_id);
	return m;
too_long:
	status_must(st_r, 451, "4.3.0", "Local error in processing");
	snprintf(reason, reason_size, "part list too long");
	goto abort;
oom:
	status_must(st_r, 451, "4.3.0", "Local error in processing");
	snprintf(reason, reason_size, "out of memory");
abort:
	free(xml);
	abort_upload(c, key, upload_id);
	return -1;
}
