/*
 * listener - the sockets lmtpgw accepts on: unix, TCP (IPv4/IPv6), and sockets from systemd.
 *
 * Address forms: "unix:/run/lmtpgw/lmtp.sock", "127.0.0.1:2424", "[::1]:2424", "*:2424"
 * (every IPv4 and IPv6 address), "localhost:2424" (resolved at start), and "lmtps:" before a
 * TCP form for TLS from the first byte (STARTTLS is offered on plain TCP listeners whenever a
 * certificate is configured). allow_clients limits who may connect over TCP. Sockets passed by
 * systemd (LISTEN_PID/LISTEN_FDS) are used in addition to the configured ones; when any are
 * passed and the configuration lists none beyond the default, only they are used.
 * Over max_connections a new client gets "421 4.3.2" and is closed; a client address that has
 * max_connections_per_client open already gets "421 4.7.0", unless it is in trusted_networks or
 * comes over a unix socket (those peers are trusted: the socket's mode decides who connects).
 *
 * Error contract: listeners_open() returns 0 or -1 with a message in error_r.
 */
#ifndef LMTPGW_LISTENER_H
#define LMTPGW_LISTENER_H

#include <stddef.h>

struct server;
struct config;

int listeners_open(struct server *srv, const struct config *cfg, char *error_r, size_t error_size);
/* Stop accepting (SIGTERM) and free. */
void listeners_close(struct server *srv);

#endif
