"""
dovecot - start a real, standalone Dovecot 2.3 on loopback for lmtpgw's integration tests.

    with DovecotServer() as dc:              # temp dir, certs, config, random ports, started
        dc.imap_port, dc.imaps_port          # 127.0.0.1; imap offers STARTTLS, imaps is TLS
        dc.ca_file                           # PEM of the test CA that signed the server cert
        dc.users                             # {"alice": "alice-pw", "bob": ..., "carol": ...}
        dc.master                            # ("master", "master-secret")
        dc.maildir("alice")                  # <tmp>/mail/alice/Maildir
        m = dc.fetch("alice")                # last message in INBOX: m.raw, m.flags, m.internaldate
        dc.count("bob", "INBOX"), dc.messages("bob"), dc.list_mailboxes("bob"), dc.append(...)
        c = dc.login_master("alice")         # imaplib, STARTTLS verified; how="login": alice*master
    # leaving the block stops Dovecot by PID and removes the temp dir

Configuration: contrib/test-servers/dovecot/dovecot.conf.in with every @NAME@ filled in; no file
from /etc/dovecot is read. Users in a passwd-file (passdb and userdb), a master user in a second
passdb (master = yes, pass = yes, auth_master_user_separator = *), maildir under <tmp>/mail/<user>,
the quota plugin ("carol" has 64 KiB, everyone else 1 GiB), PLAIN and LOGIN also without TLS.
The helpers (append, count, messages, fetch, list_mailboxes) log in with the user's own password
on a separate plain-IMAP login service ("imapcheck-login", .check_port), so that Dovecot's log
lines "imap-login: Info: Login: user=<...>" and "auth: Info: Master user logging in as ..." come
only from the client under test; connect(), login() and login_master() use the real listeners.
Options: lmtp=True adds Dovecot's LMTP (unix socket .lmtp_socket and 127.0.0.1:.lmtp_port, user =
local part of the recipient) for the benchmark peer; untrusted_cert=True has the server certificate
signed by a second CA that is NOT ca_file (a verifying client must refuse it); cert_san changes the
subjectAltName (e.g. "DNS:wrong.test" for a host name mismatch).
oauth2={"introspect_url": U, "introspect_app_url": A, "ca_file": PEM} (an oauth2server.OAuth2Server
gives all three) adds SASL XOAUTH2 and OAUTHBEARER with two oauth2 passdbs checking the token by
introspection over TLS (verified against ca_file): the first for tokens of a user (the username the
server returns must equal the login), the second for app-only tokens (username "app@DOMAIN": its
domain must equal the login's, as an Exchange app granted a tenant's mailboxes).

As root, mail processes run as the system user "lmtpgw-test" (created with useradd when missing;
"nobody"/"nogroup" when that fails) and the temp dir is world-traversable; as non-root, everything
runs as the calling user with the login chroot disabled. Dovecot runs in the foreground (-F) in its
own session; stop() sends SIGTERM to that master PID and to every process of the instance (found
by session id and by the process title "dovecot-<instance_name>/...": children outlive the master),
SIGKILL as the fallback. No other Dovecot on the machine is touched. python3 stdlib only.
"""
import collections
import datetime
import grp
import hashlib
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import servers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATE = os.path.join(ROOT, "contrib", "test-servers", "dovecot", "dovecot.conf.in")

DEFAULT_USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
DEFAULT_QUOTAS = {"carol": "64K"}          # user -> quota_rule storage; others get default_quota
DEFAULT_MASTER = ("master", "master-secret")
TEST_USER = "lmtpgw-test"

Message = collections.namedtuple("Message", "uid raw flags internaldate internaldate_text")

_live = servers.Running()   # instances still running: stopped at exit or by harness.kill_all()
kill_all = _live.stop_all


class DovecotError(Exception):
    """Dovecot could not be started, or a helper's IMAP command failed."""


