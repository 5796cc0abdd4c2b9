/*
 * journal - Exchange / Microsoft 365 envelope journal reports (see journal.h).
 *
 * Why a bounded hand scan of the MIME structure and not mailmime_parse(): we need two things
 * from a report, the envelope text and the exact byte range of the attached original, and
 * nothing of the original's own structure. mailmime_parse() builds the whole tree, the
 * original's parts included (a tree whose size and depth the sender of the journaled message
 * chooses: a 30 MB message of many nested parts), and its part data pointers do not say where
 * the CRLF that belongs to the next boundary delimiter starts, which decides byte-exactness
 * (RFC 2046 5.1.1: "the CRLF preceding the boundary delimiter line is conceptually attached to
 * the boundary"). So the scan here finds header blocks and delimiter lines with memchr/memmem
 * over the mapped report, bounded at every step, and libetpan does what it is good at: the
 * Content-Type value (mailmime_content_parse: quoting, comments, parameters), the transfer
 * decoding of the envelope part (mailmime_part_parse) and its charset (charconv_buffer).
 */
#include "journal.h"
#include "utf8.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libetpan/libetpan.h>

/* --- MIME structure ------------------------------------------------------------------------ */

/* The fields of one header block that matter here (values raw, possibly folded). */
struct mime_header {
	const char *ctype;
	size_t ctype_len;
	const char *cte;
	size_t cte_len;
	bool journal;                  /* X-MS-Journal-Report present */
	size_t body;                   /* offset of the first byte after the empty line */
};

static bool name_is(const char *name, size_t len, const char *want)
{
	return len == strlen(want) && strncasecmp(name, want, len) == 0;
}

/* The header block at data[start..end): 0 with *h filled, or -1 when no empty line ends it
 * within JOURNAL_HEADER_MAX bytes (or before end), or a line is not a field. Lines end in LF
 * or CRLF. */
static int scan_header(const char *data, size_t start, size_t end, struct mime_header *h)
{
	size_t limit = end - start > JOURNAL_HEADER_MAX ? start + JOURNAL_HEADER_MAX : end;
	size_t pos = start;
	const char *value = NULL;      /* the value a continuation line extends */
	size_t *value_len = NULL;

	memset(h, 0, sizeof(*h));
	while (pos < limit) {
		const char *nl = memchr(data + pos, '\n', limit - pos);
		if (nl == NULL)
			return -1;
		size_t line_end = (size_t)(nl - data);
		size_t content_end = line_end;
		if (content_end > pos && data[content_end - 1] == '\r')
			content_end--;
		if (content_end == pos) {
			h->body = line_end + 1;
			return 0;
		}
		if (data[pos] == ' ' || data[pos] == '\t') {
			/* RFC 5322 2.2.3 folding: the field goes on */
			if (value_len != NULL)
				*value_len = content_end - (size_t)(value - data);
		} else {
			const char *colon = memchr(data + pos, ':', content_end - pos);
			if (colon == NULL)
				return -1;
			size_t name_len = (size_t)(colon - (data + pos));
			while (name_len > 0 && (data[pos + name_len - 1] == ' ' ||
						data[pos + name_len - 1] == '\t'))
				name_len--;
			value = colon + 1;
			value_len = NULL;
			if (name_is(data + pos, name_len, "Content-Type") && h->ctype == NULL) {
				h->ctype = value;
				value_len = &h->ctype_len;
			} else if (name_is(data + pos, name_len, "Content-Transfer-Encoding") &&
				   h->cte == NULL) {
				h->cte = value;
				value_len = &h->cte_len;
			} else if (name_is(data + pos, name_len, "X-MS-Journal-Report")) {
				h->journal = true;
			}
			if (value_len != NULL)
				*value_len = content_end - (size_t)(value - data);
		}
		pos = line_end + 1;
	}
	return -1;
}

enum part_kind { PART_OTHER, PART_TEXT_PLAIN, PART_RFC822, PART_MULTIPART };

/* What a Content-Type value names; the boundary (multipart) and charset (text) into the
 * buffers ("" when absent). -1 when libetpan cannot parse the value. */
