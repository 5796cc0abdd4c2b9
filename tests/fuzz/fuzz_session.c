/*
 * fuzz_session - a whole LMTP session (session.c and everything under it: envelope, address,
 * router, DATA decoder, BDAT, spool, dispatcher, discard and maildir backends) driven through
 * a real socket and the real event loop, the way a hostile client would.
 *
 * Set up once: a private temporary directory, a configuration file in it (discard backend for
 * *@example.test so deliveries are inline and fast; a maildir backend for *@maildir.test, which
 * goes through the worker pool), the event base with the pool's completion channel, and a
 * struct server as src/main.c builds it.
 *
 * Input: byte 0 = flags: bits 0-2 how many of the next bytes choose write boundaries, bit 3
 * keeps the connection open at the end (no half-close: the session is freed from outside,
 * maybe mid-DATA or mid-delivery), bit 4 half-closes right after the last write instead of
 * once everything is answered (EOF arrives together with pipelined commands). The rest is
 * what the client sends, written in pieces with the loop run between them.
 *
 * Invariants on the reply stream: every line ends with CRLF, has no other control byte, starts
 * with three digits and ' ' or '-'; the first is the 220 greeting; a multi-line reply is the
 * LHLO 250 block; every other reply except 354 carries an enhanced code (RFC 2034) whose class
 * is the reply's first digit. Nothing is left allocated after a run (LeakSanitizer).
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>

#include "config.h"
#include "dispatcher.h"
#include "log.h"
#include "pool.h"
#include "server.h"
#include "session.h"
#include "fuzz.h"

static char dir[64];
static char conf_path[128];
static char mail_dir[128];
static struct server srv;
static unsigned long runs;
static bool echo; /* FUZZ_SESSION_ECHO=1: copy the replies to stderr (reproducing by hand) */

/* --- reply checker --- */

static struct {
	char line[4096];
	size_t len;
	unsigned lines;
	char last[512];     /* the last complete line, CRLF cut (for tests/unit) */
	bool in_multi;
} rx;

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static void check_line(const char *l, size_t len)
{
	/* l includes the CRLF */
	FUZZ_CHECK(len >= 6 && l[len - 2] == '\r' && l[len - 1] == '\n');
	for (size_t i = 0; i < len - 2; i++)
		FUZZ_CHECK((unsigned char)l[i] >= 0x20 && l[i] != 0x7f);
	FUZZ_CHECK(is_digit(l[0]) && is_digit(l[1]) && is_digit(l[2]));
	FUZZ_CHECK(l[3] == ' ' || l[3] == '-');
	int code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
	FUZZ_CHECK(code >= 200 && code < 600);
	bool first = rx.lines++ == 0;
	bool multi = rx.in_multi || l[3] == '-';

	rx.in_multi = l[3] == '-';
	if (first) {
		FUZZ_CHECK(code == 220 && l[3] == ' ');
		return;
	}
	if (multi) {
		FUZZ_CHECK(code == 250); /* only LHLO answers in several lines */
		return;
	}
	if (code == 354)
		return;
	/* enhanced = class "." 1*3digit "." 1*3digit, then SP */
	size_t i = 4;
	FUZZ_CHECK(len > i + 5 && l[i] == l[0] && l[i + 1] == '.');
	i += 2;
	size_t d = 0;
	while (is_digit(l[i]) && d < 4)
		i++, d++;
	FUZZ_CHECK(d >= 1 && d <= 3 && l[i] == '.');
	i++;
	d = 0;
	while (is_digit(l[i]) && d < 4)
		i++, d++;
	FUZZ_CHECK(d >= 1 && d <= 3 && (l[i] == ' ' || l[i] == '\r'));
}

static void rx_bytes(const char *p, size_t n)
{
	if (echo)
		fwrite(p, 1, n, stderr);
	for (size_t i = 0; i < n; i++) {
		FUZZ_CHECK(rx.len < sizeof(rx.line)); /* a reply line is short (RFC 5321: 512) */
		rx.line[rx.len++] = p[i];
		if (p[i] == '\n') {
			check_line(rx.line, rx.len);
			size_t keep = rx.len - 2 < sizeof(rx.last) - 1 ? rx.len - 2 : sizeof(rx.last) - 1;
			memcpy(rx.last, rx.line, keep);
			rx.last[keep] = '\0';
			rx.len = 0;
		}
	}
}

/* Read what the session wrote; returns the byte count. */
static size_t drain(int fd)
{
	char buf[16384];
	size_t total = 0;

	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n <= 0)
			break;
		rx_bytes(buf, (size_t)n);
		total += (size_t)n;
	}
	return total;
}

