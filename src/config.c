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
#include "router.h"

#define GIB (1024LL * 1024 * 1024)

/* Allowed words of the enum keys, in the order of their values (log_levels: enum log_level). */
static const char *const log_levels[] = { "error", "warn", "info", "debug", NULL };
static const char *const log_formats[] = { "text", "json", NULL };
const char *const config_syslog_facilities[] = {
	"auto", "mail", "daemon", "user", "local0", "local1", "local2", "local3",
	"local4", "local5", "local6", "local7", NULL,
};

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
	{ "dedupe_db", CONF_STRING, offsetof(struct config, dedupe_db), NULL, 1, 0,
	  "SQLite file remembering the copies stored in Maildirs and IMAP mailboxes, so an MTA's "
	  "retry of the same message for the same recipient stores no second copy; unset: off" },
	{ "dedupe_ttl", CONF_DURATION, offsetof(struct config, dedupe_ttl_ms), "5d", 60000,
	  90LL * 86400000, "how long dedupe_db remembers a stored copy (Postfix retries for "
	  "maximal_queue_lifetime, 5d)" },
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
	{ "log_level", CONF_ENUM, offsetof(struct config, log_level), "info", 0, 0,
	  "least important messages logged", log_levels },
	{ "log_format", CONF_ENUM, offsetof(struct config, log_format), "text", 0, 0,
	  "text (key=value lines) or json (one JSON object per line, same fields)", log_formats },
	{ "syslog_facility", CONF_ENUM, offsetof(struct config, syslog_facility), "auto", 0, 0,
	  "log to syslog with this facility; auto: mail when detached (no -f), else stderr",
	  config_syslog_facilities },
	{ "syslog_socket", CONF_STRING, offsetof(struct config, syslog_socket), "/dev/log", 1, 0,
	  "the syslog daemon's unix datagram socket" },
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
	  "the targets of every matching recipient: a backend name, or a list of backend names "
	  "(required targets) and groups { backend; required; fallback; }" },
	{ NULL, 0, 0, NULL, 0, 0, NULL },
};

const struct conf_key config_route_target_keys[] = {
	{ "backend", CONF_STRING, offsetof(struct config_route_target, backend), NULL, 1, 0,
	  "in a deliver group: the backend of the target (required)" },
	{ "required", CONF_BOOL, offsetof(struct config_route_target, required), "true", 1, 0,
	  "in a deliver group: true, the recipient's reply follows this target; false, best-effort: "
	  "its failure is logged and counted, the reply does not change" },
	{ "fallback", CONF_STRING, offsetof(struct config_route_target, fallback), NULL, 1, 0,
	  "in a deliver group: backend that stores the message when this target fails (any "
	  "non-2xx result, or its circuit breaker open); the result of the fallback then stands "
	  "for the target" },
	{ NULL, 0, 0, NULL, 0, 0, NULL },
};


/* A list of "10.0.0.0/8", "::1" ... into *nets_r (NULL when the list is empty). */
static int parse_networks(struct conf_loader *ld, const config_setting_t *root, const char *key,
			  const struct conf_strlist *list, struct cidr **nets_r, size_t *count_r)
{
	if (list->count == 0)
		return 0;
	*nets_r = calloc(list->count, sizeof(**nets_r));
	if (*nets_r == NULL)
		abort();
	for (size_t i = 0; i < list->count; i++) {
		if (cidr_parse(list->items[i], &(*nets_r)[i]) < 0)
			return conf_fail_at(ld, config_setting_get_member(root, key),
				       "'%s': \"%.60s\" is not an address or network "
				       "(e.g. \"10.0.0.0/8\", \"::1\")",
				       key, list->items[i]);
		(*count_r)++;
	}
	return 0;
}

