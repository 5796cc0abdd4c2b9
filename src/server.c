/*
 * server - the process-wide runtime: configuration swaps and the idle check for shutdown.
 */
#include "server.h"

#include <string.h>

#include <event2/event.h>

#include "dispatcher.h"
#include "log.h"
#include "router.h"

int server_reload(struct server *srv)
{
	char error[1024];
	struct config *cfg = config_load(srv->config_path, error, sizeof(error));

	if (cfg == NULL) {
		log_error("event=reload_failed error=\"%s\" action=keeping_old_configuration", error);
		return -1;
	}
	int level = log_level_parse(cfg->log_level);
	if (level >= 0 && !srv->debug_forced)
		log_set_level((enum log_level)level);
	log_set_facility(cfg->syslog_facility);
	bool listen_changed = cfg->listen.count != srv->cfg->listen.count;
	for (size_t i = 0; !listen_changed && i < cfg->listen.count; i++)
		listen_changed = strcmp(cfg->listen.items[i], srv->cfg->listen.items[i]) != 0;
	if (listen_changed && srv->listen_override == NULL)
		log_warn("event=reload_listen_changed action=restart_needed_to_rebind");
	/* Transactions in flight keep their reference to the old configuration. */
	config_unref(&srv->cfg);
	srv->cfg = cfg;
	log_info("event=reloaded config=%s backends=%zu routes=%zu", srv->config_path,
		 cfg->backend_count, router_rule_count(cfg->router));
	return 0;
}

void server_check_idle(struct server *srv)
{
	/* Deliveries that already answered (late results after the deadline) do not hold us. */
	if (srv->stopping && srv->connections == 0 && dispatch_unanswered() == 0)
		event_base_loopbreak(srv->base);
}
