/*
 * fuzz_data - the DATA decoder (dot-unstuffing, end of data, smuggling shapes) and the header
 * scanner (data.c).
 *
 * Input: byte 0 is how many of the next bytes choose the chunk boundaries (at most 16); the
 * rest is the byte stream after "354". Invariants:
 *   - whole-buffer and chunked decoding give the same content, the same done flag and the
 *     same count of consumed bytes (chunked: the bytes of earlier chunks plus what the last
 *     call returned);
 *   - the end is found exactly at the first CRLF "." CRLF (or "." CRLF at the very start),
 *     and nothing after it is consumed; without an end, everything is consumed;
 *   - the content never grows, and re-stuffing it (a '.' added at every line start) and
 *     appending "." CRLF decodes back to the same content;
 *   - the header scanner gives the same result fed whole and byte by byte.
 */
#include <stdbool.h>
#include <string.h>

#include "data.h"
#include "fuzz.h"

struct sink {
	char *buf;
	size_t len, cap;
};

static int sink_add(void *ctx, const char *data, size_t len)
{
	struct sink *s = ctx;

	FUZZ_CHECK(len > 0);
	if (s->len + len > s->cap) {
		size_t cap = (s->len + len) * 2;
		char *n = realloc(s->buf, cap);
		if (n == NULL)
			abort();
		s->buf = n;
		s->cap = cap;
	}
	memcpy(s->buf + s->len, data, len);
	s->len += len;
	return 0;
}

/* Where a correct decoder must stop: offset just past the end marker, or 0 for none. */
static size_t expected_end(const uint8_t *in, size_t len)
{
	if (len >= 3 && memcmp(in, ".\r\n", 3) == 0)
		return 3;
	for (size_t i = 0; i + 5 <= len; i++) {
		if (memcmp(in + i, "\r\n.\r\n", 5) == 0)
			return i + 5;
	}
	return 0;
}

static void scan_compare(const char *content, size_t len)
{
	struct header_scan whole, bytes;

	header_scan_init(&whole);
	header_scan_init(&bytes);
	header_scan_feed(&whole, content, len);
	for (size_t i = 0; i < len; i++)
		header_scan_feed(&bytes, content + i, 1);
	FUZZ_CHECK(whole.in_header == bytes.in_header);
	FUZZ_CHECK(whole.received_count == bytes.received_count);
	FUZZ_CHECK(whole.msgid_len == bytes.msgid_len);
	FUZZ_CHECK(strlen(whole.msgid) == whole.msgid_len || whole.msgid_len == 0);
	FUZZ_CHECK(whole.msgid_len <= HEADER_MSGID_MAX);
	FUZZ_CHECK(strcmp(whole.msgid, bytes.msgid) == 0);
	for (const char *p = whole.msgid; *p; p++)
		FUZZ_CHECK(*p > 0x20 && *p < 0x7f && *p != '<' && *p != '>');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t nseed = data[0] % 17;
	if (nseed > size - 1)
		nseed = size - 1;
	const uint8_t *seed = data + 1;
	const char *in = (const char *)data + 1 + nseed;
	size_t len = size - 1 - nseed;

	/* Whole buffer (a copy of exact size, so ASan sees reads past the end). */
	char *copy = malloc(len ? len : 1);
	memcpy(copy, in, len);
	struct data_decoder dec;
	struct sink whole = { 0 };
	data_decoder_init(&dec);
	long used = data_decode(&dec, copy, len, sink_add, &whole);
	FUZZ_CHECK(used >= 0 && (size_t)used <= len);
	size_t end = expected_end((const uint8_t *)in, len);
	if (end > 0) {
		FUZZ_CHECK(dec.done);
		FUZZ_CHECK((size_t)used == end);
	} else {
		FUZZ_CHECK(!dec.done);
		FUZZ_CHECK((size_t)used == len);
	}
	FUZZ_CHECK(whole.len <= (size_t)used);
	/* A finished decoder takes nothing more. */
	if (dec.done)
		FUZZ_CHECK(data_decode(&dec, copy, len, sink_add, &whole) == 0);

	/* Chunked, each chunk in its own exact-size allocation. */
	size_t cuts[16];
	size_t ncuts = fuzz_split(seed, nseed, len, cuts, 16);
	struct data_decoder cdec;
	struct sink chunked = { 0 };
	size_t consumed = 0;
	data_decoder_init(&cdec);
	for (size_t k = 0, start = 0; k <= ncuts && !cdec.done; k++) {
		size_t stop = k < ncuts ? cuts[k] : len;
		size_t n = stop - start;
		char *chunk = malloc(n ? n : 1);
		memcpy(chunk, in + start, n);
		long u = data_decode(&cdec, chunk, n, sink_add, &chunked);
		free(chunk);
		FUZZ_CHECK(u >= 0 && (size_t)u <= n);
		if (!cdec.done)
			FUZZ_CHECK((size_t)u == n);
		consumed += (size_t)u;
		start = stop;
	}
	FUZZ_CHECK(cdec.done == dec.done);
	FUZZ_CHECK(consumed == (size_t)used);
	FUZZ_CHECK(chunked.len == whole.len);
	FUZZ_CHECK(whole.len == 0 || memcmp(chunked.buf, whole.buf, whole.len) == 0);

	/* Round trip: stuff the content again, end it, decode: same content back. */
	if (dec.done) {
		struct sink stuffed = { 0 }, again = { 0 };
		bool bol = true;
		for (size_t i = 0; i < whole.len; i++) {
			if (bol && whole.buf[i] == '.')
				sink_add(&stuffed, ".", 1);
			sink_add(&stuffed, whole.buf + i, 1);
			bol = i > 0 && whole.buf[i - 1] == '\r' && whole.buf[i] == '\n';
		}
		/* The content of an ended message ends with CRLF unless it is empty. */
		FUZZ_CHECK(whole.len == 0 ||
			   (whole.len >= 2 && memcmp(whole.buf + whole.len - 2, "\r\n", 2) == 0));
		sink_add(&stuffed, ".\r\n", 3);
		struct data_decoder rdec;
		data_decoder_init(&rdec);
		long r = data_decode(&rdec, stuffed.buf, stuffed.len, sink_add, &again);
		FUZZ_CHECK(rdec.done && (size_t)r == stuffed.len);
		FUZZ_CHECK(again.len == whole.len);
		FUZZ_CHECK(whole.len == 0 || memcmp(again.buf, whole.buf, whole.len) == 0);
		free(stuffed.buf);
		free(again.buf);
	}

	scan_compare(whole.buf ? whole.buf : "", whole.len);
	/* The scanner on the raw input too (BDAT content is not dot-stuffed). */
	scan_compare(in, len);

	free(whole.buf);
	free(chunked.buf);
	free(copy);
	return 0;
}