def find_dovecot(path=None):
    """Path of the dovecot binary (path, or the usual places), or raise DovecotError saying
    what to install."""
    if path is None:
        for d in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
            if os.access(os.path.join(d, "dovecot"), os.X_OK):
                return os.path.join(d, "dovecot")
        path = shutil.which("dovecot")
    if not path or not os.access(path, os.X_OK):
        raise DovecotError("dovecot is not installed (no executable %s): apt-get install "
                           "dovecot-imapd (and dovecot-lmtpd for lmtp=True); `make check` "
                           "installs it" % (path or "dovecot in /usr/sbin or PATH"))
    return path


def free_port(host="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def _openssl(*args, cwd):
    p = subprocess.run(["openssl"] + list(args), cwd=cwd, capture_output=True)
    if p.returncode != 0:
        raise DovecotError("openssl %s failed: %s" % (" ".join(args),
                                                      p.stderr.decode("utf-8", "replace")))


def make_ca(d, name, cn):
    """EC P-256 CA in d/<name>-ca.key, d/<name>-ca.crt. Returns the cert path."""
    key, crt = name + "-ca.key", name + "-ca.crt"
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key, cwd=d)
    _openssl("req", "-x509", "-new", "-key", key, "-out", crt, "-days", "3650", "-sha256",
             "-subj", "/O=lmtpgw tests/CN=" + cn,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash", cwd=d)
    return os.path.join(d, crt)


def make_server_cert(d, ca_name, san, out="server"):
    """d/<out>.key and d/<out>.crt (with the CA appended: a chain) signed by <ca_name>-ca."""
    ext = os.path.join(d, out + ".ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectKeyIdentifier=hash\n"
                "authorityKeyIdentifier=keyid\n"
                "subjectAltName=%s\n" % san)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", out + ".key", cwd=d)
    _openssl("req", "-new", "-key", out + ".key", "-out", out + ".csr",
             "-subj", "/O=lmtpgw tests/CN=localhost", cwd=d)
    _openssl("x509", "-req", "-in", out + ".csr", "-CA", ca_name + "-ca.crt",
             "-CAkey", ca_name + "-ca.key", "-CAcreateserial", "-out", out + ".crt",
             "-days", "3650", "-sha256", "-extfile", ext, cwd=d)
    os.chmod(os.path.join(d, out + ".key"), 0o600)


def _shared_tmp_base():
    """harness.shared_tmp_base() (imported late: dovecot.py also runs without harness)."""
    try:
        from harness import shared_tmp_base
    except ImportError:
        return tempfile.gettempdir()
    return shared_tmp_base()


def _mail_owner():
    """(user name, uid, gid, group name) for mail processes."""
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.geteuid())
        return pw.pw_name, pw.pw_uid, os.getegid(), grp.getgrgid(os.getegid()).gr_name
    try:
        pw = pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", TEST_USER],
                       capture_output=True)
        try:
            pw = pwd.getpwnam(TEST_USER)      # also when a parallel run created it first
        except KeyError:
            pw = pwd.getpwnam("nobody")
    return pw.pw_name, pw.pw_uid, pw.pw_gid, grp.getgrgid(pw.pw_gid).gr_name


def _is_dovecot(pid):
    try:
        exe = os.readlink("/proc/%d/exe" % pid)
    except OSError:
        return False
    exe = exe.replace(" (deleted)", "")
    return os.path.basename(exe) == "dovecot" or "/dovecot/" in exe


def _imap_quote(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


_FETCH_ITEM = re.compile(rb"UID (\d+)|FLAGS \(([^)]*)\)|INTERNALDATE \"([^\"]+)\"")


def parse_internaldate(text):
    """'17-Jul-1996 02:44:25 -0700' -> aware datetime."""
    day, rest = text.strip().split("-", 1)
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    mon, rest = rest.split("-", 1)
    year, clock, zone = rest.split(" ")
    h, mi, s = (int(x) for x in clock.split(":"))
    sign = -1 if zone[0] == "-" else 1
    tz = datetime.timezone(sign * datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5])))
    return datetime.datetime(int(year), months.index(mon) + 1, int(day), h, mi, s, tzinfo=tz)


