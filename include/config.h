/*
 * config - the configuration file (libconfig syntax), checked against declarative key tables.
 *
 * Every key lmtpgw understands is a row of a `struct conf_key` table: name, type, default,
 * bounds, the offset of its field, and a one-line description. The global keys live in
 * config.c; each driver brings its own table for its backend block (backend.h). Loading fills
 * the structs from the tables, refuses unknown keys, wrong types and values out of bounds with
 * "file:line: message", opens every backend, and builds the router. `lmtpgw -n` prints the
 * effective configuration from the same tables, and a test checks that every key is documented.
 *
 * A loaded configuration is immutable and reference-counted: a transaction keeps the one it
 * started with, and SIGHUP swaps in a new one between transactions.
 *
 * Error contract: config_load() returns NULL and writes "file:line: message" into error_r.
 */
#ifndef LMTPGW_CONFIG_H
#define LMTPGW_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct backend_instance;
struct cidr;
struct router;

enum conf_type {
	CONF_STRING,      /* char *; NULL default allowed */
	CONF_BOOL,        /* bool */
	CONF_INT,         /* long long */
	CONF_SIZE,        /* long long bytes; 1048576, "512K", "50M", "2G" */
	CONF_DURATION,    /* long long milliseconds; 30 (seconds), "500ms", "30s", "5m", "1h" */
	CONF_STRING_LIST, /* struct conf_strlist; a string or a list of strings */
};

struct conf_strlist {
	char **items;
	size_t count;
};

struct conf_key {
	const char *name;
	enum conf_type type;
	size_t offset;          /* offsetof the field in the struct the table fills */
	const char *def;        /* default in config-file syntax ("300s", "true", "25M"), NULL: none */
	long long min, max;     /* bounds for INT/SIZE/DURATION (in bytes/ms); min > max: unbounded */
	const char *doc;        /* one-line description (docs and `lmtpgw -n`) */
};

/* Fill base from the table's defaults. Returns -1 only if a default itself does not parse
 * (a bug, caught by the unit tests). */
int conf_defaults(const struct conf_key *keys, void *base, char *error_r, size_t error_size);
/* Free the strings and lists the table filled in base. */
void conf_release(const struct conf_key *keys, void *base);
/* Parse a value given as text (as a default is) into its field; used by conf_defaults and by
 * the `--set key=value` style overrides. Replaces (and frees) the field's previous value, so
 * base must start zeroed. INT text is read by strtoll base 0 ("0660" is octal); a
 * STRING_LIST text is split on commas. */
int conf_parse_value(const struct conf_key *key, const char *text, void *base, char *error_r,
		     size_t error_size);
/* Print "name = value;" lines for every key of the table, values as config-file syntax. */
void conf_print(FILE *out, const struct conf_key *keys, const void *base, int indent);
/* Parse "25M" etc.; return -1 on syntax error or overflow. */
int conf_parse_size(const char *text, long long *bytes_r);
int conf_parse_duration(const char *text, long long *ms_r);

/* One entry of `routes`, as configured (the router holds the compiled form; config_print
 * writes these back). */
struct config_route {
	char *match;
	struct conf_strlist deliver;   /* backend names */
};

struct config {
	int refcount;
	char *path;                    /* the file this came from */

	/* global keys (table in config.c) */
	char *hostname;
	struct conf_strlist listen;
	char *unix_socket_owner;
	char *unix_socket_group;
	long long unix_socket_mode;    /* octal in the file: 0660 */
	long long max_connections;
	long long max_connections_per_client; /* 0: no limit */
	struct conf_strlist trusted_networks;
	long long max_message_size;
	long long max_recipients;
	long long max_command_line;
	long long max_errors;
	long long max_received_headers;
	long long timeout_greeting_ms;
	long long timeout_command_ms;
	long long timeout_data_ms;
	long long min_data_rate;       /* bytes/s during DATA and BDAT; 0: idle timeout only */
	long long delivery_deadline_ms;
	long long spool_memory_max;
	char *spool_dir;
	char *subaddress_separator;
	bool lowercase_local_part;
	bool delivered_to;
	bool soft_bounce;
	bool xforward;
	bool dsn;
	char *metrics_listen;
	char *tls_cert_file;
	char *tls_key_file;
	char *tls_client_ca_file;
	bool tls_require_client_cert;
	bool tls_required;
	struct conf_strlist allow_clients;
	bool run_as_root;
	char *log_level;
	char *log_format;
	char *syslog_facility;
	char *user;
	char *group;

	/* backends and routes */
	void *tls_ctx;                 /* SSL_CTX * when tls_cert_file is set */
	bool need_sha256;              /* some backend uses the content digest */
	struct cidr *allow;            /* parsed allow_clients; allow_count == 0: everyone */
	size_t allow_count;
	struct cidr *trusted;          /* parsed trusted_networks */
	size_t trusted_count;

	struct backend_instance *backends; /* backend_count entries */
	size_t backend_count;
	struct router *router;
	struct config_route *routes;   /* route_count entries, in file order */
	size_t route_count;
};

/* The table of global keys (for docs checks and -n). */
extern const struct conf_key config_global_keys[];
/* The keys of one `routes` entry (fills struct config_route). */
extern const struct conf_key config_route_keys[];

/* Load and check path. Opens every backend. Returns a config with refcount 1. (To override a
 * key such as `listen` from the command line, use conf_parse_value on the result before use.) */
struct config *config_load(const char *path, char *error_r, size_t error_size);

struct config *config_ref(struct config *cfg);
/* Drop one reference; the last one closes the backends and frees everything. */
void config_unref(struct config **cfg);

/* Index of the backend named name, or -1. */
int config_backend_index(const struct config *cfg, const char *name);

/* The whole effective configuration in config-file syntax (defaults included). */
void config_print(FILE *out, const struct config *cfg);

#endif
