/*
 * main - command line, start-up, signals and the event loop.
 *
 *   lmtpgw [-c FILE] [-f] [-d] [--listen ADDR]...   serve
 *   lmtpgw [-c FILE] -n                             print the effective configuration
 *   lmtpgw [-c FILE] check [--probe]                validate; --probe reaches every backend
 *   lmtpgw [-c FILE] route ADDRESS...               show where addresses are delivered
 *   lmtpgw [-c FILE] deliver [-f SENDER] RCPT...     deliver stdin, exit per sysexits (deliver.c)
 *
 * Start-up order: load and check the configuration (which opens the backends), bind the
 * listeners, drop privileges, then serve. SIGTERM/SIGINT stop accepting and let transactions
 * in flight finish; SIGHUP reloads the configuration, keeping the old one if the new one fails.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "address.h"
#include "backend.h"
#include "config.h"
#include "deliver.h"
#include "dispatcher.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "pool.h"
#include "privileges.h"
#include "replay.h"
#include "router.h"
#include "runtime.h"
#include "server.h"
#include "session.h"

#ifndef LMTPGW_VERSION
#define LMTPGW_VERSION "0.1.0"
#endif
#ifndef LMTPGW_DEFAULT_CONFIG
#define LMTPGW_DEFAULT_CONFIG "/etc/lmtpgw/lmtpgw.conf"
#endif

static void usage(FILE *out)
{
	fprintf(out,
		"usage: lmtpgw [-c FILE] [-f] [-d] [--listen ADDR]...   serve LMTP\n"
		"       lmtpgw [-c FILE] -n                             print the effective configuration\n"
		"       lmtpgw [-c FILE] check [--probe]                validate the configuration\n"
		"                                                       (--probe: reach every backend)\n"
		"       lmtpgw [-c FILE] route ADDRESS...               show the route of addresses\n"
		"       lmtpgw [-c FILE] deliver [-f SENDER] [--] RECIPIENT... < message\n"
		"                                                       deliver one message (sysexits)\n"
		"       lmtpgw [-c FILE] replay --from B ... --to B     re-deliver archived messages\n"
		"options:\n"
		"  -c, --config FILE   configuration file (default %s)\n"
		"  -f, --foreground    stay in the foreground and log to stderr\n"
		"  -d, --debug         log at debug level\n"
		"  -l, --listen ADDR   listen here instead of the configured addresses (repeatable):\n"
		"                      127.0.0.1:2424, [::1]:2424, *:2424, unix:/path/lmtp.sock\n"
		"  -n                  print the effective configuration and exit\n"
		"  -V, --version       print the version and exit\n",
		LMTPGW_DEFAULT_CONFIG);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct server *srv = arg;

	if (sig == SIGHUP) {
		log_info("event=signal signal=HUP action=reload");
		server_reload(srv);
		return;
	}
	if (srv->stopping) {
		log_warn("event=signal signal=%d action=exit_now in_flight=%u", (int)sig,
			 dispatch_in_flight());
		event_base_loopbreak(srv->base);
		return;
	}
	log_info("event=signal signal=%s action=stop connections=%u in_flight=%u",
		 sig == SIGTERM ? "TERM" : "INT", srv->connections, dispatch_in_flight());
	srv->stopping = true;
	server_notify("STOPPING=1");
	metrics_set_stopping(true);
	listeners_close(srv);
	session_stop_all(srv);
	server_check_idle(srv);
}

/* Where backend b would deliver recipient r ("" when its driver cannot say). */
static void explain_target(const struct runtime *rt, const struct recipient *r,
			   const struct template_vars *vars, unsigned b, char *where, size_t size)
{
	const struct backend_instance *inst = &rt->cfg->backends[b];

	where[0] = '\0';
	if (inst->driver->explain != NULL)
		inst->driver->explain(rt->backends[b]->state, r, vars, where, size);
}

/* lmtpgw route ADDRESS...: the rule that matches, and for each target its role, its fallback
 * and where it would deliver. */
