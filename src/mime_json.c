/*
 * mime_json - a MIME message as JSON for the webhook's json-parsed format (see mime_json.h).
 *
 * libetpan parses the structure (mailmime_parse) and decodes transfer encodings
 * (mailmime_part_parse) and RFC 2047 words (mailmime_encoded_phrase_parse); charsets go to
 * UTF-8 with libetpan's charconv (iconv). The top-level header fields are split here, from the
 * raw header block, so every field is listed in order with its name as written. Every string
 * handed to jansson is checked to be UTF-8 first (ISO-8859-1 is the fallback reading).
 */
#include "mime_json.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libetpan/libetpan.h>

#include "base64.h"
#include "utf8.h"

#define MIME_JSON_MAX_HEADERS 1000
#define MIME_JSON_MAX_DEPTH 32

/* ISO-8859-1 -> UTF-8 (malloc'd, NUL-terminated). */
static char *latin1_to_utf8(const char *s, size_t len, size_t *len_r)
{
	char *out = malloc(len * 2 + 1);
	size_t o = 0;

	if (out == NULL)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x80) {
			out[o++] = (char)c;
		} else {
			out[o++] = (char)(0xc0 | (c >> 6));
			out[o++] = (char)(0x80 | (c & 0x3f));
		}
	}
	out[o] = '\0';
	if (len_r != NULL)
		*len_r = o;
	return out;
}

/* A JSON string of bytes that should be UTF-8: kept if valid, else read as ISO-8859-1. */
static json_t *json_text(const char *s, size_t len)
{
	if (utf8_valid(s, len))
		return json_stringn(s, len);
	size_t n;
	char *u = latin1_to_utf8(s, len, &n);
	if (u == NULL)
		return NULL;
	json_t *j = json_stringn(u, n);
	free(u);
	return j;
}

char *mime_json_decode_header(const char *value, size_t len)
{
	char *unfolded = malloc(len + 1);
	size_t o = 0;

	if (unfolded == NULL)
		return NULL;
	/* RFC 5322 2.2.3: unfolding removes the CRLF before the whitespace. */
	for (size_t i = 0; i < len; i++) {
		if (value[i] == '\r' || value[i] == '\n')
			continue;
		unfolded[o++] = value[i];
	}
	unfolded[o] = '\0';
	while (o > 0 && (unfolded[o - 1] == ' ' || unfolded[o - 1] == '\t'))
		unfolded[--o] = '\0';
	size_t start = 0;
	while (start < o && (unfolded[start] == ' ' || unfolded[start] == '\t'))
		start++;

	bool utf8 = utf8_valid(unfolded + start, o - start);
	char *decoded = NULL;
	size_t idx = 0;
	if (strstr(unfolded + start, "=?") != NULL &&
	    mailmime_encoded_phrase_parse(utf8 ? "utf-8" : "iso-8859-1", unfolded + start,
					  o - start, &idx, "utf-8", &decoded) == MAILIMF_NO_ERROR &&
	    decoded != NULL && utf8_valid(decoded, strlen(decoded))) {
		char *copy = strdup(decoded);
		free(decoded);
		free(unfolded);
		return copy;
	}
	free(decoded);
	char *out = utf8 ? strdup(unfolded + start)
			 : latin1_to_utf8(unfolded + start, o - start, NULL);
	free(unfolded);
	return out;
}

struct walk {
	json_t *root;
	json_t *attachments;
	bool have_text, have_html;
	size_t attachment_max;
	bool failed;
};

static const char *discrete_name(const struct mailmime_discrete_type *t)
{
	switch (t->dt_type) {
	case MAILMIME_DISCRETE_TYPE_TEXT:
		return "text";
	case MAILMIME_DISCRETE_TYPE_IMAGE:
		return "image";
	case MAILMIME_DISCRETE_TYPE_AUDIO:
		return "audio";
	case MAILMIME_DISCRETE_TYPE_VIDEO:
		return "video";
	case MAILMIME_DISCRETE_TYPE_APPLICATION:
		return "application";
	default:
		return t->dt_extension ? t->dt_extension : "application";
	}
}

