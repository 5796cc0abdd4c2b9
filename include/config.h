/*
 * config - the configuration file (libconfig syntax), checked against declarative key tables.
 *
 * Every key lmtpgw understands is a row of a `struct conf_key` table (conftable.h): name, type,
 * default, bounds or allowed values, the offset of its field, and a one-line description. The
 * global keys live in config.c; each driver brings its own table for its backend block
 * (backend.h). Loading fills
 * the structs from the tables, refuses unknown keys, wrong types and values out of bounds with
 * "file:line: message", and builds the router. It opens nothing: drivers, worker pools and
 * breakers live in the runtime built beside it (runtime.h). `lmtpgw -n` prints the
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

#include "conftable.h"

struct backend_instance;
struct cidr;
struct route_target;
struct router;

/* One entry of `routes`, as configured (the router holds the compiled form; config_print
 * writes these back). */
struct config_route {
	char *match;
	struct conf_strlist deliver;   /* the targets' backend names, in configured order */
	struct route_target *targets;  /* deliver.count entries: backend, role, fallback */
};

/* One group entry of a route's `deliver` list: { backend = "x"; required = false;
 * fallback = "y"; } (a plain string entry is a required target without fallback). */
struct config_route_target {
	char *backend;
	bool required;
	char *fallback;
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
	char *dedupe_db;               /* memory of stored copies (dedupe.h); NULL: none */
	long long dedupe_ttl_ms;
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
	int log_level;                 /* enum log_level */
	int log_format;                /* enum config_log_format */
	int syslog_facility;           /* index into config_syslog_facilities; 0: auto */
	char *syslog_socket;
	char *user;
	char *group;

	/* backends and routes */
	void *tls_ctx;                 /* SSL_CTX * when tls_cert_file is set */
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

enum config_log_format { CONFIG_LOG_TEXT, CONFIG_LOG_JSON };
/* The syslog facility names, in the order of syslog_facility's values. */
extern const char *const config_syslog_facilities[];

/* The table of global keys (for docs checks and -n). */
extern const struct conf_key config_global_keys[];
/* The keys of one `routes` entry (fills struct config_route; `deliver` is read and printed by
 * config.c itself, since its entries may be groups). */
extern const struct conf_key config_route_keys[];
/* The keys of a group entry of `deliver` (fills struct config_route_target). */
extern const struct conf_key config_route_target_keys[];

/* Load and check path. Returns a config with refcount 1. (To override a
 * key such as `listen` from the command line, use conf_parse_value on the result before use.) */
struct config *config_load(const char *path, char *error_r, size_t error_size);

struct config *config_ref(struct config *cfg);
/* Drop one reference; the last one frees everything. */
void config_unref(struct config **cfg);

/* Index of the backend named name, or -1. */
int config_backend_index(const struct config *cfg, const char *name);

/* The whole effective configuration in config-file syntax (defaults included). */
void config_print(FILE *out, const struct config *cfg);

#endif
