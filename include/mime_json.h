/*
 * mime_json - a MIME message as JSON (libetpan's MIME parser, jansson), for the webhook's
 * json-parsed format.
 *
 * {
 *   "headers": [ { "name": "Subject", "value": "decoded text" }, ... ],   (every header field,
 *                                     in order, unfolded, RFC 2047 words decoded, UTF-8)
 *   "subject": "...", "from": "...", "to": "...", "cc": "...", "date": "...",
 *   "message_id": "...",              (decoded; absent when the header is absent)
 *   "text": "...", "html": "...",     (the first inline text/plain and text/html bodies,
 *                                     transfer-decoded, converted from their charset to UTF-8)
 *   "attachments": [ { "filename": "a.pdf", "content_type": "application/pdf", "size": 1234,
 *                      "disposition": "attachment", "content_id": "...",
 *                      "content": "BASE64" } ]   (content omitted, "content_omitted": true,
 *                                     when the decoded size is over attachment_max)
 * }
 * Any part that is not the first inline text/plain or text/html body is an attachment (so no
 * content is lost: further text parts, message/rfc822 parts, images).
 *
 * Header text that is neither RFC 2047-encoded nor valid UTF-8 is taken as ISO-8859-1 (the
 * common case of raw 8-bit headers); a body whose charset cannot be converted keeps its bytes
 * when they are valid UTF-8, else is taken as ISO-8859-1. Every string is valid UTF-8.
 *
 * Error contract: NULL and a reason in error_r when the message cannot be parsed at all or
 * memory runs out. Thread-safe (libetpan's parser and iconv hold no shared state here).
 */
#ifndef LMTPGW_MIME_JSON_H
#define LMTPGW_MIME_JSON_H

#include <stddef.h>

#include <jansson.h>

json_t *mime_json_parse(const char *message, size_t len, size_t attachment_max, char *error_r,
			size_t error_size);

/* A header value (raw, possibly folded, possibly RFC 2047 / 8-bit) as UTF-8, unfolded. Returns
 * a malloc'd string, or NULL on allocation failure. */
char *mime_json_decode_header(const char *value, size_t len);

#endif
