/*
 * config - load lmtpgw.conf (libconfig syntax) against declarative key tables.
 *
 * Owns: the struct config it returns (global values, the opened backend instances, the router,
 * the routes as written). Every key is a row of a `struct conf_key` table; the generic conf_*
 * functions read defaults, file values and text overrides through the same rows, so a key
 * cannot be loaded one way and printed another.
 *
 * Value conventions (the file is libconfig; these add units on top of it):
 *   SIZE      an integer (bytes) or a string with a K, M or G suffix (powers of 1024): "25M"
 *   DURATION  an integer (seconds) or a string "500ms", "30s", "5m", "1h", "1d"
 *   INT       an integer, or a string read by strtoll base 0. An INT whose default is written
 *             in octal ("0660": file modes) must be a string in the file, because libconfig
 *             reads a bare 0660 as decimal 660 and a wrong socket mode is silent.
 *   bounds    min..max in bytes / milliseconds; min > max means unbounded.
 * libconfig 1.5 truncates bare integers above 2^31 silently (unless suffixed L), so
 * conf_print writes large values as strings.
 *
 * Error contract: functions return 0 or -1 with a message in the caller's buffer; config_load
 * returns NULL with "file:line: message". Nothing here logs or exits.
 */
#include "config.h"
#include "cidr.h"
#include "tls.h"

#include <ctype.h>
#include <errno.h>
#include <libconfig.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "backend.h"
#include "pool.h"
#include "router.h"

#define CONF_FIELD(base, key, type) ((type *)(void *)((char *)(base) + (key)->offset))
#define CONF_CFIELD(base, key, type) \
	((const type *)(const void *)((const char *)(base) + (key)->offset))

#define KIB 1024LL
#define MIB (1024LL * 1024)
#define GIB (1024LL * 1024 * 1024)

