/*
 * session - one LMTP connection: the RFC 2033 state machine, its transaction, its replies.
 *
 * The session handles every complete pipelined command of one read in one pass; their replies
 * collect in the connection's buffer and leave in one write when the pass ends (RFC 2920), a
 * send() of our own on a plain socket, through the bufferevent under TLS or when the socket is
 * full (conn.h). DATA and BDAT content goes through the decoder into the spool. After the end
 * of data the session waits for the dispatcher and writes one reply per accepted recipient in
 * RCPT order, each as soon as it and all before it are known (reply_queue.h).
 *
 * Errors: session_new() returns NULL (and closes fd) when it cannot set up; from then on every
 * failure is a reply to the client, and the session frees itself when the connection ends.
 */
#ifndef LMTPGW_SESSION_H
#define LMTPGW_SESSION_H

#include <stdbool.h>

struct server;
struct session;

/* Take over fd (connected, any family). peer is a printable description for logs and the
 * Received header ("127.0.0.1:40000", "unix"); peer_ip the address alone, which the session
 * counts in srv->peers while it lives. trusted: the peer is in trusted_networks or on a unix
 * socket (it may send XFORWARD). */
struct session *session_new(struct server *srv, int fd, const char *peer, const char *peer_ip,
			    bool implicit_tls, bool trusted);

/* SIGTERM: idle sessions get 421 and are closed; busy ones finish their transaction first and
 * get 421 at their next command. */
void session_stop_all(struct server *srv);

/* Close and free every session (at exit). */
void session_free_all(struct server *srv);

#endif
