/*
 * Tests for the spool: memory first, then an unlinked file; the digest; readers; the size cap.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "spool.h"

static const char *sha256_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

static void fill(char *buf, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (char)((i * 131 + seed) & 0xff);
}

Test(spool, small_message_stays_in_memory)
{
	struct spool *sp = spool_new(1024, "/tmp", 0);
	const char *error;

	cr_assert_not_null(sp);
	cr_assert_eq(spool_write(sp, "abc", 3, &error), 0);
	cr_assert_eq(spool_finish(sp, &error), 0);
	cr_assert(spool_in_memory(sp));
	cr_assert_eq(spool_size(sp), 3);
	cr_assert_str_eq(spool_sha256_hex(sp), sha256_abc);
	spool_free(&sp);
	cr_assert_null(sp);
}

Test(spool, large_message_moves_to_file_and_reads_back)
{
	const size_t total = 3 * 1024 * 1024 + 17;
	char *data = malloc(total), *back = malloc(total + 100);
	struct spool *sp = spool_new(64 * 1024, "/tmp", 0);
	const char *error;

	fill(data, total, 7);
	/* Odd-sized writes, as the network delivers them. */
	for (size_t pos = 0; pos < total;) {
		size_t n = (pos % 7919) + 1;
		if (n > total - pos)
			n = total - pos;
		cr_assert_eq(spool_write(sp, data + pos, n, &error), 0);
		pos += n;
	}
	cr_assert_eq(spool_finish(sp, &error), 0);
	cr_assert(!spool_in_memory(sp));
	cr_assert_eq(spool_size(sp), total);

	struct spool_reader r;
	spool_reader_init(&r, sp, "HDR\r\n", 5);
	cr_assert_eq(spool_reader_total(&r), total + 5);
	size_t got = 0;
	ssize_t n;
	while ((n = spool_reader_read(&r, back + got, 4093)) > 0)
		got += (size_t)n;
	cr_assert_eq(got, total + 5);
	cr_assert(memcmp(back, "HDR\r\n", 5) == 0);
	cr_assert(memcmp(back + 5, data, total) == 0);

	const void *map;
	size_t map_len;
	cr_assert_eq(spool_map(sp, &map, &map_len), 0);
	cr_assert_eq(map_len, total);
	cr_assert(memcmp(map, data, total) == 0);

	/* spool_write_to_fd: prefix and content into a file, byte-exact. */
	char path[] = "/tmp/lmtpgw-test-XXXXXX";
	int fd = mkstemp(path);
	cr_assert(fd >= 0);
	unlink(path);
	cr_assert_eq(spool_write_to_fd(sp, "P:", 2, fd), 0);
	cr_assert_eq(lseek(fd, 0, SEEK_END), (off_t)(total + 2));
	cr_assert_eq(pread(fd, back, total + 2, 0), (ssize_t)(total + 2));
	cr_assert(memcmp(back + 2, data, total) == 0);
	close(fd);

	spool_free(&sp);
	free(data);
	free(back);
}

Test(spool, too_big_is_counted_not_kept)
{
	struct spool *sp = spool_new(1024, "/tmp", 100);
	const char *error;
	char buf[60];

	fill(buf, sizeof(buf), 1);
	cr_assert_eq(spool_write(sp, buf, 60, &error), 0);
	cr_assert(!spool_too_big(sp));
	cr_assert_eq(spool_write(sp, buf, 60, &error), 0);
	cr_assert(spool_too_big(sp));
	cr_assert_eq(spool_write(sp, buf, 60, &error), 0);
	cr_assert_eq(spool_received(sp), 180);
	cr_assert_eq(spool_size(sp), 60);
	spool_free(&sp);
}

Test(spool, missing_directory_is_an_error_not_a_crash)
{
	struct spool *sp = spool_new(16, "/nonexistent/lmtpgw", 0);
	const char *error = NULL;
	char buf[64];

	fill(buf, sizeof(buf), 3);
	cr_assert_eq(spool_write(sp, buf, sizeof(buf), &error), -1);
	cr_assert_not_null(error);
	/* Sticky: later writes fail the same way. */
	cr_assert_eq(spool_write(sp, buf, 1, &error), -1);
	cr_assert_eq(spool_finish(sp, &error), -1);
	spool_free(&sp);
}

Test(spool, empty_message)
{
	struct spool *sp = spool_new(1024, "/tmp", 0);
	const char *error;
	char buf[8];
	struct spool_reader r;

	cr_assert_eq(spool_finish(sp, &error), 0);
	cr_assert_str_eq(spool_sha256_hex(sp),
			 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	spool_reader_init(&r, sp, NULL, 0);
	cr_assert_eq(spool_reader_read(&r, buf, sizeof(buf)), 0);
	spool_free(&sp);
}

Test(spool, prefixed_view_is_contiguous_without_copy)
{
	const size_t total = 200 * 1024 + 3;
	char *data = malloc(total);
	const char *error;
	static const char prefix[] = "Return-Path: <a@b>\r\nReceived: x\r\n";
	struct spool_view view;

	fill(data, total, 11);
	for (int mem = 0; mem < 2; mem++) {
		struct spool *sp = spool_new(mem ? 1024 * 1024 : 4096, "/tmp", 0);
		cr_assert_eq(spool_write(sp, data, total, &error), 0);
		cr_assert_eq(spool_finish(sp, &error), 0);
		cr_assert_eq(spool_in_memory(sp), mem == 1);
		cr_assert_eq(spool_view_prefixed(sp, prefix, sizeof(prefix) - 1, &view), 0);
		cr_assert_eq(view.len, total + sizeof(prefix) - 1);
		cr_assert(memcmp(view.data, prefix, sizeof(prefix) - 1) == 0);
		cr_assert(memcmp(view.data + sizeof(prefix) - 1, data, total) == 0);
		cr_assert_eq(view.mapped, mem == 0);
		spool_view_release(&view);
		cr_assert_null(view.base);
		spool_free(&sp);
	}
	free(data);
}

Test(spool, digest_can_be_skipped)
{
	struct spool *sp = spool_new(1024, "/tmp", 0);
	const char *error;

	spool_skip_digest(sp);
	cr_assert_eq(spool_write(sp, "abc", 3, &error), 0);
	cr_assert_eq(spool_finish(sp, &error), 0);
	cr_assert_str_eq(spool_sha256_hex(sp), "");
	cr_assert_eq(spool_size(sp), 3);
	spool_free(&sp);
}
