/*
 * log - one line per event, key=value, to stderr (foreground) or syslog (daemon, or when a
 * syslog_facility is configured).
 *
 * Levels have fixed meanings: error = something failed that an admin must look at; warn = we
 * carry on; info = one line per recipient result and per connection; debug = per subsystem detail.
 * Every function is safe to call from any thread: a line is formatted on the stack and written
 * with a single write(2) or one syslog datagram. Anything that came from outside goes through
 * log_escape() first. Secrets are never passed here.
 */
#ifndef LMTPGW_LOG_H
#define LMTPGW_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_LEVEL_ERROR, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };

/* to_stderr: write lines to stderr with a timestamp; otherwise to syslog ("ident[pid]: ",
 * facility mail, /dev/log) until log_configure_syslog says otherwise. */
void log_init(const char *ident, bool to_stderr, enum log_level level);
void log_set_level(enum log_level level);
/* Set the syslog facility ("mail", "daemon", "user", "local0".."local7") without changing where
 * lines go; returns -1 for an unknown name. */
int log_set_facility(const char *name);
/* Where lines go (config keys syslog_facility and syslog_socket): facility NULL or "auto" keeps
 * log_init's choice (syslog, facility mail, when it was not to_stderr); a facility name sends
 * every line to syslog with that facility, also in the foreground. socket_path (NULL:
 * /dev/log) is the syslog daemon's unix datagram socket. Returns -1 for an unknown facility or
 * a path too long for a unix socket (nothing changed then). A line syslog does not take (no
 * socket, daemon restarting, queue full) goes to stderr; the send never blocks. */
int log_configure_syslog(const char *facility, const char *socket_path);
enum log_level log_get_level(void);
/* json: each line becomes one JSON object ({"time":..,"level":..,"event":..,...}), the
 * key=value pairs of the message as members, anything else under "msg". */
void log_set_json(bool json);

/* Rewrite one key=value message as a JSON object into out (NUL-terminated, truncated to size);
 * returns the length. Exposed for tests. */
size_t log_kv_to_json(const char *msg, const char *time, const char *level, char *out,
		      size_t size);

void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Make untrusted bytes safe for a log line: printable ASCII except '"' and '\\' is copied, other
 * bytes become \xNN (\" and \\ for those two), and output stops at max_in input bytes with
 * "..." appended. dst always NUL-terminated; returns dst. dst_size >= 8. */
char *log_escape(char *dst, size_t dst_size, const void *src, size_t src_len, size_t max_in);

/* Short form for NUL-terminated input with max_in = 100, into a caller buffer of >= 420 bytes. */
#define LOG_ESC_SIZE 420
char *log_esc(char dst[LOG_ESC_SIZE], const char *src);

#endif