const struct conf_key config_global_keys[] = {
	{ "hostname", CONF_STRING, offsetof(struct config, hostname), NULL, 1, 0,
	  "name in the greeting, LHLO reply and Received: headers (default: the system host name)" },
	{ "listen", CONF_STRING_LIST, offsetof(struct config, listen), "127.0.0.1:2424", 1, 0,
	  "where to accept LMTP: \"host:port\", \"[v6]:port\" or \"unix:/path\"; a string or a list" },
	{ "unix_socket_owner", CONF_STRING, offsetof(struct config, unix_socket_owner), NULL, 1, 0,
	  "owner (user name) of the unix sockets we create; unset: the user lmtpgw runs as" },
	{ "unix_socket_group", CONF_STRING, offsetof(struct config, unix_socket_group), NULL, 1, 0,
	  "group of the unix sockets we create, e.g. the MTA's group; unset: our group" },
	{ "unix_socket_mode", CONF_INT, offsetof(struct config, unix_socket_mode), "0660", 0, 0777,
	  "permissions of the unix sockets, as an octal string: \"0660\"" },
	{ "max_connections", CONF_INT, offsetof(struct config, max_connections), "1000", 1, 1000000,
	  "concurrent LMTP connections; one more gets 421 4.3.2 and is closed" },
	{ "max_connections_per_client", CONF_INT,
	  offsetof(struct config, max_connections_per_client), "100", 0, 1000000,
	  "concurrent connections from one client IP address; one more gets 421 4.7.0 and is "
	  "closed; 0: no limit (trusted_networks and unix sockets are exempt)" },
	{ "trusted_networks", CONF_STRING_LIST, offsetof(struct config, trusted_networks), NULL, 1,
	  0, "networks of the MTAs that feed lmtpgw (\"192.0.2.0/24\", \"::1\", ...): exempt from "
	  "max_connections_per_client and allowed to send XFORWARD; unix sockets always are" },
	{ "max_message_size", CONF_SIZE, offsetof(struct config, max_message_size), "50M", 1024,
	  1024 * GIB, "largest message accepted (advertised as SIZE; larger gets 552 5.3.4)" },
	{ "max_recipients", CONF_INT, offsetof(struct config, max_recipients), "1000", 1, 100000,
	  "recipients per transaction; the next RCPT gets 452 4.5.3 (RFC 5321 4.5.3.1.8)" },
	{ "max_command_line", CONF_INT, offsetof(struct config, max_command_line), "2048", 512,
	  65536, "longest command line in octets, CRLF included (RFC 5321: 512, plus extensions)" },
	{ "max_errors", CONF_INT, offsetof(struct config, max_errors), "20", 1, 10000,
	  "bad commands in one session before 421 4.7.0 and close" },
	{ "max_received_headers", CONF_INT, offsetof(struct config, max_received_headers), "100", 1,
	  1000, "Received: headers in a message beyond which it is refused as a mail loop" },
	{ "timeout_greeting", CONF_DURATION, offsetof(struct config, timeout_greeting_ms), "5m", 100,
	  86400000, "time the LHLO line (and any line before it) has to arrive complete, counted from the "
	  "greeting or the previous line; trickled bytes do not extend it" },
	{ "timeout_command", CONF_DURATION, offsetof(struct config, timeout_command_ms), "5m", 100,
	  86400000, "time each command line has to arrive complete, counted from the previous line or reply "
	  "(RFC 5321 4.5.3.2: 5 min); trickled bytes do not extend it" },
	{ "delivery_deadline", CONF_DURATION, offsetof(struct config, delivery_deadline_ms), "300s",
	  1000, 3600000,
	  "longest wait for the backends after the final dot; then 451 4.4.7 (keep it well under "
	  "the MTA's end-of-data timeout: Postfix waits 600s)" },
	{ "timeout_data", CONF_DURATION, offsetof(struct config, timeout_data_ms), "3m", 100,
	  86400000, "DATA/BDAT deadline: the time allowed before the first data and the most the deadline "
	  "may lie ahead as min_data_rate extends it (RFC 5321: 3 min)" },
	{ "min_data_rate", CONF_INT, offsetof(struct config, min_data_rate), "500", 0, 1000000000,
	  "bytes per second a client must keep up during DATA and BDAT: each byte received adds "
	  "1/rate s to the phase's deadline, which never lies more than timeout_data ahead; 0: "
	  "timeout_data is an idle timeout only" },
	{ "spool_memory_max", CONF_SIZE, offsetof(struct config, spool_memory_max), "1M", 0, GIB,
	  "message bytes kept in memory before the spool moves to an unlinked file in spool_dir" },
	{ "spool_dir", CONF_STRING, offsetof(struct config, spool_dir), "/tmp", 1, 0,
	  "directory for the unlinked temporary files of large messages" },
	{ "subaddress_separator", CONF_STRING, offsetof(struct config, subaddress_separator), "+", 1,
	  0, "characters that split local+detail in a recipient (each one is a separator)" },
	{ "lowercase_local_part", CONF_BOOL, offsetof(struct config, lowercase_local_part), "true", 1,
	  0, "lowercase the local part before routing and templates (domains always are)" },
	{ "delivered_to", CONF_BOOL, offsetof(struct config, delivered_to), "false", 1, 0,
	  "prepend a Delivered-To: header per recipient to every stored copy" },
	{ "dsn", CONF_BOOL, offsetof(struct config, dsn), "false", 1, 0,
	  "offer DSN (RFC 3461) in LHLO; lmtpgw sends no success notices itself, so the MTA "
	  "then sends none either" },
	{ "xforward", CONF_BOOL, offsetof(struct config, xforward), "false", 1, 0,
	  "offer XFORWARD (Postfix) so the MTA can pass its queue id and client for our logs; "
	  "enable only on listeners that only trusted MTAs reach" },
	{ "metrics_listen", CONF_STRING, offsetof(struct config, metrics_listen), NULL, 1, 0,
	  "serve Prometheus /metrics and /health on this numeric HOST:PORT (loopback advised); "
	  "unset: off" },
	{ "tls_cert_file", CONF_STRING, offsetof(struct config, tls_cert_file), NULL, 1, 0,
	  "PEM certificate chain for STARTTLS and lmtps: listeners; unset: no TLS offered" },
	{ "tls_key_file", CONF_STRING, offsetof(struct config, tls_key_file), NULL, 1, 0,
	  "PEM private key of tls_cert_file (not readable by others)" },
	{ "tls_client_ca_file", CONF_STRING, offsetof(struct config, tls_client_ca_file), NULL, 1, 0,
	  "CA certificates for client certificates; set: clients are asked for one" },
	{ "tls_require_client_cert", CONF_BOOL, offsetof(struct config, tls_require_client_cert),
	  "false", 1, 0, "refuse TLS clients without a certificate signed by tls_client_ca_file" },
	{ "tls_required", CONF_BOOL, offsetof(struct config, tls_required), "false", 1, 0,
	  "TCP clients must use STARTTLS before MAIL (530 5.7.0 otherwise); unix sockets exempt" },
	{ "allow_clients", CONF_STRING_LIST, offsetof(struct config, allow_clients), NULL, 1, 0,
	  "networks allowed to connect over TCP (\"127.0.0.0/8\", \"::1\", ...); empty: all" },
	{ "run_as_root", CONF_BOOL, offsetof(struct config, run_as_root), "false", 1, 0,
	  "allow serving as root when 'user' is unset (for trials only)" },
	{ "soft_bounce", CONF_BOOL, offsetof(struct config, soft_bounce), "false", 1, 0,
	  "turn every 5xx we would send into the matching 4xx (safe testing of new routes)" },
	{ "log_level", CONF_STRING, offsetof(struct config, log_level), "info", 1, 0,
	  "least important messages logged: error, warn, info or debug" },
	{ "log_format", CONF_STRING, offsetof(struct config, log_format), "text", 1, 0,
	  "text (key=value lines) or json (one JSON object per line, same fields)" },
	{ "syslog_facility", CONF_STRING, offsetof(struct config, syslog_facility), "mail", 1, 0,
	  "syslog facility when logging to syslog: mail, daemon, user or local0..local7" },
	{ "user", CONF_STRING, offsetof(struct config, user), NULL, 1, 0,
	  "user to switch to after binding the sockets (when started as root)" },
	{ "group", CONF_STRING, offsetof(struct config, group), NULL, 1, 0,
	  "group to switch to after binding (default: the user's primary group)" },
	{ NULL, 0, 0, NULL, 0, 0, NULL },
};

const struct conf_key config_route_keys[] = {
	{ "match", CONF_STRING, offsetof(struct config_route, match), NULL, 1, 0,
	  "recipient pattern: address, \"@domain\", \"*@domain\", wildcard, \"/regex/\" or \"*\"" },
	{ "deliver", CONF_STRING_LIST, offsetof(struct config_route, deliver), NULL, 1, 0,
	  "backend name, or list of backend names, that every matching recipient goes to" },
	{ NULL, 0, 0, NULL, 0, 0, NULL },
};

static const char *const log_levels[] = { "error", "warn", "info", "debug", NULL };
static const char *const syslog_facilities[] = {
	"mail", "daemon", "user", "local0", "local1", "local2", "local3",
	"local4", "local5", "local6", "local7", NULL,
};

/* --- values -------------------------------------------------------------------------------- */

