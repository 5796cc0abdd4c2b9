"""
harness - start a real lmtpgw on loopback and talk LMTP to it.

    with Lmtpgw() as gw:                       # temp config, random 127.0.0.1 port, started
        c = gw.client()                        # raw LMTP client, greeting already read
        c.expect(c.cmd("LHLO t.test"), 250)
        ...
        gw.messages("alice")                   # files in <tmp>/mail/example.test/alice/new

The daemon runs in the foreground (-f) with its stderr in <tmp>/lmtpgw.log and is stopped by
PID (SIGTERM, wait, SIGKILL). Leaving the `with` block raises if the daemon did not exit 0 on
SIGTERM (a crash, a hang, or valgrind errors under --valgrind). run-tests.py sets
LMTPGW_BUILD and LMTPGW_VALGRIND in the environment; python3 stdlib only.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("LMTPGW_BUILD", os.path.join(ROOT, "build"))
if not os.path.isabs(BUILD):
    BUILD = os.path.join(ROOT, BUILD)
VALGRIND = os.environ.get("LMTPGW_VALGRIND", "") not in ("", "0")
# A build with ASan/UBSan (tests/check.py sets this for its asan phase): memory figures are the
# sanitizer's, not ours, so memory-bound checks do not apply.
SANITIZED = os.environ.get("LMTPGW_SANITIZED", "") not in ("", "0")
SLOW = 4.0 if VALGRIND else 2.0 if SANITIZED else 1.0  # scale for waits under valgrind/ASan
MEMORY_FIGURES_MEAN_SOMETHING = not (VALGRIND or SANITIZED)

DEFAULT_DOMAIN = "example.test"

_live = []                                # running Lmtpgw instances (run-tests.py kills leftovers)


class Skip(Exception):
    """Raised by a test that cannot run here (reported as SKIP and counted as skipped, never as
    passed). real_server is None for a plain skip (no IPv6 loopback, no man-db, ...)."""
    real_server = None


# The suites that exercise a real server or a real client instead of our own code. A green CI
# must mean they ran: run-tests.py fails a test that skips one of them when CI=true.
REAL_SERVER_SUITES = ("dovecot", "s3", "webhook", "postfix", "lmtp-clients", "cyrus", "exim",
                      "opensmtpd",
                      "promtool", "chromium",  # real programs: Prometheus rule tests, the status page
                      "rsyslog", "debian-package")  # syslog; dpkg-buildpackage and debhelper


class RealServerMissing(Skip):
    """A skip because a real server this test needs is not installed here (Dovecot, the S3
    server's node modules, Postfix, ...). Skipped locally; a failure when CI=true."""

    def __init__(self, suite, why):
        if suite not in REAL_SERVER_SUITES:
            raise ValueError("unknown real-server suite %r" % suite)
        super().__init__("%s not available: %s" % (suite, why))
        self.real_server = suite


def require_dovecot(lmtp=False):
    """Raise RealServerMissing("dovecot") unless Dovecot (and with lmtp, its LMTP) is here."""
    from dovecot import DovecotError, find_dovecot
    try:
        path = find_dovecot()
    except DovecotError as e:
        raise RealServerMissing("dovecot", str(e))
    if lmtp:
        lmtpd = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(path))),
                             "lib", "dovecot", "lmtp")
        if not os.access(lmtpd, os.X_OK):
            raise RealServerMissing("dovecot", "no %s (apt-get install dovecot-lmtpd)" % lmtpd)


def require_postfix():
    """Raise RealServerMissing("postfix") unless a private Postfix can be started here."""
    from postfix import PostfixError, find_postfix
    try:
        find_postfix()
    except PostfixError as e:
        raise RealServerMissing("postfix", str(e))


def start_s3server(**kw):
    """A started S3Server, or RealServerMissing("s3") when node or its modules are missing.
    Any other failure to start is the test's failure, not a skip."""
    from s3server import S3Server, S3Unavailable
    s = S3Server(**kw)
    try:
        return s.start()
    except S3Unavailable as e:
        raise RealServerMissing("s3", str(e))