static int content_kind(const char *value, size_t len, enum part_kind *kind_r, char *boundary,
			size_t boundary_size, char *charset, size_t charset_size)
{
	struct mailmime_content *ct = NULL;
	size_t idx = 0;

	boundary[0] = '\0';
	charset[0] = '\0';
	*kind_r = PART_OTHER;
	if (mailmime_content_parse(value, len, &idx, &ct) != MAILIMF_NO_ERROR || ct == NULL)
		return -1;
	const struct mailmime_type *t = ct->ct_type;
	const char *sub = ct->ct_subtype != NULL ? ct->ct_subtype : "";
	if (t != NULL && t->tp_type == MAILMIME_TYPE_COMPOSITE_TYPE &&
	    t->tp_data.tp_composite_type != NULL) {
		int c = t->tp_data.tp_composite_type->ct_type;
		if (c == MAILMIME_COMPOSITE_TYPE_MULTIPART)
			*kind_r = PART_MULTIPART;
		else if (c == MAILMIME_COMPOSITE_TYPE_MESSAGE && strcasecmp(sub, "rfc822") == 0)
			*kind_r = PART_RFC822;
	} else if (t != NULL && t->tp_type == MAILMIME_TYPE_DISCRETE_TYPE &&
		   t->tp_data.tp_discrete_type != NULL &&
		   t->tp_data.tp_discrete_type->dt_type == MAILMIME_DISCRETE_TYPE_TEXT &&
		   strcasecmp(sub, "plain") == 0) {
		*kind_r = PART_TEXT_PLAIN;
	}
	const char *b = mailmime_content_param_get(ct, "boundary");
	if (b != NULL && strlen(b) < boundary_size)
		snprintf(boundary, boundary_size, "%s", b);
	const char *cs = mailmime_content_param_get(ct, "charset");
	if (cs != NULL && strlen(cs) < charset_size)
		snprintf(charset, charset_size, "%s", cs);
	mailmime_content_free(ct);
	return 0;
}

/* The next delimiter line "--boundary" (or the close delimiter "--boundary--") at a line start
 * at or after from (line_start is a known line start: the body's first byte). Returns its
 * offset, with *close_r and *next_r (the first byte after its line), or -1 when none.
 * RFC 2046 5.1.1: delimiter := CRLF "--" boundary; transport-padding := *LWSP-char. */
static long long find_delimiter(const char *data, size_t len, size_t from, size_t line_start,
				const char *dash, size_t dash_len, bool *close_r, size_t *next_r)
{
	size_t pos = from;

	while (pos < len) {
		const char *hit = memmem(data + pos, len - pos, dash, dash_len);
		if (hit == NULL)
			return -1;
		size_t at = (size_t)(hit - data);
		pos = at + 1;
		if (at != line_start && (at == 0 || data[at - 1] != '\n'))
			continue;
		size_t q = at + dash_len;
		bool close = false;
		if (len - q >= 2 && data[q] == '-' && data[q + 1] == '-') {
			close = true;
			q += 2;
		}
		while (q < len && (data[q] == ' ' || data[q] == '\t'))
			q++;
		size_t next;
		if (q == len)
			next = len;
		else if (data[q] == '\n')
			next = q + 1;
		else if (data[q] == '\r' && q + 1 < len && data[q + 1] == '\n')
			next = q + 2;
		else
			continue; /* "--boundaryX...": a longer string, not this delimiter */
		*close_r = close;
		*next_r = next;
		return (long long)at;
	}
	return -1;
}

/* Where a part that starts at start ends, given the delimiter at at: before the line break
 * that belongs to the delimiter. */
static size_t part_end(const char *data, size_t start, size_t at)
{
	size_t end = at;

	if (end > start && data[end - 1] == '\n')
		end--;
	if (end > start && data[end - 1] == '\r')
		end--;
	return end;
}

/* A Content-Transfer-Encoding value trimmed into buf (lower case not needed: compared with
 * strcasecmp). "" when absent. */
static void cte_token(const struct mime_header *h, char *buf, size_t size)
{
	size_t i = 0, n = 0;

	buf[0] = '\0';
	if (h->cte == NULL)
		return;
	while (i < h->cte_len && strchr(" \t\r\n", h->cte[i]) != NULL)
		i++;
	while (i < h->cte_len && strchr(" \t\r\n;(", h->cte[i]) == NULL && n + 1 < size)
		buf[n++] = h->cte[i++];
	buf[n] = '\0';
}

/* --- the envelope text ---------------------------------------------------------------------- */

/* The envelope part's text as UTF-8 (malloc'd, NUL-terminated): converted from its charset
 * when it names one libetpan's iconv knows, kept when already valid UTF-8, else read as
 * ISO-8859-1. NULL on allocation failure. */