/* A non-negative decimal number at *p; advances *p. -1 on no digits or overflow. */
static int parse_digits(const char **p, long long *value_r)
{
	const char *s = *p;
	long long n = 0;

	if (!isdigit((unsigned char)*s))
		return -1;
	for (; isdigit((unsigned char)*s); s++) {
		int d = *s - '0';

		if (n > (LLONG_MAX - d) / 10)
			return -1;
		n = n * 10 + d;
	}
	*p = s;
	*value_r = n;
	return 0;
}

int conf_parse_size(const char *text, long long *bytes_r)
{
	const char *p = text;
	long long n, mult = 1;

	if (parse_digits(&p, &n) < 0)
		return -1;
	switch (*p) {
	case '\0': break;
	case 'k': case 'K': mult = KIB; p++; break;
	case 'm': case 'M': mult = MIB; p++; break;
	case 'g': case 'G': mult = GIB; p++; break;
	default: return -1;
	}
	if (*p != '\0' || n > LLONG_MAX / mult)
		return -1;
	*bytes_r = n * mult;
	return 0;
}

int conf_parse_duration(const char *text, long long *ms_r)
{
	static const struct { const char *unit; long long ms; } units[] = {
		{ "", 1000 }, { "ms", 1 }, { "s", 1000 }, { "m", 60000 },
		{ "h", 3600000 }, { "d", 86400000 },
	};
	const char *p = text;
	long long n;

	if (parse_digits(&p, &n) < 0)
		return -1;
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(p, units[i].unit) != 0)
			continue;
		if (n > LLONG_MAX / units[i].ms)
			return -1;
		*ms_r = n * units[i].ms;
		return 0;
	}
	return -1;
}

/* Octal-looking default ("0660", "0700"): a mode. Such keys are read and printed in octal. */
static bool key_is_octal(const struct conf_key *key)
{
	return key->type == CONF_INT && key->def != NULL && key->def[0] == '0' &&
	       key->def[1] >= '0' && key->def[1] <= '7';
}

/* A number as the file would write it, without quotes. human: durations in the largest exact
 * unit ("5m"); otherwise "300s" / "500ms", the form conf_print uses. */
static const char *format_number(const struct conf_key *key, long long v, bool human, char *buf,
				 size_t size)
{
	switch (key->type) {
	case CONF_SIZE:
		if (v != 0 && v % GIB == 0)
			snprintf(buf, size, "%lldG", v / GIB);
		else if (v != 0 && v % MIB == 0)
			snprintf(buf, size, "%lldM", v / MIB);
		else if (v != 0 && v % KIB == 0)
			snprintf(buf, size, "%lldK", v / KIB);
		else
			snprintf(buf, size, "%lld", v);
		break;
	case CONF_DURATION:
		if (human && v != 0 && v % 86400000 == 0)
			snprintf(buf, size, "%lldd", v / 86400000);
		else if (human && v != 0 && v % 3600000 == 0)
			snprintf(buf, size, "%lldh", v / 3600000);
		else if (human && v != 0 && v % 60000 == 0)
			snprintf(buf, size, "%lldm", v / 60000);
		else if (v % 1000 == 0)
			snprintf(buf, size, "%llds", v / 1000);
		else
			snprintf(buf, size, "%lldms", v);
		break;
	default:
		if (key_is_octal(key) && v >= 0)
			snprintf(buf, size, "%#llo", v);
		else
			snprintf(buf, size, "%lld", v);
		break;
	}
	return buf;
}

static int check_bounds(const struct conf_key *key, long long v, char *error_r, size_t error_size)
{
	char lo[32], hi[32];

	if (key->min > key->max || (v >= key->min && v <= key->max))
		return 0;
	snprintf(error_r, error_size, "'%s' must be between %s and %s", key->name,
		 format_number(key, key->min, true, lo, sizeof(lo)),
		 format_number(key, key->max, true, hi, sizeof(hi)));
	return -1;
}

static const char *type_requirement(const struct conf_key *key)
{
	switch (key->type) {
	case CONF_STRING: return "must be a string";
	case CONF_BOOL: return "must be true or false";
	case CONF_INT:
		return key_is_octal(key) ? "must be an octal string such as \"0660\" (libconfig "
					   "reads a bare 0660 as decimal 660)"
					 : "must be an integer";
	case CONF_SIZE: return "must be a size: bytes, or a string such as \"512K\", \"25M\", \"2G\"";
	case CONF_DURATION:
		return "must be a duration: seconds, or a string such as \"500ms\", \"30s\", \"5m\", "
		       "\"1h\"";
	case CONF_STRING_LIST: return "must be a string or a list of strings";
	}
	return "has an unknown type";
}

static int type_error(const struct conf_key *key, char *error_r, size_t error_size)
{
	snprintf(error_r, error_size, "'%s' %s", key->name, type_requirement(key));
	return -1;
}

static void strlist_free(struct conf_strlist *list)
{
	for (size_t i = 0; i < list->count; i++)
		free(list->items[i]);
	free(list->items);
	list->items = NULL;
	list->count = 0;
}

static void strlist_add(struct conf_strlist *list, const char *s, size_t len)
{
	char **items = realloc(list->items, (list->count + 1) * sizeof(*items));

	if (items == NULL)
		abort();
	list->items = items;
	list->items[list->count] = strndup(s, len);
	if (list->items[list->count] == NULL)
		abort();
	list->count++;
}

static char *xstrdup(const char *s)
{
	char *p = strdup(s);

	if (p == NULL)
		abort();
	return p;
}

static void set_string(const struct conf_key *key, void *base, const char *value)
{
	char **field = CONF_FIELD(base, key, char *);

	free(*field);
	*field = value == NULL ? NULL : xstrdup(value);
}

