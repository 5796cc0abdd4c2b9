/*
 * spool - one message's bytes: memory up to a threshold, then an unlinked temporary file.
 *
 * Owns the memory buffer, the file descriptor, the write buffer and the mapping. Writes to the
 * file go through a 256 KiB buffer so the DATA path makes few system calls whatever the client's
 * packet sizes. Readers use pread() so any number of worker threads can read at once.
 */
#include "spool.h"

#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/evp.h>

#define SPOOL_FILE_BUFFER (256 * 1024)
#define SPOOL_DIRECT_WRITE (64 * 1024)

struct spool {
	size_t memory_max;
	uint64_t size_max;
	char *dir;

	char *mem;            /* content while in memory; the file's write buffer afterwards */
	size_t mem_len;
	size_t mem_cap;

	int fd;               /* -1 while in memory */
	uint64_t file_len;    /* bytes written to the file */

	uint64_t received;
	uint64_t kept;
	bool too_big;
	bool finished;
	int error;            /* sticky errno */

	bool digest;          /* compute the SHA-256 (until spool_skip_digest) */
	EVP_MD_CTX *sha;      /* made at the first byte: most configurations skip the digest */
	char sha_hex[65];

	pthread_mutex_t map_lock;
	void *map;
	size_t map_len;
};

static atomic_ullong bytes_in_memory, bytes_on_disk;

void spool_stats(uint64_t *memory_r, uint64_t *disk_r)
{
	*memory_r = atomic_load_explicit(&bytes_in_memory, memory_order_relaxed);
	*disk_r = atomic_load_explicit(&bytes_on_disk, memory_order_relaxed);
}

/* Account the bytes this spool holds, wherever they are. */
static void account(const struct spool *spool, bool add)
{
	atomic_ullong *where = spool->fd < 0 ? &bytes_in_memory : &bytes_on_disk;
	if (add)
		atomic_fetch_add_explicit(where, spool->kept, memory_order_relaxed);
	else
		atomic_fetch_sub_explicit(where, spool->kept, memory_order_relaxed);
}

void spool_skip_digest(struct spool *spool)
{
	spool->digest = false;
	EVP_MD_CTX_free(spool->sha);
	spool->sha = NULL;
}

