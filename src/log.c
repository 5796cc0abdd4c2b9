/*
 * log - one line per event, to stderr with a timestamp or to syslog (see include/log.h).
 *
 * Owns: the process-wide level and destination, both atomics, so any thread may log while
 * another changes the level, and the syslog client (its socket, below). Each line is formatted
 * into a stack buffer (LOG_LINE_MAX octets, truncated with "..." when longer) and leaves in one
 * write(2) or one syslog datagram, so lines from concurrent threads never interleave.
 * Stderr lines look like "2026-11-25T07:00:00.123Z info event=... key=value".
 * As a last defence against log injection, any control octet left in a formatted line (callers
 * should have used log_escape() already) becomes '?'.
 *
 * Error contract: logging never fails visibly and never blocks on syslog; a line syslog does not
 * take goes to stderr; a failed stderr write is dropped (there is nowhere better to report it).
 */
#include "log.h"

#include "format.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
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

/*
 * The syslog client. syslog(3) always writes to the compiled-in /dev/log and cannot be pointed
 * at another socket (the test's own rsyslog, a chroot's /dev/log), blocks when the syslog
 * daemon falls behind, and fails silently; so lines go out through this small RFC 3164 client
 * instead: one unix datagram per line, "<PRI>Mmm dd hh:mm:ss ident[pid]: message", the format
 * glibc's syslog(3) sends and rsyslog, syslog-ng and journald parse.
 *
 * The datagram socket is connected to the daemon's: then the kernel lets us wait for room in
 * the daemon's queue (poll POLLOUT), which it cannot for an unconnected socket, and that queue
 * is short (net.unix.max_dgram_qlen, 10 datagrams on Debian 12), so a burst of lines would
 * otherwise overflow it while rsyslog is merely busy. The send itself never blocks
 * (MSG_DONTWAIT); a full queue is waited for at most SYSLOG_WAIT_MS, only while syslog is
 * healthy, and within a budget of SYSLOG_WAIT_BUDGET_MS of waiting per SYSLOG_WAIT_WINDOW_S
 * seconds: after one such wait fails, lines go to stderr without waiting until a send succeeds
 * again; a burst that a busy daemon drains costs short waits within the budget (no line to
 * stderr), while a daemon that is slow rather than stuck (its queue full again right after each
 * success) cannot make the event loop and the workers wait more than 5 % of the time. A daemon that restarted leaves us connected to its old, closed socket (ECONNREFUSED):
 * we connect again to the path, once per line. A line that cannot be sent goes to stderr in
 * the foreground format, and the first line sent after an outage says how many went to stderr
 * (event=syslog_restored), so none is lost without a trace.
 *
 * syslog_lock guards the socket, the address and the outage state: a line is one send, so
 * holding it costs one system call (plus at most one bounded wait per outage).
 */
#define SYSLOG_WAIT_MS 100
#define SYSLOG_WAIT_BUDGET_MS 500
#define SYSLOG_WAIT_WINDOW_S 10
static pthread_mutex_t syslog_lock = PTHREAD_MUTEX_INITIALIZER;
static int syslog_fd = -1;
static struct sockaddr_un syslog_addr = { .sun_family = AF_UNIX, .sun_path = "/dev/log" };
static int syslog_facility_code = LOG_MAIL;
static bool syslog_detached_default;      /* log_init chose syslog: "auto" means syslog */
static bool syslog_failing;               /* the last send failed */
static long long syslog_window_start_ms;   /* monotonic: the current waiting budget's window */
static long long syslog_waited_ms;         /* waited within that window */
static atomic_bool stderr_is_journal = false; /* stderr lines get a "<N>" severity prefix */
static unsigned long syslog_lines_to_stderr;

static const struct {
	const char *name;
	int facility;
} facilities[] = {
	{ "mail", LOG_MAIL },     { "daemon", LOG_DAEMON }, { "user", LOG_USER },
	{ "local0", LOG_LOCAL0 }, { "local1", LOG_LOCAL1 }, { "local2", LOG_LOCAL2 },
	{ "local3", LOG_LOCAL3 }, { "local4", LOG_LOCAL4 }, { "local5", LOG_LOCAL5 },
	{ "local6", LOG_LOCAL6 }, { "local7", LOG_LOCAL7 },
};

static int facility_code(const char *name)
{
	for (size_t i = 0; i < sizeof(facilities) / sizeof(facilities[0]); i++)
		if (strcmp(name, facilities[i].name) == 0)
			return facilities[i].facility;
	return -1;
}

int log_set_facility(const char *name)
{
	int code = facility_code(name);

	if (code < 0)
		return -1;
	pthread_mutex_lock(&syslog_lock);
	syslog_facility_code = code;
	pthread_mutex_unlock(&syslog_lock);
	return 0;
}