class DovecotServer:
    """A Dovecot 2.3 on 127.0.0.1 with its own config, state, logs and mail under tmpdir.

    tmpdir: directory to use (created if missing, left in place); default: a fresh
    /tmp/lmtpgw-dovecot-* removed by stop(). It must be short (unix socket paths).
    users: {name: password} (default DEFAULT_USERS); quotas: {name: storage limit, e.g. "64K"}
    (default DEFAULT_QUOTAS), default_quota for the others; master: (user, password).
    lmtp: also run Dovecot's LMTP; untrusted_cert: server cert signed by a CA other than ca_file;
    cert_san: subjectAltName of the server cert; separator: hierarchy separator of the INBOX
    namespace ("." as in a stock Maildir++ Dovecot); auth_penalty: keep Dovecot's delay and growing
    per-IP penalty after failed logins (default off: a failure is answered within ~0.5 s);
    dovecot: path of the binary (default: /usr/sbin/dovecot or PATH); max_userip_connections:
    mail_max_userip_connections of imap (a login past it gets NO [LIMIT]).
    Nothing runs until start() or `with`.
    """

    def __init__(self, tmpdir=None, users=None, quotas=None, master=DEFAULT_MASTER, lmtp=False,
                 untrusted_cert=False, cert_san="IP:127.0.0.1,DNS:localhost", separator=".",
                 default_quota="1G", auth_penalty=False, start_timeout=10.0, dovecot=None,
                 oauth2=None, max_userip_connections=10):
        self.oauth2 = oauth2
        self.max_userip_connections = max_userip_connections
        self.dovecot = find_dovecot(dovecot)
        if lmtp:
            lmtpd = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(self.dovecot))),
                                 "lib", "dovecot", "lmtp")
            if not os.access(lmtpd, os.X_OK):
                raise DovecotError("lmtp=True needs Dovecot's LMTP server (no %s): apt-get "
                                   "install dovecot-lmtpd" % lmtpd)
        self._own_tmpdir = tmpdir is None
        if tmpdir is None:
            # under a base the mail user can traverse (_setup makes tmpdir itself 0755)
            tmpdir = tempfile.mkdtemp(prefix="lmtpgw-dovecot-", dir=_shared_tmp_base())
        else:
            os.makedirs(tmpdir, exist_ok=True)
        self.tmpdir = os.path.abspath(tmpdir)
        if len(self.tmpdir) > 60:
            raise DovecotError("tmpdir %s is too long for Dovecot's unix sockets" % self.tmpdir)
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.quotas = dict(DEFAULT_QUOTAS if quotas is None else quotas)
        self.master = tuple(master)
        self.lmtp = lmtp
        self.untrusted_cert = untrusted_cert
        self.cert_san = cert_san
        self.separator = separator
        self.default_quota = default_quota
        self.auth_penalty = auth_penalty
        self.start_timeout = start_timeout
        self.base_dir = os.path.join(self.tmpdir, "run")
        self.conf_path = os.path.join(self.tmpdir, "dovecot.conf")
        self.log_path = os.path.join(self.tmpdir, "dovecot.log")
        self.stderr_path = os.path.join(self.tmpdir, "dovecot.stderr")
        self.tls_dir = os.path.join(self.tmpdir, "tls")
        self.ca_file = os.path.join(self.tls_dir, "test-ca.crt")
        self.untrusted_ca_file = os.path.join(self.tls_dir, "rogue-ca.crt")
        self.cert_file = os.path.join(self.tls_dir, "server.crt")
        self.host = "127.0.0.1"
        self.imap_port = self.imaps_port = self.lmtp_port = self.check_port = None
        self.lmtp_socket = os.path.join(self.base_dir, "lmtp") if lmtp else None
        # unique per tmpdir: process titles are "dovecot-<instance_name>/<service> ..."
        self.instance_name = "lmtpgw-%s-%s" % (
            re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(self.tmpdir))[-24:],
            hashlib.sha1(self.tmpdir.encode()).hexdigest()[:8])
        self.proc = None
        self.pid = None
        self.started_in = None

    # ---- lifecycle -------------------------------------------------------------------------
    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def maildir(self, user):
        return os.path.join(self.tmpdir, "mail", user, "Maildir")

    def home(self, user):
        return os.path.join(self.tmpdir, "mail", user)

    def log(self):
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def _setup(self):
        t = self.tmpdir
        owner, uid, gid, group = _mail_owner()
        self.mail_user, self.mail_uid, self.mail_gid = owner, uid, gid
        root = os.geteuid() == 0
        os.chmod(t, 0o755)                   # mail processes (uid) traverse to their homes
        for d in ("auth", "tls", "state", "mail"):
            os.makedirs(os.path.join(t, d), exist_ok=True)
        os.chmod(os.path.join(t, "tls"), 0o700)
        os.chmod(os.path.join(t, "auth"), 0o755)
        if root:
            os.chown(os.path.join(t, "mail"), uid, gid)
        for u in self.users:
            h = self.home(u)
            os.makedirs(h, exist_ok=True)
            if root:
                os.chown(h, uid, gid)

        # certificates: the trusted test CA always; the rogue CA signs when untrusted_cert
        if not os.path.exists(self.ca_file):
            make_ca(self.tls_dir, "test", "lmtpgw test CA")
        signer = "test"
        if self.untrusted_cert:
            make_ca(self.tls_dir, "rogue", "lmtpgw untrusted CA")
            signer = "rogue"
        make_server_cert(self.tls_dir, signer, self.cert_san)

        # passwd-files: user:{PLAIN}password:uid:gid:gecos:home:shell:extra fields
        def line(u, pw, extra=""):
            if ":" in u or ":" in pw or "\n" in u + pw:
                raise DovecotError("user names and passwords must not contain ':'")
            return "%s:{PLAIN}%s::::::%s\n" % (u, pw, extra)

        with open(os.path.join(t, "auth", "users"), "w") as f:
            for u, pw in self.users.items():
                q = self.quotas.get(u)
                f.write(line(u, pw, "userdb_quota_rule=*:storage=%s" % q if q else ""))
        with open(os.path.join(t, "auth", "master-users"), "w") as f:
            f.write(line(*self.master))
        for fn in ("users", "master-users"):
            os.chmod(os.path.join(t, "auth", fn), 0o644)
        if self.oauth2:
            # read by the auth process, which may run as another user: a copy under auth/
            shutil.copy(self.oauth2["ca_file"], os.path.join(t, "auth", "oauth2-ca.crt"))
            for name, url, fmt in (("user", self.oauth2["introspect_url"], "%Lu"),
                                   ("app", self.oauth2["introspect_app_url"], "%Ld")):
                with open(os.path.join(t, "auth", "oauth2-%s.conf.ext" % name), "w") as f:
                    f.write("introspection_mode = post\n"
                            "introspection_url = %s\n"
                            "username_attribute = username\n"
                            "username_format = %s\n"
                            "active_attribute = active\n"
                            "active_value = true\n"
                            "tls_ca_cert_file = %s\n"
                            "timeout_msecs = 10000\n"
                            % (url, fmt, os.path.join(t, "auth", "oauth2-ca.crt")))
            for fn in os.listdir(os.path.join(t, "auth")):
                os.chmod(os.path.join(t, "auth", fn), 0o644)

    def _write_conf(self):
        with open(TEMPLATE) as f:
            text = f.read()
        root = os.geteuid() == 0
        me = pwd.getpwuid(os.geteuid()).pw_name
        my_group = grp.getgrgid(os.getegid()).gr_name
        vals = {
            "TMPDIR": self.tmpdir,
            "INSTANCE": self.instance_name,
            "PROTOCOLS": "imap lmtp" if self.lmtp else "imap",
            "IMAP_PORT": str(self.imap_port),
            "IMAPS_PORT": str(self.imaps_port),
            "CHECK_PORT": str(self.check_port),
            "INTERNAL_USER": "dovecot" if root else me,
            "INTERNAL_GROUP": "dovecot" if root else my_group,
            "LOGIN_USER": "dovenull" if root else me,
            "LOGIN_CHROOT": "" if root else "  chroot =",
            "ANVIL_CHROOT": "" if root else "  chroot =",
            "CHECK_CHROOT": "login" if root else "",
            "LMTP_INET": ("  inet_listener lmtp {\n    address = 127.0.0.1\n    port = %d\n  }"
                          % self.lmtp_port) if self.lmtp else "",
            # LMTP recipients are addresses: look up their local part (alice@x.test -> alice)
            "LMTP_PROTOCOL": ("protocol lmtp {\n  auth_username_format = %Ln\n}"
                              if self.lmtp else ""),
            "MAIL_UID": str(self.mail_uid),
            "MAIL_GID": str(self.mail_gid),
            "FIRST_VALID_UID": str(min(self.mail_uid, 500)) if self.mail_uid else "1",
            "FIRST_VALID_GID": str(min(self.mail_gid, 1)) if self.mail_gid else "1",
            "SEPARATOR": self.separator,
            "DEFAULT_QUOTA": self.default_quota,
            "MAX_USERIP": str(self.max_userip_connections),
            "AUTH_FAILURE_DELAY": "2 secs" if self.auth_penalty else "0",
            "PENALTY_MODE": "0600" if self.auth_penalty else "0",
            "OAUTH_MECHANISMS": "xoauth2 oauthbearer" if self.oauth2 else "",
            "OAUTH_PASSDBS": "".join(
                "passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                "  args = %s/auth/oauth2-%s.conf.ext\n}\n" % (self.tmpdir, n)
                for n in ("user", "app")) if self.oauth2 else "",
        }
        if self.mail_uid == 0:
            raise DovecotError("mail processes would run as root: refusing")

        def sub(m):
            k = m.group(1)
            if k not in vals:
                raise DovecotError("template %s: unknown @%s@" % (TEMPLATE, k))
            return vals[k]
        text = re.sub(r"@([A-Z][A-Z_]*[A-Z])@", sub, text)
        with open(self.conf_path, "w") as f:
            f.write(text)

    def start(self):
        t0 = time.monotonic()
        self._setup()
        last = None
        for _attempt in range(3):            # a random port can be taken between pick and bind
            ports = set()
            while len(ports) < 4:
                ports.add(free_port())
            self.imap_port, self.imaps_port, self.check_port, lmtp_port = list(ports)
            self.lmtp_port = lmtp_port if self.lmtp else None
            self._write_conf()
            try:
                self._spawn()
                break
            except DovecotError as e:
                last = e
                self.stop(remove=False)
                if "in use" not in str(e):
                    raise
        else:
            raise last
        self.started_in = time.monotonic() - t0
        return self

    def _spawn(self):
        open(self.log_path, "a").close()
        err = open(self.stderr_path, "ab")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        try:
            self.proc = subprocess.Popen([self.dovecot, "-F", "-c", self.conf_path],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         env=env, cwd=self.tmpdir, start_new_session=True)
        finally:
            err.close()
        self.pid = self.proc.pid
        _live.append(self)
        deadline = time.monotonic() + self.start_timeout
        self.greeting = servers.wait_imap_greeting(
            self.proc, self.host, self.imap_port, self.start_timeout, DovecotError, "dovecot",
            self._diagnostics, interval=0.01)
        if self.lmtp:
            while not os.path.exists(self.lmtp_socket):
                if time.monotonic() > deadline:
                    raise DovecotError("no LMTP socket %s" % self.lmtp_socket)
                time.sleep(0.01)

    def _diagnostics(self):
        out = []
        for p in (self.stderr_path, self.log_path):
            try:
                with open(p, errors="replace") as f:
                    out.append("--- %s\n%s" % (p, f.read()[-4000:]))
            except OSError:
                pass
        return "\n".join(out)

    def processes(self):
        """PIDs of every live process of this instance: the master, the processes in its session
        and any process titled "dovecot-<instance_name>/..." (children outlive the master)."""
        found = []
        title = ("dovecot-%s/" % self.instance_name).encode()
        conf = self.conf_path.encode()
        for pid in servers.all_pids():
            if pid == os.getpid():
                continue
            st = servers.proc_stat(pid)
            if st is None or not _is_dovecot(pid):
                continue
            cmd = servers.proc_cmdline(pid)
            if (self.pid is not None and (pid == self.pid or st[1] == self.pid)) \
                    or cmd.startswith(title) or (b"\0" + conf + b"\0") in cmd:
                found.append(pid)
        return found

    def session_pids(self, service="imap", user=None):
        """PIDs of this instance's mail processes of service ("imap", "lmtp"), optionally only
        those serving user (from the verbose process title "[user 127.0.0.1 ...]")."""
        out = []
        for pid in self.processes():
            cmd = servers.proc_cmdline(pid).decode("utf-8", "replace")
            m = re.match(r"dovecot-[^/]*/(\S+)(?: \[(\S*))?", cmd)
            if m and m.group(1) == service and (user is None or m.group(2) == user):
                out.append(pid)
        return out

    def stop(self, remove=True, graceful=False):
        """Stop by PID: SIGTERM to the master and (unless graceful, where the master gets up to
        5 s to shut down by itself) at once to every other process of this instance -- after a
        lone SIGTERM the master takes ~1 s and its children linger ~9 s more. SIGKILL whatever is
        left after 2 s. Then remove the temp dir (if we created it)."""
        _live.discard(self)
        if self.proc is not None:
            pids = self.processes()
            if self.proc.poll() is None:
                servers.signal_pid(self.proc.pid, signal.SIGTERM)
                if graceful:
                    try:
                        self.proc.wait(5)
                    except subprocess.TimeoutExpired:
                        pass
            for sig in (signal.SIGTERM, signal.SIGKILL):
                left = set(pids) | set(self.processes())   # pids: taken before the master died
                left = [p for p in left if _is_dovecot(p)]
                if not left:
                    break
                for pid in left:
                    servers.signal_pid(pid, sig)
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline and self.processes():
                    time.sleep(0.01)
                pids = []
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            left = self.processes()
            self.proc = None
            if left:
                raise DovecotError("dovecot processes survived SIGKILL: %s" % left)
        if remove and self._own_tmpdir and os.path.isdir(self.tmpdir):
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    # ---- IMAP helpers (python imaplib) -----------------------------------------------------
    def ssl_context(self, cafile=None):
        ctx = ssl.create_default_context(cafile=cafile or self.ca_file)
        return ctx

    def connect(self, tls="starttls", host=None, timeout=10):
        """An unauthenticated imaplib connection: tls = "starttls" | "imaps" | "plain".
        The certificate is verified against ca_file and the host name (default 127.0.0.1)."""
        host = host or self.host
        if tls == "imaps":
            return imaplib.IMAP4_SSL(host, self.imaps_port, ssl_context=self.ssl_context(),
                                     timeout=timeout)
        c = imaplib.IMAP4(host, self.imap_port, timeout=timeout)
        if tls == "starttls":
            c.starttls(ssl_context=self.ssl_context())
        elif tls != "plain":
            raise ValueError("tls must be starttls, imaps or plain")
        return c

    def login(self, user, password=None, tls="starttls"):
        """A connection logged in as user with the user's own password (LOGIN)."""
        c = self.connect(tls)
        c.login(user, self.users[user] if password is None else password)
        return c

    def login_master(self, user, how="plain", tls="starttls", master=None):
        """A connection into user's mailboxes with the master credential: how = "plain" (SASL
        PLAIN, authzid = user, authcid = master) or "login" (LOGIN "user*master")."""
        mu, mp = master or self.master
        c = self.connect(tls)
        if how == "plain":
            c.authenticate("PLAIN", lambda _: ("%s\0%s\0%s" % (user, mu, mp)).encode())
        elif how == "login":
            c.login("%s*%s" % (user, mu), mp)
        else:
            raise ValueError("how must be plain or login")
        return c

    def _helper(self, user):
        """A session for the helpers below: the user's own password on the quiet imapcheck
        service (see dovecot.conf.in), so the log's login lines stay the client's."""
        if user not in self.users:
            raise DovecotError("helpers need a user of this server, not %r" % user)
        c = imaplib.IMAP4(self.host, self.check_port, timeout=10)
        c.login(user, self.users[user])
        return c

    def append(self, user, raw, folder="INBOX", flags="", date=None):
        """APPEND raw (bytes) into user's folder; returns imaplib's (typ, data)."""
        c = self._helper(user)
        try:
            return c.append(_imap_quote(folder), flags or None,
                            date if date is not None else None, raw)
        finally:
            _logout(c)

    def list_mailboxes(self, user):
        """Names of all of user's mailboxes (LIST "" "*")."""
        c = self._helper(user)
        try:
            typ, data = c.list('""', "*")
            if typ != "OK":
                raise DovecotError("LIST: %s %s" % (typ, data))
            names = []
            for item in data:
                if item is None:
                    continue
                if isinstance(item, tuple):      # literal mailbox name
                    names.append(item[1].decode("utf-8", "replace"))
                    continue
                m = re.match(rb'\((.*?)\) (NIL|"(?:[^"\\]|\\.)*") (.*)$', item)
                name = m.group(3)
                if name.startswith(b'"'):
                    name = re.sub(rb'\\(.)', rb'\1', name[1:-1])
                names.append(name.decode("utf-8", "replace"))
            return names
        finally:
            _logout(c)

    def count(self, user, folder="INBOX"):
        """Number of messages in user's folder, or None when the folder does not exist."""
        c = self._helper(user)
        try:
            typ, data = c.status(_imap_quote(folder), "(MESSAGES)")
            if typ != "OK":
                if b"NONEXISTENT" in b" ".join(d for d in data if d) or \
                        b"doesn't exist" in b" ".join(d for d in data if d):
                    return None
                raise DovecotError("STATUS %s: %s %s" % (folder, typ, data))
            m = re.search(rb"MESSAGES (\d+)", data[0])
            return int(m.group(1))
        finally:
            _logout(c)

    def messages(self, user, folder="INBOX"):
        """Every message of user's folder as Message(uid, raw bytes, flags tuple,
        internaldate datetime, internaldate_text), in UID order; [] when the folder is empty."""
        c = self._helper(user)
        try:
            typ, data = c.select(_imap_quote(folder), readonly=True)
            if typ != "OK":
                raise DovecotError("SELECT %s: %s %s" % (folder, typ, data))
            if int(data[0]) == 0:
                return []
            typ, data = c.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
            if typ != "OK":
                raise DovecotError("FETCH: %s %s" % (typ, data))
            out = []
            cur = None
            for item in data:
                if isinstance(item, tuple):
                    head, raw = item
                    cur = {"raw": raw}
                    _fetch_items(head, cur)
                    out.append(cur)
                elif item and cur is not None:
                    _fetch_items(item, cur)       # items after the literal, e.g. " FLAGS (...))"
            msgs = [Message(int(m["uid"]), m["raw"], m.get("flags", ()),
                            parse_internaldate(m["date"]), m["date"]) for m in out]
            return sorted(msgs, key=lambda m: m.uid)
        finally:
            _logout(c)

    def fetch(self, user, folder="INBOX", uid=None):
        """One Message: the one with this UID, or the last one; None when there is none."""
        msgs = self.messages(user, folder)
        if uid is not None:
            msgs = [m for m in msgs if m.uid == int(uid)]
        return msgs[-1] if msgs else None


