/*
 * server - the process-wide runtime: configuration swaps and the idle check for shutdown.
 */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>

#include "dispatcher.h"
#include "log.h"
#include "router.h"

void server_apply_log_settings(const struct config *cfg, bool debug_forced)
{
	if (!debug_forced)
		log_set_level((enum log_level)cfg->log_level);
	log_configure_syslog(config_syslog_facilities[cfg->syslog_facility], cfg->syslog_socket);
	log_set_json(cfg->log_format == CONFIG_LOG_JSON);
}

int server_reload(struct server *srv)
{
	server_notify("RELOADING=1");
	char error[1024];
	struct config *cfg = config_load(srv->config_path, error, sizeof(error));

	if (cfg == NULL) {
		log_error("event=reload_failed error=\"%s\" action=keeping_old_configuration", error);
		server_notify("READY=1");
		return -1;
	}
	/* Open what changed before committing to the new settings: a backend that cannot open
	 * keeps the old configuration in place, as a syntax error does. */
	struct runtime *rt = runtime_open(cfg, srv->rt, error, sizeof(error));
	if (rt == NULL) {
		log_error("event=reload_failed error=\"%s\" action=keeping_old_configuration", error);
		server_notify("READY=1");
		return -1;
	}
	server_apply_log_settings(cfg, srv->debug_forced);
	bool listen_changed = cfg->listen.count != srv->cfg->listen.count;
	for (size_t i = 0; !listen_changed && i < cfg->listen.count; i++)
		listen_changed = strcmp(cfg->listen.items[i], srv->cfg->listen.items[i]) != 0;
	if (listen_changed && srv->listen_override == NULL)
		log_warn("event=reload_listen_changed action=restart_needed_to_rebind");
	/* Transactions in flight keep their reference to the old runtime; backends it shares with
	 * the new one stay open, the others close when its last transaction ends. */
	runtime_unref(&srv->rt);
	srv->rt = rt;
	srv->cfg = rt->cfg;
	server_notify("READY=1");
	log_info("event=reloaded config=%s backends=%zu kept=%zu opened=%zu routes=%zu",
		 srv->config_path, cfg->backend_count, rt->kept, rt->opened,
		 router_rule_count(cfg->router));
	return 0;
}

void server_check_idle(struct server *srv)
{
	/* Deliveries that already answered (late results after the deadline) do not hold us. */
	if (srv->stopping && srv->connections == 0 && dispatch_unanswered() == 0)
		event_base_loopbreak(srv->base);
}

/* The sd_notify(3) protocol, without libsystemd: one datagram to $NOTIFY_SOCKET. */
void server_notify(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sun = { .sun_family = AF_UNIX };

	if (path == NULL || path[0] == '\0' || strlen(path) >= sizeof(sun.sun_path))
		return;
	memcpy(sun.sun_path, path, strlen(path));
	if (sun.sun_path[0] == '@')
		sun.sun_path[0] = '\0'; /* abstract namespace */
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
	if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sun, len) < 0)
		log_debug("event=sd_notify_failed state=\"%s\"", state);
	close(fd);
}
