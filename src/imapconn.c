/*
 * imapconn - one blocking IMAP client connection (libetpan) with TLS done by OpenSSL.
 *
 * Owns: the socket, the SSL object, the libetpan session (which owns the mailstream). The
 * transport is a mailstream low-level driver of our own over either the plain socket or an
 * OpenSSL session, so the same read/write code (with SO_RCVTIMEO/SO_SNDTIMEO timeouts) serves
 * imaps://, STARTTLS and the explicitly allowed plain-text loopback case.
 *
 * Error contract: functions return 0/-1 (NULL for open) and fill a status plus a short reason.
 */
#include "imapconn.h"

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

/*
 * Time allowed for I/O. Every read and write waits at most timeout_ms, and never past
 * deadline_ms (CLOCK_MONOTONIC milliseconds; 0: no deadline) -- the budget of one delivery
 * attempt, so a stalled server costs the attempt one timeout, not one per step (NOOP check,
 * connect, greeting, login, APPEND, CREATE, ...). While a message literal is being sent
 * (extend_on_write), each write that made progress moves the deadline to timeout_ms after it:
 * a big message on a slow link is bounded by inactivity, not by a total.
 */
struct io_clock {
	int timeout_ms;
	int64_t deadline_ms;
	bool extend_on_write;
};

struct imapconn {
	mailimap *imap;
	int fd;
	bool broken;
	bool literal_started;       /* the last APPEND began to send message bytes */
	struct io_clock clock;
	char user[256];
	time_t last_used;
};

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

/* Set the socket's read and write timeouts to what the clock allows; -1 (ETIMEDOUT) when
 * nothing is left. A zero timeval would mean "wait for ever": never set it. */