/* "type/subtype", lowercased. */
static void content_type_name(const struct mailmime_content *ct, char *out, size_t size)
{
	const char *type = "text", *sub = "plain";

	if (ct != NULL && ct->ct_type != NULL) {
		if (ct->ct_type->tp_type == MAILMIME_TYPE_DISCRETE_TYPE)
			type = discrete_name(ct->ct_type->tp_data.tp_discrete_type);
		else if (ct->ct_type->tp_type == MAILMIME_TYPE_COMPOSITE_TYPE) {
			const struct mailmime_composite_type *c = ct->ct_type->tp_data.tp_composite_type;
			type = c->ct_type == MAILMIME_COMPOSITE_TYPE_MESSAGE     ? "message"
			       : c->ct_type == MAILMIME_COMPOSITE_TYPE_MULTIPART ? "multipart"
			       : c->ct_token                                   ? c->ct_token
										 : "application";
		}
		if (ct->ct_subtype != NULL)
			sub = ct->ct_subtype;
	}
	snprintf(out, size, "%s/%s", type, sub);
	for (char *p = out; *p; p++)
		*p = (char)tolower((unsigned char)*p);
}

/* Transfer-decoded content of a single part: *data_r is libetpan's (free with
 * mailmime_decoded_part_free) when *owned_r, else points into the message. */
static int part_content(const struct mailmime_data *d, const char **data_r, size_t *len_r,
			bool *owned_r)
{
	*owned_r = false;
	if (d == NULL || d->dt_type != MAILMIME_DATA_TEXT) {
		*data_r = "";
		*len_r = 0;
		return 0;
	}
	if (!d->dt_encoded || d->dt_encoding == MAILMIME_MECHANISM_7BIT ||
	    d->dt_encoding == MAILMIME_MECHANISM_8BIT || d->dt_encoding == MAILMIME_MECHANISM_BINARY) {
		*data_r = d->dt_data.dt_text.dt_data;
		*len_r = d->dt_data.dt_text.dt_length;
		return 0;
	}
	size_t idx = 0, len = 0;
	char *out = NULL;
	if (mailmime_part_parse(d->dt_data.dt_text.dt_data, d->dt_data.dt_text.dt_length, &idx,
				d->dt_encoding, &out, &len) != MAILIMF_NO_ERROR)
		return -1;
	*data_r = out;
	*len_r = len;
	*owned_r = true;
	return 0;
}

static json_t *text_to_json(const char *data, size_t len, const char *charset)
{
	if (charset != NULL && strcasecmp(charset, "utf-8") != 0 &&
	    strcasecmp(charset, "us-ascii") != 0) {
		char *out = NULL;
		size_t out_len = 0;
		if (charconv_buffer("utf-8", charset, data, len, &out, &out_len) ==
			    MAIL_CHARCONV_NO_ERROR &&
		    out != NULL && utf8_valid(out, out_len)) {
			json_t *j = json_stringn(out, out_len);
			charconv_buffer_free(out);
			return j;
		}
		if (out != NULL)
			charconv_buffer_free(out);
	}
	return json_text(data, len);
}