static int cmd_route(const struct runtime *rt, int argc, char **argv)
{
	const struct config *cfg = rt->cfg;
	int rc = 0;

	for (int i = 0; i < argc; i++) {
		char path[ADDRESS_PATH_MAX + 3];
		struct recipient r;
		const char *error = NULL;
		size_t pos = 0;

		memset(&r, 0, sizeof(r));
		snprintf(path, sizeof(path), argv[i][0] == '<' ? "%s" : "<%s>", argv[i]);
		if (address_parse_path(path, &pos, &r.addr, false, true, true, &error) < 0 ||
		    path[pos] != '\0') {
			printf("%s: invalid address: %s\n", argv[i], error ? error : "trailing text");
			rc = 1;
			continue;
		}
		if (recipient_route(&r, cfg->router, cfg->lowercase_local_part,
				    cfg->subaddress_separator) == NULL) {
			printf("%s: no route (550 5.1.1 at RCPT)\n", r.rcpt);
			rc = 1;
			continue;
		}
		printf("%s: route #%zu \"%s\"", r.rcpt, r.rule->index + 1, r.rule->pattern);
		if (r.detail[0])
			printf(" local=\"%s\" detail=\"%s\"", r.local, r.detail);
		printf("\n");
		/* What a delivery would know; message-dependent values are placeholders. */
		struct delivery d = { .sender = "sender@example.test", .sha256 = "<sha256>",
				      .msgid = "<msgid>", .session_id = "<session>",
				      .txid = "<tx>", .received = time(NULL) };
		struct template_vars vars;
		delivery_vars(&d, &r, &vars);
		for (size_t k = 0; k < r.rule->target_count; k++) {
			const struct route_target *target = &r.rule->targets[k];
			char where[1024] = "";
			explain_target(rt, &r, &vars, target->backend, where, sizeof(where));
			/* The role last, so the "-> NAME (driver D): WHERE" part reads as it always did. */
			printf("  -> %s (driver %s)%s%s [%s%s%s]\n", cfg->backends[target->backend].name,
			       cfg->backends[target->backend].driver->name, where[0] ? ": " : "", where,
			       target->required ? "required" : "best-effort",
			       target->fallback >= 0 ? ", fallback " : "",
			       target->fallback >= 0 ? cfg->backends[target->fallback].name : "");
			if (target->fallback < 0)
				continue;
			explain_target(rt, &r, &vars, (unsigned)target->fallback, where,
				       sizeof(where));
			printf("     fallback %s (driver %s)%s%s\n",
			       cfg->backends[target->fallback].name,
			       cfg->backends[target->fallback].driver->name, where[0] ? ": " : "",
			       where);
		}
	}
	return rc;
}