int log_configure_syslog(const char *facility, const char *socket_path)
{
	bool to_syslog;
	int code = LOG_MAIL;

	if (facility == NULL || strcmp(facility, "auto") == 0) {
		to_syslog = syslog_detached_default;
	} else {
		code = facility_code(facility);
		if (code < 0)
			return -1;
		to_syslog = true;
	}
	if (socket_path == NULL)
		socket_path = "/dev/log";
	if (strlen(socket_path) >= sizeof(syslog_addr.sun_path))
		return -1;
	pthread_mutex_lock(&syslog_lock);
	syslog_facility_code = code;
	if (strcmp(syslog_addr.sun_path, socket_path) != 0 && syslog_fd >= 0) {
		close(syslog_fd); /* connected to the old path */
		syslog_fd = -1;
	}
	memset(syslog_addr.sun_path, 0, sizeof(syslog_addr.sun_path));
	memcpy(syslog_addr.sun_path, socket_path, strlen(socket_path));
	pthread_mutex_unlock(&syslog_lock);
	atomic_store(&use_syslog, to_syslog);
	return 0;
}

/* When stderr is the systemd journal, a line starts with "<N>", its syslog severity
 * (sd-daemon(3)): journald takes the priority from it (SyslogLevelPrefix=, on by default) and
 * strips it, so `journalctl -p warning` works and rsyslog reading the journal files the line
 * under the right severity (the facility is the unit's SyslogFacility=). text must have three
 * writable octets before it; returns where the line to write starts. */
static const char *journal_prefix(enum log_level level, char *text)
{
	if (!atomic_load(&stderr_is_journal))
		return text;
	text[-3] = '<';
	text[-2] = (char)('0' + level_priorities[level]);
	text[-1] = '>';
	return text - 3;
}

/* systemd sets JOURNAL_STREAM to "DEVICE:INODE" of the stream it connects to stdout and stderr
 * (systemd.exec(5)); stderr is the journal only while it is still that stream (not when a test
 * or a shell redirected it). */