static int check_globals(struct conf_loader *ld, struct config *cfg, const config_setting_t *root)
{
	if (cfg->hostname == NULL) {
		char host[256];

		if (gethostname(host, sizeof(host)) < 0) {
			return conf_fail_at(ld, NULL, "cannot get the host name (%s): set 'hostname'",
				       strerror(errno));
		}
		host[sizeof(host) - 1] = '\0';
		cfg->hostname = conf_xstrdup(host);
	}
	if (cfg->hostname[0] == '\0')
		return conf_fail_at(ld, config_setting_get_member(root, "hostname"),
			       "'hostname' must not be empty");
	if (cfg->subaddress_separator[0] == '\0')
		return conf_fail_at(ld, config_setting_get_member(root, "subaddress_separator"),
			       "'subaddress_separator' must not be empty");
	/* 108 octets of sun_path, NUL included; an absolute path, as the daemon's socket is. */
	if (cfg->syslog_socket[0] != '/' || strlen(cfg->syslog_socket) > 107)
		return conf_fail_at(ld, config_setting_get_member(root, "syslog_socket"),
			       "'syslog_socket' must be an absolute path of at most 107 octets");
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
			return conf_fail_at(ld, config_setting_get_member(root, cfg->tls_cert_file
									    ? "tls_cert_file"
									    : "tls_key_file"),
				       "%s", error);
	} else if (cfg->tls_required) {
		return conf_fail_at(ld, config_setting_get_member(root, "tls_required"),
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
	if (inst->driver != NULL)
		conf_release(inst->driver->keys, inst->settings);
	conf_release(backend_common_keys, &inst->common);
	free(inst->settings);
	free(inst->name);
	memset(inst, 0, sizeof(*inst));
}

/* One block of `backends`: common + driver keys (the driver is opened by runtime.c). inst is
 * filled only on success, so a failure here leaves nothing half-filled for config_unref. */
static int load_backend(struct conf_loader *ld, const config_setting_t *b,
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
		return conf_fail_at(ld, b, "backend name '%s' may only use letters, digits, '_' and '-'",
			       name);
	if (!config_setting_is_group(b))
		return conf_fail_at(ld, b, "backend '%s' must be a group: %s: { driver = \"...\"; ... };",
			       name, name);
	if (d == NULL)
		return conf_fail_at(ld, b, "backend '%s': 'driver' is required (known: %s)", name, known);
	if (config_setting_type(d) != CONFIG_TYPE_STRING)
		return conf_fail_at(ld, d, "backend '%s': 'driver' must be a string (known: %s)", name,
			       known);
	driver = backend_driver_find(config_setting_get_string(d));
	if (driver == NULL)
		return conf_fail_at(ld, d, "backend '%s': unknown driver '%s' (known: %s)", name,
			       config_setting_get_string(d), known);

	snprintf(section, sizeof(section), "backend '%s'", name);
	tmp.name = conf_xstrdup(name);
	/* calloc(1, 0) may return NULL: a settings-less driver still gets a unique pointer. */
	tmp.settings = calloc(1, driver->settings_size > 0 ? driver->settings_size : 1);
	if (tmp.settings == NULL)
		abort();
	if (conf_defaults(backend_common_keys, &tmp.common, msg, sizeof(msg)) < 0 ||
	    conf_defaults(driver->keys, tmp.settings, msg, sizeof(msg)) < 0) {
		conf_fail_at(ld, b, "%s: %s", section, msg);
		goto fail;
	}
	if (driver->default_concurrency > 0)
		tmp.common.concurrency = driver->default_concurrency;
	struct conf_table tables[] = {
		{ backend_common_keys, &tmp.common },
		{ driver->keys, tmp.settings },
	};
	if (conf_apply_group(ld, b, tables, 2, section, false, NULL) < 0)
		goto fail;
	tmp.driver = driver;
	tmp.line = config_setting_source_line(b);
	*inst = tmp;
	return 0;
fail:
	conf_release(driver->keys, tmp.settings);
	conf_release(backend_common_keys, &tmp.common);
	free(tmp.settings);
	free(tmp.name);
	return -1;
}

static int load_backends(struct conf_loader *ld, struct config *cfg, const config_setting_t *root)
{
	const config_setting_t *bs = config_setting_get_member(root, "backends");
	int n;

	if (bs == NULL)
		return conf_fail_at(ld, NULL, "no backends: define at least one, e.g. backends: { local: "
				     "{ driver = \"maildir\"; path = \"...\"; }; };");
	if (!config_setting_is_group(bs))
		return conf_fail_at(ld, bs, "'backends' must be a group: backends: { NAME: { driver = "
				       "\"...\"; ... }; };");
	n = config_setting_length(bs);
	if (n == 0)
		return conf_fail_at(ld, bs, "'backends' is empty: define at least one backend");
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

/* The setting of target t of a deliver list (the list itself when it is one string): for
 * messages at the target's own line. */
static const config_setting_t *deliver_entry(const config_setting_t *deliver, size_t t)
{
	if (config_setting_type(deliver) == CONFIG_TYPE_STRING)
		return deliver;
	return config_setting_get_elem(deliver, (unsigned)t);
}

/* One entry of `deliver`: a backend name (a required target without fallback) or a group
 * (config_route_target_keys). Fills *target and the name list. */
static int load_target(struct conf_loader *ld, struct config *cfg, struct config_route *route,
		       const config_setting_t *e, size_t t, const char *section)
{
	struct config_route_target entry;
	struct route_target *target = &route->targets[t];
	char where[64], msg[512], defined[256];
	int ret = -1;

	memset(&entry, 0, sizeof(entry));
	if (conf_defaults(config_route_target_keys, &entry, msg, sizeof(msg)) < 0)
		return conf_fail_at(ld, e, "%s: %s", section, msg);
	snprintf(where, sizeof(where), "%s, target %zu", section, t + 1);
	if (config_setting_type(e) == CONFIG_TYPE_STRING) {
		entry.backend = conf_xstrdup(config_setting_get_string(e));
	} else if (config_setting_is_group(e)) {
		struct conf_table table = { config_route_target_keys, &entry };
		if (conf_apply_group(ld, e, &table, 1, where, false, NULL) < 0)
			goto out;
		if (entry.backend == NULL) {
			conf_fail_at(ld, e, "%s: 'backend' is required in a target group", where);
			goto out;
		}
	} else {
		/* libconfig's [ ] arrays hold only strings: a list with groups is written ( ). */
		conf_fail_at(ld, e, "%s: a target is a backend name or a group { backend = \"name\"; "
			     "required = false; fallback = \"name\"; } (a list with groups is written "
			     "with ( ), not [ ])", where);
		goto out;
	}
	defined_backends(cfg, defined, sizeof(defined));
	int idx = config_backend_index(cfg, entry.backend);
	if (idx < 0) {
		conf_fail_at(ld, e, "%s: unknown backend '%s' (defined: %s)", section, entry.backend,
			     defined);
		goto out;
	}
	for (size_t u = 0; u < t; u++) {
		if (route->targets[u].backend == (unsigned)idx) {
			conf_fail_at(ld, e, "%s: backend '%s' is listed twice", section, entry.backend);
			goto out;
		}
	}
	target->backend = (unsigned)idx;
	target->required = entry.required;
	target->fallback = -1;
	if (entry.fallback != NULL) {
		int fb = config_backend_index(cfg, entry.fallback);
		if (fb < 0) {
			conf_fail_at(ld, e, "%s: unknown fallback backend '%s' of '%s' (defined: %s)",
				     section, entry.fallback, entry.backend, defined);
			goto out;
		}
		if (fb == idx) {
			conf_fail_at(ld, e, "%s: '%s' cannot be its own fallback", section,
				     entry.backend);
			goto out;
		}
		target->fallback = fb;
	}
	route->deliver.items[t] = entry.backend;
	entry.backend = NULL;
	route->deliver.count++;
	ret = 0;
out:
	conf_release(config_route_target_keys, &entry);
	return ret;
}

/* `deliver`: a backend name, or a list (or array) of backend names and target groups. Checks
 * what needs the whole list: a fallback is no target of the same route and serves one target
 * only (either would store one recipient's message twice in one backend), and one target at
 * least is required (else a 250 could be given with nothing stored). */
static int load_deliver(struct conf_loader *ld, struct config *cfg, struct config_route *route,
			const config_setting_t *r, const char *section)
{
	const config_setting_t *deliver = config_setting_get_member(r, "deliver");
	int type = deliver != NULL ? config_setting_type(deliver) : CONFIG_TYPE_NONE;
	size_t n;
	bool any_required = false;

	if (deliver == NULL)
		return conf_fail_at(ld, r, "%s: 'deliver' must name at least one backend", section);
	if (type == CONFIG_TYPE_STRING)
		n = 1;
	else if (type == CONFIG_TYPE_ARRAY || type == CONFIG_TYPE_LIST)
		n = (size_t)config_setting_length(deliver);
	else
		return conf_fail_at(ld, deliver, "%s: 'deliver' must be a backend name or a list: "
				    "( \"name\", { backend = \"name\"; required = false; fallback = "
				    "\"name\"; }, ... )", section);
	if (n == 0)
		return conf_fail_at(ld, deliver, "%s: 'deliver' must name at least one backend",
				    section);
	route->targets = calloc(n, sizeof(*route->targets));
	route->deliver.items = calloc(n, sizeof(*route->deliver.items));
	if (route->targets == NULL || route->deliver.items == NULL)
		abort();
	for (size_t t = 0; t < n; t++) {
		if (load_target(ld, cfg, route, deliver_entry(deliver, t), t, section) < 0)
			return -1;
		any_required = any_required || route->targets[t].required;
	}
	for (size_t t = 0; t < n; t++) {
		int fb = route->targets[t].fallback;
		if (fb < 0)
			continue;
		for (size_t u = 0; u < n; u++) {
			if (route->targets[u].backend == (unsigned)fb)
				return conf_fail_at(ld, deliver_entry(deliver, t),
						    "%s: fallback '%s' of '%s' is also a target of this "
						    "route (it would store the message twice)",
						    section, cfg->backends[fb].name,
						    route->deliver.items[t]);
			if (u < t && route->targets[u].fallback == fb)
				return conf_fail_at(ld, deliver_entry(deliver, t),
						    "%s: '%s' is the fallback of both '%s' and '%s' (it "
						    "would store the message twice)",
						    section, cfg->backends[fb].name,
						    route->deliver.items[u], route->deliver.items[t]);
		}
	}
	if (!any_required)
		return conf_fail_at(ld, deliver, "%s: no required target: at least one target of a "
				    "route must be required, or a 250 could be given with nothing "
				    "stored", section);
	return 0;
}

/* Route number i (1-based in messages, as an admin counts): keys, targets, router. */
static int load_route(struct conf_loader *ld, struct config *cfg, const config_setting_t *r, size_t i)
{
	static const char *const read_here[] = { "deliver", NULL };
	struct config_route *route = &cfg->routes[cfg->route_count];
	char section[32], msg[512];

	snprintf(section, sizeof(section), "route %zu", i + 1);
	if (!config_setting_is_group(r))
		return conf_fail_at(ld, r, "%s must be a group: { match = \"...\"; deliver = [ ... ]; }",
			       section);
	/* Counted before filling, so config_unref frees a half-read route too. */
	cfg->route_count++;
	struct conf_table table = { config_route_keys, route };
	if (conf_apply_group(ld, r, &table, 1, section, false, read_here) < 0)
		return -1;
	if (route->match == NULL)
		return conf_fail_at(ld, r, "%s: 'match' is required", section);
	if (load_deliver(ld, cfg, route, r, section) < 0)
		return -1;
	msg[0] = '\0';
	if (router_add(cfg->router, route->match, route->targets, route->deliver.count, msg,
		       sizeof(msg)) < 0)
		return conf_fail_at(ld, config_setting_get_member(r, "match"), "%s: %s", section,
				    msg[0] != '\0' ? msg : "bad pattern");
	return 0;
}

static int load_routes(struct conf_loader *ld, struct config *cfg, const config_setting_t *root)
{
	const config_setting_t *rs = config_setting_get_member(root, "routes");
	int n;

	if (rs == NULL)
		return conf_fail_at(ld, NULL, "no routes: define at least one, e.g. routes = ( { match "
				     "= \"*@example.test\"; deliver = [ \"local\" ]; } );");
	if (config_setting_type(rs) != CONFIG_TYPE_LIST)
		return conf_fail_at(ld, rs, "'routes' must be a list: routes = ( { match = \"...\"; "
				       "deliver = [ ... ]; }, ... );");
	n = config_setting_length(rs);
	if (n == 0)
		return conf_fail_at(ld, rs, "'routes' is empty: define at least one route");
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
	struct conf_loader ld = { path, error_r, error_size };
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
	dir = conf_xstrdup(path);
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
	cfg->path = conf_xstrdup(path);
	if (conf_defaults(config_global_keys, cfg, error_r, error_size) < 0)
		goto fail;
	globals = (struct conf_table){ config_global_keys, cfg };
	if (conf_apply_group(&ld, config_root_setting(&lc), &globals, 1, "the global section", true,
			reserved) < 0 ||
	    check_globals(&ld, cfg, config_root_setting(&lc)) < 0 ||
	    load_backends(&ld, cfg, config_root_setting(&lc)) < 0 ||
	    load_routes(&ld, cfg, config_root_setting(&lc)) < 0)
		goto fail;

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
	for (size_t i = 0; i < cfg->route_count; i++) {
		conf_release(config_route_keys, &cfg->routes[i]);
		free(cfg->routes[i].targets);
	}
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

/* A route's deliver list as it reads back to the same targets: an array of names when every
 * target is required without fallback (as routes were written before roles existed), else a
 * list in which those stay names and the others are groups with their role and fallback. */
static void print_deliver(FILE *out, const struct config *cfg, const struct config_route *route)
{
	bool plain = true;

	for (size_t t = 0; t < route->deliver.count; t++)
		plain = plain && route->targets[t].required && route->targets[t].fallback < 0;
	fputs(plain ? "    deliver = [" : "    deliver = (", out);
	for (size_t t = 0; t < route->deliver.count; t++) {
		const struct route_target *target = &route->targets[t];

		fputs(t == 0 ? " " : ", ", out);
		if (target->required && target->fallback < 0) {
			conf_print_string(out, route->deliver.items[t]);
			continue;
		}
		fputs("{ backend = ", out);
		conf_print_string(out, route->deliver.items[t]);
		fprintf(out, "; required = %s;", target->required ? "true" : "false");
		if (target->fallback >= 0) {
			fputs(" fallback = ", out);
			conf_print_string(out, cfg->backends[target->fallback].name);
			fputc(';', out);
		}
		fputs(" }", out);
	}
	fputs(plain ? " ];\n" : " );\n", out);
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
		for (const struct conf_key *k = config_route_keys; k->name != NULL; k++) {
			struct conf_key one[2];

			if (strcmp(k->name, "deliver") == 0) {
				print_deliver(out, cfg, &cfg->routes[i]);
				continue;
			}
			memset(one, 0, sizeof(one));
			one[0] = *k;
			conf_print(out, one, &cfg->routes[i], 4);
		}
		fputs(i + 1 < cfg->route_count ? "  },\n" : "  }\n", out);
	}
	fputs(");\n", out);
}
