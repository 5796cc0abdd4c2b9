/*
 * Tests for the DATA decoder and the header scanner. Every decoder case runs three ways: the
 * whole input in one buffer, one byte per call, and split at every position into two calls,
 * because the network delivers bytes in any grouping.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"

struct sink {
	char buf[4096];
	size_t len;
};

static int sink_append(void *ctx, const char *data, size_t len)
{
	struct sink *s = ctx;
	cr_assert(s->len + len <= sizeof(s->buf));
	memcpy(s->buf + s->len, data, len);
	s->len += len;
	return 0;
}

/* Decode in chunks of the given sizes (0 = the rest); returns bytes consumed in total. */
static size_t decode_chunks(const char *in, size_t len, const size_t *chunks, size_t nchunks,
			    struct sink *out, bool *done)
{
	struct data_decoder dec;
	size_t pos = 0;

	data_decoder_init(&dec);
	memset(out, 0, sizeof(*out));
	for (size_t c = 0; pos < len && !dec.done; c++) {
		size_t n = c < nchunks && chunks[c] ? chunks[c] : len - pos;
		if (n > len - pos)
			n = len - pos;
		long used = data_decode(&dec, in + pos, n, sink_append, out);
		cr_assert(used >= 0);
		pos += (size_t)used;
		if ((size_t)used < n) {
			cr_assert(dec.done, "stopped early without end of data");
			break;
		}
	}
	*done = dec.done;
	return pos;
}

struct dcase {
	const char *name;
	const char *in;
	size_t in_len;      /* 0: strlen */
	const char *out;
	size_t out_len;     /* 0: strlen */
	bool done;
	size_t consumed;    /* when done: bytes up to and including the final CRLF; 0: all */
};

#define S(x) x, sizeof(x) - 1

static const struct dcase cases[] = {
	{ "empty message", S(".\r\n"), S(""), true, 3 },
	{ "one line", S("Subject: x\r\n\r\nbody\r\n.\r\n"), S("Subject: x\r\n\r\nbody\r\n"), true, 0 },
	{ "dot unstuffed", S("a\r\n..b\r\n.\r\n"), S("a\r\n.b\r\n"), true, 0 },
	{ "leading dot of first line", S("..x\r\n.\r\n"), S(".x\r\n"), true, 0 },
	{ "single dot then text is unstuffed", S("a\r\n.b\r\n.\r\n"), S("a\r\nb\r\n"), true, 0 },
	{ "bare LF dot LF is content", S("a\n.\nb\r\n.\r\n"), S("a\n.\nb\r\n"), true, 0 },
	{ "bare CR dot CR is content", S("a\r.\rb\r\n.\r\n"), S("a\r.\rb\r\n"), true, 0 },
	{ "LF dot CRLF is content", S("a\n.\r\nb\r\n.\r\n"), S("a\n.\r\nb\r\n"), true, 0 },
	{ "CRLF dot LF is content, dot removed", S("a\r\n.\nb\r\n.\r\n"), S("a\r\n\nb\r\n"), true, 0 },
	{ "CR dot CRLF is content", S("a\r.\r\nb\r\n.\r\n"), S("a\r.\r\nb\r\n"), true, 0 },
	{ "dot CR x is content", S("a\r\n.\rx\r\n.\r\n"), S("a\r\n\rx\r\n"), true, 0 },
	{ "not finished", S("a\r\nb\r\n"), S("a\r\nb\r\n"), false, 0 },
	{ "trailing commands stay unread", S("x\r\n.\r\nQUIT\r\n"), S("x\r\n"), true, 6 },
	{ "8-bit and NUL kept", S("\xff\x00\x80\r\n.\r\n"), S("\xff\x00\x80\r\n"), true, 0 },
	{ "double CR before LF", S("a\r\r\n.\r\n"), S("a\r\r\n"), true, 0 },
	{ "dot dot CRLF", S("..\r\n.\r\n"), S(".\r\n"), true, 0 },
};

static void check_case(const struct dcase *c, const size_t *chunks, size_t nchunks,
		       const char *how)
{
	struct sink out;
	bool done;
	size_t consumed = decode_chunks(c->in, c->in_len, chunks, nchunks, &out, &done);

	cr_assert_eq(done, c->done, "%s (%s): done", c->name, how);
	cr_assert_eq(out.len, c->out_len, "%s (%s): length %zu, want %zu", c->name, how, out.len,
		     c->out_len);
	cr_assert(memcmp(out.buf, c->out, c->out_len) == 0, "%s (%s): content", c->name, how);
	size_t want = c->consumed ? c->consumed : c->in_len;
	cr_assert_eq(consumed, want, "%s (%s): consumed %zu, want %zu", c->name, how, consumed, want);
}

Test(data, whole_buffer)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_case(&cases[i], NULL, 0, "whole");
}

Test(data, byte_by_byte)
{
	size_t ones[64];
	for (size_t i = 0; i < 64; i++)
		ones[i] = 1;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_case(&cases[i], ones, 64, "bytewise");
}

Test(data, every_split_point)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		for (size_t cut = 1; cut < cases[i].in_len; cut++) {
			size_t chunks[2] = { cut, 0 };
			check_case(&cases[i], chunks, 2, "split");
		}
	}
}

static int count_calls(void *ctx, const char *data, size_t len)
{
	(*(size_t *)ctx)++;
	return 0;
}