def _traversable_by_all(path):
    """True when every directory from / down to path lets other users pass (o+x)."""
    path = os.path.realpath(path)
    while True:
        try:
            if not os.stat(path).st_mode & 0o001:
                return False
        except OSError:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def shared_tmp_base():
    """Where to make temp dirs that processes of other users must reach (Dovecot's mail
    processes, Postfix, `make install` as nobody): the usual temp dir unless TMPDIR points into
    a directory they cannot enter (pam_tmpdir's /tmp/user/UID, a 0700 home), then /tmp."""
    base = tempfile.gettempdir()
    return base if _traversable_by_all(base) else "/tmp"


def shared_mkdtemp(prefix):
    """mkdtemp under shared_tmp_base(), mode 0755: other users may traverse it, not write."""
    d = tempfile.mkdtemp(prefix=prefix, dir=shared_tmp_base())
    os.chmod(d, 0o755)
    return d


def binary():
    return os.path.join(BUILD, "lmtpgw")


def kill_all():
    """Kill every daemon still running (after a test timed out)."""
    for gw in list(_live):
        try:
            gw.stop(expect_clean=False)
        except Exception:
            pass
    # Test servers a timed-out test may have left (imported lazily: not every test needs them).
    import sys
    for name in ("dovecot", "s3server", "webhook_receiver", "postfix", "cyrus", "exim",
                 "opensmtpd"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "kill_all"):
            try:
                mod.kill_all()
            except Exception:
                pass


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def have_ipv6_loopback():
    if not socket.has_ipv6:
        return False
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        s.bind(("::1", 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


def cstr(s):
    """A libconfig string literal."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def conf_value(v):
    """A libconfig value. A dict is a group ({ k = v; }); a list holding a group is written
    as a libconfig list ( ), since an array [ ] holds only scalars (a route's deliver list with
    target groups)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, dict):
        return "{ " + " ".join("%s = %s;" % (k, conf_value(x)) for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        if any(isinstance(x, dict) for x in v):
            return "( " + ", ".join(conf_value(x) for x in v) + " )"
        return "[ " + ", ".join(conf_value(x) for x in v) + " ]"
    return cstr(str(v))


# --- replies -------------------------------------------------------------------------------

ENH_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")


class Reply:
    def __init__(self, code, lines):
        self.code = code
        self.lines = lines                  # text of each line, without "NNN-"
        first = lines[0] if lines else ""
        m = ENH_RE.match(first)
        self.enhanced = "%s.%s.%s" % m.groups() if m else None
        self.text = first[m.end():] if m else first

    def __repr__(self):
        return "<Reply %d %s>" % (self.code, " | ".join(self.lines))

    def __str__(self):
        return "%d %s" % (self.code, " | ".join(self.lines))


class ProtocolError(AssertionError):
    pass


class Client:
    """A raw LMTP client over a socket: bytes out, replies (multi-line aware) in."""

    def __init__(self, sock, timeout=10.0):
        self.sock = sock
        self.sock.settimeout(timeout * SLOW)
        self.buf = b""
        self.greeting = None

    @classmethod
    def connect_tcp(cls, host, port, timeout=10.0, family=socket.AF_INET):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(timeout * SLOW)
        s.connect((host, port))
        return cls(s, timeout)

    @classmethod
    def connect_unix(cls, path, timeout=10.0):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout * SLOW)
        s.connect(path)
        return cls(s, timeout)

    def settimeout(self, t):
        self.sock.settimeout(t)

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ProtocolError("connection closed by server; unparsed: %r" % self.buf[:200])
        self.buf += chunk

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            if len(self.buf) > 100000:
                raise ProtocolError("reply line without CRLF: %r" % self.buf[:200])
            self._fill()

    def reply(self):
        """Read one (possibly multi-line) reply."""
        lines = []
        code = None
        while True:
            raw = self._line()
            m = re.match(rb"^(\d{3})([ -])(.*)$", raw, re.S)
            if not m:
                raise ProtocolError("malformed reply line: %r" % raw)
            c = int(m.group(1))
            if code is not None and c != code:
                raise ProtocolError("code changes inside multi-line reply: %r" % raw)
            code = c
            lines.append(m.group(3).decode("utf-8", "replace"))
            if m.group(2) == b" ":
                return Reply(code, lines)

    def replies(self, n):
        return [self.reply() for _ in range(n)]

    def cmd(self, line):
        """Send one command line (CRLF added) and read its reply."""
        self.send(line + "\r\n")
        return self.reply()

    def read_greeting(self):
        self.greeting = self.reply()
        return self.greeting

    def lhlo(self, name="client.test"):
        r = self.cmd("LHLO " + name)
        expect(r, 250)
        return r

    def expect_closed(self, timeout=5.0):
        """The server must close the connection (EOF) with nothing more to say."""
        self.sock.settimeout(timeout * SLOW)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if self.buf or data:
            raise ProtocolError("expected close, got more data: %r" % (self.buf + data)[:300])

    def pending(self, wait=0.2):
        """Bytes the server sent that nobody read yet (waits a little for stragglers)."""
        self.sock.settimeout(wait)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.buf += chunk
        except (socket.timeout, BlockingIOError):
            pass
        finally:
            self.sock.settimeout(10.0 * SLOW)
        return self.buf

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def expect(reply, code, enhanced=None, text=None):
    """Assert reply code (int, or a class digit as str '2'/'4'/'5') and enhanced code.

    Every reply that is not the greeting or the LHLO reply must carry an enhanced status code
    whose class matches the reply code (RFC 2034); that is checked whenever enhanced is given or
    the code is not 220/250-LHLO (callers pass enhanced=False to skip).
    """
    if isinstance(code, str):
        ok = str(reply.code).startswith(code)
    else:
        ok = reply.code == code
    if not ok:
        raise AssertionError("expected %s%s, got: %s" % (code, " " + enhanced if enhanced else "", reply))
    if enhanced:
        if reply.enhanced != enhanced:
            raise AssertionError("expected enhanced %s, got: %s" % (enhanced, reply))
    if enhanced is not False and reply.enhanced is not None:
        if reply.enhanced[0] != str(reply.code)[0]:
            raise AssertionError("enhanced class does not match reply code: %s" % reply)
    if text is not None and text not in " ".join(reply.lines):
        raise AssertionError("expected %r in reply text: %s" % (text, reply))
    return reply


def expect_enhanced(reply):
    """Any reply after LHLO except the LHLO reply itself: must carry a matching enhanced code."""
    if reply.enhanced is None:
        raise AssertionError("reply without enhanced status code: %s" % reply)
    if reply.enhanced[0] != str(reply.code)[0]:
        raise AssertionError("enhanced class does not match reply code: %s" % reply)
    return reply


# --- message helpers -----------------------------------------------------------------------

def dot_stuff(content):
    """Wire form of content for DATA: CRLF-delimited lines starting with '.' get another '.'."""
    out = content.replace(b"\r\n.", b"\r\n..")
    if out.startswith(b"."):
        out = b"." + out
    return out


def dot_unstuff(wire):
    """RFC 5321 4.5.2 on the receiving side (the reference for what must be stored): the text
    up to CRLF.CRLF, each CRLF-delimited line's leading '.' removed."""
    lines = wire.split(b"\r\n")
    return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in lines)