static int set_number(const struct conf_key *key, void *base, long long v, char *error_r,
		      size_t error_size)
{
	if (check_bounds(key, v, error_r, error_size) < 0)
		return -1;
	*CONF_FIELD(base, key, long long) = v;
	return 0;
}

int conf_parse_value(const struct conf_key *key, const char *text, void *base, char *error_r,
		     size_t error_size)
{
	long long v;
	char *end;

	switch (key->type) {
	case CONF_STRING:
		set_string(key, base, text);
		return 0;
	case CONF_BOOL: {
		static const char *const yes[] = { "true", "yes", "on", "1", NULL };
		static const char *const no[] = { "false", "no", "off", "0", NULL };

		for (size_t i = 0; yes[i] != NULL; i++) {
			if (strcasecmp(text, yes[i]) == 0) {
				*CONF_FIELD(base, key, bool) = true;
				return 0;
			}
			if (strcasecmp(text, no[i]) == 0) {
				*CONF_FIELD(base, key, bool) = false;
				return 0;
			}
		}
		return type_error(key, error_r, error_size);
	}
	case CONF_INT:
		errno = 0;
		v = strtoll(text, &end, 0);
		if (errno != 0 || end == text || *end != '\0' || isspace((unsigned char)text[0])) {
			snprintf(error_r, error_size, "'%s' must be an integer (got \"%.40s\")",
				 key->name, text);
			return -1;
		}
		return set_number(key, base, v, error_r, error_size);
	case CONF_SIZE:
		if (conf_parse_size(text, &v) < 0) {
			snprintf(error_r, error_size, "'%s' %s (got \"%.40s\")", key->name,
				 type_requirement(key), text);
			return -1;
		}
		return set_number(key, base, v, error_r, error_size);
	case CONF_DURATION:
		if (conf_parse_duration(text, &v) < 0) {
			snprintf(error_r, error_size, "'%s' %s (got \"%.40s\")", key->name,
				 type_requirement(key), text);
			return -1;
		}
		return set_number(key, base, v, error_r, error_size);
	case CONF_STRING_LIST: {
		struct conf_strlist *list = CONF_FIELD(base, key, struct conf_strlist);

		/* Text has no list syntax: "a, b" is two items (command-line overrides). */
		strlist_free(list);
		for (const char *p = text; *p != '\0';) {
			size_t len = strcspn(p, ",");
			const char *s = p, *e = p + len;

			while (s < e && isspace((unsigned char)*s))
				s++;
			while (e > s && isspace((unsigned char)e[-1]))
				e--;
			if (e > s)
				strlist_add(list, s, (size_t)(e - s));
			p += len;
			if (*p == ',')
				p++;
		}
		return 0;
	}
	}
	return type_error(key, error_r, error_size);
}

int conf_defaults(const struct conf_key *keys, void *base, char *error_r, size_t error_size)
{
	char msg[256];

	for (const struct conf_key *key = keys; key->name != NULL; key++) {
		if (key->def == NULL)
			continue;
		if (conf_parse_value(key, key->def, base, msg, sizeof(msg)) < 0) {
			snprintf(error_r, error_size, "bad default for %s", msg);
			return -1;
		}
	}
	return 0;
}

void conf_release(const struct conf_key *keys, void *base)
{
	for (const struct conf_key *key = keys; key->name != NULL; key++) {
		if (key->type == CONF_STRING)
			set_string(key, base, NULL);
		else if (key->type == CONF_STRING_LIST)
			strlist_free(CONF_FIELD(base, key, struct conf_strlist));
	}
}

/* A libconfig string literal: quotes, backslashes and control bytes escaped; UTF-8 as is. */
static void print_string(FILE *out, const char *s)
{
	fputc('"', out);
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
		switch (*p) {
		case '"': fputs("\\\"", out); break;
		case '\\': fputs("\\\\", out); break;
		case '\n': fputs("\\n", out); break;
		case '\r': fputs("\\r", out); break;
		case '\t': fputs("\\t", out); break;
		case '\f': fputs("\\f", out); break;
		default:
			if (*p < 0x20 || *p == 0x7f)
				fprintf(out, "\\x%02x", *p);
			else
				fputc(*p, out);
		}
	}
	fputc('"', out);
}

void conf_print(FILE *out, const struct conf_key *keys, const void *base, int indent)
{
	char buf[64];

	for (const struct conf_key *key = keys; key->name != NULL; key++) {
		fprintf(out, "%*s", indent, "");
		switch (key->type) {
		case CONF_STRING: {
			const char *s = *CONF_CFIELD(base, key, char *);

			/* libconfig has no null: leave the key out, which reads back as unset. */
			if (s == NULL) {
				fprintf(out, "# %s is not set\n", key->name);
				continue;
			}
			fprintf(out, "%s = ", key->name);
			print_string(out, s);
			break;
		}
		case CONF_BOOL:
			fprintf(out, "%s = %s", key->name,
				*CONF_CFIELD(base, key, bool) ? "true" : "false");
			break;
		case CONF_INT:
		case CONF_SIZE:
		case CONF_DURATION: {
			long long v = *CONF_CFIELD(base, key, long long);
			bool quote = key->type == CONF_DURATION || key_is_octal(key) ||
				     v > INT_MAX || v < INT_MIN;

			format_number(key, v, false, buf, sizeof(buf));
			if (key->type == CONF_SIZE && strpbrk(buf, "KMG") != NULL)
				quote = true;
			/* A plain INT that big is written as libconfig's 64-bit literal instead. */
			if (key->type == CONF_INT && !key_is_octal(key) && quote) {
				fprintf(out, "%s = %lldL", key->name, v);
				break;
			}
			fprintf(out, quote ? "%s = \"%s\"" : "%s = %s", key->name, buf);
			break;
		}
		case CONF_STRING_LIST: {
			const struct conf_strlist *list = CONF_CFIELD(base, key, struct conf_strlist);

			fprintf(out, "%s = [", key->name);
			for (size_t i = 0; i < list->count; i++) {
				fputs(i == 0 ? " " : ", ", out);
				print_string(out, list->items[i]);
			}
			fputs(" ]", out);
			break;
		}
		}
		fputs(";\n", out);
	}
}