static void add_attachment(struct walk *w, const char *type, const char *filename,
			   const char *disposition, const char *content_id, const char *data,
			   size_t len)
{
	json_t *a = json_object();

	if (a == NULL) {
		w->failed = true;
		return;
	}
	if (filename != NULL) {
		char *dec = mime_json_decode_header(filename, strlen(filename));
		if (dec != NULL)
			json_object_set_new(a, "filename", json_text(dec, strlen(dec)));
		free(dec);
	}
	json_object_set_new(a, "content_type", json_text(type, strlen(type)));
	json_object_set_new(a, "size", json_integer((json_int_t)len));
	if (disposition != NULL)
		json_object_set_new(a, "disposition", json_string(disposition));
	if (content_id != NULL)
		json_object_set_new(a, "content_id", json_text(content_id, strlen(content_id)));
	if (len <= w->attachment_max) {
		char *b64 = malloc(base64_encoded_size(len));
		if (b64 == NULL) {
			w->failed = true;
			json_decref(a);
			return;
		}
		size_t n = base64_encode(data, len, b64);
		json_object_set_new(a, "content", json_stringn_nocheck(b64, n));
		free(b64);
	} else {
		json_object_set_new(a, "content_omitted", json_true());
	}
	json_array_append_new(w->attachments, a);
}

static void walk_mime(struct walk *w, struct mailmime *mime, int depth)
{
	if (mime == NULL || w->failed)
		return;
	if (depth > MIME_JSON_MAX_DEPTH) {
		w->failed = true;
		return;
	}
	switch (mime->mm_type) {
	case MAILMIME_MULTIPLE: {
		clistiter *it;
		for (it = clist_begin(mime->mm_data.mm_multipart.mm_mp_list); it != NULL;
		     it = clist_next(it))
			walk_mime(w, clist_content(it), depth + 1);
		return;
	}
	case MAILMIME_MESSAGE:
		if (depth == 0) {
			walk_mime(w, mime->mm_data.mm_message.mm_msg_mime, depth + 1);
			return;
		}
		/* an attached message: listed whole, as message/rfc822 */
		{
			struct mailmime_single_fields sf;
			char type[128];
			mailmime_single_fields_init(&sf, mime->mm_mime_fields, mime->mm_content_type);
			content_type_name(mime->mm_content_type, type, sizeof(type));
			const char *data = mime->mm_body ? mime->mm_body->dt_data.dt_text.dt_data
							 : mime->mm_mime_start;
			size_t len = mime->mm_body ? mime->mm_body->dt_data.dt_text.dt_length
						   : mime->mm_length;
			add_attachment(w, type,
				       sf.fld_disposition_filename ? sf.fld_disposition_filename
								   : sf.fld_content_name,
				       sf.fld_disposition ? "attachment" : NULL, sf.fld_id, data, len);
		}
		return;
	case MAILMIME_SINGLE: {
		struct mailmime_single_fields sf;
		char type[128];
		const char *data;
		size_t len;
		bool owned;
		mailmime_single_fields_init(&sf, mime->mm_mime_fields, mime->mm_content_type);
		content_type_name(mime->mm_content_type, type, sizeof(type));
		bool attachment = sf.fld_disposition != NULL && sf.fld_disposition->dsp_type != NULL &&
				  sf.fld_disposition->dsp_type->dsp_type ==
					  MAILMIME_DISPOSITION_TYPE_ATTACHMENT;
		const char *disp = sf.fld_disposition == NULL ? NULL
				   : attachment              ? "attachment"
							     : "inline";
		if (part_content(mime->mm_data.mm_single, &data, &len, &owned) < 0) {
			/* undecodable: keep the encoded bytes as an attachment */
			data = mime->mm_data.mm_single->dt_data.dt_text.dt_data;
			len = mime->mm_data.mm_single->dt_data.dt_text.dt_length;
			owned = false;
			attachment = true;
		}
		bool is_text = strcmp(type, "text/plain") == 0, is_html = strcmp(type, "text/html") == 0;
		if (!attachment && is_text && !w->have_text) {
			json_t *j = text_to_json(data, len, sf.fld_content_charset);
			if (j == NULL)
				w->failed = true;
			else
				json_object_set_new(w->root, "text", j);
			w->have_text = true;
		} else if (!attachment && is_html && !w->have_html) {
			json_t *j = text_to_json(data, len, sf.fld_content_charset);
			if (j == NULL)
				w->failed = true;
			else
				json_object_set_new(w->root, "html", j);
			w->have_html = true;
		} else {
			add_attachment(w, type,
				       sf.fld_disposition_filename ? sf.fld_disposition_filename
								   : sf.fld_content_name,
				       disp, sf.fld_id, data, len);
		}
		if (owned)
			mailmime_decoded_part_free((char *)data);
		return;
	}
	default:
		return;
	}
}

