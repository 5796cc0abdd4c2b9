/*
 * server - the process-wide runtime: event base, current configuration, counters, shutdown.
 *
 * One instance, created by main and passed to the listener and every session (no globals).
 * `rt` is the runtime (settings and running backends) new transactions take a reference to;
 * SIGHUP builds a new one, keeping every backend whose settings did not change.
 */
#ifndef LMTPGW_SERVER_H
#define LMTPGW_SERVER_H

#include <stdbool.h>

#include "config.h"
#include "runtime.h"
#include "peers.h"

struct event_base;
struct listener;
struct session;

struct server {
	struct event_base *base;
	struct runtime *rt;         /* owned: one reference */
	const struct config *cfg;   /* rt->cfg, the current settings */
	const char *config_path;
	const struct conf_strlist *listen_override; /* --listen, NULL when not given */
	struct listener *listeners;
	struct session *sessions;   /* every open session (doubly linked) */
	unsigned connections;
	struct peers peers;         /* connections per client address (max_connections_per_client) */
	unsigned long long session_seq;
	bool debug_forced;          /* -d: the log level stays debug across reloads */
	bool stopping;              /* SIGTERM: no new connections, no new transactions */
};

/* Log level (unless -d forced debug), syslog facility and format from cfg. */
void server_apply_log_settings(const struct config *cfg, bool debug_forced);

/* Replace the configuration (SIGHUP). Returns 0, or -1 after logging why the old one stays. */
int server_reload(struct server *srv);

/* Tell systemd (Type=notify) about our state: "READY=1", "RELOADING=1", "STOPPING=1". A no-op
 * without $NOTIFY_SOCKET. */
void server_notify(const char *state);

/* Called when a session or a delivery ends: exits the loop once stopping and idle. */
void server_check_idle(struct server *srv);

#endif