/* --- reading the file ---------------------------------------------------------------------- */

struct loader {
	const char *path;
	char *error_r;
	size_t error_size;
};

/* "file:line: message" for a setting (just "file: " when s is NULL or has no line). */
static int __attribute__((format(printf, 3, 4)))
fail_at(struct loader *ld, const config_setting_t *s, const char *fmt, ...)
{
	const char *file = s != NULL ? config_setting_source_file(s) : NULL;
	unsigned line = s != NULL ? config_setting_source_line(s) : 0;
	int n;
	va_list ap;

	if (file == NULL)
		file = ld->path;
	if (line > 0)
		n = snprintf(ld->error_r, ld->error_size, "%s:%u: ", file, line);
	else
		n = snprintf(ld->error_r, ld->error_size, "%s: ", file);
	if (n < 0 || (size_t)n >= ld->error_size)
		return -1;
	va_start(ap, fmt);
	vsnprintf(ld->error_r + n, ld->error_size - (size_t)n, fmt, ap);
	va_end(ap);
	return -1;
}

/* One setting of the file into its field; error text without location. */
static int apply_setting(const struct conf_key *key, const config_setting_t *s, void *base,
			 char *error_r, size_t error_size)
{
	int type = config_setting_type(s);
	bool is_int = type == CONFIG_TYPE_INT || type == CONFIG_TYPE_INT64;
	long long v;

	switch (key->type) {
	case CONF_STRING:
		if (type != CONFIG_TYPE_STRING)
			return type_error(key, error_r, error_size);
		set_string(key, base, config_setting_get_string(s));
		return 0;
	case CONF_BOOL:
		if (type != CONFIG_TYPE_BOOL)
			return type_error(key, error_r, error_size);
		*CONF_FIELD(base, key, bool) = config_setting_get_bool(s) != 0;
		return 0;
	case CONF_INT:
	case CONF_SIZE:
	case CONF_DURATION:
		if (type == CONFIG_TYPE_STRING)
			return conf_parse_value(key, config_setting_get_string(s), base, error_r,
						error_size);
		if (!is_int || key_is_octal(key))
			return type_error(key, error_r, error_size);
		v = config_setting_get_int64(s);
		if (key->type != CONF_INT && v < 0)
			return type_error(key, error_r, error_size);
		if (key->type == CONF_DURATION) {
			if (v > LLONG_MAX / 1000)
				return type_error(key, error_r, error_size);
			v *= 1000; /* a bare number is seconds */
		}
		return set_number(key, base, v, error_r, error_size);
	case CONF_STRING_LIST: {
		struct conf_strlist list = { NULL, 0 };

		if (type == CONFIG_TYPE_STRING) {
			const char *str = config_setting_get_string(s);

			strlist_add(&list, str, strlen(str));
		} else if (type == CONFIG_TYPE_ARRAY || type == CONFIG_TYPE_LIST) {
			for (int i = 0; i < config_setting_length(s); i++) {
				const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
				const char *str;

				if (config_setting_type(e) != CONFIG_TYPE_STRING) {
					strlist_free(&list);
					return type_error(key, error_r, error_size);
				}
				str = config_setting_get_string(e);
				strlist_add(&list, str, strlen(str));
			}
		} else {
			return type_error(key, error_r, error_size);
		}
		strlist_free(CONF_FIELD(base, key, struct conf_strlist));
		*CONF_FIELD(base, key, struct conf_strlist) = list;
		return 0;
	}
	}
	return type_error(key, error_r, error_size);
}

static const struct conf_key *key_find(const struct conf_key *keys, const char *name)
{
	for (const struct conf_key *key = keys; key->name != NULL; key++) {
		if (strcmp(key->name, name) == 0)
			return key;
	}
	return NULL;
}

struct conf_table {
	const struct conf_key *keys;
	void *base;
};

/* Every member of group into the first table that knows it. section names the group in
 * messages ("backend 'x'"); global: no prefix on value errors. reserved: names the caller
 * reads itself (NULL-terminated, may be NULL). */
static int apply_group(struct loader *ld, const config_setting_t *group,
		       const struct conf_table *tables, size_t ntables, const char *section,
		       bool global, const char *const *reserved)
{
	char msg[512];

	for (int i = 0; i < config_setting_length(group); i++) {
		const config_setting_t *s = config_setting_get_elem(group, (unsigned)i);
		const char *name = config_setting_name(s);
		const struct conf_key *key = NULL;
		size_t t;
		bool skip = false;

		for (size_t r = 0; reserved != NULL && reserved[r] != NULL; r++)
			skip = skip || strcmp(reserved[r], name) == 0;
		if (skip)
			continue;
		for (t = 0; t < ntables && key == NULL; t++)
			key = key_find(tables[t].keys, name);
		if (key == NULL)
			return fail_at(ld, s, "unknown key '%s' in %s", name, section);
		if (apply_setting(key, s, tables[t - 1].base, msg, sizeof(msg)) < 0)
			return global ? fail_at(ld, s, "%s", msg)
				      : fail_at(ld, s, "%s: %s", section, msg);
	}
	return 0;
}