static bool stderr_is_journal_stream(void)
{
	const char *env = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;
	char tail;

	if (env == NULL || sscanf(env, "%llu:%llu%c", &dev, &ino, &tail) != 2)
		return false;
	if (fstat(STDERR_FILENO, &st) < 0)
		return false;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_init(const char *ident, bool to_stderr, enum log_level level)
{
	if (ident != NULL)
		log_ident = ident;
	syslog_detached_default = !to_stderr;
	atomic_store(&use_syslog, !to_stderr);
	atomic_store(&stderr_is_journal, stderr_is_journal_stream());
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

/* A datagram socket connected to syslog_addr in syslog_fd; 0, or -1 with errno set. */
static int syslog_connect_locked(void)
{
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	if (connect(fd, (const struct sockaddr *)&syslog_addr, sizeof(syslog_addr)) < 0) {
		int err = errno;
		close(fd);
		errno = err;
		return -1;
	}
	syslog_fd = fd;
	return 0;
}

static long long monotonic_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One RFC 3164 datagram: "<PRI>Mmm dd hh:mm:ss ident[pid]: msg" (RFC 3164 4.1; the HOSTNAME
 * is left out, as glibc does for the local socket: the syslog daemon adds its own). The
 * time is local time, as the daemon's other lines. Returns 0, or -1 with errno set. */
static int syslog_send_locked(int severity, const char *msg, size_t msg_len)
{
	static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	char buf[LOG_LINE_MAX * 2 + 128];
	time_t now = time(NULL);
	struct tm tm;

	if (localtime_r(&now, &tm) == NULL)
		memset(&tm, 0, sizeof(tm));
	/* getpid() each time: daemon(3) forks after the log is set up. */
	int n = snprintf(buf, sizeof(buf), "<%d>%s %2d %02d:%02d:%02d %.32s[%ld]: ",
			 syslog_facility_code | severity, months[tm.tm_mon % 12], tm.tm_mday,
			 tm.tm_hour, tm.tm_min, tm.tm_sec, log_ident, (long)getpid());
	if (n < 0 || (size_t)n >= sizeof(buf))
		return -1;
	size_t len = (size_t)n;
	if (msg_len > sizeof(buf) - len)
		msg_len = sizeof(buf) - len;
	memcpy(buf + len, msg, msg_len);
	len += msg_len;

	for (int attempt = 0; attempt < 2; attempt++) {
		if (syslog_fd < 0 && syslog_connect_locked() < 0)
			return -1;
		ssize_t sent;
		do
			sent = send(syslog_fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
		while (sent < 0 && errno == EINTR);
		if (sent >= 0)
			return 0;
		if ((errno == EAGAIN || errno == EWOULDBLOCK) && !syslog_failing && attempt == 0) {
			/* The daemon's queue is full: give it a moment to read, within the budget. */
			long long start = monotonic_ms();
			if (start - syslog_window_start_ms >= SYSLOG_WAIT_WINDOW_S * 1000LL) {
				syslog_window_start_ms = start;
				syslog_waited_ms = 0;
			}
			long long left = SYSLOG_WAIT_BUDGET_MS - syslog_waited_ms;
			if (left > 0) {
				struct pollfd pfd = { .fd = syslog_fd, .events = POLLOUT };
				int ready = poll(&pfd, 1, (int)(left < SYSLOG_WAIT_MS ? left
									: SYSLOG_WAIT_MS));
				syslog_waited_ms += monotonic_ms() - start;
				if (ready > 0)
					continue;
			}
			errno = EAGAIN;
			return -1;
		}
		if (errno == ECONNREFUSED || errno == ENOTCONN || errno == ECONNRESET ||
		    errno == EPIPE) {
			/* The daemon restarted (or went away): connect to its socket anew. */
			int err = errno;
			close(syslog_fd);
			syslog_fd = -1;
			errno = err;
			continue;
		}
		return -1;
	}
	return -1;
}

/* Send msg to syslog; on failure write stderr_line (the foreground form of the same line) to
 * stderr instead, and say so once per outage. */
static void syslog_line(enum log_level level, const char *msg, size_t msg_len,
			const char *stderr_line, size_t stderr_len)
{
	pthread_mutex_lock(&syslog_lock);
	if (syslog_send_locked(level_priorities[level], msg, msg_len) == 0) {
		if (syslog_failing) {
			char note[128];
			int n = snprintf(note, sizeof(note),
					 "event=syslog_restored lines_to_stderr=%lu",
					 syslog_lines_to_stderr);
			syslog_failing = false;
			syslog_lines_to_stderr = 0;
			if (n > 0)
				syslog_send_locked(LOG_WARNING, note, (size_t)n);
		}
		pthread_mutex_unlock(&syslog_lock);
		return;
	}
	int err = errno;
	if (!syslog_failing) {
		char note[LOG_LINE_MAX], stamp[40];
		size_t slen = format_timestamp(stamp, sizeof(stamp));
		int n = snprintf(note, sizeof(note),
				 "%.*swarn event=syslog_unavailable socket=%s error=\"%s\" "
				 "action=logging_to_stderr\n",
				 (int)slen, stamp, syslog_addr.sun_path, strerror(err));
		syslog_failing = true;
		if (n > 0)
			write_all(STDERR_FILENO, note, (size_t)n < sizeof(note) ? (size_t)n
									: sizeof(note) - 1);
	}
	syslog_lines_to_stderr++;
	pthread_mutex_unlock(&syslog_lock);
	write_all(STDERR_FILENO, stderr_line, stderr_len);
}

static void log_vline(enum log_level level, const char *fmt, va_list args)
{
	/* Three octets in front for the "<N>" of a line to the journal (journal_prefix). */
	char buf[3 + LOG_LINE_MAX], *line = buf + 3;
	size_t len = 0, msg_start;
	int n;
	bool to_syslog = atomic_load(&use_syslog);

	if ((int)level > atomic_load(&current_level))
		return;
	/* The stderr form always ("time level message"): a syslog line that cannot be sent goes
	 * to stderr in it. Syslog gets the message part. */
	len = format_timestamp(line, LOG_LINE_MAX);
	size_t name_len = strlen(level_names[level]);
	memcpy(line + len, level_names[level], name_len);
	len += name_len;
	line[len++] = ' ';
	msg_start = len;
	/* Keep room for the newline and the NUL. */
	n = format_v(line + len, LOG_LINE_MAX - len - 1, fmt, args);
	if (n < 0)
		n = 0;
	if ((size_t)n >= LOG_LINE_MAX - len - 1) {
		len = LOG_LINE_MAX - 2;
		memcpy(line + len - 3, "...", 3);
	} else {
		len += (size_t)n;
	}
	for (size_t i = msg_start; i < len; i++) {
		if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
			line[i] = '?';
	}
	if (atomic_load(&use_json)) {
		/* The same fields, as one JSON object per line. Syslog stamps its own time. */
		char jbuf[3 + LOG_LINE_MAX * 2], *json = jbuf + 3, stamp[40] = "";
		line[len] = '\0';
		if (!to_syslog) {
			size_t t = strcspn(line, " ");
			snprintf(stamp, sizeof(stamp), "%.*s", (int)t, line);
		}
		size_t jlen = log_kv_to_json(line + msg_start, stamp, level_names[level], json,
					     LOG_LINE_MAX * 2 - 1);
		json[jlen] = '\n';
		const char *out = journal_prefix(level, json);
		if (to_syslog)
			syslog_line(level, json, jlen, out, (size_t)(json - out) + jlen + 1);
		else
			write_all(STDERR_FILENO, out, (size_t)(json - out) + jlen + 1);
		return;
	}
	line[len] = '\n';
	const char *out = journal_prefix(level, line);
	if (to_syslog)
		syslog_line(level, line + msg_start, len - msg_start, out, (size_t)(line - out) + len + 1);
	else
		write_all(STDERR_FILENO, out, (size_t)(line - out) + len + 1);
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
