/*
 * log - one line per event, to stderr with a timestamp or to syslog (see include/log.h).
 *
 * Owns: the process-wide level and destination, both atomics, so any thread may log while
 * another changes the level. Each line is formatted into a stack buffer (LOG_LINE_MAX octets,
 * truncated with "..." when longer) and leaves in one write(2) or one syslog(3) call, so lines
 * from concurrent threads never interleave.
 * Stderr lines look like "2026-11-25T07:00:00.123Z info event=... key=value".
 * As a last defence against log injection, any control octet left in a formatted line (callers
 * should have used log_escape() already) becomes '?'.
 *
 * Error contract: logging never fails visibly; a failed write is dropped (there is nowhere
 * better to report it).
 */
#include "log.h"

#include "format.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 2048

static atomic_int current_level = LOG_LEVEL_INFO;
static atomic_bool use_syslog = false;
static atomic_bool use_json = false;

void log_set_json(bool json)
{
	atomic_store(&use_json, json);
}

/* JSON string body for bytes of our own escaped log text: \xNN becomes \u00NN. */
static size_t json_put(char *out, size_t size, size_t len, const char *s, size_t n)
{
	for (size_t i = 0; i < n && len + 8 < size; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '\\' && i + 3 < n && s[i + 1] == 'x') {
			len += (size_t)snprintf(out + len, size - len, "\\u00%c%c", s[i + 2], s[i + 3]);
			i += 3;
		} else if (c == '\\' && i + 1 < n && (s[i + 1] == '"' || s[i + 1] == '\\')) {
			out[len++] = '\\';
			out[len++] = s[++i];
		} else if (c == '"' || c == '\\') {
			out[len++] = '\\';
			out[len++] = (char)c;
		} else if (c < 0x20 || c == 0x7f) {
			len += (size_t)snprintf(out + len, size - len, "\\u%04x", c);
		} else {
			out[len++] = (char)c;
		}
	}
	return len;
}

size_t log_kv_to_json(const char *msg, const char *time, const char *level, char *out,
		      size_t size)
{
	size_t len = (size_t)snprintf(out, size, "{\"time\":\"%s\",\"level\":\"%s\"", time, level);
	const char *p = msg, *rest = NULL;

	while (*p != '\0' && len + 16 < size) {
		while (*p == ' ')
			p++;
		const char *k = p;
		while ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')
			p++;
		if (p == k || *p != '=') {
			rest = k; /* not key=value from here on: keep it as "msg" */
			break;
		}
		size_t klen = (size_t)(p - k);
		const char *v = ++p;
		size_t vlen;
		if (*v == '"') {
			v++;
			for (p = v; *p && !(*p == '"' && p[-1] != '\\'); p++)
				if (*p == '\\' && p[1] != '\0')
					p++;
			vlen = (size_t)(p - v);
			if (*p == '"')
				p++;
		} else {
			while (*p && *p != ' ')
				p++;
			vlen = (size_t)(p - v);
		}
		len += (size_t)snprintf(out + len, size - len, ",\"%.*s\":\"", (int)klen, k);
		len = json_put(out, size, len, v, vlen);
		if (len + 2 < size)
			out[len++] = '"';
	}
	if (rest != NULL && *rest != '\0' && len + 16 < size) {
		len += (size_t)snprintf(out + len, size - len, ",\"msg\":\"");
		len = json_put(out, size, len, rest, strlen(rest));
		if (len + 2 < size)
			out[len++] = '"';
	}
	if (len + 2 > size)
		len = size - 2;
	out[len++] = '}';
	out[len] = '\0';
	return len;
}

static const char *const level_names[] = {
	[LOG_LEVEL_ERROR] = "error",
	[LOG_LEVEL_WARN] = "warn",
	[LOG_LEVEL_INFO] = "info",
	[LOG_LEVEL_DEBUG] = "debug",
};

static const int level_priorities[] = {
	[LOG_LEVEL_ERROR] = LOG_ERR,
	[LOG_LEVEL_WARN] = LOG_WARNING,
	[LOG_LEVEL_INFO] = LOG_INFO,
	[LOG_LEVEL_DEBUG] = LOG_DEBUG,
};