static char *envelope_utf8(const char *text, size_t len, const char *charset)
{
	char *out;

	if (charset[0] != '\0' && strcasecmp(charset, "utf-8") != 0 &&
	    strcasecmp(charset, "us-ascii") != 0) {
		char *conv = NULL;
		size_t conv_len = 0;
		if (charconv_buffer("utf-8", charset, text, len, &conv, &conv_len) ==
			    MAIL_CHARCONV_NO_ERROR &&
		    conv != NULL && utf8_valid(conv, conv_len) && memchr(conv, 0, conv_len) == NULL) {
			out = strndup(conv, conv_len);
			charconv_buffer_free(conv);
			return out;
		}
		if (conv != NULL)
			charconv_buffer_free(conv);
	}
	if (utf8_valid(text, len) && memchr(text, 0, len) == NULL)
		return strndup(text, len);
	out = malloc(len * 2 + 1);
	if (out == NULL)
		return NULL;
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)text[i];
		if (c == 0) {
			out[o++] = '?';
		} else if (c < 0x80) {
			out[o++] = (char)c;
		} else {
			out[o++] = (char)(0xc0 | (c >> 6));
			out[o++] = (char)(0x80 | (c & 0x3f));
		}
	}
	out[o] = '\0';
	return out;
}

/* s[0..len) without surrounding white space, as a new string; <> around an address are
 * dropped when strip_angle. NULL when empty, too long, or on allocation failure. */
static char *trimmed(const char *s, size_t len, bool strip_angle)
{
	while (len > 0 && (*s == ' ' || *s == '\t')) {
		s++;
		len--;
	}
	while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\r'))
		len--;
	if (strip_angle && len >= 2 && s[0] == '<' && s[len - 1] == '>') {
		s++;
		len -= 2;
	}
	if (len == 0 || len > JOURNAL_VALUE_MAX)
		return NULL;
	return strndup(s, len);
}

/* One recipient line's value: address [", " ("Expanded" / "Forwarded") ":" SP source]. */
static int add_recipient(struct journal_report *r, enum journal_field field, const char *v,
			 size_t len, size_t *cap)
{
	if (r->rcpt_count == JOURNAL_RECIPIENTS_MAX)
		return -1;
	if (r->rcpt_count == *cap) {
		size_t ncap = *cap ? *cap * 2 : 16;
		struct journal_recipient *n = realloc(r->rcpts, ncap * sizeof(*n));
		if (n == NULL)
			return -1;
		r->rcpts = n;
		*cap = ncap;
	}
	const char *comma = memchr(v, ',', len);
	size_t alen = comma != NULL ? (size_t)(comma - v) : len;
	struct journal_recipient *jr = &r->rcpts[r->rcpt_count];
	memset(jr, 0, sizeof(*jr));
	jr->field = field;
	jr->address = trimmed(v, alen, true);
	if (jr->address == NULL)
		return -1;
	r->rcpt_count++;
	/* the annotations, each ", Name: address" */
	while (comma != NULL) {
		const char *a = comma + 1, *end = v + len;
		comma = memchr(a, ',', (size_t)(end - a));
		const char *aend = comma != NULL ? comma : end;
		const char *colon = memchr(a, ':', (size_t)(aend - a));
		if (colon == NULL)
			continue;
		while (a < colon && (*a == ' ' || *a == '\t'))
			a++;
		size_t nlen = (size_t)(colon - a);
		char **slot = NULL;
		if (name_is(a, nlen, "Expanded"))
			slot = &jr->expanded_from;
		else if (name_is(a, nlen, "Forwarded"))
			slot = &jr->forwarded_from;
		if (slot != NULL && *slot == NULL)
			*slot = trimmed(colon + 1, (size_t)(aend - colon - 1), true);
	}
	return 0;
}

/* The envelope lines (see journal.h); unknown lines are skipped. -1: no Sender or no
 * recipient, or a limit. */
