/*
 * data - the DATA stream decoder (dot-unstuffing, end of data) and the header scanner.
 *
 * The decoder looks only at '.' bytes (found with memchr) and the few bytes around them: a
 * period matters only at the start of a line, i.e. after CRLF (RFC 5321 4.5.2), and most big
 * content (base64, long text lines) has few periods or none, so the scan moves at memchr's
 * speed. Every run between two special places goes to the sink in one call. Only CRLF counts
 * as a line end (RFC 5321 2.3.8), so bare LF and bare CR are ordinary content and "\n.\n"
 * cannot end DATA. The two input bytes before each buffer are kept (the start of DATA counts as
 * after CRLF). The one byte it may hold back across buffers is the CR of a line "." CR, until
 * it knows whether an LF follows.
 */
#include "data.h"

#include <string.h>
#include <strings.h>

enum {
	DEC_TEXT,   /* anywhere but just after a line-leading '.' */
	DEC_DOT,    /* a line started with '.', which was removed */
	DEC_DOTCR,  /* "." CR at the beginning of a line; the CR is held back */
};

void data_decoder_init(struct data_decoder *dec)
{
	dec->state = DEC_TEXT;
	dec->done = false;
	dec->tail[0] = '\r'; /* DATA starts at the beginning of a line */
	dec->tail[1] = '\n';
}

static int emit(data_sink_fn *sink, void *ctx, const char *p, size_t n)
{
	return n == 0 ? 0 : sink(ctx, p, n);
}

long data_decode(struct data_decoder *dec, const char *in, size_t len, data_sink_fn *sink,
		 void *ctx)
{
	size_t i = 0, run = 0;

	if (dec->done)
		return 0;
	while (i < len) {
		switch (dec->state) {
		case DEC_TEXT: {
			const char *dot = memchr(in + i, '.', len - i);
			if (dot == NULL) {
				i = len;
				break;
			}
			size_t p = (size_t)(dot - in);
			char before1 = p >= 1 ? in[p - 1] : dec->tail[1];
			char before2 = p >= 2 ? in[p - 2] : p == 1 ? dec->tail[1] : dec->tail[0];
			i = p + 1;
			if (before2 == '\r' && before1 == '\n') {
				/* RFC 5321 4.5.2: delete the first period of a line. */
				if (emit(sink, ctx, in + run, p - run) < 0)
					return -1;
				run = i;
				dec->state = DEC_DOT;
			}
			break;
		}
		case DEC_DOT:
			if (in[i] == '\r') {
				i++;
				dec->state = DEC_DOTCR;
			} else {
				dec->state = DEC_TEXT;
			}
			break;
		case DEC_DOTCR:
			if (in[i] == '\n') {
				/* CRLF "." CRLF: the end. The held CR is not content. */
				dec->done = true;
				return (long)(i + 1);
			}
			if (i == 0) {
				/* The CR was held back at the end of the previous buffer. */
				if (emit(sink, ctx, "\r", 1) < 0)
					return -1;
			}
			dec->state = DEC_TEXT;
			break;
		}
	}
	/* Hold back the CR of "." CR: it is content only if no LF follows. */
	size_t end = len;
	if (dec->state == DEC_DOTCR && len > 0 && len - 1 >= run && in[len - 1] == '\r')
		end = len - 1;
	if (end > run && emit(sink, ctx, in + run, end - run) < 0)
		return -1;
	if (len >= 2) {
		dec->tail[0] = in[len - 2];
		dec->tail[1] = in[len - 1];
	} else if (len == 1) {
		dec->tail[0] = dec->tail[1];
		dec->tail[1] = in[0];
	}
	return (long)len;
}

/* --- header scanner --- */

enum { LINE_NAME, LINE_SKIP, LINE_MSGID };

void header_scan_init(struct header_scan *hs)
{
	memset(hs, 0, sizeof(*hs));
	hs->in_header = true;
	hs->at_line_start = true;
	hs->line_kind = LINE_NAME;
}

static void msgid_add(struct header_scan *hs, char c)
{
	if (hs->msgid_done)
		return;
	if (c == '<' || c == '>' || c == ' ' || c == '\t' || (unsigned char)c < 0x21 ||
	    (unsigned char)c > 0x7e) {
		/* The id ends at '>' once it has started; spaces and '<' before it are skipped. */
		if (c == '>' && hs->msgid_len > 0)
			hs->msgid_done = true;
		return;
	}
	if (hs->msgid_len < HEADER_MSGID_MAX)
		hs->msgid[hs->msgid_len++] = c;
	hs->msgid[hs->msgid_len] = '\0';
}

/* The header is short and bounded; here a plain loop per byte is the clear choice. */
void header_scan_feed(struct header_scan *hs, const char *data, size_t len)
{
	for (size_t i = 0; i < len && hs->in_header; i++) {
		char c = data[i];

		if (hs->at_line_start) {
			hs->at_line_start = false;
			if (c == '\r' || c == '\n') {
				/* An empty line ends the header (bare LF tolerated here). */
				hs->in_header = false;
				break;
			}
			if (c == ' ' || c == '\t') {
				/* A continuation keeps the previous field's kind. */
				if (hs->line_kind == LINE_NAME)
					hs->line_kind = LINE_SKIP;
				continue;
			}
			if (hs->line_kind == LINE_MSGID && hs->msgid_len > 0)
				hs->msgid_done = true;
			hs->line_kind = LINE_NAME;
			hs->name_len = 0;
		}
		if (c == '\n') {
			hs->at_line_start = true;
			continue;
		}
		switch (hs->line_kind) {
		case LINE_NAME:
			if (c == ':') {
				hs->name[hs->name_len] = '\0';
				if (strcasecmp(hs->name, "received") == 0) {
					hs->received_count++;
					hs->line_kind = LINE_SKIP;
				} else if (strcasecmp(hs->name, "message-id") == 0 &&
					   hs->msgid_len == 0) {
					hs->line_kind = LINE_MSGID;
				} else {
					hs->line_kind = LINE_SKIP;
				}
			} else if (hs->name_len < HEADER_NAME_MAX && c > 0x20 && c < 0x7f) {
				hs->name[hs->name_len++] = c;
			} else {
				hs->line_kind = LINE_SKIP;
			}
			break;
		case LINE_MSGID:
			if (c != '\r')
				msgid_add(hs, c);
			break;
		default:
			break;
		}
	}
}