def _fetch_items(b, d):
    for m in _FETCH_ITEM.finditer(b):
        if m.group(1):
            d["uid"] = m.group(1)
        elif m.group(2) is not None:
            # \\Recent is per session, not stored: left out
            d["flags"] = tuple(f for f in m.group(2).decode().split() if f != "\\Recent")
        elif m.group(3):
            d["date"] = m.group(3).decode()


def _logout(c):
    try:
        c.logout()
    except Exception:
        try:
            c.shutdown()
        except Exception:
            pass


if __name__ == "__main__":
    # Start one by hand for debugging: python3 tests/integration/dovecot.py [--lmtp]
    import sys
    with DovecotServer(lmtp="--lmtp" in sys.argv) as dc:
        print("dovecot pid %d, config %s (started in %.2f s)" %
              (dc.pid, dc.conf_path, dc.started_in))
        print("imap 127.0.0.1:%d (STARTTLS), imaps 127.0.0.1:%d, CA %s" %
              (dc.imap_port, dc.imaps_port, dc.ca_file))
        if dc.lmtp:
            print("lmtp 127.0.0.1:%d and %s" % (dc.lmtp_port, dc.lmtp_socket))
        print("users %s, master %s/%s; log %s" %
              (dc.users, dc.master[0], dc.master[1], dc.log_path))
        print("Ctrl-C stops it and removes %s" % dc.tmpdir)
        try:
            while dc.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