static int parse_envelope(struct journal_report *r, const char *text, const char **error_r)
{
	size_t cap = 0;
	const char *p = text;

	while (*p != '\0') {
		const char *nl = strchr(p, '\n');
		size_t len = nl != NULL ? (size_t)(nl - p) : strlen(p);
		const char *colon = memchr(p, ':', len);
		if (colon != NULL) {
			size_t nlen = (size_t)(colon - p);
			const char *v = colon + 1;
			size_t vlen = len - nlen - 1;
			int field = -1;
			if (name_is(p, nlen, "Sender") && r->sender == NULL)
				r->sender = trimmed(v, vlen, true);
			else if (name_is(p, nlen, "Subject") && r->subject == NULL)
				r->subject = trimmed(v, vlen, false);
			else if (name_is(p, nlen, "Message-ID") && r->message_id == NULL)
				r->message_id = trimmed(v, vlen, false);
			else if (name_is(p, nlen, "On-Behalf-Of") && r->on_behalf_of == NULL)
				r->on_behalf_of = trimmed(v, vlen, true);
			else if (name_is(p, nlen, "To"))
				field = JOURNAL_TO;
			else if (name_is(p, nlen, "Cc"))
				field = JOURNAL_CC;
			else if (name_is(p, nlen, "Bcc"))
				field = JOURNAL_BCC;
			else if (name_is(p, nlen, "Recipient"))
				field = JOURNAL_RECIPIENT;
			if (field >= 0 &&
			    add_recipient(r, (enum journal_field)field, v, vlen, &cap) < 0) {
				*error_r = "a recipient line of the envelope is empty, too long or "
					   "one too many";
				return -1;
			}
		}
		if (nl == NULL)
			break;
		p = nl + 1;
	}
	if (r->sender == NULL) {
		*error_r = "the envelope part has no Sender: line";
		return -1;
	}
	if (r->rcpt_count == 0) {
		*error_r = "the envelope part names no recipient";
		return -1;
	}
	return 0;
}

/* Decode (transfer encoding), convert (charset) and parse the envelope part's body. */
static int envelope_part(struct journal_report *r, const char *body, size_t len,
			 const struct mime_header *ph, const char *charset, const char **error_r)
{
	char cte[32];
	int mechanism;

	if (len > JOURNAL_ENVELOPE_MAX) {
		*error_r = "the envelope part is larger than 8 MiB";
		return -1;
	}
	cte_token(ph, cte, sizeof(cte));
	if (cte[0] == '\0' || strcasecmp(cte, "7bit") == 0 || strcasecmp(cte, "8bit") == 0 ||
	    strcasecmp(cte, "binary") == 0)
		mechanism = MAILMIME_MECHANISM_8BIT;
	else if (strcasecmp(cte, "quoted-printable") == 0)
		mechanism = MAILMIME_MECHANISM_QUOTED_PRINTABLE;
	else if (strcasecmp(cte, "base64") == 0)
		mechanism = MAILMIME_MECHANISM_BASE64;
	else {
		*error_r = "the envelope part has an unknown Content-Transfer-Encoding";
		return -1;
	}
	char *decoded = NULL;
	size_t decoded_len = len;
	const char *text = body;
	if (mechanism != MAILMIME_MECHANISM_8BIT) {
		size_t idx = 0;
		if (mailmime_part_parse(body, len, &idx, mechanism, &decoded, &decoded_len) !=
			    MAILIMF_NO_ERROR ||
		    decoded == NULL) {
			*error_r = "the envelope part cannot be decoded";
			return -1;
		}
		text = decoded;
	}
	char *utf8 = envelope_utf8(text, decoded_len, charset);
	if (decoded != NULL)
		mailmime_decoded_part_free(decoded);
	if (utf8 == NULL) {
		*error_r = "out of memory";
		return -1;
	}
	int ret = parse_envelope(r, utf8, error_r);
	free(utf8);
	return ret;
}

/* --- the report ---------------------------------------------------------------------------- */

bool journal_is_report(const char *data, size_t len)
{
	struct mime_header h;

	if (scan_header(data, 0, len, &h) == 0)
		return h.journal;
	/* a header block without an end (or too long) may still name the field */
	return false;
}

