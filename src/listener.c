/*
 * listener - the sockets lmtpgw accepts on: unix, TCP (IPv4/IPv6), and sockets from systemd.
 *
 * Owns the listening sockets (evconnlistener each). Binding happens once at start, before any
 * privilege drop; a SIGHUP does not rebind (a changed `listen` needs a restart, and says so).
 */
#include "listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/listener.h>

#include "config.h"
#include "cidr.h"
#include "log.h"
#include "metrics.h"
#include "server.h"
#include "session.h"

#define SD_LISTEN_FDS_START 3

struct listener {
	struct listener *next;
	struct server *srv;
	bool tls;               /* lmtps: TLS from the first byte */
	bool tcp;               /* the allow-list applies */
	struct evconnlistener *ev;
	char name[128];
	char *unlink_path;      /* unix socket we created */
};

static void describe_peer(const struct sockaddr *sa, socklen_t len, char *peer, size_t peer_size,
			  char *ip, size_t ip_size)
{
	char host[INET6_ADDRSTRLEN] = "?";
	int port = 0;

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		port = ntohs(in->sin_port);
		snprintf(peer, peer_size, "[%s]:%d", host, port);
		snprintf(ip, ip_size, "%s", host);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		port = ntohs(in6->sin6_port);
		snprintf(peer, peer_size, "[IPv6:%s]:%d", host, port);
		snprintf(ip, ip_size, "%s", host);
	} else {
		snprintf(peer, peer_size, "unix");
		snprintf(ip, ip_size, "unix");
	}
}