static int clock_arm(int fd, const struct io_clock *c)
{
	int wait = clock_remaining(c);

	if (wait <= 0) {
		errno = ETIMEDOUT;
		return -1;
	}
	struct timeval tv = { .tv_sec = wait / 1000, .tv_usec = (wait % 1000) * 1000 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return 0;
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

	for (;;) {
		if (clock_arm(t->fd, t->clock) < 0)
			return -1;
		if (t->ssl != NULL) {
			int n = SSL_read(t->ssl, buf, count > INT32_MAX ? INT32_MAX : (int)count);
			if (n > 0)
				return n;
			int err = SSL_get_error(t->ssl, n);
			if (err == SSL_ERROR_ZERO_RETURN)
				return 0;
			if (err == SSL_ERROR_SYSCALL && errno == EINTR)
				continue;
			return -1;
		}
		ssize_t n = read(t->fd, buf, count);
		if (n < 0 && errno == EINTR)
			continue;
		return n;
	}
}

static ssize_t low_write(mailstream_low *low, const void *buf, size_t count)
{
	struct transport *t = low_transport(low);

	for (;;) {
		if (clock_arm(t->fd, t->clock) < 0)
			return -1;
		if (t->ssl != NULL) {
			int n = SSL_write(t->ssl, buf, count > INT32_MAX ? INT32_MAX : (int)count);
			if (n > 0) {
				clock_progress(t->clock);
				return n;
			}
			if (SSL_get_error(t->ssl, n) == SSL_ERROR_SYSCALL && errno == EINTR)
				continue;
			return -1;
		}
		ssize_t n = send(t->fd, buf, count, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n > 0)
			clock_progress(t->clock);
		return n;
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
	/* Blocking from here on, with timeouts on every read and write (clock_arm). */
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
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
	if (clock_arm(fd, clock) < 0 || SSL_connect(ssl) != 1) {
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

static void conn_fail_stream(struct imapconn *conn, struct status *st_r, const char *what,
			     int r, char *reason, size_t reason_size)
{
	conn->broken = true;
	status_must(st_r, 451, "4.4.2", "Connection to IMAP server lost");
	snprintf(reason, reason_size, "%s: libetpan error %d", what, r);
}

struct imapconn *imapconn_open(const struct imap_endpoint *ep, int64_t deadline_ms,
			       struct status *st_r, char *reason, size_t reason_size)
{
	struct imapconn *conn = calloc(1, sizeof(*conn));
	SSL *ssl = NULL;
	mailstream_low *low;
	mailstream *stream;

	if (conn == NULL) {
		status_must(st_r, 451, "4.3.0", "Local error in processing");
		snprintf(reason, reason_size, "out of memory");
		return NULL;
	}
	conn->clock.timeout_ms = ep->timeout_ms;
	conn->clock.deadline_ms = deadline_ms;
	conn->fd = connect_socket(ep, &conn->clock, st_r, reason, reason_size);
	if (conn->fd < 0) {
		free(conn);
		return NULL;
	}
	if (ep->security == IMAP_TLS_IMPLICIT) {
		ssl = tls_handshake(ep, conn->fd, &conn->clock, st_r, reason, reason_size);
		if (ssl == NULL) {
			close(conn->fd);
			free(conn);
			return NULL;
		}
	}
	low = transport_new(conn->fd, ssl, &conn->clock);
	stream = low ? mailstream_new(low, 16384) : NULL;
	conn->imap = mailimap_new(0, NULL);
	if (low == NULL || stream == NULL || conn->imap == NULL) {
		if (stream != NULL)
			mailstream_close(stream);
		else if (low != NULL) {
			mailstream_low_close(low);
			mailstream_low_free(low);
		} else {
			if (ssl != NULL)
				SSL_free(ssl);
			close(conn->fd);
		}
		if (conn->imap != NULL)
			mailimap_free(conn->imap);
		free(conn);
		status_must(st_r, 451, "4.3.0", "Local error in processing");
		snprintf(reason, reason_size, "out of memory");
		return NULL;
	}
	mailimap_set_timeout(conn->imap, ep->timeout_ms / 1000 > 0 ? ep->timeout_ms / 1000 : 1);
	int r = mailimap_connect(conn->imap, stream); /* the session owns the stream now */
	if (r != MAILIMAP_NO_ERROR_AUTHENTICATED && r != MAILIMAP_NO_ERROR_NON_AUTHENTICATED) {
		status_must(st_r, 451, "4.4.2", "IMAP server did not greet");
		snprintf(reason, reason_size, "greeting from %s:%s: libetpan error %d", ep->host,
			 ep->port, r);
		mailimap_free(conn->imap);
		free(conn);
		return NULL;
	}
	if (ep->security == IMAP_TLS_STARTTLS) {
		r = mailimap_starttls(conn->imap);
		if (r != MAILIMAP_NO_ERROR) {
			status_must(st_r, 451, "4.7.0", "IMAP server refused STARTTLS");
			snprintf(reason, reason_size, "STARTTLS at %s: libetpan error %d", ep->host, r);
			imapconn_close(&conn);
			return NULL;
		}
		/* Anything buffered before the handshake was sent in clear text after the OK: an
		 * injection attempt (CVE-2011-0411 class). Refuse it. */
		if (conn->imap->imap_stream->read_buffer_len != 0) {
			status_must(st_r, 451, "4.7.0", "IMAP server sent data before TLS");
			snprintf(reason, reason_size, "STARTTLS at %s: pipelined plaintext", ep->host);
			imapconn_close(&conn);
			return NULL;
		}
		ssl = tls_handshake(ep, conn->fd, &conn->clock, st_r, reason, reason_size);
		if (ssl == NULL) {
			imapconn_close(&conn);
			return NULL;
		}
		mailstream_low *old = mailstream_get_low(conn->imap->imap_stream);
		mailstream_low *tls = transport_new(conn->fd, ssl, &conn->clock);
		if (tls == NULL) {
			SSL_free(ssl);
			status_must(st_r, 451, "4.3.0", "Local error in processing");
			snprintf(reason, reason_size, "out of memory");
			imapconn_close(&conn);
			return NULL;
		}
		mailstream_low_free(old); /* frees the plain transport, keeps the socket */
		mailstream_set_low(conn->imap->imap_stream, tls);
	}
	conn->last_used = time(NULL);
	return conn;
}

void imapconn_close(struct imapconn **connp)
{
	struct imapconn *conn = *connp;

	if (conn == NULL)
		return;
	*connp = NULL;
	if (!conn->broken && conn->imap->imap_state >= MAILIMAP_STATE_AUTHENTICATED)
		mailimap_logout(conn->imap);
	mailimap_free(conn->imap);
	free(conn);
}

/* The resp-text-code atom of the last response, e.g. "OVERQUOTA", or "". */
static const char *response_code(const struct imapconn *conn)
{
	const struct mailimap_response_info *info = conn->imap->imap_response_info;

	if (info != NULL && info->rsp_atom != NULL)
		return info->rsp_atom;
	return "";
}

static const char *response_text(const struct imapconn *conn)
{
	return conn->imap->imap_response != NULL ? conn->imap->imap_response : "";
}

static bool stream_error(int r)
{
	return r == MAILIMAP_ERROR_STREAM || r == MAILIMAP_ERROR_PARSE || r == MAILIMAP_ERROR_FATAL ||
	       r == MAILIMAP_ERROR_PROTOCOL || r == MAILIMAP_ERROR_BAD_STATE ||
	       r == MAILIMAP_ERROR_MEMORY;
}

int imapconn_login(struct imapconn *conn, enum imap_login_mode mode, const char *user,
		   const char *admin, const char *password, struct status *st_r, char *reason,
		   size_t reason_size)
{
	int r;

	switch (mode) {
	case IMAP_LOGIN_PLAIN_AUTHZID:
		r = mailimap_authenticate(conn->imap, "PLAIN", NULL, NULL, NULL, user, admin,
					  password, NULL);
		break;
	case IMAP_LOGIN_MASTER_SUFFIX: {
		char login[600];
		snprintf(login, sizeof(login), "%s*%s", user, admin);
		r = mailimap_login(conn->imap, login, password);
		break;
	}
	default:
		r = mailimap_login(conn->imap, user, password);
		break;
	}
	if (r == MAILIMAP_NO_ERROR) {
		snprintf(conn->user, sizeof(conn->user), "%s", user);
		return 0;
	}
	if (stream_error(r)) {
		conn_fail_stream(conn, st_r, "login", r, reason, reason_size);
		return -1;
	}
	const char *code = response_code(conn);
	/* A failed login is ours to fix (the gateway's credential) unless the server says the
	 * user does not exist: never bounce on doubt. */
	if (strcasecmp(code, "NONEXISTENT") == 0)
		status_must(st_r, 550, "5.1.1", "no such IMAP user");
	else if (strcasecmp(code, "UNAVAILABLE") == 0)
		status_must(st_r, 451, "4.3.0", "IMAP server temporarily unavailable");
	else
		status_must(st_r, 451, "4.7.0", "IMAP login failed");
	snprintf(reason, reason_size, "login as %s (mode %d): error %d [%s] %.120s", user, (int)mode,
		 r, code, response_text(conn));
	return -1;
}

void imap_map_append_failure(const char *code, bool overquota_permanent, struct status *st_r)
{
	/* RFC 5530 response codes; anything unknown is temporary (design.md). */
	if (strcasecmp(code, "OVERQUOTA") == 0) {
		if (overquota_permanent)
			status_must(st_r, 552, "5.2.2", "Mailbox full");
		else
			status_must(st_r, 452, "4.2.2", "Mailbox full");
	} else if (strcasecmp(code, "LIMIT") == 0 || strcasecmp(code, "TOOBIG") == 0) {
		status_must(st_r, 552, "5.3.4", "Message too big for mailbox");
	} else if (strcasecmp(code, "NOPERM") == 0) {
		status_must(st_r, 451, "4.7.1", "No permission to store into the mailbox");
	} else if (strcasecmp(code, "INUSE") == 0) {
		status_must(st_r, 451, "4.2.0", "Mailbox in use");
	} else {
		/* UNAVAILABLE, SERVERBUG, NONEXISTENT without TRYCREATE, none at all, ... */
		status_must(st_r, 451, "4.3.0", "IMAP server refused the message");
	}
}

static struct mailimap_flag_list *build_flags(const char *flags)
{
	struct mailimap_flag_list *list = mailimap_flag_list_new_empty();
	char buf[512];
	char *save = NULL;

	if (list == NULL || flags == NULL)
		return list;
	snprintf(buf, sizeof(buf), "%s", flags);
	for (char *tok = strtok_r(buf, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		struct mailimap_flag *f;
		if (strcasecmp(tok, "\\Seen") == 0)
			f = mailimap_flag_new_seen();
		else if (strcasecmp(tok, "\\Flagged") == 0)
			f = mailimap_flag_new_flagged();
		else if (strcasecmp(tok, "\\Answered") == 0)
			f = mailimap_flag_new_answered();
		else if (strcasecmp(tok, "\\Draft") == 0)
			f = mailimap_flag_new_draft();
		else if (strcasecmp(tok, "\\Deleted") == 0)
			f = mailimap_flag_new_deleted();
		else if (tok[0] == '\\')
			continue; /* an unknown system flag is refused at config time */
		else
			f = mailimap_flag_new_flag_keyword(strdup(tok));
		if (f != NULL && mailimap_flag_list_add(list, f) != MAILIMAP_NO_ERROR)
			mailimap_flag_free(f);
	}
	return list;
}

static bool literal_plus_ok(struct imapconn *conn, const char *mailbox);

/*
 * Cyrus IMAP (checked with 3.6.1) refuses an APPEND over quota with a bare "NO Over quota": no
 * [OVERQUOTA] code (RFC 5530). Only that exact text, the whole of the response text, counts:
 * anything longer or different stays "refused" (451 4.3.0), never a guess towards a bounce.
 */
bool imap_text_means_overquota(const char *text)
{
	size_t len = strlen(text);

	while (len > 0 && (text[len - 1] == ' ' || text[len - 1] == '\r' || text[len - 1] == '\n'))
		len--;
	return len == strlen("Over quota") && strncasecmp(text, "Over quota", len) == 0;
}

/* The server answered NO to an APPEND: [TRYCREATE] (the caller may create the folder), or the
 * RFC 5530 code mapped to a reply. Always -1. */
static int append_refused(struct imapconn *conn, const char *command, const char *mailbox,
			  const char *what, bool overquota_permanent,
			  struct imap_append_result *res_r, struct status *st_r, char *reason,
			  size_t reason_size)
{
	const struct mailimap_response_info *info = conn->imap->imap_response_info;
	const char *code = response_code(conn);

	res_r->trycreate = info != NULL && info->rsp_trycreate;
	if (code[0] == '\0' && imap_text_means_overquota(response_text(conn)))
		code = "OVERQUOTA";
	if (res_r->trycreate)
		status_must(st_r, 451, "4.3.0", "IMAP folder does not exist");
	else
		imap_map_append_failure(code, overquota_permanent, st_r);
	snprintf(reason, reason_size, "%s to %s: %s [%s] %.120s", command, mailbox, what,
		 res_r->trycreate ? "TRYCREATE" : code, response_text(conn));
	return -1;
}

int imapconn_append(struct imapconn *conn, const char *mailbox, const char *flags,
		    time_t internaldate, const char *data, size_t len, bool overquota_permanent,
		    struct imap_append_result *res_r, struct status *st_r, char *reason,
		    size_t reason_size)
{
	if (literal_plus_ok(conn, mailbox)) {
		/* One write and no "+" round trip, and the literal without libetpan's copy. */
		struct imap_append_item item = { .data = data, .len = len,
						 .internaldate = internaldate };
		int r = imapconn_multiappend(conn, mailbox, flags, &item, 1, overquota_permanent,
					     res_r, st_r, reason, reason_size);
		res_r->uid = item.uid;
		return r;
	}

	struct tm tm;
	struct mailimap_flag_list *flag_list = build_flags(flags);
	struct mailimap_date_time *date;
	uint32_t uidvalidity = 0, uid = 0;

	memset(res_r, 0, sizeof(*res_r));
	gmtime_r(&internaldate, &tm);
	date = mailimap_date_time_new(tm.tm_mday, tm.tm_mon + 1, tm.tm_year + 1900, tm.tm_hour,
				      tm.tm_min, tm.tm_sec, 0);
	/* libetpan sends the literal itself: from here on we cannot tell what reached the server,
	 * and each write of it is progress. */
	conn->literal_started = true;
	conn->clock.extend_on_write = true;
	int r = mailimap_uidplus_append(conn->imap, mailbox, flag_list, date, data, len,
					&uidvalidity, &uid);
	conn->clock.extend_on_write = false;
	if (flag_list != NULL)
		mailimap_flag_list_free(flag_list);
	if (date != NULL)
		mailimap_date_time_free(date);
	conn->last_used = time(NULL);
	if (r == MAILIMAP_NO_ERROR) {
		res_r->uidvalidity = uidvalidity;
		res_r->uid = uid;
		return 0;
	}
	if (stream_error(r)) {
		/* Lost mid-APPEND: the server may or may not have stored it; 4xx, the MTA retries. */
		conn_fail_stream(conn, st_r, "append", r, reason, reason_size);
		return -1;
	}
	char what[32];
	snprintf(what, sizeof(what), "error %d", r);
	int refused = append_refused(conn, "append", mailbox, what, overquota_permanent, res_r,
				     st_r, reason, reason_size);
	snprintf(res_r->code, sizeof(res_r->code), "%s", response_code(conn));
	return refused;
}

/*
 * MULTIAPPEND. libetpan has no MULTIAPPEND (RFC 3502) and no LITERAL+ (RFC 7888), so the
 * command is written here and only the tagged answer is parsed by libetpan. These helpers are
 * exported by libetpan 1.9 but declared only in its private mailimap_sender.h.
 */
int mailimap_literal_data_send(mailstream *fd, const char *literal, size_t len,
			       size_t progr_rate, progress_function *progr_fun);

/* APPEND written by hand needs LITERAL+ and a mailbox name that fits a quoted string. */
static bool literal_plus_ok(struct imapconn *conn, const char *mailbox)
{
	if (conn->broken || !mailimap_has_extension(conn->imap, "LITERAL+"))
		return false;
	/* Written as a quoted string: printable ASCII without quote and backslash only (anything
	 * else needs a literal, which the single APPEND path sends). */
	for (const unsigned char *p = (const unsigned char *)mailbox; *p != '\0'; p++) {
		if (*p < 0x20 || *p > 0x7e || *p == '"' || *p == '\\')
			return false;
	}
	return mailbox[0] != '\0';
}

bool imapconn_can_multiappend(struct imapconn *conn, const char *mailbox)
{
	return mailimap_has_extension(conn->imap, "MULTIAPPEND") &&
	       literal_plus_ok(conn, mailbox);
}

static int stream_put(struct imapconn *conn, const char *text, size_t len)
{
	return mailstream_write(conn->imap->imap_stream, text, len) == (ssize_t)len ? 0 : -1;
}

/* Is every CR of data followed by LF and every LF preceded by CR? Then libetpan's conversion
 * of bare CR and LF to CRLF (a loop over every byte, twice: once to count, once to send; 40%
 * of lmtpgw's CPU for 5 MB messages) would change nothing, and the bytes go out as they are.
 * Two memchr a line. */
static bool crlf_clean(const char *data, size_t len)
{
	const char *p = data, *end = data + len;

	while (p < end) {
		const char *cr = memchr(p, '\r', (size_t)(end - p));
		const char *stop = cr != NULL ? cr : end;
		if (memchr(p, '\n', (size_t)(stop - p)) != NULL)
			return false; /* an LF without its CR */
		if (cr == NULL)
			return true;
		if (cr + 1 >= end || cr[1] != '\n')
			return false; /* a CR without its LF */
		p = cr + 2;
	}
	return true;
}

/* The literal's octet count as sent, and the sending: raw when already CRLF-clean. */
static size_t literal_size(const char *data, size_t len, bool clean)
{
	return clean ? len : mailstream_get_data_crlf_size(data, len);
}

static int literal_send(struct imapconn *conn, const char *data, size_t len, bool clean)
{
	if (clean)
		return len == 0 ? 0 : stream_put(conn, data, len);
	return mailimap_literal_data_send(conn->imap->imap_stream, data, len, 0, NULL) ==
			       MAILIMAP_NO_ERROR
		       ? 0
		       : -1;
}

/* The uid-set of APPENDUID ("5:12" or "5,7,9:10"), expanded in order into uids[count]. */
static void apnd_uids(struct imapconn *conn, uint32_t *uidvalidity_r, uint32_t *uids,
		      size_t count)
{
	const struct mailimap_response_info *info = conn->imap->imap_response_info;
	size_t n = 0;

	*uidvalidity_r = 0;
	if (info == NULL || info->rsp_extension_list == NULL)
		return;
	for (clistiter *cur = clist_begin(info->rsp_extension_list); cur != NULL;
	     cur = clist_next(cur)) {
		struct mailimap_extension_data *ext = clist_content(cur);
		if (ext->ext_extension != &mailimap_extension_uidplus ||
		    ext->ext_type != MAILIMAP_UIDPLUS_RESP_CODE_APND)
			continue;
		struct mailimap_uidplus_resp_code_apnd *apnd = ext->ext_data;
		*uidvalidity_r = apnd->uid_uidvalidity;
		if (apnd->uid_set == NULL)
			return;
		for (clistiter *it = clist_begin(apnd->uid_set->set_list); it != NULL && n < count;
		     it = clist_next(it)) {
			struct mailimap_set_item *item = clist_content(it);
			/* "7:5" is the range 5 to 7 (RFC 3501 9, RFC 4315 3) */
			uint64_t lo = item->set_first, hi = item->set_last;
			if (lo > hi) {
				uint64_t swap = lo;
				lo = hi;
				hi = swap;
			}
			for (uint64_t u = lo; u <= hi && n < count; u++)
				uids[n++] = (uint32_t)u;
		}
		if (n != count) /* not one UID a message: name none rather than wrong ones */
			memset(uids, 0, count * sizeof(*uids));
		return;
	}
}

int imapconn_multiappend(struct imapconn *conn, const char *mailbox, const char *flags,
			 struct imap_append_item *items, size_t count, bool overquota_permanent,
			 struct imap_append_result *res_r, struct status *st_r, char *reason,
			 size_t reason_size)
{
	static const char months[][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	mailimap *imap = conn->imap;
	struct mailimap_response *response = NULL;
	char head[700];
	int r;

	memset(res_r, 0, sizeof(*res_r));
	conn->literal_started = false;
	for (size_t i = 0; i < count; i++)
		items[i].uid = 0;
	r = mailimap_send_current_tag(imap);
	int n = snprintf(head, sizeof(head), "APPEND \"%s\"", mailbox);
	if (r != MAILIMAP_NO_ERROR || n < 0 || (size_t)n >= sizeof(head) ||
	    stream_put(conn, head, (size_t)n) < 0)
		goto stream_failed;
	for (size_t i = 0; i < count; i++) {
		struct tm tm;
		gmtime_r(&items[i].internaldate, &tm);
		bool clean = crlf_clean(items[i].data, items[i].len);
		size_t size = literal_size(items[i].data, items[i].len, clean);
		/* Each message: SP [flag-list SP] date-time SP literal+ (RFC 3502 3, RFC 7888). */
		n = snprintf(head, sizeof(head), " %s%s%s\"%02d-%s-%04d %02d:%02d:%02d +0000\" {%zu+}\r\n",
			     flags[0] ? "(" : "", flags, flags[0] ? ") " : "", tm.tm_mday,
			     months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
			     tm.tm_sec, size);
		if (n < 0 || (size_t)n >= sizeof(head) || stream_put(conn, head, (size_t)n) < 0 ||
		    size > UINT32_MAX)
			goto stream_failed;
		/* From the first message byte on, a failure leaves the outcome unknown; until
		 * then the server cannot have stored anything (imapconn_literal_started). */
		conn->literal_started = true;
		conn->clock.extend_on_write = true;
		if (literal_send(conn, items[i].data, items[i].len, clean) < 0)
			goto stream_failed;
	}
	if (stream_put(conn, "\r\n", 2) < 0 || mailstream_flush(imap->imap_stream) == -1)
		goto stream_failed;
	conn->clock.extend_on_write = false;
	if (mailimap_read_line(imap) == NULL)
		goto stream_failed;
	r = mailimap_parse_response(imap, &response);
	conn->last_used = time(NULL);
	if (r == MAILIMAP_ERROR_PROTOCOL) {
		/* libetpan's answer to a tagged BAD (and to a foreign tag, which a server in sync
		 * does not send): the command was refused whole, nothing stored (RFC 3501 7.1.3,
		 * RFC 3502). Not reused, in case it was the foreign tag. */
		conn->broken = true;
		res_r->refused = true;
		status_must(st_r, 451, "4.3.0", "IMAP server refused the APPEND");
		snprintf(reason, reason_size, "multiappend of %zu to %s: BAD %.120s", count, mailbox,
			 response_text(conn));
		return -1;
	}
	if (r != MAILIMAP_NO_ERROR || response == NULL || response->rsp_resp_done == NULL ||
	    response->rsp_resp_done->rsp_type != MAILIMAP_RESP_DONE_TYPE_TAGGED) {
		if (response != NULL)
			mailimap_response_free(response);
		goto stream_failed;
	}
	int state = response->rsp_resp_done->rsp_data.rsp_tagged->rsp_cond_state->rsp_type;
	mailimap_response_free(response);
	if (state == MAILIMAP_RESP_COND_STATE_OK) {
		uint32_t *uids = calloc(count, sizeof(*uids));
		if (uids != NULL) {
			apnd_uids(conn, &res_r->uidvalidity, uids, count);
			for (size_t i = 0; i < count; i++)
				items[i].uid = uids[i];
			free(uids);
		}
		return 0;
	}
	/* NO: nothing of the batch was stored (RFC 3502 6.3.11: all or none). */
	char what[32];
	snprintf(what, sizeof(what), "%zu messages", count);
	int refused = append_refused(conn, "multiappend", mailbox, what, overquota_permanent,
				     res_r, st_r, reason, reason_size);
	snprintf(res_r->code, sizeof(res_r->code), "%s", response_code(conn));
	return refused;

stream_failed:
	/* Lost mid-command: any of the messages may or may not be stored; 4xx, the MTA retries. */
	conn->clock.extend_on_write = false;
	conn_fail_stream(conn, st_r, "multiappend", MAILIMAP_ERROR_STREAM, reason, reason_size);
	return -1;
}

int imapconn_create(struct imapconn *conn, const char *mailbox, bool subscribe, char *reason,
		    size_t reason_size)
{
	int r = mailimap_create(conn->imap, mailbox);

	if (r != MAILIMAP_NO_ERROR) {
		if (stream_error(r)) {
			conn->broken = true;
			snprintf(reason, reason_size, "create %s: libetpan error %d", mailbox, r);
			return -1;
		}
		if (strcasecmp(response_code(conn), "ALREADYEXISTS") != 0) {
			snprintf(reason, reason_size, "create %s: [%s] %.120s", mailbox,
				 response_code(conn), response_text(conn));
			return -1;
		}
	}
	if (subscribe) {
		r = mailimap_subscribe(conn->imap, mailbox);
		if (stream_error(r)) {
			conn->broken = true;
			snprintf(reason, reason_size, "subscribe %s: libetpan error %d", mailbox, r);
			return -1;
		}
	}
	return 0;
}

int imapconn_find_header(struct imapconn *conn, const char *mailbox, const char *name,
			 const char *value, uint32_t *uid_r, char *reason, size_t reason_size)
{
	int r = mailimap_examine(conn->imap, mailbox);

	if (r != MAILIMAP_NO_ERROR) {
		if (stream_error(r))
			conn->broken = true;
		snprintf(reason, reason_size, "examine %s: error %d [%s]", mailbox, r,
			 response_code(conn));
		return -1;
	}
	struct mailimap_search_key *key = mailimap_search_key_new_header(strdup(name), strdup(value));
	clist *result = NULL;
	r = key != NULL ? mailimap_uid_search(conn->imap, NULL, key, &result) : MAILIMAP_ERROR_MEMORY;
	if (key != NULL)
		mailimap_search_key_free(key);
	if (r != MAILIMAP_NO_ERROR) {
		if (stream_error(r))
			conn->broken = true;
		snprintf(reason, reason_size, "uid search header %s: error %d", name, r);
		return -1;
	}
	int found = 0;
	if (result != NULL && clist_begin(result) != NULL) {
		*uid_r = *(uint32_t *)clist_content(clist_begin(result));
		found = 1;
	}
	if (result != NULL)
		mailimap_search_result_free(result);
	/* Leave the selected state: APPEND works in either, and a later EXAMINE replaces it. */
	return found;
}

int imapconn_folder_exists(struct imapconn *conn, const char *mailbox, char *reason,
			   size_t reason_size)
{
	clist *list = NULL;
	int r = mailimap_list(conn->imap, "", mailbox, &list);

	if (r != MAILIMAP_NO_ERROR) {
		if (stream_error(r))
			conn->broken = true;
		snprintf(reason, reason_size, "list %s: error %d [%s] %.120s", mailbox, r,
			 response_code(conn), response_text(conn));
		return -1;
	}
	conn->last_used = time(NULL);
	int found = list != NULL && clist_begin(list) != NULL;
	if (list != NULL)
		mailimap_list_result_free(list);
	return found;
}

int imapconn_noop(struct imapconn *conn)
{
	int r = mailimap_noop(conn->imap);

	if (r != MAILIMAP_NO_ERROR) {
		conn->broken = true;
		return -1;
	}
	conn->last_used = time(NULL);
	return 0;
}

bool imapconn_peer_spoke(const struct imapconn *conn)
{
	struct pollfd pfd = { .fd = conn->fd, .events = POLLIN | POLLRDHUP };

	if (conn->imap->imap_stream != NULL && conn->imap->imap_stream->read_buffer_len > 0)
		return true;
	return poll(&pfd, 1, 0) != 0;
}

void imapconn_set_deadline(struct imapconn *conn, int64_t deadline_ms)
{
	conn->clock.deadline_ms = deadline_ms;
}

bool imapconn_literal_started(const struct imapconn *conn)
{
	return conn->literal_started;
}

bool imapconn_broken(const struct imapconn *conn)
{
	return conn->broken;
}

const char *imapconn_login_user(const struct imapconn *conn)
{
	return conn->user;
}

time_t imapconn_last_used(const struct imapconn *conn)
{
	return conn->last_used;
}
