/*
 * spool - one message's bytes: memory up to a threshold, then an unlinked temporary file.
 *
 * The session appends decoded DATA/BDAT bytes; past memory_max the spool moves what it holds to
 * an unlinked file in dir (O_TMPFILE, or mkstemp + unlink) and writes on in large blocks, so
 * memory stays bounded whatever the message size. Bytes past size_max are counted but not kept
 * (spool_too_big() tells), so the session can read to the end of DATA and reply once.
 * SHA-256 of the content is computed while writing.
 *
 * After spool_finish() the spool is read-only and may be read by several worker threads at once
 * (readers use pread; spool_map() maps the file once, under a lock).
 *
 * Error contract: functions return 0 (or a count), or -1 with errno set and a short static
 * description in *error_r where there is one.
 */
#ifndef LMTPGW_SPOOL_H
#define LMTPGW_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct spool;

/* Bytes held by all live spools, in memory and in files (for metrics). */
void spool_stats(uint64_t *memory_r, uint64_t *disk_r);

struct spool *spool_new(size_t memory_max, const char *dir, uint64_t size_max);
/* No backend of the configuration uses the digest: skip it (it is the largest CPU cost of a
 * small message). Call before the first write; spool_sha256_hex() then returns "". */
void spool_skip_digest(struct spool *spool);
void spool_free(struct spool **spool);

/* Append bytes. -1 only on an I/O error (errno set), which is sticky. */
int spool_write(struct spool *spool, const void *data, size_t len, const char **error_r);
/* Flush buffered file data and finalise the digest. */
int spool_finish(struct spool *spool, const char **error_r);

bool spool_too_big(const struct spool *spool);
/* Bytes received so far (including those dropped past size_max). */
uint64_t spool_received(const struct spool *spool);
/* Bytes kept (== received unless too big). */
uint64_t spool_size(const struct spool *spool);
bool spool_in_memory(const struct spool *spool);
/* 64 lowercase hex digits, valid after spool_finish(); "" when the digest was skipped. */
const char *spool_sha256_hex(const struct spool *spool);

/* Read size bytes at offset from the kept content; returns bytes read (short only at end). */
ssize_t spool_pread(const struct spool *spool, void *buf, size_t size, uint64_t offset);

/* The whole content as one contiguous read-only block: the memory buffer, or a shared mapping
 * of the file (made once). Valid until spool_free(). */
int spool_map(struct spool *spool, const void **data_r, size_t *len_r);

/* "prefix + content" as one contiguous read-only block, without copying a spooled file: the
 * file is mapped right behind an anonymous page that holds the prefix at its end. Small
 * in-memory messages are copied. For protocols that need the whole message in memory (IMAP
 * APPEND with libetpan). Thread-safe; release with spool_view_release(). */
struct spool_view {
	const char *data;
	size_t len;
	void *base;      /* internal: mapping or buffer */
	size_t base_len;
	bool mapped;
};

int spool_view_prefixed(const struct spool *spool, const char *prefix, size_t prefix_len,
			struct spool_view *view_r);
void spool_view_release(struct spool_view *view);

/* Write prefix then the content to fd (regular file or socket), in large blocks; restarts on
 * EINTR and short writes. */
int spool_write_to_fd(const struct spool *spool, const void *prefix, size_t prefix_len, int fd);

/* Sequential reader over "prefix + content [+ suffix]"; many may exist at once. The suffix
 * is empty unless spool_reader_set_suffix() is called (multipart bodies: head + file + tail). */
struct spool_reader {
	const struct spool *spool;
	const char *prefix;
	size_t prefix_len;
	uint64_t pos;
	const char *suffix;
	size_t suffix_len;
};

void spool_reader_init(struct spool_reader *reader, const struct spool *spool, const char *prefix,
		       size_t prefix_len);
/* Returns bytes read, 0 at end, -1 on error (errno set). */
ssize_t spool_reader_read(struct spool_reader *reader, void *buf, size_t size);
uint64_t spool_reader_total(const struct spool_reader *reader);
/* Bytes served after the content (not copied; must outlive the reader). */
void spool_reader_set_suffix(struct spool_reader *reader, const char *suffix, size_t suffix_len);
void spool_reader_rewind(struct spool_reader *reader);

#endif