Test(data, runs_go_to_sink_in_large_blocks)
{
	/* 2000 lines of 60 bytes without dots: one sink call for the whole buffer. */
	static char in[2000 * 62 + 8];
	size_t len = 0;
	for (int i = 0; i < 2000; i++) {
		memset(in + len, 'a', 60);
		len += 60;
		in[len++] = '\r';
		in[len++] = '\n';
	}
	memcpy(in + len, ".\r\n", 3);
	len += 3;

	struct data_decoder dec;
	size_t calls = 0;
	data_decoder_init(&dec);
	long used = data_decode(&dec, in, len, count_calls, &calls);
	cr_assert_eq(used, (long)len);
	cr_assert(dec.done);
	cr_assert_eq(calls, 1, "sink called %zu times", calls);
}

/* The reference: RFC 5321 4.5.2 read literally, one byte at a time over the whole input. A line
 * starts after CRLF (or at the start); its first '.' is removed, and a line "." CRLF ends the
 * data. Returns the bytes consumed (up to the final CRLF), 0 when there is no end. */
static size_t reference_decode(const char *in, size_t len, struct sink *out)
{
	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i < len; i++) {
		bool line_start = i == 0 || (i >= 2 && in[i - 2] == '\r' && in[i - 1] == '\n');
		if (line_start && in[i] == '.') {
			if (i + 2 < len && in[i + 1] == '\r' && in[i + 2] == '\n')
				return i + 3;
			continue; /* the dot-stuffing period */
		}
		out->buf[out->len++] = in[i];
	}
	return 0;
}

Test(data, random_inputs_and_splits_match_the_reference)
{
	/* Inputs rich in the bytes that matter, cut into random chunks (1 to 9 bytes, or large). */
	static const char alphabet[] = "..\r\r\n\nab";
	srand(2033);
	for (int round = 0; round < 20000; round++) {
		char in[200];
		size_t len = (size_t)(rand() % 120);
		for (size_t i = 0; i < len; i++)
			in[i] = alphabet[rand() % (sizeof(alphabet) - 1)];
		memcpy(in + len, "\r\n.\r\nNOOP\r\n", 11);
		len += 11;

		struct sink want;
		size_t want_consumed = reference_decode(in, len, &want);
		cr_assert(want_consumed > 0);

		size_t chunks[64];
		for (size_t c = 0; c < 64; c++)
			chunks[c] = round % 3 == 0 ? 64 : (size_t)(rand() % 9 + 1);
		struct sink got;
		bool done;
		size_t consumed = decode_chunks(in, len, chunks, 64, &got, &done);
		cr_assert(done, "round %d: end of data not found", round);
		cr_assert_eq(consumed, want_consumed, "round %d: consumed %zu, reference %zu", round,
			     consumed, want_consumed);
		cr_assert_eq(got.len, want.len, "round %d: %zu octets out, reference %zu", round,
			     got.len, want.len);
		cr_assert(memcmp(got.buf, want.buf, want.len) == 0, "round %d: content differs",
			  round);
	}
}

static int failing_sink(void *ctx, const char *data, size_t len)
{
	return -1;
}

Test(data, sink_error_stops_decoding)
{
	struct data_decoder dec;
	data_decoder_init(&dec);
	cr_assert_eq(data_decode(&dec, "abc\r\n.\r\n", 8, failing_sink, NULL), -1);
}

Test(data, nothing_after_done)
{
	struct data_decoder dec;
	struct sink out = { .len = 0 };
	data_decoder_init(&dec);
	cr_assert_eq(data_decode(&dec, ".\r\n", 3, sink_append, &out), 3);
	cr_assert_eq(data_decode(&dec, "more\r\n", 6, sink_append, &out), 0);
	cr_assert_eq(out.len, 0);
}

/* --- header scanner --- */

static void scan(struct header_scan *hs, const char *text, bool bytewise)
{
	header_scan_init(hs);
	size_t len = strlen(text);
	if (!bytewise) {
		header_scan_feed(hs, text, len);
		return;
	}
	for (size_t i = 0; i < len; i++)
		header_scan_feed(hs, text + i, 1);
}

Test(header_scan, counts_received_and_keeps_message_id)
{
	const char *msg = "Received: from a\r\n\tby b; date\r\nreceived: x\r\n"
			  "Message-ID:\r\n <id-1@example.test>\r\nSubject: Received: no\r\n\r\n"
			  "Received: in the body\r\n";
	for (int bytewise = 0; bytewise < 2; bytewise++) {
		struct header_scan hs;
		scan(&hs, msg, bytewise);
		cr_assert_eq(hs.received_count, 2, "bytewise=%d", bytewise);
		cr_assert_str_eq(hs.msgid, "id-1@example.test");
		cr_assert(!hs.in_header);
	}
}

Test(header_scan, no_message_id)
{
	struct header_scan hs;
	scan(&hs, "From: a@b\r\n\r\nbody\r\n", false);
	cr_assert_str_eq(hs.msgid, "");
	cr_assert_eq(hs.received_count, 0);
}

Test(header_scan, message_id_is_bounded)
{
	static char msg[2000];
	strcpy(msg, "Message-Id: <");
	memset(msg + 13, 'x', 1500);
	strcpy(msg + 1513, ">\r\n\r\n");
	struct header_scan hs;
	scan(&hs, msg, false);
	cr_assert_eq(strlen(hs.msgid), HEADER_MSGID_MAX);
}