static int digest_start(struct spool *spool)
{
	if (spool->sha != NULL)
		return 0;
	spool->sha = EVP_MD_CTX_new();
	if (spool->sha == NULL || EVP_DigestInit_ex(spool->sha, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(spool->sha);
		spool->sha = NULL;
		errno = ENOMEM;
		return -1;
	}
	return 0;
}

struct spool *spool_new(size_t memory_max, const char *dir, uint64_t size_max)
{
	struct spool *spool = calloc(1, sizeof(*spool));

	if (spool == NULL)
		return NULL;
	spool->memory_max = memory_max;
	spool->size_max = size_max;
	spool->fd = -1;
	spool->digest = true;
	spool->dir = strdup(dir != NULL ? dir : "/tmp");
	if (spool->dir == NULL) {
		free(spool);
		return NULL;
	}
	pthread_mutex_init(&spool->map_lock, NULL);
	return spool;
}

void spool_free(struct spool **spoolp)
{
	struct spool *spool = *spoolp;

	if (spool == NULL)
		return;
	*spoolp = NULL;
	account(spool, false);
	if (spool->map != NULL && spool->fd >= 0)
		munmap(spool->map, spool->map_len);
	if (spool->fd >= 0)
		close(spool->fd);
	pthread_mutex_destroy(&spool->map_lock);
	EVP_MD_CTX_free(spool->sha);
	free(spool->mem);
	free(spool->dir);
	free(spool);
}

static int write_all(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int open_tmpfile(const char *dir)
{
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

	if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
		return fd;
	/* Filesystems without O_TMPFILE: create, then unlink at once. */
	char path[4096];
	if (snprintf(path, sizeof(path), "%s/lmtpgw-spool.XXXXXX", dir) >= (int)sizeof(path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	fd = mkostemp(path, O_CLOEXEC);
	if (fd >= 0)
		unlink(path);
	return fd;
}

static int flush_buffer(struct spool *spool)
{
	if (spool->mem_len == 0)
		return 0;
	if (write_all(spool->fd, spool->mem, spool->mem_len) < 0)
		return -1;
	spool->file_len += spool->mem_len;
	spool->mem_len = 0;
	return 0;
}

static int move_to_file(struct spool *spool)
{
	spool->fd = open_tmpfile(spool->dir);
	if (spool->fd < 0)
		return -1;
	if (spool->mem_cap < SPOOL_FILE_BUFFER) {
		char *buf = realloc(spool->mem, SPOOL_FILE_BUFFER);
		if (buf == NULL)
			return -1;
		spool->mem = buf;
		spool->mem_cap = SPOOL_FILE_BUFFER;
	}
	return 0;
}

int spool_write(struct spool *spool, const void *data, size_t len, const char **error_r)
{
	if (spool->error != 0) {
		errno = spool->error;
		*error_r = "spool write failed earlier";
		return -1;
	}
	spool->received += len;
	if (spool->too_big)
		return 0;
	if (spool->size_max > 0 && spool->kept + len > spool->size_max) {
		/* Keep counting, stop keeping: the session reads on to the end, then replies. */
		spool->too_big = true;
		return 0;
	}
	if (spool->digest) {
		if (digest_start(spool) < 0) {
			spool->error = errno;
			*error_r = "cannot start the message digest";
			return -1;
		}
		EVP_DigestUpdate(spool->sha, data, len);
	}
	if (spool->fd < 0 && spool->mem_len + len > spool->memory_max) {
		account(spool, false);
		int r = move_to_file(spool);
		account(spool, true);
		if (r < 0) {
			spool->error = errno;
			*error_r = "cannot create spool file";
			return -1;
		}
	}
	spool->kept += len;
	atomic_fetch_add_explicit(spool->fd < 0 ? &bytes_in_memory : &bytes_on_disk, len,
				  memory_order_relaxed);
	if (spool->fd < 0) {
		if (spool->mem_len + len > spool->mem_cap) {
			size_t cap = spool->mem_cap ? spool->mem_cap : 16384;
			while (cap < spool->mem_len + len)
				cap *= 2;
			if (cap > spool->memory_max && spool->memory_max >= spool->mem_len + len)
				cap = spool->memory_max;
			char *buf = realloc(spool->mem, cap);
			if (buf == NULL) {
				spool->error = ENOMEM;
				*error_r = "out of memory";
				return -1;
			}
			spool->mem = buf;
			spool->mem_cap = cap;
		}
		memcpy(spool->mem + spool->mem_len, data, len);
		spool->mem_len += len;
		return 0;
	}
	/* In file mode mem is the write buffer; big writes bypass it (a copy saved: the session
	 * reads up to 256 KiB at a time, and a big message arrives in runs that long). */
	if (spool->mem_len + len > spool->mem_cap ||
	    (len >= SPOOL_DIRECT_WRITE && spool->mem_len > 0)) {
		if (flush_buffer(spool) < 0)
			goto io_error;
	}
	if (len >= SPOOL_DIRECT_WRITE) {
		if (write_all(spool->fd, data, len) < 0)
			goto io_error;
		spool->file_len += len;
		return 0;
	}
	memcpy(spool->mem + spool->mem_len, data, len);
	spool->mem_len += len;
	return 0;
io_error:
	spool->error = errno;
	*error_r = "cannot write spool file";
	return -1;
}

int spool_finish(struct spool *spool, const char **error_r)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;

	if (spool->finished)
		return 0;
	if (spool->error != 0) {
		errno = spool->error;
		*error_r = "spool write failed";
		return -1;
	}
	if (spool->fd >= 0) {
		if (flush_buffer(spool) < 0) {
			spool->error = errno;
			*error_r = "cannot write spool file";
			return -1;
		}
		/* The write buffer is not needed any more. */
		free(spool->mem);
		spool->mem = NULL;
		spool->mem_cap = 0;
	}
	if (spool->digest) {
		if (digest_start(spool) < 0) {
			spool->error = errno;
			*error_r = "cannot start the message digest";
			return -1;
		}
		EVP_DigestFinal_ex(spool->sha, md, &md_len);
	}
	for (unsigned i = 0; i < md_len && i < 32; i++)
		snprintf(spool->sha_hex + 2 * i, 3, "%02x", md[i]);
	spool->finished = true;
	return 0;
}

bool spool_too_big(const struct spool *spool)
{
	return spool->too_big;
}

uint64_t spool_received(const struct spool *spool)
{
	return spool->received;
}

uint64_t spool_size(const struct spool *spool)
{
	return spool->kept;
}

bool spool_in_memory(const struct spool *spool)
{
	return spool->fd < 0;
}

const char *spool_sha256_hex(const struct spool *spool)
{
	return spool->sha_hex;
}

ssize_t spool_pread(const struct spool *spool, void *buf, size_t size, uint64_t offset)
{
	if (offset >= spool->kept)
		return 0;
	if (size > spool->kept - offset)
		size = (size_t)(spool->kept - offset);
	if (spool->fd < 0) {
		memcpy(buf, spool->mem + offset, size);
		return (ssize_t)size;
	}
	size_t done = 0;
	while (done < size) {
		ssize_t n = pread(spool->fd, (char *)buf + done, size - done, (off_t)(offset + done));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

int spool_map(struct spool *spool, const void **data_r, size_t *len_r)
{
	if (spool->fd < 0) {
		*data_r = spool->mem != NULL ? spool->mem : "";
		*len_r = spool->kept;
		return 0;
	}
	pthread_mutex_lock(&spool->map_lock);
	if (spool->map == NULL && spool->kept > 0) {
		void *map = mmap(NULL, (size_t)spool->kept, PROT_READ, MAP_SHARED, spool->fd, 0);
		if (map == MAP_FAILED) {
			pthread_mutex_unlock(&spool->map_lock);
			return -1;
		}
		spool->map = map;
		spool->map_len = (size_t)spool->kept;
	}
	pthread_mutex_unlock(&spool->map_lock);
	*data_r = spool->map != NULL ? spool->map : "";
	*len_r = spool->kept;
	return 0;
}

int spool_view_prefixed(const struct spool *spool, const char *prefix, size_t prefix_len,
			struct spool_view *view_r)
{
	memset(view_r, 0, sizeof(*view_r));
	if (spool->fd < 0 || spool->kept == 0) {
		char *buf = malloc(prefix_len + spool->kept + 1);
		if (buf == NULL)
			return -1;
		memcpy(buf, prefix, prefix_len);
		if (spool->kept > 0)
			memcpy(buf + prefix_len, spool->mem, spool->kept);
		view_r->base = buf;
		view_r->data = buf;
		view_r->len = prefix_len + spool->kept;
		return 0;
	}
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t head = (prefix_len + page - 1) / page * page;
	if (head == 0)
		head = page;
	size_t total = head + (size_t)spool->kept;
	/* Reserve the whole range, then put the file over its tail. */
	char *base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED)
		return -1;
	if (mmap(base + head, (size_t)spool->kept, PROT_READ, MAP_SHARED | MAP_FIXED, spool->fd, 0) ==
	    MAP_FAILED) {
		int saved = errno;
		munmap(base, total);
		errno = saved;
		return -1;
	}
	memcpy(base + head - prefix_len, prefix, prefix_len);
	view_r->base = base;
	view_r->base_len = total;
	view_r->mapped = true;
	view_r->data = base + head - prefix_len;
	view_r->len = prefix_len + (size_t)spool->kept;
	return 0;
}

void spool_view_release(struct spool_view *view)
{
	if (view->base == NULL)
		return;
	if (view->mapped)
		munmap(view->base, view->base_len);
	else
		free(view->base);
	memset(view, 0, sizeof(*view));
}

int spool_write_to_fd(const struct spool *spool, const void *prefix, size_t prefix_len, int fd)
{
	if (prefix_len > 0 && write_all(fd, prefix, prefix_len) < 0)
		return -1;
	if (spool->fd < 0)
		return write_all(fd, spool->mem, spool->kept);

	/* copy_file_range keeps the bytes in the kernel; fall back to pread/write. */
	off_t in_off = 0;
	uint64_t left = spool->kept;
	while (left > 0) {
		ssize_t n = copy_file_range(spool->fd, &in_off, fd, NULL, left, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP ||
			    errno == EBADF)
				break;
			return -1;
		}
		if (n == 0)
			break;
		left -= (uint64_t)n;
	}
	if (left == 0)
		return 0;
	char *buf = malloc(256 * 1024);
	if (buf == NULL)
		return -1;
	uint64_t off = spool->kept - left;
	while (left > 0) {
		ssize_t n = spool_pread(spool, buf, 256 * 1024, off);
		if (n <= 0 || write_all(fd, buf, (size_t)n) < 0) {
			int saved = n == 0 ? EIO : errno;
			free(buf);
			errno = saved;
			return -1;
		}
		off += (uint64_t)n;
		left -= (uint64_t)n;
	}
	free(buf);
	return 0;
}

void spool_reader_init(struct spool_reader *reader, const struct spool *spool, const char *prefix,
		       size_t prefix_len)
{
	reader->spool = spool;
	reader->prefix = prefix;
	reader->prefix_len = prefix_len;
	reader->pos = 0;
	reader->suffix = NULL;
	reader->suffix_len = 0;
}

void spool_reader_set_suffix(struct spool_reader *reader, const char *suffix, size_t suffix_len)
{
	reader->suffix = suffix;
	reader->suffix_len = suffix_len;
}

ssize_t spool_reader_read(struct spool_reader *reader, void *buf, size_t size)
{
	size_t done = 0;

	if (reader->pos < reader->prefix_len) {
		size_t n = reader->prefix_len - (size_t)reader->pos;
		if (n > size)
			n = size;
		memcpy(buf, reader->prefix + reader->pos, n);
		reader->pos += n;
		done = n;
	}
	uint64_t content_end = reader->prefix_len + spool_size(reader->spool);
	if (done < size && reader->pos < content_end) {
		ssize_t n = spool_pread(reader->spool, (char *)buf + done, size - done,
					reader->pos - reader->prefix_len);
		if (n < 0)
			return -1;
		reader->pos += (uint64_t)n;
		done += (size_t)n;
	}
	if (done < size && reader->pos >= content_end && reader->suffix_len > 0) {
		uint64_t off = reader->pos - content_end;
		if (off < reader->suffix_len) {
			size_t n = reader->suffix_len - (size_t)off;
			if (n > size - done)
				n = size - done;
			memcpy((char *)buf + done, reader->suffix + off, n);
			reader->pos += n;
			done += n;
		}
	}
	return (ssize_t)done;
}

uint64_t spool_reader_total(const struct spool_reader *reader)
{
	return reader->prefix_len + spool_size(reader->spool) + reader->suffix_len;
}

void spool_reader_rewind(struct spool_reader *reader)
{
	reader->pos = 0;
}