/* The top-level header block, split into fields (names as written, values decoded). */
static int add_headers(json_t *root, const char *msg, size_t len)
{
	json_t *list = json_array();
	size_t pos = 0, count = 0;
	static const struct {
		const char *name, *key;
	} wanted[] = { { "subject", "subject" }, { "from", "from" }, { "to", "to" },
		       { "cc", "cc" },           { "date", "date" }, { "message-id", "message_id" },
		       { "reply-to", "reply_to" } };

	if (list == NULL)
		return -1;
	while (pos < len && count < MIME_JSON_MAX_HEADERS) {
		/* end of the header block: an empty line */
		if (msg[pos] == '\n' || (msg[pos] == '\r' && pos + 1 < len && msg[pos + 1] == '\n'))
			break;
		size_t start = pos;
		/* the field: up to a line end not followed by whitespace */
		while (pos < len) {
			const char *nl = memchr(msg + pos, '\n', len - pos);
			pos = nl ? (size_t)(nl - msg) + 1 : len;
			if (pos >= len || (msg[pos] != ' ' && msg[pos] != '\t'))
				break;
		}
		const char *field = msg + start;
		size_t flen = pos - start;
		const char *colon = memchr(field, ':', flen);
		if (colon == NULL)
			continue; /* not a field (e.g. an mbox "From " line): skipped */
		size_t nlen = (size_t)(colon - field);
		while (nlen > 0 && (field[nlen - 1] == ' ' || field[nlen - 1] == '\t'))
			nlen--;
		char *value = mime_json_decode_header(colon + 1, flen - (size_t)(colon + 1 - field));
		if (value == NULL) {
			json_decref(list);
			return -1;
		}
		json_t *h = json_object();
		json_object_set_new(h, "name", json_text(field, nlen));
		json_object_set_new(h, "value", json_string(value));
		json_array_append_new(list, h);
		for (size_t i = 0; i < sizeof(wanted) / sizeof(wanted[0]); i++) {
			if (strlen(wanted[i].name) == nlen &&
			    strncasecmp(field, wanted[i].name, nlen) == 0 &&
			    json_object_get(root, wanted[i].key) == NULL)
				json_object_set_new(root, wanted[i].key, json_string(value));
		}
		free(value);
		count++;
	}
	json_object_set_new(root, "headers", list);
	return 0;
}

json_t *mime_json_parse(const char *message, size_t len, size_t attachment_max, char *error_r,
			size_t error_size)
{
	struct mailmime *mime = NULL;
	size_t idx = 0;
	struct walk w = { .attachment_max = attachment_max };

	w.root = json_object();
	w.attachments = json_array();
	if (w.root == NULL || w.attachments == NULL) {
		snprintf(error_r, error_size, "out of memory");
		goto fail;
	}
	if (add_headers(w.root, message, len) < 0) {
		snprintf(error_r, error_size, "out of memory");
		goto fail;
	}
	int r = mailmime_parse(message, len, &idx, &mime);
	if (r != MAILIMF_NO_ERROR || mime == NULL) {
		snprintf(error_r, error_size, "MIME structure not parsed (libetpan error %d)", r);
		goto fail;
	}
	walk_mime(&w, mime, 0);
	mailmime_free(mime);
	if (w.failed) {
		snprintf(error_r, error_size, "MIME structure too deep or out of memory");
		goto fail;
	}
	json_object_set_new(w.root, "attachments", w.attachments);
	return w.root;
fail:
	json_decref(w.root);
	json_decref(w.attachments);
	return NULL;
}
