/*
 * s3_answer - the fields of S3's XML answers and the status an answer maps to (see
 * s3_answer.h).
 */
#include "s3_answer.h"

#include <stdio.h>
#include <string.h>

static void xml_unescape(char *s)
{
	static const struct {
		const char *ent;
		char c;
	} ents[] = { { "&lt;", '<' }, { "&gt;", '>' }, { "&amp;", '&' }, { "&quot;", '"' },
		     { "&apos;", '\'' } };
	char *w = s;

	for (const char *r = s; *r != '\0';) {
		bool done = false;
		if (*r == '&') {
			for (size_t i = 0; i < sizeof(ents) / sizeof(ents[0]); i++) {
				size_t n = strlen(ents[i].ent);
				if (strncmp(r, ents[i].ent, n) == 0) {
					*w++ = ents[i].c;
					r += n;
					done = true;
					break;
				}
			}
		}
		if (!done)
			*w++ = *r++;
	}
	*w = '\0';
}

bool s3_xml_value(const char *body, size_t len, const char *tag, char *out, size_t size)
{
	char open[72], close[72];

	if (size == 0)
		return false;
	out[0] = '\0';
	if (body == NULL)
		return false;
	int on = snprintf(open, sizeof(open), "<%s>", tag);
	int cn = snprintf(close, sizeof(close), "</%s>", tag);
	if (on < 0 || (size_t)on >= sizeof(open) || cn < 0 || (size_t)cn >= sizeof(close))
		return false;
	const char *start = memmem(body, len, open, (size_t)on);
	if (start == NULL)
		return false;
	start += on;
	const char *end = memmem(start, len - (size_t)(start - body), close, (size_t)cn);
	if (end == NULL)
		return false;
	size_t n = (size_t)(end - start);
	if (n >= size)
		n = size - 1;
	memcpy(out, start, n);
	out[n] = '\0';
	xml_unescape(out);
	return true;
}

void s3_parse_error(const char *body, size_t len, struct s3_error *err_r)
{
	s3_xml_value(body, len, "Code", err_r->code, sizeof(err_r->code));
	s3_xml_value(body, len, "Message", err_r->message, sizeof(err_r->message));
	s3_xml_value(body, len, "RequestId", err_r->request_id, sizeof(err_r->request_id));
}

int s3_map_status(long http_status, const char *code, struct status *st_r)
{
	if (code == NULL)
		code = "";
	if (http_status >= 200 && http_status <= 299)
		return 0;
	if (http_status == 412)
		return 1;
	if (http_status == 403) {
		status_must(st_r, 451, "4.7.0", "Archive store refused our credentials");
	} else if (http_status == 404 && strcmp(code, "NoSuchBucket") == 0) {
		status_must(st_r, 451, "4.3.0", "Archive bucket does not exist");
	} else if ((http_status == 400 && strcmp(code, "EntityTooLarge") == 0) ||
		   http_status == 413) {
		status_must(st_r, 552, "5.3.4", "Message too big for the archive store");
	} else if (http_status == 400 &&
		   (strcmp(code, "BadDigest") == 0 || strcmp(code, "XAmzContentSHA256Mismatch") == 0 ||
		    strcmp(code, "InvalidDigest") == 0)) {
		status_must(st_r, 451, "4.3.0", "Archive store saw corrupted data; try again");
	} else if (http_status == 503 || http_status == 429) {
		status_must(st_r, 451, "4.4.5", "Archive store busy; try again later");
	} else if (http_status >= 500 && http_status <= 599) {
		status_must(st_r, 451, "4.3.0", "Archive store failed");
	} else {
		status_must(st_r, 451, "4.3.0", "Archive store refused the request");
	}
	return -1;
}

bool s3_is_object_lock_refusal(long http_status, const char *code, const char *message)
{
	if (http_status != 400 || code == NULL || message == NULL)
		return false;
	if (strcmp(code, "InvalidRequest") != 0 && strcmp(code, "InvalidBucketState") != 0 &&
	    strcmp(code, "ObjectLockConfigurationNotFoundError") != 0)
		return false;
	return strcasestr(message, "object lock") != NULL || strcasestr(message, "objectlock") != NULL;
}