static bool in_list(const char *const *list, const char *s)
{
	for (size_t i = 0; list[i] != NULL; i++) {
		if (strcmp(list[i], s) == 0)
			return true;
	}
	return false;
}

/* A list of "10.0.0.0/8", "::1" ... into *nets_r (NULL when the list is empty). */
static int parse_networks(struct loader *ld, const config_setting_t *root, const char *key,
			  const struct conf_strlist *list, struct cidr **nets_r, size_t *count_r)
{
	if (list->count == 0)
		return 0;
	*nets_r = calloc(list->count, sizeof(**nets_r));
	if (*nets_r == NULL)
		abort();
	for (size_t i = 0; i < list->count; i++) {
		if (cidr_parse(list->items[i], &(*nets_r)[i]) < 0)
			return fail_at(ld, config_setting_get_member(root, key),
				       "'%s': \"%.60s\" is not an address or network "
				       "(e.g. \"10.0.0.0/8\", \"::1\")",
				       key, list->items[i]);
		(*count_r)++;
	}
	return 0;
}

static int check_globals(struct loader *ld, struct config *cfg, const config_setting_t *root)
{
	if (cfg->hostname == NULL) {
		char host[256];

		if (gethostname(host, sizeof(host)) < 0) {
			return fail_at(ld, NULL, "cannot get the host name (%s): set 'hostname'",
				       strerror(errno));
		}
		host[sizeof(host) - 1] = '\0';
		cfg->hostname = xstrdup(host);
	}
	if (cfg->hostname[0] == '\0')
		return fail_at(ld, config_setting_get_member(root, "hostname"),
			       "'hostname' must not be empty");
	if (cfg->subaddress_separator[0] == '\0')
		return fail_at(ld, config_setting_get_member(root, "subaddress_separator"),
			       "'subaddress_separator' must not be empty");
	if (!in_list(log_levels, cfg->log_level))
		return fail_at(ld, config_setting_get_member(root, "log_level"),
			       "'log_level' must be error, warn, info or debug (got \"%.40s\")",
			       cfg->log_level);
	if (strcmp(cfg->log_format, "text") != 0 && strcmp(cfg->log_format, "json") != 0)
		return fail_at(ld, config_setting_get_member(root, "log_format"),
			       "'log_format' must be text or json (got \"%.40s\")", cfg->log_format);
	if (!in_list(syslog_facilities, cfg->syslog_facility))
		return fail_at(ld, config_setting_get_member(root, "syslog_facility"),
			       "'syslog_facility' must be mail, daemon, user or local0..local7 "
			       "(got \"%.40s\")", cfg->syslog_facility);
	if (parse_networks(ld, root, "allow_clients", &cfg->allow_clients, &cfg->allow,
			   &cfg->allow_count) < 0 ||
	    parse_networks(ld, root, "trusted_networks", &cfg->trusted_networks, &cfg->trusted,
			   &cfg->trusted_count) < 0)
		return -1;
	if (cfg->tls_cert_file != NULL || cfg->tls_key_file != NULL) {
		char error[512];
		cfg->tls_ctx = tls_server_context_new(cfg->tls_cert_file, cfg->tls_key_file,
						      cfg->tls_client_ca_file,
						      cfg->tls_require_client_cert, error, sizeof(error));
		if (cfg->tls_ctx == NULL)
			return fail_at(ld, config_setting_get_member(root, cfg->tls_cert_file
									    ? "tls_cert_file"
									    : "tls_key_file"),
				       "%s", error);
	} else if (cfg->tls_required) {
		return fail_at(ld, config_setting_get_member(root, "tls_required"),
			       "'tls_required' needs tls_cert_file and tls_key_file");
	}
	return 0;
}

static void known_drivers(char *buf, size_t size)
{
	size_t len = 0;

	buf[0] = '\0';
	for (size_t i = 0; backend_drivers[i] != NULL && len < size; i++) {
		int n = snprintf(buf + len, size - len, "%s%s", i == 0 ? "" : ", ",
				 backend_drivers[i]->name);

		if (n < 0)
			break;
		len += (size_t)n;
	}
}

static void backend_release(struct backend_instance *inst)
{
	if (inst->pool != NULL)
		pool_free(&inst->pool);
	if (inst->driver != NULL) {
		inst->driver->close(inst->state);
		conf_release(inst->driver->keys, inst->settings);
	}
	conf_release(backend_common_keys, &inst->common);
	free(inst->settings);
	free(inst->name);
	memset(inst, 0, sizeof(*inst));
}

/* One block of `backends`: common + driver keys, then the driver's open(). inst is filled only
 * on success, so a failure here leaves nothing for config_unref to close. */
static int load_backend(struct loader *ld, const config_setting_t *b,
			struct backend_instance *inst)
{
	const char *name = config_setting_name(b);
	const config_setting_t *d = config_setting_get_member(b, "driver");
	struct backend_instance tmp = { 0 };
	const struct backend_driver *driver;
	char section[128], msg[512], known[128];

