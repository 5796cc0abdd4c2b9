/*
 * imap_transport - the socket, OpenSSL TLS and time limits under an IMAP session.
 *
 * The stream handed to libetpan is a mailstream with a low-level driver of our own over either
 * the plain socket or an OpenSSL session, so the same read/write code serves imaps://, STARTTLS
 * and the explicitly allowed plain-text loopback case. The socket stays non-blocking from the
 * connect on: every read, write and TLS handshake step that would block waits in poll() for
 * what is left of the io_clock (clock_wait), so the budget of a delivery attempt holds however
 * a server spreads its bytes, under TLS as in plain text.
 *
 * Error contract: NULL/-1 with a status and a short reason (imap_transport.h).
 */
#include "imap_transport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libetpan/libetpan.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* --- endpoint --- */

static bool host_is_loopback(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;

	if (strcasecmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, host, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6);
	return false;
}

int imap_endpoint_parse(const char *url, bool allow_plaintext, struct imap_endpoint *ep_r,
			char *error_r, size_t error_size)
{
	const char *rest;

	memset(ep_r, 0, sizeof(*ep_r));
	if (strncasecmp(url, "imaps://", 8) == 0) {
		ep_r->security = IMAP_TLS_IMPLICIT;
		snprintf(ep_r->port, sizeof(ep_r->port), "993");
		rest = url + 8;
	} else if (strncasecmp(url, "imap://", 7) == 0) {
		ep_r->security = allow_plaintext ? IMAP_PLAINTEXT : IMAP_TLS_STARTTLS;
		snprintf(ep_r->port, sizeof(ep_r->port), "143");
		rest = url + 7;
	} else {
		snprintf(error_r, error_size, "url must start with imap:// or imaps://");
		return -1;
	}
	size_t host_len;
	const char *port = NULL;
	if (*rest == '[') {
		const char *end = strchr(rest, ']');
		if (end == NULL) {
			snprintf(error_r, error_size, "url: unterminated [IPv6] host");
			return -1;
		}
		host_len = (size_t)(end - rest - 1);
		rest++;
		if (end[1] == ':')
			port = end + 2;
		else if (end[1] != '\0' && end[1] != '/') {
			snprintf(error_r, error_size, "url: junk after host");
			return -1;
		}
	} else {
		host_len = strcspn(rest, ":/");
		if (rest[host_len] == ':')
			port = rest + host_len + 1;
	}
	if (host_len == 0 || host_len >= sizeof(ep_r->host)) {
		snprintf(error_r, error_size, "url: missing or too long host");
		return -1;
	}
	memcpy(ep_r->host, rest, host_len);
	ep_r->host[host_len] = '\0';
	if (port != NULL) {
		size_t digits = strspn(port, "0123456789");
		if (digits == 0 || digits > 5 || (port[digits] != '\0' && port[digits] != '/') ||
		    atoi(port) > 65535 || atoi(port) == 0) {
			snprintf(error_r, error_size, "url: bad port");
			return -1;
		}
		snprintf(ep_r->port, sizeof(ep_r->port), "%.*s", (int)digits, port);
	}
	if (ep_r->security == IMAP_PLAINTEXT && !host_is_loopback(ep_r->host)) {
		snprintf(error_r, error_size,
			 "allow_plaintext is only accepted for a loopback server (127.0.0.0/8, ::1, "
			 "localhost); use imaps:// or STARTTLS");
		return -1;
	}
	ep_r->timeout_ms = 30000;
	return 0;
}

/* --- TLS context --- */

