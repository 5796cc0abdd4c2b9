/*
 * data - the DATA stream decoder and the header scanner.
 *
 * data_decode() turns the bytes after "354" into message content: it removes the leading dot of
 * every line that starts with one (RFC 5321 4.5.2) and stops at CRLF "." CRLF, the only end of
 * data (RFC 5321 4.1.1.4). A bare LF or bare CR is content, never a line end: "\n.\n", "\r.\r",
 * "\n.\r\n" and the other SMTP-smuggling shapes neither end DATA nor start a line, and are kept
 * byte for byte. The CRLF in front of the final dot belongs to the message. The scan works on
 * whole buffers with memchr and hands the output to the sink in as few calls as possible.
 *
 * header_scan_feed() watches the decoded content (from DATA or BDAT) until the empty line that
 * ends the header: it counts Received: fields (loop guard) and keeps the Message-ID.
 */
#ifndef LMTPGW_DATA_H
#define LMTPGW_DATA_H

#include <stdbool.h>
#include <stddef.h>

typedef int data_sink_fn(void *ctx, const char *data, size_t len);

struct data_decoder {
	int state;      /* where a line-leading "." CRLF stands across buffers */
	bool done;
	char tail[2];   /* the last two input bytes before the next buffer */
};

void data_decoder_init(struct data_decoder *dec);

/* Decode from in; decoded content goes to sink (a sink returning -1 stops decoding and makes
 * data_decode() return -1). Returns the number of input bytes consumed: all of len unless the
 * end of data was found, in which case dec->done is true and the bytes after the final CRLF are
 * left unconsumed (pipelined commands). */
long data_decode(struct data_decoder *dec, const char *in, size_t len, data_sink_fn *sink,
		 void *ctx);

#define HEADER_MSGID_MAX 250
#define HEADER_NAME_MAX 32

struct header_scan {
	bool in_header;          /* still before the empty line */
	bool at_line_start;
	bool after_cr;
	int line_kind;           /* what the current line is (internal) */
	size_t name_len;
	char name[HEADER_NAME_MAX + 1];
	unsigned received_count; /* Received: fields seen */
	size_t msgid_len;
	char msgid[HEADER_MSGID_MAX + 1]; /* Message-ID value without <>, "" when none */
	bool msgid_done;
};

void header_scan_init(struct header_scan *hs);
void header_scan_feed(struct header_scan *hs, const char *data, size_t len);

#endif