	known_drivers(known, sizeof(known));
	if (name[strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
			      "0123456789_-")] != '\0')
		return fail_at(ld, b, "backend name '%s' may only use letters, digits, '_' and '-'",
			       name);
	if (!config_setting_is_group(b))
		return fail_at(ld, b, "backend '%s' must be a group: %s: { driver = \"...\"; ... };",
			       name, name);
	if (d == NULL)
		return fail_at(ld, b, "backend '%s': 'driver' is required (known: %s)", name, known);
	if (config_setting_type(d) != CONFIG_TYPE_STRING)
		return fail_at(ld, d, "backend '%s': 'driver' must be a string (known: %s)", name,
			       known);
	driver = backend_driver_find(config_setting_get_string(d));
	if (driver == NULL)
		return fail_at(ld, d, "backend '%s': unknown driver '%s' (known: %s)", name,
			       config_setting_get_string(d), known);

	snprintf(section, sizeof(section), "backend '%s'", name);
	tmp.name = xstrdup(name);
	/* calloc(1, 0) may return NULL: a settings-less driver still gets a unique pointer. */
	tmp.settings = calloc(1, driver->settings_size > 0 ? driver->settings_size : 1);
	if (tmp.settings == NULL)
		abort();
	if (conf_defaults(backend_common_keys, &tmp.common, msg, sizeof(msg)) < 0 ||
	    conf_defaults(driver->keys, tmp.settings, msg, sizeof(msg)) < 0) {
		fail_at(ld, b, "%s: %s", section, msg);
		goto fail;
	}
	if (driver->default_concurrency > 0)
		tmp.common.concurrency = driver->default_concurrency;
	struct conf_table tables[] = {
		{ backend_common_keys, &tmp.common },
		{ driver->keys, tmp.settings },
	};
	if (apply_group(ld, b, tables, 2, section, false, NULL) < 0)
		goto fail;
	msg[0] = '\0';
	if (driver->open(tmp.settings, tmp.name, &tmp.state, msg, sizeof(msg)) < 0) {
		fail_at(ld, b, "%s: %s", section, msg[0] != '\0' ? msg : "cannot open");
		goto fail;
	}
	tmp.driver = driver;
	*inst = tmp;
	return 0;
fail:
	/* Not opened: release the settings without close(). */
	conf_release(driver->keys, tmp.settings);
	conf_release(backend_common_keys, &tmp.common);
	free(tmp.settings);
	free(tmp.name);
	return -1;
}

static int load_backends(struct loader *ld, struct config *cfg, const config_setting_t *root)
{
	const config_setting_t *bs = config_setting_get_member(root, "backends");
	int n;

	if (bs == NULL)
		return fail_at(ld, NULL, "no backends: define at least one, e.g. backends: { local: "
				     "{ driver = \"maildir\"; path = \"...\"; }; };");
	if (!config_setting_is_group(bs))
		return fail_at(ld, bs, "'backends' must be a group: backends: { NAME: { driver = "
				       "\"...\"; ... }; };");
	n = config_setting_length(bs);
	if (n == 0)
		return fail_at(ld, bs, "'backends' is empty: define at least one backend");
	cfg->backends = calloc((size_t)n, sizeof(*cfg->backends));
	if (cfg->backends == NULL)
		abort();
	for (int i = 0; i < n; i++) {
		if (load_backend(ld, config_setting_get_elem(bs, (unsigned)i),
				 &cfg->backends[cfg->backend_count]) < 0)
			return -1;
		cfg->backend_count++;
	}
	return 0;
}

static void defined_backends(const struct config *cfg, char *buf, size_t size)
{
	size_t len = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < cfg->backend_count && len < size; i++) {
		int n = snprintf(buf + len, size - len, "%s%s", i == 0 ? "" : ", ",
				 cfg->backends[i].name);

		if (n < 0)
			break;
		len += (size_t)n;
	}
}

/* Route number i (1-based in messages, as an admin counts): keys, backend names, router. */
static int load_route(struct loader *ld, struct config *cfg, const config_setting_t *r, size_t i)
{
	struct config_route *route = &cfg->routes[cfg->route_count];
	const config_setting_t *deliver = config_setting_get_member(r, "deliver");
	char section[32], msg[512], defined[256];
	unsigned *targets;
	int ret = -1;

	snprintf(section, sizeof(section), "route %zu", i + 1);
	if (!config_setting_is_group(r))
		return fail_at(ld, r, "%s must be a group: { match = \"...\"; deliver = [ ... ]; }",
			       section);
	/* Counted before filling, so config_unref frees a half-read route too. */
	cfg->route_count++;
	struct conf_table table = { config_route_keys, route };
	if (apply_group(ld, r, &table, 1, section, false, NULL) < 0)
		return -1;
	if (route->match == NULL)
		return fail_at(ld, r, "%s: 'match' is required", section);
	if (route->deliver.count == 0)
		return fail_at(ld, deliver != NULL ? deliver : r,
			       "%s: 'deliver' must name at least one backend", section);

	targets = calloc(route->deliver.count, sizeof(*targets));
	if (targets == NULL)
		abort();
	for (size_t t = 0; t < route->deliver.count; t++) {
		int idx = config_backend_index(cfg, route->deliver.items[t]);

		if (idx < 0) {
			defined_backends(cfg, defined, sizeof(defined));
			fail_at(ld, deliver, "%s: unknown backend '%s' (defined: %s)", section,
				route->deliver.items[t], defined);
			goto out;
		}
		for (size_t u = 0; u < t; u++) {
			if (targets[u] == (unsigned)idx) {
				fail_at(ld, deliver, "%s: backend '%s' is listed twice", section,
					route->deliver.items[t]);
				goto out;
			}
		}
		targets[t] = (unsigned)idx;
	}
	msg[0] = '\0';
	if (router_add(cfg->router, route->match, targets, route->deliver.count, msg,
		       sizeof(msg)) < 0) {
		fail_at(ld, config_setting_get_member(r, "match"), "%s: %s", section,
			msg[0] != '\0' ? msg : "bad pattern");
		goto out;
	}
	ret = 0;
out:
	free(targets);
	return ret;
}