static const char *log_ident = "lmtpgw";

int log_set_facility(const char *name)
{
	static const struct {
		const char *name;
		int facility;
	} facilities[] = {
		{ "mail", LOG_MAIL },     { "daemon", LOG_DAEMON }, { "user", LOG_USER },
		{ "local0", LOG_LOCAL0 }, { "local1", LOG_LOCAL1 }, { "local2", LOG_LOCAL2 },
		{ "local3", LOG_LOCAL3 }, { "local4", LOG_LOCAL4 }, { "local5", LOG_LOCAL5 },
		{ "local6", LOG_LOCAL6 }, { "local7", LOG_LOCAL7 },
	};
	for (size_t i = 0; i < sizeof(facilities) / sizeof(facilities[0]); i++) {
		if (strcmp(name, facilities[i].name) != 0)
			continue;
		if (atomic_load(&use_syslog)) {
			closelog();
			openlog(log_ident, LOG_PID | LOG_NDELAY, facilities[i].facility);
		}
		return 0;
	}
	return -1;
}

void log_init(const char *ident, bool to_stderr, enum log_level level)
{
	if (ident != NULL)
		log_ident = ident;
	if (!to_stderr)
		openlog(ident != NULL ? ident : "lmtpgw", LOG_PID | LOG_NDELAY, LOG_MAIL);
	atomic_store(&use_syslog, !to_stderr);
	log_set_level(level);
}

void log_set_level(enum log_level level)
{
	if (level < LOG_LEVEL_ERROR || level > LOG_LEVEL_DEBUG)
		level = LOG_LEVEL_INFO;
	atomic_store(&current_level, (int)level);
}

enum log_level log_get_level(void)
{
	return (enum log_level)atomic_load(&current_level);
}

/* "2026-11-25T07:00:00.123Z " into buf (at least 32 bytes); returns its length. The date and
 * time part is formatted once a second per thread (strftime costs more than the rest of a
 * line); only the milliseconds are new for each line. */
static size_t format_timestamp(char *buf, size_t size)
{
	static _Thread_local time_t cached_sec = (time_t)-1;
	static _Thread_local char cached[24];
	static _Thread_local size_t cached_len;
	struct timespec now;
	struct tm tm;

	if (size < 32 || clock_gettime(CLOCK_REALTIME, &now) < 0) {
		if (size > 0)
			buf[0] = '\0';
		return 0;
	}
	if (now.tv_sec != cached_sec) {
		if (gmtime_r(&now.tv_sec, &tm) == NULL) {
			buf[0] = '\0';
			return 0;
		}
		cached_len = strftime(cached, sizeof(cached), "%Y-%m-%dT%H:%M:%S", &tm);
		cached_sec = now.tv_sec;
	}
	long ms = now.tv_nsec / 1000000L;
	memcpy(buf, cached, cached_len);
	size_t len = cached_len;
	buf[len++] = '.';
	buf[len++] = (char)('0' + ms / 100);
	buf[len++] = (char)('0' + ms / 10 % 10);
	buf[len++] = (char)('0' + ms % 10);
	buf[len++] = 'Z';
	buf[len++] = ' ';
	buf[len] = '\0';
	return len;
}

static void write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		buf += n;
		len -= (size_t)n;
	}
}