/* --- set-up --- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void remove_dir(void)
{
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static char sink_path[108];

static void *drain_log_sink(void *arg)
{
	int fd = *(int *)arg;
	char buf[8192];

	for (;;)
		if (recv(fd, buf, sizeof(buf), 0) < 0 && errno != EINTR)
			return NULL;
}

/* A unix datagram socket in dir, read and discarded by a thread: the syslog daemon's part. */
static int start_log_sink(void)
{
	static int fd;
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	pthread_t thread;

	if ((size_t)snprintf(sink_path, sizeof(sink_path), "%s/log.sock", dir) >= sizeof(sink_path))
		return -1;
	memcpy(addr.sun_path, sink_path, strlen(sink_path) + 1);
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (bind(fd, (const struct sockaddr *)&addr, sizeof(addr)) < 0 ||
	    pthread_create(&thread, NULL, drain_log_sink, &fd) != 0) {
		close(fd);
		return -1;
	}
	pthread_detach(thread);
	return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	signal(SIGPIPE, SIG_IGN);
	echo = getenv("FUZZ_SESSION_ECHO") != NULL;
	snprintf(dir, sizeof(dir), "/tmp/lmtpgw-fuzz-session-XXXXXX");
	if (mkdtemp(dir) == NULL)
		abort();
	atexit(remove_dir);
	/* Debug logging runs log_escape() and the syslog client on every hostile line, into a
	 * syslog socket of our own that a thread empties (lines the log cannot send would go to
	 * stderr and flood the fuzzer's output). Without it: errors only, to stderr. */
	if (start_log_sink() == 0) {
		log_init("fuzz_session", false, LOG_LEVEL_DEBUG);
		log_configure_syslog("mail", sink_path);
	} else {
		log_init("fuzz_session", true, LOG_LEVEL_ERROR);
	}
	snprintf(conf_path, sizeof(conf_path), "%s/fuzz.conf", dir);
	snprintf(mail_dir, sizeof(mail_dir), "%s/mail", dir);
	FILE *f = fopen(conf_path, "w");
	if (f == NULL)
		abort();
	fprintf(f,
		"hostname = \"fuzz.example.test\";\n"
		"listen = \"127.0.0.1:0\";\n"
		"spool_dir = \"%s\";\n"
		"spool_memory_max = \"4K\";\n"          /* bigger messages go to a file */
		"max_message_size = \"8K\";\n"
		"max_recipients = 5;\n"
		"max_command_line = 512;\n"
		"max_errors = 30;\n"
		"max_received_headers = 3;\n"
		"xforward = true;\n"
		"backends: {\n"
		"  sink: { driver = \"discard\"; };\n"
		"  box: { driver = \"maildir\"; path = \"%s/%%{domain}/%%{local}\"; fsync = false;\n"
		"         folder_from_detail = true; };\n"
		"};\n"
		"routes = (\n"
		"  { match = \"*@example.test\"; deliver = \"sink\"; },\n"
		"  { match = \"*@maildir.test\"; deliver = [ \"box\", \"sink\" ]; },\n"
		"  { match = \"/^re[0-9]+@rx\\\\.test$/\"; deliver = \"sink\"; },\n"
		"  { match = \"postmaster\"; deliver = \"sink\"; }\n"
		");\n",
		dir, mail_dir);
	fclose(f);

	char error[1024];
	srv.config_path = conf_path;
	struct config *cfg = config_load(conf_path, error, sizeof(error));
	srv.rt = cfg != NULL ? runtime_open(cfg, NULL, error, sizeof(error)) : NULL;
	if (srv.rt == NULL) {
		fprintf(stderr, "fuzz_session: %s\n", error);
		abort();
	}
	srv.cfg = srv.rt->cfg;
	srv.base = event_base_new();
	if (srv.base == NULL || pool_completion_init(srv.base) < 0)
		abort();
	return 0;
}

/* --- one run --- */

/* Run the loop until neither side moves: no reply bytes, no change in what waits unread on
 * the session's socket, no delivery in flight (those are waited for). */
static void pump(int client, int server_fd)
{
	int last_pending = -1;

	for (int idle = 0, iter = 0; idle < 2 && iter < 5000; iter++) {
		event_base_loop(srv.base, EVLOOP_NONBLOCK);
		size_t got = drain(client);
		int pending = 0;
		if (srv.connections > 0 && ioctl(server_fd, FIONREAD, &pending) < 0)
			pending = 0;
		if (dispatch_in_flight() > 0) {
			/* A worker thread owes a completion: block until it arrives. */
			if (got == 0)
				event_base_loop(srv.base, EVLOOP_ONCE);
			idle = 0;
		} else if (got == 0 && pending == last_pending) {
			idle++;
		} else {
			idle = 0;
		}
		last_pending = pending;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	unsigned flags = data[0];
	size_t nseed = flags & 7;
	bool keep_open = flags & 8;
	bool eof_early = flags & 16;
	if (nseed > size - 1)
		nseed = size - 1;
	const uint8_t *seed = data + 1;
	const uint8_t *in = data + 1 + nseed;
	size_t len = size - 1 - nseed;

	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		abort();
	memset(&rx, 0, sizeof(rx));
	struct session *s = session_new(&srv, sv[0], "127.0.0.1:40000", "127.0.0.1", false, true);
	FUZZ_CHECK(s != NULL);
	pump(sv[1], sv[0]);

	size_t cuts[8];
	size_t ncuts = fuzz_split(seed, nseed, len, cuts, 8);
	for (size_t k = 0, start = 0; k <= ncuts; k++) {
		size_t stop = k < ncuts ? cuts[k] : len;
		while (start < stop) {
			ssize_t n = write(sv[1], in + start, stop - start);
			int err = n < 0 ? errno : 0;
			if (n > 0)
				start += (size_t)n;
			else if (err != EAGAIN && err != EINTR)
				break; /* the session closed: the rest cannot be sent */
			if (eof_early && !keep_open && k == ncuts && start == stop)
				shutdown(sv[1], SHUT_WR); /* EOF arrives with the last bytes */
			pump(sv[1], sv[0]);
			if (err == EAGAIN && srv.connections == 0)
				break;
		}
		if (start < stop)
			break;
	}
	if (!keep_open) {
		shutdown(sv[1], SHUT_WR);
		pump(sv[1], sv[0]);
	}
	/* Whatever is still open (client waiting, or a delivery under way) is torn down. */
	session_free_all(&srv);
	while (dispatch_in_flight() > 0)
		event_base_loop(srv.base, EVLOOP_ONCE);
	drain(sv[1]);
	close(sv[1]);
	FUZZ_CHECK(srv.connections == 0 && srv.sessions == NULL);
	FUZZ_CHECK(rx.len == 0); /* no half reply line */

	if (++runs % 2000 == 0)
		nftw(mail_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}