int journal_parse(const char *data, size_t len, struct journal_report *r, const char **error_r)
{
	struct mime_header top, ph;
	char boundary[256], charset[64], dash[260];
	enum part_kind kind;
	bool have_env = false, have_orig = false, close = false;
	size_t next = 0;

	memset(r, 0, sizeof(*r));
	if (scan_header(data, 0, len, &top) < 0) {
		*error_r = "the header block does not end (or is longer than 256 KiB)";
		return -1;
	}
	if (!top.journal) {
		*error_r = "no X-MS-Journal-Report header field";
		return -1;
	}
	if (top.ctype == NULL ||
	    content_kind(top.ctype, top.ctype_len, &kind, boundary, sizeof(boundary), charset,
			 sizeof(charset)) < 0 ||
	    kind != PART_MULTIPART || boundary[0] == '\0') {
		*error_r = "the report is not multipart with a boundary";
		return -1;
	}
	size_t dash_len = (size_t)snprintf(dash, sizeof(dash), "--%s", boundary);
	/* the preamble up to the first delimiter is skipped (RFC 2046 5.1.1) */
	if (find_delimiter(data, len, top.body, top.body, dash, dash_len, &close, &next) < 0) {
		*error_r = "no MIME boundary delimiter in the report";
		goto fail;
	}
	for (size_t parts = 0; !close && parts < JOURNAL_PARTS_MAX; parts++) {
		size_t start = next;
		bool next_close;
		long long at = find_delimiter(data, len, start, start, dash, dash_len, &next_close,
					      &next);
		if (at < 0) {
			*error_r = "a body part of the report is not terminated (truncated report?)";
			goto fail;
		}
		size_t end = part_end(data, start, (size_t)at);
		if (scan_header(data, start, end, &ph) < 0) {
			*error_r = "a body part's header block does not end";
			goto fail;
		}
		kind = PART_TEXT_PLAIN; /* RFC 2045 5.2: the default Content-Type */
		charset[0] = '\0';
		if (ph.ctype != NULL &&
		    content_kind(ph.ctype, ph.ctype_len, &kind, boundary, sizeof(boundary),
				 charset, sizeof(charset)) < 0) {
			*error_r = "a body part has a Content-Type that cannot be parsed";
			goto fail;
		}
		if (kind == PART_TEXT_PLAIN && !have_env) {
			if (envelope_part(r, data + ph.body, end - ph.body, &ph, charset,
					  error_r) < 0)
				goto fail;
			have_env = true;
		} else if (kind == PART_RFC822 && !have_orig) {
			char cte[32];
			cte_token(&ph, cte, sizeof(cte));
			/* RFC 2046 5.2.1: no encoding other than 7bit, 8bit or binary is
			 * permitted for message/rfc822; anything else would not be the original
			 * byte-exact. */
			if (cte[0] != '\0' && strcasecmp(cte, "7bit") != 0 &&
			    strcasecmp(cte, "8bit") != 0 && strcasecmp(cte, "binary") != 0) {
				*error_r = "the message/rfc822 part has a Content-Transfer-Encoding "
					   "other than 7bit, 8bit or binary";
				goto fail;
			}
			if (end == ph.body) {
				*error_r = "the message/rfc822 part is empty";
				goto fail;
			}
			r->original_offset = ph.body;
			r->original_length = end - ph.body;
			have_orig = true;
		}
		close = next_close;
		if (have_env && have_orig)
			break;
	}
	if (!have_env) {
		*error_r = "the report has no text/plain envelope part";
		goto fail;
	}
	if (!have_orig) {
		*error_r = "the report has no message/rfc822 part";
		goto fail;
	}
	return 0;
fail:
	journal_report_free(r);
	return -1;
}

void journal_report_free(struct journal_report *r)
{
	for (size_t i = 0; i < r->rcpt_count; i++) {
		free(r->rcpts[i].address);
		free(r->rcpts[i].expanded_from);
		free(r->rcpts[i].forwarded_from);
	}
	free(r->rcpts);
	free(r->sender);
	free(r->subject);
	free(r->message_id);
	free(r->on_behalf_of);
	memset(r, 0, sizeof(*r));
}

static void set_str(json_t *o, const char *key, const char *value)
{
	if (value != NULL)
		json_object_set_new(o, key, json_string(value));
}

json_t *journal_json(const struct journal_report *r)
{
	static const char *const field_names[] = { "to", "cc", "bcc", "recipient" };
	json_t *o = json_object(), *list = json_array();

	if (o == NULL || list == NULL) {
		json_decref(o);
		json_decref(list);
		return NULL;
	}
	set_str(o, "sender", r->sender);
	set_str(o, "subject", r->subject != NULL ? r->subject : "");
	set_str(o, "message_id", r->message_id != NULL ? r->message_id : "");
	set_str(o, "on_behalf_of", r->on_behalf_of);
	for (size_t i = 0; i < r->rcpt_count; i++) {
		json_t *e = json_object();
		if (e == NULL)
			continue;
		set_str(e, "address", r->rcpts[i].address);
		set_str(e, "field", field_names[r->rcpts[i].field]);
		set_str(e, "expanded_from", r->rcpts[i].expanded_from);
		set_str(e, "forwarded_from", r->rcpts[i].forwarded_from);
		json_array_append_new(list, e);
	}
	json_object_set_new(o, "recipients", list);
	return o;
}

void journal_message_id_bare(const struct journal_report *r, char *buf, size_t size)
{
	const char *m = r->message_id != NULL ? r->message_id : "";
	size_t len = strlen(m);

	if (len >= 2 && m[0] == '<' && m[len - 1] == '>') {
		m++;
		len -= 2;
	}
	snprintf(buf, size, "%.*s", (int)len, m);
}
