/*
 * imap_transport - the byte stream under an IMAP session: the socket, TLS done by OpenSSL, and
 * the time every read and write may take.
 *
 * Debian's libetpan uses GnuTLS and does not verify certificates, so lmtpgw owns the transport:
 * this module connects the socket itself (with a timeout), runs TLS with OpenSSL (implicit for
 * imaps://, after STARTTLS for imap://), verifies the chain and the host name, and hands
 * libetpan a mailstream whose low-level driver reads and writes through OpenSSL (or the plain
 * socket, in the explicitly allowed loopback case). It knows nothing of IMAP commands: the
 * protocol client (imapconn) sends STARTTLS and then asks this module to secure the stream.
 *
 * Owns: the socket and the SSL object, through the stream (closing the stream closes them).
 * Error contract: functions return NULL/-1 and fill a status (design.md mapping) plus a short
 * reason for the log. Used from worker threads: no global state except OpenSSL's.
 */
#ifndef LMTPGW_IMAP_TRANSPORT_H
#define LMTPGW_IMAP_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

enum imap_security { IMAP_TLS_IMPLICIT, IMAP_TLS_STARTTLS, IMAP_PLAINTEXT };

struct imap_endpoint {
	char host[256];
	char port[8];
	enum imap_security security;
	int timeout_ms;
	void *ssl_ctx;              /* SSL_CTX *, shared by every connection of a backend */
};

/* Parse "imap://host[:port]" / "imaps://host[:port]" ("[v6]" allowed). allow_plaintext
 * turns imap:// into plain text (only accepted when host is a loopback address). */
int imap_endpoint_parse(const char *url, bool allow_plaintext, struct imap_endpoint *ep_r,
			char *error_r, size_t error_size);

/* An OpenSSL client context: TLS 1.2+, peer verification on; CA file/dir or system store. */
void *imap_tls_context_new(const char *ca_file, const char *ca_path, char *error_r,
			   size_t error_size);
void imap_tls_context_free(void *ssl_ctx);

/*
 * Time allowed for I/O. Every read and write waits at most timeout_ms, and never past
 * deadline_ms (CLOCK_MONOTONIC milliseconds; 0: no deadline) -- the budget of one delivery
 * attempt, so a stalled server costs the attempt one timeout, not one per step (NOOP check,
 * connect, greeting, login, APPEND, CREATE, ...). While a message literal is being sent
 * (extend_on_write), each write that made progress moves the deadline to timeout_ms after it:
 * a big message on a slow link is bounded by inactivity, not by a total. The owner of the
 * stream sets the fields; the stream reads them before every read and write.
 */
struct io_clock {
	int timeout_ms;
	int64_t deadline_ms;
	bool extend_on_write;
};

/* A deadline (CLOCK_MONOTONIC milliseconds) timeout_ms from now: the budget of one delivery
 * attempt, for io_clock.deadline_ms. */
int64_t imap_deadline_after(int timeout_ms);

/* libetpan's stream (its `mailstream` typedef), named by its tag so that this header does not
 * pull libetpan into its users. */
struct _mailstream;

/* Connect to ep and, for imaps://, run and verify TLS: a stream ready for the server's
 * greeting. Every read and write of it is bounded by *clock, which must outlive the stream.
 * NULL on failure with *st_r (451 4.4.3 not resolved, 451 4.4.1 refused or unreachable,
 * 451 4.4.2 handshake failed, 451 4.7.5 certificate not trusted, ...) and reason. */
struct _mailstream *imap_transport_open(const struct imap_endpoint *ep, struct io_clock *clock,
					struct status *st_r, char *reason, size_t reason_size);

/* After the server's OK to STARTTLS: refuse anything it sent before the handshake, run and
 * verify TLS, and make the stream read and write through it. -1 with *st_r and reason (the
 * stream is then unusable: close it). */
int imap_transport_starttls(struct _mailstream *stream, const struct imap_endpoint *ep,
			    struct io_clock *clock, struct status *st_r, char *reason,
			    size_t reason_size);

/* Has the peer sent anything, or closed, since the last read (bytes buffered or readable, or a
 * hang-up)? Does not wait. A NULL stream (closed) counts as spoken. */
bool imap_transport_peer_spoke(struct _mailstream *stream);

#endif