TRACE_NAMES = (b"return-path:", b"received:", b"delivered-to:")


def split_trace(stored, content):
    """stored must be trace header lines followed by exactly content; returns the trace."""
    if not stored.endswith(content):
        # find where they start to differ, for a useful message
        raise AssertionError("stored message does not end with the sent content (len %d vs %d); "
                             "tail stored=%r sent=%r" % (len(stored), len(content),
                                                        stored[-80:], content[-80:]))
    trace = stored[:len(stored) - len(content)]
    check_trace(trace)
    return trace


def check_trace(trace):
    if not trace.endswith(b"\r\n"):
        raise AssertionError("trace headers do not end with CRLF: %r" % trace[-80:])
    for line in trace[:-2].split(b"\r\n"):
        if line[:1] in (b"\t", b" "):
            continue
        if not line.lower().startswith(TRACE_NAMES):
            raise AssertionError("unexpected line in trace headers: %r (trace=%r)" % (line, trace))
    if b"Return-Path:" not in trace or b"Received:" not in trace:
        raise AssertionError("trace lacks Return-Path or Received: %r" % trace)


# --- the daemon ----------------------------------------------------------------------------

class Lmtpgw:
    """A temp config + a running build/lmtpgw -f on a random loopback port.

    Nothing starts until `with gw:` (or gw.start()): settings may be changed before that
    (then call gw.write_config()).

    config:    extra global settings {key: value} (strings, ints, bools, lists)
    local:     extra settings of the maildir backend "local" {key: value}
    backends:  extra backend blocks as libconfig text, e.g. 'trash: { driver = "discard"; };'
    routes:    list of (match, [target, ...]); a target is a backend name or a dict
               {"backend": .., "required": .., "fallback": ..}; default
               [("*@example.test", ["local"])]
    listen:    listen address for --listen; default "127.0.0.1:<random port>". If config has
               "listen" and this is None, no --listen is given and clients use its first entry.
    """

    def __init__(self, config=None, local=None, backends="", routes=None, listen=None,
                 debug=False):
        # 0700 itself, but under a base other users can traverse: a test may open it (0755)
        # for a Postfix or Dovecot process to reach a socket inside.
        self.dir = tempfile.mkdtemp(prefix="lmtpgw-it-", dir=shared_tmp_base())
        self.maildir_root = os.path.join(self.dir, "mail")
        self.spool = os.path.join(self.dir, "spool")
        os.makedirs(self.spool)
        self.conf_path = os.path.join(self.dir, "lmtpgw.conf")
        self.log_path = os.path.join(self.dir, "lmtpgw.log")
        self.vg_log = os.path.join(self.dir, "valgrind.log")
        self.config = dict(config or {})
        self.local = dict(local or {})
        self.backends = backends
        self.routes = routes if routes is not None else [("*@" + DEFAULT_DOMAIN, ["local"])]
        self.listen_arg = listen
        self.debug = debug
        self.proc = None
        self.listen_from_config = False
        self.port = None
        self.host = "127.0.0.1"
        self.returncode = None
        self._log_fh = None
        self.write_config()

    # config

    def config_text(self, routes=None, config=None):
        routes = self.routes if routes is None else routes
        cfg = {"hostname": "mx.lmtpgw.test", "spool_dir": self.spool, "log_level": "info"}
        if os.geteuid() == 0:
            cfg["run_as_root"] = True  # lmtpgw refuses to serve as root otherwise
        cfg.update(self.config if config is None else config)
        lines = ["# written by tests/integration/harness.py"]
        for k, v in cfg.items():
            lines.append("%s = %s;" % (k, conf_value(v)))
        local = {"driver": "maildir", "path": self.maildir_root + "/%{domain}/%{local}"}
        local.update(self.local)
        lines.append("backends: {")
        lines.append("  local: { " + " ".join("%s = %s;" % (k, conf_value(v))
                                              for k, v in local.items()) + " };")
        if self.backends:
            lines.append("  " + self.backends)
        lines.append("};")
        lines.append("routes = (")
        lines.append(",\n".join("  { match = %s; deliver = %s; }" % (cstr(m), conf_value(list(d)))
                                for m, d in routes))
        lines.append(");")
        return "\n".join(lines) + "\n"

    def write_config(self, text=None, **kw):
        if text is None:
            text = self.config_text(**kw)
        tmp = self.conf_path + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self.conf_path)

    # life cycle

    def command(self):
        cmd = [binary(), "-f", "-c", self.conf_path]
        if self.debug:
            cmd.append("-d")
        if not self.listen_from_config:
            cmd += ["--listen", self.listen]
        if VALGRIND:
            cmd = ["valgrind", "-q", "--error-exitcode=99", "--leak-check=full",
                   "--errors-for-leak-kinds=definite", "--show-possibly-lost=no",
                   "--log-file=" + self.vg_log] + cmd
        return cmd

    def start(self):
        last_error = None
        if self.listen_arg is None and "listen" in self.config:
            self.listen_from_config = True
            first = self.config["listen"]
            self.listen_arg = first[0] if isinstance(first, (list, tuple)) else first
        for _attempt in range(3):
            if self.listen_arg is None:
                self.port = free_port()
                self.listen = "127.0.0.1:%d" % self.port
            else:
                self.listen = self.listen_arg
                m = re.match(r"^\[(.*)\]:(\d+)$", self.listen) or re.match(r"^(.*):(\d+)$", self.listen)
                if m and not self.listen.startswith("unix:"):
                    self.host, self.port = m.group(1), int(m.group(2))
            self._log_fh = open(self.log_path, "ab")
            started_before = len(self.grep(r"event=started|\"event\":\"started\""))
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=self._log_fh, stderr=self._log_fh,
                                         cwd=self.dir)
            _live.append(self)
            try:
                self.wait_log(r"event=started|\"event\":\"started\"", timeout=15 * SLOW, count=started_before + 1)
                self.wait_accepting()
                return self
            except AssertionError as e:
                last_error = e
                self.stop(expect_clean=False)
                if self.listen_arg is not None or "startup_failed" not in self.log():
                    break
        raise AssertionError("lmtpgw did not start: %s\n--- log ---\n%s" % (last_error, self.log()[-3000:]))

    def wait_accepting(self, timeout=10.0):
        deadline = time.time() + timeout * SLOW
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("lmtpgw exited with %s" % self.proc.returncode)
            try:
                if self.listen.startswith("unix:"):
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(self.listen[5:])
                else:
                    fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
                    s = socket.socket(fam, socket.SOCK_STREAM)
                    s.connect((self.host, self.port))
                # read the greeting and hang up; wait until the server has seen the hang-up,
                # so this probe never counts against max_connections in a test
                s.settimeout(5 * SLOW)
                disconnects = len(self.grep(r"event=disconnect|\"event\":\"disconnect\""))
                greeting = s.recv(512)
                s.close()
                if greeting.startswith(b"220") and self.config.get("log_level", "info") in ("info", "debug"):
                    self.wait_log(r"event=disconnect|\"event\":\"disconnect\"", timeout=5, count=disconnects + 1)
                return
            except OSError:
                if time.time() > deadline:
                    raise AssertionError("port %s never accepted" % self.listen)
                time.sleep(0.02)

    def stop(self, expect_clean=True, sig=signal.SIGTERM):
        """SIGTERM, wait, SIGKILL fallback. Returns the exit status."""
        if self.proc is None:
            return self.returncode
        proc = self.proc
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10 * SLOW)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.returncode = proc.returncode
                self._cleanup_proc()
                if expect_clean:
                    raise AssertionError("lmtpgw did not exit within %ds of SIGTERM (killed)\n%s"
                                         % (10 * SLOW, self.log()[-2000:]))
                return self.returncode
        self.returncode = proc.returncode
        self._cleanup_proc()
        if expect_clean:
            self.check_exit()
        return self.returncode

    def _cleanup_proc(self):
        self.proc = None
        if self in _live:
            _live.remove(self)
        if self._log_fh:
            self._log_fh.close()
            self._log_fh = None

    def check_exit(self):
        rc = self.returncode
        if rc == 99 and VALGRIND:
            raise AssertionError("valgrind reported errors:\n" + self.valgrind_log())
        if rc != 0:
            raise AssertionError("lmtpgw exited with status %s\n--- log tail ---\n%s"
                                 % (rc, self.log()[-2000:]))
        if VALGRIND and self.valgrind_log().strip():
            raise AssertionError("valgrind output:\n" + self.valgrind_log())

    def valgrind_log(self):
        try:
            with open(self.vg_log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def signal(self, sig):
        self.proc.send_signal(sig)

    @property
    def pid(self):
        return self.proc.pid

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.stop(expect_clean=True)
            else:
                self.stop(expect_clean=False)
        finally:
            if exc_type is None and os.environ.get("LMTPGW_KEEP_TMP") is None:
                shutil.rmtree(self.dir, ignore_errors=True)
            elif exc_type is not None:
                print("  (kept %s for inspection)" % self.dir)
        return False

    # clients

    def client(self, greeting=True, timeout=10.0):
        if self.listen.startswith("unix:"):
            c = Client.connect_unix(self.listen[5:], timeout)
        else:
            fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            c = Client.connect_tcp(self.host, self.port, timeout, fam)
        if greeting:
            expect(c.read_greeting(), 220)
        return c

    def session(self, name="client.test"):
        """A client past the greeting and LHLO."""
        c = self.client()
        c.lhlo(name)
        return c

    # log

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def grep(self, pattern):
        return [l for l in self.log().splitlines() if re.search(pattern, l)]

    def wait_log(self, pattern, timeout=10.0, count=1):
        """Wait until pattern has appeared count times in the log (a sync point, not a check)."""
        deadline = time.time() + timeout * SLOW
        while True:
            if len(self.grep(pattern)) >= count:
                return
            if self.proc is not None and self.proc.poll() is not None and len(self.grep(pattern)) < count:
                raise AssertionError("lmtpgw exited (%s) before log matched %r" % (self.proc.returncode, pattern))
            if time.time() > deadline:
                raise AssertionError("log never matched %r (%d times)\n--- log tail ---\n%s"
                                     % (pattern, count, self.log()[-2000:]))
            time.sleep(0.02)

    # maildir

    def maildir(self, user, domain=DEFAULT_DOMAIN, folder=None):
        d = os.path.join(self.maildir_root, domain, user)
        if folder:
            d = os.path.join(d, "." + folder)
        return d

    def messages(self, user, domain=DEFAULT_DOMAIN, folder=None, sub="new"):
        d = os.path.join(self.maildir(user, domain, folder), sub)
        try:
            return sorted(os.path.join(d, n) for n in os.listdir(d))
        except FileNotFoundError:
            return []

    def all_files(self):
        """Every regular file under the mail root (tmp/, new/, cur/ of every Maildir)."""
        out = []
        for dirpath, _dirs, files in os.walk(self.maildir_root):
            out += [os.path.join(dirpath, f) for f in files]
        return sorted(out)

    def read(self, path):
        with open(path, "rb") as f:
            return f.read()

    def only_message(self, user, domain=DEFAULT_DOMAIN, folder=None):
        msgs = self.messages(user, domain, folder)
        if len(msgs) != 1:
            raise AssertionError("expected exactly 1 message for %s@%s%s, found %d: %s"
                                 % (user, domain, " folder " + folder if folder else "",
                                    len(msgs), msgs))
        return self.read(msgs[0])

    # the CLI

    def run_cli(self, *args, conf=None):
        cmd = [binary(), "-c", conf or self.conf_path] + list(args)
        p = subprocess.run(cmd, capture_output=True, timeout=30, cwd=self.dir)
        return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def send_message(c, sender, rcpts, content, stuffed=False, params=""):
    """MAIL, RCPT..., DATA, content (dot-stuffed here unless stuffed), '.'; returns the list of
    post-DATA replies (one per accepted RCPT). Asserts the envelope replies are 2xx."""
    expect(c.cmd("MAIL FROM:<%s>%s" % (sender, params)), 250, "2.1.0")
    for r in rcpts:
        expect(c.cmd("RCPT TO:<%s>" % r), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    wire = content if stuffed else dot_stuff(content)
    if not wire.endswith(b"\r\n"):
        wire += b"\r\n"
    c.send(wire + b".\r\n")
    return c.replies(len(rcpts))