void *imap_tls_context_new(const char *ca_file, const char *ca_path, char *error_r,
			   size_t error_size)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (ctx == NULL) {
		snprintf(error_r, error_size, "cannot create TLS context");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	int ok = (ca_file != NULL || ca_path != NULL)
			 ? SSL_CTX_load_verify_locations(ctx, ca_file, ca_path)
			 : SSL_CTX_set_default_verify_paths(ctx);
	if (ok != 1) {
		snprintf(error_r, error_size, "cannot load CA certificates from %s",
			 ca_file ? ca_file : ca_path ? ca_path : "the system store");
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

void imap_tls_context_free(void *ssl_ctx)
{
	SSL_CTX_free(ssl_ctx);
}

/* --- time --- */

static int64_t monotonic_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t imap_deadline_after(int timeout_ms)
{
	return monotonic_ms() + timeout_ms;
}

/* Milliseconds the next I/O may wait; 0 when the deadline has passed. */
static int clock_remaining(const struct io_clock *c)
{
	int64_t wait = c->timeout_ms;

	if (c->deadline_ms != 0) {
		int64_t left = c->deadline_ms - monotonic_ms();
		if (left < wait)
			wait = left;
	}
	return wait > 0 ? (int)wait : 0;
}

/*
 * Wait until fd is ready for events, at most what the clock allows. 0 when ready; -1 with
 * errno ETIMEDOUT when the budget is spent (or was before the wait), other errno on a poll
 * error. The socket is non-blocking and every read, write and TLS step that would block comes
 * here, so the wait is bounded by the attempt's deadline whatever the peer does: a timeout set
 * on the socket (SO_RCVTIMEO) would bound each read(2) instead, and OpenSSL calls read(2) once
 * per fragment of a TLS record, so a server dripping one byte every (timeout - epsilon) held a
 * worker for a timeout per byte.
 */
static int clock_wait(int fd, short events, const struct io_clock *c)
{
	for (;;) {
		int wait = clock_remaining(c);
		if (wait <= 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		struct pollfd pfd = { .fd = fd, .events = events };
		int pr = poll(&pfd, 1, wait);
		if (pr > 0)
			return 0; /* readable, writable, or an error or hang-up the next call reports */
		if (pr == 0) {
			/* all that was left has passed (or, without a deadline, one timeout_ms) */
			errno = ETIMEDOUT;
			return -1;
		}
		if (errno != EINTR)
			return -1;
	}
}

/* The budget is checked before each call too, not only when a call would block: a server
 * that always has one more byte ready must not keep a worker past its deadline either. */
static int clock_check(const struct io_clock *c)
{
	if (clock_remaining(c) <= 0) {
		errno = ETIMEDOUT;
		return -1;
	}
	return 0;
}

/* After an SSL call returned n <= 0: 0 to call it again once the socket is ready (waited
 * here, within the budget), -1 to give up (errno ETIMEDOUT for a spent budget). */
static int tls_retry(SSL *ssl, int n, int fd, const struct io_clock *c)
{
	switch (SSL_get_error(ssl, n)) {
	case SSL_ERROR_WANT_READ:
		return clock_wait(fd, POLLIN, c);
	case SSL_ERROR_WANT_WRITE:
		return clock_wait(fd, POLLOUT, c);
	case SSL_ERROR_SYSCALL:
		return errno == EINTR ? 0 : -1;
	default:
		return -1;
	}
}

static void clock_progress(struct io_clock *c)
{
	if (c->extend_on_write && c->deadline_ms != 0) {
		int64_t later = monotonic_ms() + c->timeout_ms;
		if (later > c->deadline_ms)
			c->deadline_ms = later;
	}
}

/* --- transport: a mailstream low driver over a socket or an SSL session --- */

struct transport {
	int fd;
	SSL *ssl;
	struct io_clock *clock;     /* the connection's */
};

static struct transport *low_transport(mailstream_low *low)
{
	return low->data;
}

static ssize_t low_read(mailstream_low *low, void *buf, size_t count)
{
	struct transport *t = low_transport(low);
	int chunk = count > INT32_MAX ? INT32_MAX : (int)count;

	for (;;) {
		if (clock_check(t->clock) < 0)
			return -1;
		if (t->ssl != NULL) {
			/* SSL_get_error reads the thread's error queue and errno: no stale values */
			ERR_clear_error();
			errno = 0;
			int n = SSL_read(t->ssl, buf, chunk);
			if (n > 0)
				return n;
			if (SSL_get_error(t->ssl, n) == SSL_ERROR_ZERO_RETURN)
				return 0;
			if (tls_retry(t->ssl, n, t->fd, t->clock) < 0)
				return -1;
			continue;
		}
		ssize_t n = read(t->fd, buf, count);
		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		if ((errno != EAGAIN && errno != EWOULDBLOCK) ||
		    clock_wait(t->fd, POLLIN, t->clock) < 0)
			return -1;
	}
}

static ssize_t low_write(mailstream_low *low, const void *buf, size_t count)
{
	struct transport *t = low_transport(low);
	int chunk = count > INT32_MAX ? INT32_MAX : (int)count;

	for (;;) {
		if (clock_check(t->clock) < 0)
			return -1;
		if (t->ssl != NULL) {
			/* Retried with the same buffer and length after WANT_READ/WANT_WRITE, as
			 * OpenSSL requires of a non-blocking SSL_write. */
			ERR_clear_error();
			errno = 0;
			int n = SSL_write(t->ssl, buf, chunk);
			if (n > 0) {
				clock_progress(t->clock);
				return n;
			}
			if (tls_retry(t->ssl, n, t->fd, t->clock) < 0)
				return -1;
			continue;
		}
		ssize_t n = send(t->fd, buf, count, MSG_NOSIGNAL);
		if (n > 0) {
			clock_progress(t->clock);
			return n;
		}
		if (n == 0)
			return 0;
		if (errno == EINTR)
			continue;
		if ((errno != EAGAIN && errno != EWOULDBLOCK) ||
		    clock_wait(t->fd, POLLOUT, t->clock) < 0)
			return -1;
	}
}

static int low_close(mailstream_low *low)
{
	struct transport *t = low_transport(low);

	if (t->ssl != NULL)
		SSL_shutdown(t->ssl);
	if (t->fd >= 0)
		close(t->fd);
	t->fd = -1;
	return 0;
}

static int low_get_fd(mailstream_low *low)
{
	return low_transport(low)->fd;
}

/* Free without closing the socket: the STARTTLS switch keeps it for the TLS transport. */
static void low_free(mailstream_low *low)
{
	struct transport *t = low_transport(low);

	if (t->ssl != NULL)
		SSL_free(t->ssl);
	free(t);
	free(low);
}

static void low_cancel(mailstream_low *low)
{
}

static struct mailstream_cancel *low_get_cancel(mailstream_low *low)
{
	return NULL;
}

static carray *low_get_certificate_chain(mailstream_low *low)
{
	return NULL;
}

static int low_idle_noop(mailstream_low *low)
{
	return -1;
}

static mailstream_low_driver transport_driver = {
	.mailstream_read = low_read,
	.mailstream_write = low_write,
	.mailstream_close = low_close,
	.mailstream_get_fd = low_get_fd,
	.mailstream_free = low_free,
	.mailstream_cancel = low_cancel,
	.mailstream_get_cancel = low_get_cancel,
	.mailstream_get_certificate_chain = low_get_certificate_chain,
	.mailstream_setup_idle = low_idle_noop,
	.mailstream_unsetup_idle = low_idle_noop,
	.mailstream_interrupt_idle = low_idle_noop,
};

static mailstream_low *transport_new(int fd, SSL *ssl, struct io_clock *clock)
{
	struct transport *t = calloc(1, sizeof(*t));
	if (t == NULL)
		return NULL;
	t->fd = fd;
	t->ssl = ssl;
	t->clock = clock;
	mailstream_low *low = mailstream_low_new(t, &transport_driver);
	if (low == NULL)
		free(t);
	return low;
}

/* --- connect --- */

static int connect_socket(const struct imap_endpoint *ep, const struct io_clock *clock,
			  struct status *st_r, char *reason, size_t reason_size)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res, *ai;
	int gai = getaddrinfo(ep->host, ep->port, &hints, &res);

	if (gai != 0) {
		status_must(st_r, 451, "4.4.3", "IMAP server address not found");
		snprintf(reason, reason_size, "resolve %s: %s", ep->host, gai_strerror(gai));
		return -1;
	}
	int fd = -1, last_errno = 0;
	for (ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
			    ai->ai_protocol);
		if (fd < 0) {
			last_errno = errno;
			continue;
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
			last_errno = errno;
			close(fd);
			fd = -1;
			continue;
		}
		struct pollfd pfd = { .fd = fd, .events = POLLOUT };
		int wait = clock_remaining(clock);
		int pr = wait > 0 ? poll(&pfd, 1, wait) : 0;
		int soerr = 0;
		socklen_t len = sizeof(soerr);
		if (pr <= 0) {
			last_errno = pr == 0 ? ETIMEDOUT : errno;
			close(fd);
			fd = -1;
			continue;
		}
		getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
		if (soerr != 0) {
			last_errno = soerr;
			close(fd);
			fd = -1;
		}
	}
	freeaddrinfo(res);
	if (fd < 0) {
		status_must(st_r, 451, "4.4.1", "IMAP server not reachable");
		snprintf(reason, reason_size, "connect %s:%s: %s", ep->host, ep->port,
			 strerror(last_errno));
		return -1;
	}
	/* Non-blocking from here on: every wait is a poll() on the clock (clock_wait). */
	return fd;
}

static SSL *tls_handshake(const struct imap_endpoint *ep, int fd, const struct io_clock *clock,
			  struct status *st_r, char *reason, size_t reason_size)
{
	SSL *ssl = SSL_new(ep->ssl_ctx);
	struct in_addr a4;
	struct in6_addr a6;

	if (ssl == NULL) {
		status_must(st_r, 451, "4.3.0", "TLS setup failed");
		snprintf(reason, reason_size, "SSL_new failed");
		return NULL;
	}
	X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
	if (inet_pton(AF_INET, ep->host, &a4) == 1 || inet_pton(AF_INET6, ep->host, &a6) == 1) {
		X509_VERIFY_PARAM_set1_ip_asc(param, ep->host);
	} else {
		SSL_set_tlsext_host_name(ssl, ep->host);
		X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		SSL_set1_host(ssl, ep->host);
	}
	SSL_set_fd(ssl, fd);
	int done;
	do {
		ERR_clear_error();
		errno = 0;
		done = clock_check(clock) < 0 ? -1 : SSL_connect(ssl);
	} while (done <= 0 && clock_remaining(clock) > 0 && tls_retry(ssl, done, fd, clock) == 0);
	if (done != 1) {
		long verify = SSL_get_verify_result(ssl);
		if (verify != X509_V_OK) {
			status_must(st_r, 451, "4.7.5", "IMAP server certificate not trusted");
			snprintf(reason, reason_size, "certificate of %s: %s", ep->host,
				 X509_verify_cert_error_string(verify));
		} else {
			unsigned long e = ERR_peek_last_error();
			status_must(st_r, 451, "4.4.2", "TLS handshake with IMAP server failed");
			snprintf(reason, reason_size, "TLS handshake with %s: %s", ep->host,
				 e ? ERR_reason_error_string(e) : strerror(errno));
		}
		ERR_clear_error();
		SSL_free(ssl);
		return NULL;
	}
	return ssl;
}

/* --- the stream --- */

mailstream *imap_transport_open(const struct imap_endpoint *ep, struct io_clock *clock,
				struct status *st_r, char *reason, size_t reason_size)
{
	SSL *ssl = NULL;
	int fd = connect_socket(ep, clock, st_r, reason, reason_size);

	if (fd < 0)
		return NULL;
	if (ep->security == IMAP_TLS_IMPLICIT) {
		ssl = tls_handshake(ep, fd, clock, st_r, reason, reason_size);
		if (ssl == NULL) {
			close(fd);
			return NULL;
		}
	}
	mailstream_low *low = transport_new(fd, ssl, clock);
	mailstream *stream = low != NULL ? mailstream_new(low, 16384) : NULL;
	if (stream == NULL) {
		if (low != NULL) {
			mailstream_low_close(low);
			mailstream_low_free(low);
		} else {
			if (ssl != NULL)
				SSL_free(ssl);
			close(fd);
		}
		status_must(st_r, 451, "4.3.0", "Local error in processing");
		snprintf(reason, reason_size, "out of memory");
		return NULL;
	}
	return stream;
}

int imap_transport_starttls(mailstream *stream, const struct imap_endpoint *ep,
			    struct io_clock *clock, struct status *st_r, char *reason,
			    size_t reason_size)
{
	/* Anything buffered before the handshake was sent in clear text after the OK: an
	 * injection attempt (CVE-2011-0411 class). Refuse it. */
	if (stream->read_buffer_len != 0) {
		status_must(st_r, 451, "4.7.0", "IMAP server sent data before TLS");
		snprintf(reason, reason_size, "STARTTLS at %s: pipelined plaintext", ep->host);
		return -1;
	}
	mailstream_low *plain = mailstream_get_low(stream);
	int fd = mailstream_low_get_fd(plain);
	SSL *ssl = tls_handshake(ep, fd, clock, st_r, reason, reason_size);
	if (ssl == NULL)
		return -1;
	mailstream_low *tls = transport_new(fd, ssl, clock);
	if (tls == NULL) {
		SSL_free(ssl);
		status_must(st_r, 451, "4.3.0", "Local error in processing");
		snprintf(reason, reason_size, "out of memory");
		return -1;
	}
	mailstream_low_free(plain); /* frees the plain transport, keeps the socket */
	mailstream_set_low(stream, tls);
	return 0;
}

bool imap_transport_peer_spoke(mailstream *stream)
{
	if (stream == NULL)
		return true;
	if (stream->read_buffer_len > 0)
		return true;
	struct pollfd pfd = { .fd = mailstream_low_get_fd(mailstream_get_low(stream)),
			      .events = POLLIN | POLLRDHUP };
	return poll(&pfd, 1, 0) != 0;
}