static int load_routes(struct loader *ld, struct config *cfg, const config_setting_t *root)
{
	const config_setting_t *rs = config_setting_get_member(root, "routes");
	int n;

	if (rs == NULL)
		return fail_at(ld, NULL, "no routes: define at least one, e.g. routes = ( { match "
				     "= \"*@example.test\"; deliver = [ \"local\" ]; } );");
	if (config_setting_type(rs) != CONFIG_TYPE_LIST)
		return fail_at(ld, rs, "'routes' must be a list: routes = ( { match = \"...\"; "
				       "deliver = [ ... ]; }, ... );");
	n = config_setting_length(rs);
	if (n == 0)
		return fail_at(ld, rs, "'routes' is empty: define at least one route");
	cfg->router = router_new();
	cfg->routes = calloc((size_t)n, sizeof(*cfg->routes));
	if (cfg->router == NULL || cfg->routes == NULL)
		abort();
	for (int i = 0; i < n; i++) {
		if (load_route(ld, cfg, config_setting_get_elem(rs, (unsigned)i), (size_t)i) < 0)
			return -1;
	}
	return 0;
}

struct config *config_load(const char *path, char *error_r, size_t error_size)
{
	static const char *const reserved[] = { "backends", "routes", NULL };
	struct loader ld = { path, error_r, error_size };
	struct conf_table globals;
	struct config *cfg = NULL;
	config_t lc;
	char *dir;
	FILE *f;

	/* libconfig reports a missing file as a bare "file I/O error": say which and why. */
	f = fopen(path, "r");
	if (f == NULL) {
		snprintf(error_r, error_size, "%s: cannot read: %s", path, strerror(errno));
		return NULL;
	}
	fclose(f);

	config_init(&lc);
	/* @include "x.conf" is relative to the including file's directory, not our cwd. */
	dir = xstrdup(path);
	config_set_include_dir(&lc, dirname(dir));
	if (!config_read_file(&lc, path)) {
		const char *file = config_error_file(&lc) != NULL ? config_error_file(&lc) : path;

		if (config_error_line(&lc) > 0)
			snprintf(error_r, error_size, "%s:%d: %s", file, config_error_line(&lc),
				 config_error_text(&lc));
		else
			snprintf(error_r, error_size, "%s: %s", file, config_error_text(&lc));
		goto fail;
	}

	cfg = calloc(1, sizeof(*cfg));
	if (cfg == NULL)
		abort();
	cfg->refcount = 1;
	cfg->path = xstrdup(path);
	if (conf_defaults(config_global_keys, cfg, error_r, error_size) < 0)
		goto fail;
	globals = (struct conf_table){ config_global_keys, cfg };
	if (apply_group(&ld, config_root_setting(&lc), &globals, 1, "the global section", true,
			reserved) < 0 ||
	    check_globals(&ld, cfg, config_root_setting(&lc)) < 0 ||
	    load_backends(&ld, cfg, config_root_setting(&lc)) < 0 ||
	    load_routes(&ld, cfg, config_root_setting(&lc)) < 0)
		goto fail;

	for (size_t i = 0; i < cfg->backend_count; i++) {
		const struct backend_instance *b = &cfg->backends[i];
		if (b->driver->uses_sha256 == NULL || b->driver->uses_sha256(b->state))
			cfg->need_sha256 = true;
	}
	config_destroy(&lc);
	free(dir);
	return cfg;
fail:
	config_destroy(&lc);
	free(dir);
	config_unref(&cfg);
	return NULL;
}

struct config *config_ref(struct config *cfg)
{
	/* Atomic: a worker thread may hold the config of the transaction it serves. */
	__atomic_add_fetch(&cfg->refcount, 1, __ATOMIC_RELAXED);
	return cfg;
}

void config_unref(struct config **cfgp)
{
	struct config *cfg = *cfgp;

	if (cfg == NULL)
		return;
	*cfgp = NULL;
	if (__atomic_sub_fetch(&cfg->refcount, 1, __ATOMIC_ACQ_REL) > 0)
		return;
	/* Close in reverse order of opening. */
	for (size_t i = cfg->backend_count; i-- > 0;)
		backend_release(&cfg->backends[i]);
	free(cfg->backends);
	if (cfg->router != NULL)
		router_free(&cfg->router);
	for (size_t i = 0; i < cfg->route_count; i++)
		conf_release(config_route_keys, &cfg->routes[i]);
	free(cfg->routes);
	if (cfg->tls_ctx != NULL)
		tls_context_free(cfg->tls_ctx);
	free(cfg->allow);
	free(cfg->trusted);
	conf_release(config_global_keys, cfg);
	free(cfg->path);
	free(cfg);
}

int config_backend_index(const struct config *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->backend_count; i++) {
		if (strcmp(cfg->backends[i].name, name) == 0)
			return (int)i;
	}
	return -1;
}

void config_print(FILE *out, const struct config *cfg)
{
	fprintf(out, "# lmtpgw effective configuration");
	if (cfg->path != NULL)
		fprintf(out, " (from %s)", cfg->path);
	fputs("\n\n", out);
	conf_print(out, config_global_keys, cfg, 0);

	fputs("\nbackends: {\n", out);
	for (size_t i = 0; i < cfg->backend_count; i++) {
		const struct backend_instance *inst = &cfg->backends[i];

		fprintf(out, "  %s: {\n", inst->name);
		conf_print(out, backend_common_keys, &inst->common, 4);
		conf_print(out, inst->driver->keys, inst->settings, 4);
		fputs("  };\n", out);
	}
	fputs("};\n\nroutes = (\n", out);
	for (size_t i = 0; i < cfg->route_count; i++) {
		fputs("  {\n", out);
		conf_print(out, config_route_keys, &cfg->routes[i], 4);
		fputs(i + 1 < cfg->route_count ? "  },\n" : "  }\n", out);
	}
	fputs(");\n", out);
}