static void on_accept(struct evconnlistener *ev, evutil_socket_t fd, struct sockaddr *sa,
		      int socklen, void *arg)
{
	struct listener *l = arg;
	struct server *srv = l->srv;
	char peer[96], ip[64];

	describe_peer(sa, (socklen_t)socklen, peer, sizeof(peer), ip, sizeof(ip));
	if (srv->stopping) {
		close(fd);
		return;
	}
	if (srv->cfg->allow_count > 0 && (sa->sa_family == AF_INET || sa->sa_family == AF_INET6)) {
		bool allowed = false;
		for (size_t i = 0; i < srv->cfg->allow_count && !allowed; i++)
			allowed = cidr_match(&srv->cfg->allow[i], sa);
		if (!allowed) {
			/* Not ours to serve: a short, fixed answer, and the details in our log. */
			static const char msg[] = "554 5.7.1 Access denied\r\n";
			/* Counted before the answer: whoever sees the answer sees the count. */
			metrics_connection_refused(METRICS_REFUSED_ALLOW_CLIENTS);
			if (send(fd, msg, sizeof(msg) - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
				log_debug("event=refuse_send_failed error=\"%s\"", strerror(errno));
			log_warn("event=connection_refused client=%s reason=allow_clients", peer);
			close(fd);
			return;
		}
	}
	/* Unix socket peers are the local MTA (the socket's mode decides who may connect), and all
	 * look alike ("unix"): they are trusted, and a per-client cap would be a global one. */
	bool trusted = sa->sa_family == AF_UNIX ||
		       cidr_list_match(srv->cfg->trusted, srv->cfg->trusted_count, sa);
	if (!trusted && srv->cfg->max_connections_per_client > 0 &&
	    peers_count(&srv->peers, ip) >= (unsigned long long)srv->cfg->max_connections_per_client) {
		/* One client must not take every slot (slow senders, a flood): the others, the real
		 * MTA first, still get in. Policy, so 4.7.0 (Postfix's anvil says the same). */
		char buf[300];
		int n = snprintf(buf, sizeof(buf),
				 "421 4.7.0 %s Too many connections from your address, try again later\r\n",
				 srv->cfg->hostname);
		metrics_connection_refused(METRICS_REFUSED_PER_CLIENT);
		if (n > 0 && send(fd, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1,
				  MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
			log_debug("event=refuse_send_failed error=\"%s\"", strerror(errno));
		log_warn("event=connection_refused client=%s reason=max_connections_per_client "
			 "limit=%lld", peer, srv->cfg->max_connections_per_client);
		close(fd);
		return;
	}
	if (l->tls && srv->cfg->tls_ctx == NULL) {
		log_error("event=connection_refused client=%s reason=no_tls_certificate", peer);
		close(fd);
		return;
	}
	if (srv->connections >= (unsigned)srv->cfg->max_connections) {
		/* A best-effort one-line answer; the socket is fresh, so the send fits. */
		char buf[300];
		int n = snprintf(buf, sizeof(buf), "421 4.3.2 %s Too many connections, try again later\r\n",
				 srv->cfg->hostname);
		metrics_connection_refused(METRICS_REFUSED_MAX_CONNECTIONS);
		if (send(fd, buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
			log_debug("event=refuse_send_failed error=\"%s\"", strerror(errno));
		log_warn("event=connection_refused client=%s reason=max_connections limit=%lld", peer,
			 srv->cfg->max_connections);
		close(fd);
		return;
	}
	evutil_make_socket_nonblocking(fd);
	if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) {
		/* Every reply leaves whole in one write; Nagle would hold a reply behind the
		 * client's delayed ACK of the previous one (40 ms a message, measured). */
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	session_new(srv, fd, peer, ip, l->tls, trusted);
}

static void on_accept_error(struct evconnlistener *ev, void *arg)
{
	int err = EVUTIL_SOCKET_ERROR();

	/* EMFILE and friends: log and go on; libevent retries on the next readiness. */
	log_error("event=accept_failed error=\"%s\"", evutil_socket_error_to_string(err));
}

static int add_listener(struct server *srv, int fd, const char *name, const char *unlink_path,
			bool tls, char *error_r, size_t error_size)
{
	struct listener *l = calloc(1, sizeof(*l));

	if (l == NULL) {
		snprintf(error_r, error_size, "%s: out of memory", name);
		close(fd);
		return -1;
	}
	evutil_make_socket_nonblocking(fd);
	l->srv = srv;
	l->tls = tls;
	l->ev = evconnlistener_new(srv->base, on_accept, l,
				   LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
	if (l->ev == NULL) {
		snprintf(error_r, error_size, "%s: cannot listen", name);
		close(fd);
		free(l);
		return -1;
	}
	evconnlistener_set_error_cb(l->ev, on_accept_error);
	snprintf(l->name, sizeof(l->name), "%s", name);
	l->unlink_path = unlink_path ? strdup(unlink_path) : NULL;
	l->next = srv->listeners;
	srv->listeners = l;
	log_info("event=listening address=%s", name);
	return 0;
}

static int open_unix(struct server *srv, const struct config *cfg, const char *path,
		     const char *name, char *error_r, size_t error_size)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct stat sb;

	if (strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(error_r, error_size, "%s: path too long", name);
		return -1;
	}
	strcpy(sun.sun_path, path);
	/* A stale socket from a previous run is removed; any other file is left alone. */
	if (lstat(path, &sb) == 0) {
		if (!S_ISSOCK(sb.st_mode)) {
			snprintf(error_r, error_size, "%s: exists and is not a socket", name);
			return -1;
		}
		unlink(path);
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		snprintf(error_r, error_size, "%s: cannot bind: %s", name, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (chmod(path, (mode_t)cfg->unix_socket_mode) < 0) {
		snprintf(error_r, error_size, "%s: chmod: %s", name, strerror(errno));
		close(fd);
		return -1;
	}
	if (cfg->unix_socket_owner != NULL || cfg->unix_socket_group != NULL) {
		uid_t uid = (uid_t)-1;
		gid_t gid = (gid_t)-1;
		if (cfg->unix_socket_owner != NULL) {
			struct passwd *pw = getpwnam(cfg->unix_socket_owner);
			if (pw == NULL) {
				snprintf(error_r, error_size, "%s: unknown user '%s'", name,
					 cfg->unix_socket_owner);
				close(fd);
				return -1;
			}
			uid = pw->pw_uid;
		}
		if (cfg->unix_socket_group != NULL) {
			struct group *gr = getgrnam(cfg->unix_socket_group);
			if (gr == NULL) {
				snprintf(error_r, error_size, "%s: unknown group '%s'", name,
					 cfg->unix_socket_group);
				close(fd);
				return -1;
			}
			gid = gr->gr_gid;
		}
		if (chown(path, uid, gid) < 0) {
			snprintf(error_r, error_size, "%s: chown: %s", name, strerror(errno));
			close(fd);
			return -1;
		}
	}
	if (listen(fd, 511) < 0) {
		snprintf(error_r, error_size, "%s: listen: %s", name, strerror(errno));
		close(fd);
		return -1;
	}
	return add_listener(srv, fd, name, path, false, error_r, error_size);
}

/* "host:port", "[v6]:port", "*:port" -> host and port strings. */
static int split_host_port(const char *spec, char *host, size_t host_size, char *port,
			   size_t port_size)
{
	const char *colon;

	if (spec[0] == '[') {
		const char *end = strchr(spec, ']');
		if (end == NULL || end[1] != ':')
			return -1;
		if ((size_t)(end - spec - 1) >= host_size)
			return -1;
		memcpy(host, spec + 1, (size_t)(end - spec - 1));
		host[end - spec - 1] = '\0';
		colon = end + 1;
	} else {
		colon = strrchr(spec, ':');
		if (colon == NULL || (size_t)(colon - spec) >= host_size)
			return -1;
		memcpy(host, spec, (size_t)(colon - spec));
		host[colon - spec] = '\0';
	}
	if (colon[1] == '\0' || strlen(colon + 1) >= port_size ||
	    strspn(colon + 1, "0123456789") != strlen(colon + 1))
		return -1;
	snprintf(port, port_size, "%s", colon + 1);
	return 0;
}

static int open_tcp(struct server *srv, const char *spec, bool tls, char *error_r,
		    size_t error_size)
{
	char host[256], port[16];
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *res, *ai;

	if (split_host_port(spec, host, sizeof(host), port, sizeof(port)) < 0) {
		snprintf(error_r, error_size,
			 "%s: expected unix:PATH, HOST:PORT, [IPV6]:PORT or *:PORT", spec);
		return -1;
	}
	int gai = getaddrinfo(strcmp(host, "*") == 0 || host[0] == '\0' ? NULL : host, port, &hints,
			      &res);
	if (gai != 0) {
		snprintf(error_r, error_size, "%s: %s", spec, gai_strerror(gai));
		return -1;
	}
	int opened = 0;
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		int one = 1;
		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (ai->ai_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 511) < 0) {
			snprintf(error_r, error_size, "%s: cannot bind: %s", spec, strerror(errno));
			close(fd);
			freeaddrinfo(res);
			return -1;
		}
		char name[128], peer[96], ip[64];
		describe_peer(ai->ai_addr, ai->ai_addrlen, peer, sizeof(peer), ip, sizeof(ip));
		snprintf(name, sizeof(name), "%s%s", tls ? "lmtps:" : "", peer);
		if (add_listener(srv, fd, name, NULL, tls, error_r, error_size) < 0) {
			freeaddrinfo(res);
			return -1;
		}
		opened++;
	}
	freeaddrinfo(res);
	if (opened == 0) {
		snprintf(error_r, error_size, "%s: no usable address", spec);
		return -1;
	}
	return 0;
}

/* systemd socket activation (sd_listen_fds(3) protocol, without libsystemd). */
static int open_systemd(struct server *srv, char *error_r, size_t error_size)
{
	const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");

	if (pid == NULL || fds == NULL || strtol(pid, NULL, 10) != (long)getpid())
		return 0;
	long count = strtol(fds, NULL, 10);
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	for (long i = 0; i < count && i < 64; i++) {
		int fd = SD_LISTEN_FDS_START + (int)i;
		char name[64];
		fcntl(fd, F_SETFD, FD_CLOEXEC);
		snprintf(name, sizeof(name), "systemd:fd%d", fd);
		if (add_listener(srv, fd, name, NULL, false, error_r, error_size) < 0)
			return -1;
	}
	return (int)count;
}

int listeners_open(struct server *srv, const struct config *cfg, char *error_r, size_t error_size)
{
	const struct conf_strlist *list = srv->listen_override ? srv->listen_override : &cfg->listen;
	int passed = open_systemd(srv, error_r, error_size);

	if (passed < 0)
		return -1;
	if (passed > 0 && srv->listen_override == NULL)
		return 0; /* socket activation: systemd owns the addresses */
	for (size_t i = 0; i < list->count; i++) {
		const char *spec = list->items[i];
		int r;
		if (strncmp(spec, "unix:", 5) == 0) {
			r = open_unix(srv, cfg, spec + 5, spec, error_r, error_size);
		} else if (strncmp(spec, "lmtps:", 6) == 0) {
			if (cfg->tls_ctx == NULL) {
				snprintf(error_r, error_size, "%s: needs tls_cert_file and tls_key_file",
					 spec);
				return -1;
			}
			r = open_tcp(srv, spec + 6, true, error_r, error_size);
		} else {
			r = open_tcp(srv, spec, false, error_r, error_size);
		}
		if (r < 0)
			return -1;
	}
	if (srv->listeners == NULL) {
		snprintf(error_r, error_size, "no listen address configured");
		return -1;
	}
	return 0;
}

void listeners_close(struct server *srv)
{
	while (srv->listeners != NULL) {
		struct listener *l = srv->listeners;
		srv->listeners = l->next;
		evconnlistener_free(l->ev);
		if (l->unlink_path != NULL) {
			unlink(l->unlink_path);
			free(l->unlink_path);
		}
		free(l);
	}
}