static void log_vline(enum log_level level, const char *fmt, va_list args)
{
	char line[LOG_LINE_MAX];
	size_t len = 0, msg_start;
	int n;
	bool to_syslog = atomic_load(&use_syslog);

	if ((int)level > atomic_load(&current_level))
		return;
	if (!to_syslog) {
		len = format_timestamp(line, sizeof(line));
		size_t name_len = strlen(level_names[level]);
		memcpy(line + len, level_names[level], name_len);
		len += name_len;
		line[len++] = ' ';
	}
	msg_start = len;
	/* Keep room for the newline and the NUL. */
	n = format_v(line + len, sizeof(line) - len - 1, fmt, args);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof(line) - len - 1) {
		len = sizeof(line) - 2;
		memcpy(line + len - 3, "...", 3);
	} else {
		len += (size_t)n;
	}
	for (size_t i = msg_start; i < len; i++) {
		if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
			line[i] = '?';
	}
	if (atomic_load(&use_json)) {
		/* The same fields, as one JSON object per line. */
		char json[LOG_LINE_MAX * 2], stamp[40] = "";
		line[len] = '\0';
		if (!to_syslog && msg_start > 0) {
			size_t t = strcspn(line, " ");
			snprintf(stamp, sizeof(stamp), "%.*s", (int)t, line);
		}
		size_t jlen = log_kv_to_json(line + msg_start, stamp, level_names[level], json,
					     sizeof(json) - 1);
		if (to_syslog) {
			syslog(level_priorities[level], "%s", json);
		} else {
			json[jlen++] = '\n';
			write_all(STDERR_FILENO, json, jlen);
		}
		return;
	}
	if (to_syslog) {
		line[len] = '\0';
		syslog(level_priorities[level], "%s", line + msg_start);
	} else {
		line[len++] = '\n';
		line[len] = '\0';
		write_all(STDERR_FILENO, line, len);
	}
}

#define LOG_FUNCTION(name, level)                   \
	void name(const char *fmt, ...)             \
	{                                           \
		va_list args;                       \
		va_start(args, fmt);                \
		log_vline(level, fmt, args);        \
		va_end(args);                       \
	}

LOG_FUNCTION(log_error, LOG_LEVEL_ERROR)
LOG_FUNCTION(log_warn, LOG_LEVEL_WARN)
LOG_FUNCTION(log_info, LOG_LEVEL_INFO)
LOG_FUNCTION(log_debug, LOG_LEVEL_DEBUG)

static size_t escaped_length(unsigned char c)
{
	if (c == '"' || c == '\\')
		return 2;
	return c >= 0x20 && c <= 0x7e ? 1 : 4;
}

char *log_escape(char *dst, size_t dst_size, const void *src, size_t src_len, size_t max_in)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *in = src;
	size_t limit = src_len < max_in ? src_len : max_in;
	bool truncated = src_len > max_in;
	size_t budget = dst_size - 1; /* octets available before the NUL */
	size_t out = 0;

	if (dst_size == 0)
		return dst;
	if (in == NULL)
		limit = 0, truncated = false;
	if (!truncated && limit <= budget) {
		/* The common case, printable text that fits: one scan and one copy. */
		size_t plain = 0;
		while (plain < limit && in[plain] >= 0x20 && in[plain] <= 0x7e && in[plain] != '"' &&
		       in[plain] != '\\')
			plain++;
		if (plain == limit) {
			memcpy(dst, in, limit);
			dst[limit] = '\0';
			return dst;
		}
	}
	if (!truncated) {
		/* Everything fits: no "..." needed, so no room reserved for it. */
		size_t total = 0;

		for (size_t i = 0; i < limit && total <= budget; i++)
			total += escaped_length(in[i]);
		truncated = total > budget;
	}
	if (truncated)
		budget = budget >= 3 ? budget - 3 : 0;
	for (size_t i = 0; i < limit; i++) {
		unsigned char c = in[i];
		size_t enc_len = escaped_length(c);

		if (out + enc_len > budget)
			break;
		if (enc_len == 1) {
			dst[out] = (char)c;
		} else if (enc_len == 2) {
			dst[out] = '\\';
			dst[out + 1] = (char)c;
		} else {
			dst[out] = '\\';
			dst[out + 1] = 'x';
			dst[out + 2] = hex[c >> 4];
			dst[out + 3] = hex[c & 0xf];
		}
		out += enc_len;
	}
	if (truncated && out + 3 < dst_size) {
		memcpy(dst + out, "...", 3);
		out += 3;
	}
	dst[out] = '\0';
	return dst;
}

char *log_esc(char dst[LOG_ESC_SIZE], const char *src)
{
	if (src == NULL)
		src = "";
	/* strnlen past max_in by one tells log_escape whether to append "...". */
	return log_escape(dst, LOG_ESC_SIZE, src, strnlen(src, 101), 100);
}