/* lmtpgw check --probe: reach every backend the way a delivery would. */
static int cmd_probe(const struct runtime *rt)
{
	const struct config *cfg = rt->cfg;
	int rc = 0;

	for (size_t i = 0; i < cfg->backend_count; i++) {
		const struct backend_instance *b = &cfg->backends[i];
		char result[1024] = "";
		int r = 0;

		if (b->driver->probe != NULL)
			r = b->driver->probe(rt->backends[i]->state, result, sizeof(result));
		else
			snprintf(result, sizeof(result), "no probe for this driver");
		printf("%-4s %s (%s): %s\n", r == 0 ? "ok" : "FAIL", b->name, b->driver->name, result);
		if (r < 0)
			rc = 1;
	}
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "debug", no_argument, NULL, 'd' },
		{ "listen", required_argument, NULL, 'l' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *config_path = LMTPGW_DEFAULT_CONFIG;
	bool foreground = false, debug = false, print_config = false;
	struct conf_strlist listen = { NULL, 0 };
	int opt;

	while ((opt = getopt_long(argc, argv, "+c:fdl:nVh", options, NULL)) != -1) {
		switch (opt) {
		case 'c':
			config_path = optarg;
			break;
		case 'f':
			foreground = true;
			break;
		case 'd':
			debug = true;
			break;
		case 'l': {
			char **items = realloc(listen.items, (listen.count + 1) * sizeof(char *));
			if (items == NULL)
				return 1;
			listen.items = items;
			listen.items[listen.count++] = optarg;
			break;
		}
		case 'n':
			print_config = true;
			break;
		case 'V':
			printf("lmtpgw %s\n", LMTPGW_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 64; /* EX_USAGE */
		}
	}
	const char *verb = optind < argc ? argv[optind] : NULL;
	if (verb != NULL && strcmp(verb, "deliver") == 0) {
		/* Its own exit statuses (sysexits) from the first error on: see deliver.h. */
		free(listen.items);
		return deliver_main(config_path, debug, argc - optind - 1, argv + optind + 1);
	}
	if (verb != NULL && strcmp(verb, "check") != 0 && strcmp(verb, "route") != 0 &&
	    strcmp(verb, "replay") != 0) {
		fprintf(stderr, "lmtpgw: unknown command '%s'\n", verb);
		usage(stderr);
		return 64;
	}
	bool serving = verb == NULL && !print_config;

	log_init("lmtpgw", foreground || !serving, debug ? LOG_LEVEL_DEBUG : LOG_LEVEL_INFO);
	signal(SIGPIPE, SIG_IGN); /* a peer gone mid-write is an error return, not a death */

	char error[1024];
	struct config *cfg = config_load(config_path, error, sizeof(error));
	if (cfg == NULL) {
		fprintf(stderr, "lmtpgw: %s\n", error);
		free(listen.items);
		return 78; /* EX_CONFIG */
	}
	/* Open every backend now, so a driver that refuses its settings fails `check`, `-n` and
	 * the start alike. */
	struct runtime *rt = runtime_open(cfg, NULL, error, sizeof(error));
	if (rt == NULL) {
		fprintf(stderr, "lmtpgw: %s\n", error);
		free(listen.items);
		return 78; /* EX_CONFIG */
	}
	if (print_config) {
		config_print(stdout, cfg);
		runtime_unref(&rt);
		free(listen.items);
		return 0;
	}
	if (verb != NULL && strcmp(verb, "check") == 0) {
		bool probe = false;
		for (int i = optind + 1; i < argc; i++) {
			if (strcmp(argv[i], "--probe") == 0) {
				probe = true;
			} else {
				fprintf(stderr, "usage: lmtpgw [-c FILE] check [--probe]\n");
				runtime_unref(&rt);
				free(listen.items);
				return 64;
			}
		}
		printf("%s: OK (%zu backends, %zu routes)\n", config_path, cfg->backend_count,
		       router_rule_count(cfg->router));
		int rc = probe ? cmd_probe(rt) : 0;
		runtime_unref(&rt);
		free(listen.items);
		return rc;
	}
	if (verb != NULL && strcmp(verb, "replay") == 0) {
		int rc = replay_main(rt, argc - optind, argv + optind);
		runtime_unref(&rt);
		free(listen.items);
		return rc;
	}
	if (verb != NULL) {
		if (optind + 1 >= argc) {
			fprintf(stderr, "usage: lmtpgw route ADDRESS...\n");
			runtime_unref(&rt);
			free(listen.items);
			return 64;
		}
		int rc = cmd_route(rt, argc - optind - 1, argv + optind + 1);
		runtime_unref(&rt);
		free(listen.items);
		return rc;
	}

	server_apply_log_settings(cfg, debug);
	struct server srv = {
		.rt = rt,
		.cfg = cfg,
		.config_path = config_path,
		.listen_override = listen.count > 0 ? &listen : NULL,
		.debug_forced = debug,
	};
	if (!foreground && daemon(1, 0) < 0) {
		fprintf(stderr, "lmtpgw: cannot detach: %s\n", strerror(errno));
		return 71;
	}
	/* One descriptor per connection (and a few per backend connection): lift the soft limit
	 * to the hard one so max_connections is reachable. */
	struct rlimit nofile;
	if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
		nofile.rlim_cur = nofile.rlim_max;
		setrlimit(RLIMIT_NOFILE, &nofile);
	}
	if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 &&
	    nofile.rlim_cur < (rlim_t)cfg->max_connections + 64)
		log_warn("event=low_fd_limit limit=%llu max_connections=%lld",
			 (unsigned long long)nofile.rlim_cur, cfg->max_connections);
	srv.base = event_base_new();
	if (srv.base == NULL || pool_completion_init(srv.base) < 0) {
		log_error("event=startup_failed error=\"cannot create event loop\"");
		return 71;
	}
	if (listeners_open(&srv, cfg, error, sizeof(error)) < 0) {
		log_error("event=startup_failed error=\"%s\"", error);
		listeners_close(&srv);
		return 71;
	}
	if (cfg->metrics_listen != NULL &&
	    metrics_start(cfg->metrics_listen, LMTPGW_VERSION, error, sizeof(error)) < 0) {
		log_error("event=startup_failed error=\"%s\"", error);
		listeners_close(&srv);
		return 71;
	}
	if (privileges_drop(cfg, "serve") < 0) {
		listeners_close(&srv);
		return 77;
	}
	struct event *sigs[3];
	int signums[3] = { SIGTERM, SIGINT, SIGHUP };
	for (int i = 0; i < 3; i++) {
		sigs[i] = evsignal_new(srv.base, signums[i], on_signal, &srv);
		event_add(sigs[i], NULL);
	}
	server_notify("READY=1");
	log_info("event=started version=%s config=%s backends=%zu routes=%zu pid=%ld",
		 LMTPGW_VERSION, config_path, cfg->backend_count, router_rule_count(cfg->router),
		 (long)getpid());

	event_base_dispatch(srv.base);

	log_info("event=stopped connections=%u in_flight=%u", srv.connections, dispatch_in_flight());
	listeners_close(&srv);
	metrics_stop();
	session_free_all(&srv);
	for (int i = 0; i < 3; i++)
		event_free(sigs[i]);
	if (dispatch_in_flight() > 0) {
		/* Workers are still blocked in a backend whose answer nobody waits for any more
		 * (deadline passed, or a forced stop): joining them could take a backend timeout.
		 * Every client has had its reply; leave now. */
		log_warn("event=exit_with_late_deliveries count=%u", dispatch_in_flight());
		pool_completion_shutdown();
		_exit(0);
	}
	srv.cfg = NULL;
	runtime_unref(&srv.rt);
	pool_completion_shutdown();
	event_base_free(srv.base);
	free(listen.items);
	return 0;
}
