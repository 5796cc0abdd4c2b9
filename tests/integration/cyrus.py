"""
cyrus - start a real Cyrus IMAP 3.6 (Debian 12's, from its unpacked packages) on loopback.

    with CyrusServer() as cy:                 # temp dir, CA + cert, users, random port, started
        cy.imap_port                          # 127.0.0.1; plain IMAP offering STARTTLS
        cy.ca_file                            # PEM of the test CA that signed the server cert
        cy.users, cy.master, cy.admin         # passwords; master may act as anyone (proxyservers)
        cy.mailboxes()                        # every mailbox on the server (admin LIST "" "*")
        cy.messages("alice", "projects")      # raw messages of user/alice/projects, by UID
        cy.version                            # from the greeting, e.g. "3.6.1"

Cyrus cannot be installed beside Dovecot (cyrus-imapd removes dovecot-imapd), so it runs from
cyrus-imapd, cyrus-common, sasl2-bin and their libraries unpacked by debpkg (cached). `master`
runs as root and drops to the system user "cyrus" (group mail; created when missing); it starts
children from the absolute cmd= lines of our cyrus.conf, each with -C our imapd.conf. Users are
in our own sasldb (saslpasswd2 -f, realm = servername); `proxyservers: master` lets "master" log
in as any user (SASL PLAIN with authorization id), `admins: cyradm` creates the mailboxes
(user/alice ...) and sets quotas. Cyrus 3 defaults: altnamespace and unixhierarchysep, so a
user's folders are "INBOX" and "projects" (user/alice/projects to the admin).

Cyrus logs only to syslog; nothing here reads it. stop() sends SIGTERM to the master and to every
process of its session (children run imapd with our config path in their command line), SIGKILL
after 2 s. python3 stdlib only.
"""
import email
import imaplib
import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import time

import debpkg
import servers
from dovecot import free_port, make_ca, make_server_cert

PACKAGES = ["cyrus-imapd", "cyrus-common", "libical3", "libxapian30", "libzephyr4", "sasl2-bin"]
DEFAULT_USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
DEFAULT_QUOTAS = {"carol": 64}              # user -> STORAGE quota in KiB
SERVERNAME = "cyrus.test"

_live = servers.Running()   # instances still running: stopped at exit or by harness.kill_all()
kill_all = _live.stop_all


class CyrusError(Exception):
    """Cyrus could not be started, or a helper's IMAP command failed."""


class CyrusServer:
    def __init__(self, users=None, quotas=None, mailboxes=None, start_timeout=20.0):
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.quotas = dict(DEFAULT_QUOTAS if quotas is None else quotas)
        # Users who get a mailbox (default: all); the others exist in sasldb only.
        self.with_mailbox = list(self.users if mailboxes is None else mailboxes)
        self.master = ("master", "master-secret")
        self.admin = ("cyradm", "cyradm-secret")
        self.host = "127.0.0.1"
        self.start_timeout = start_timeout
        self.proc = None
        self.tmpdir = None
        self.version = None

    def __enter__(self):
        # Already started (test_cyrus's cyrus() starts it to turn Unavailable into Skip):
        # starting again would leave the first master running.
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- set-up ------------------------------------------------------------------------
    def _setup(self):
        self.root = debpkg.unpacked("cyrus", PACKAGES)
        cyrus = debpkg.system_user("cyrus", group="mail")
        self.uid, self.gid = cyrus.pw_uid, cyrus.pw_gid
        self.bin = os.path.join(self.root, "usr", "lib", "cyrus", "bin")
        self.libdir = os.path.join(self.root, "usr", "lib", "x86_64-linux-gnu")
        self.tmpdir = tempfile.mkdtemp(prefix="lmtpgw-cyrus-")
        os.chmod(self.tmpdir, 0o755)
        d = self.tmpdir
        self.conf_path = os.path.join(d, "imapd.conf")
        self.cyrus_conf = os.path.join(d, "cyrus.conf")
        self.sasldb = os.path.join(d, "sasldb2")
        for sub in ("conf", "conf/socket", "conf/proc", "conf/lock", "spool", "run"):
            os.makedirs(os.path.join(d, sub))
        self.ca_file = make_ca(d, "test", "lmtpgw test CA")
        make_server_cert(d, "test", "IP:127.0.0.1,DNS:localhost")
        env = self._env()
        for user, pw in list(self.users.items()) + [self.master, self.admin]:
            p = subprocess.run([os.path.join(self.root, "usr", "sbin", "saslpasswd2"), "-f",
                                self.sasldb, "-u", SERVERNAME, "-p", "-c", user],
                               input=(pw + "\n").encode(), capture_output=True, env=env)
            if p.returncode != 0:
                raise CyrusError("saslpasswd2 %s: %s" % (user, p.stderr.decode(errors="replace")))
        for dirpath, dirnames, filenames in os.walk(d):
            for n in dirnames + filenames:
                os.chown(os.path.join(dirpath, n), self.uid, self.gid)

    def _env(self):
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LD_LIBRARY_PATH": self.libdir}

    def _write_conf(self):
        d = self.tmpdir
        with open(self.conf_path, "w") as f:
            f.write("configdirectory: %s/conf\n"
                    "partition-default: %s/spool\n"
                    "servername: %s\n"
                    "sasl_pwcheck_method: auxprop\n"
                    "sasl_auxprop_plugin: sasldb\n"
                    "sasl_sasldb_path: %s\n"
                    "sasl_mech_list: PLAIN LOGIN\n"
                    "admins: %s\n"
                    "proxyservers: %s\n"
                    "allowplaintext: yes\n"
                    "tls_server_cert: %s/server.crt\n"
                    "tls_server_key: %s/server.key\n"
                    % (d, d, SERVERNAME, self.sasldb, self.admin[0], self.master[0], d, d))
        with open(self.cyrus_conf, "w") as f:
            f.write('START {\n  recover cmd="%s/ctl_cyrusdb -C %s -r"\n}\n'
                    'SERVICES {\n  imap cmd="%s/imapd -C %s" listen="%s:%d" prefork=0\n}\n'
                    'EVENTS {\n}\n'
                    % (self.bin, self.conf_path, self.bin, self.conf_path, self.host,
                       self.imap_port))
        for p in (self.conf_path, self.cyrus_conf):
            os.chown(p, self.uid, self.gid)

    def start(self):
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self):
        t0 = time.monotonic()
        self._setup()
        last = None
        for _attempt in range(3):            # a random port can be taken between pick and bind
            self.imap_port = free_port()
            self._write_conf()
            try:
                self._spawn()
                break
            except CyrusError as e:
                last = e
                self.stop(remove=False)
        else:
            raise last
        # All in ONE admin session: Debian's Cyrus 3.6.1 is built without libuuid and makes a
        # mailbox's uniqueid from rand(), so two imapd processes creating mailboxes in the same
        # second can give them the same uniqueid -- and 3.6 stores a mailbox under its
        # uniqueid, so the two share one store (seen here: alice's and bob's INBOX were one).
        c = self.admin_login()
        try:
            for user in self.with_mailbox:
                typ, data = c.create("user/" + user)
                if typ != "OK":
                    raise CyrusError("create user/%s: %r" % (user, data))
                if user in self.quotas:
                    typ, data = c.setquota("user/" + user, "(STORAGE %d)" % self.quotas[user])
                    if typ != "OK":
                        raise CyrusError("setquota user/%s: %r" % (user, data))
        finally:
            c.logout()
        self.started_in = time.monotonic() - t0
        return self

    def _spawn(self):
        self.stderr_path = os.path.join(self.tmpdir, "master.out")
        err = open(self.stderr_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [os.path.join(self.bin, "master"), "-C", self.conf_path, "-M", self.cyrus_conf,
                 "-p", os.path.join(self.tmpdir, "run", "master.pid"), "-D"],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=self._env(),
                cwd=self.tmpdir, start_new_session=True)
        finally:
            err.close()
        _live.append(self)
        self.greeting = servers.wait_imap_greeting(
            self.proc, self.host, self.imap_port, self.start_timeout, CyrusError, "cyrus master",
            self._diagnostics, read_timeout=5)
        m = re.search(r"Cyrus IMAP (\d+\.\d+\.\d+)", self.greeting)
        self.version = m.group(1) if m else None

    def _diagnostics(self):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def processes(self):
        """Live processes of this instance: the master's session, and anything whose command
        line names our config (a child that left the session)."""
        if self.proc is None:
            return []
        conf = self.conf_path.encode()
        found = []
        for pid in servers.all_pids():
            st = servers.proc_stat(pid)
            if (st is not None and st[1] == self.proc.pid) or conf in servers.proc_cmdline(pid):
                found.append(pid)
        return found

    def stop(self, remove=True):
        _live.discard(self)
        if self.proc is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in set(self.processes()) | ({self.proc.pid}
                                                    if self.proc.poll() is None else set()):
                    servers.signal_pid(pid, sig)
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline and (self.proc.poll() is None or
                                                       self.processes()):
                    time.sleep(0.02)
                if self.proc.poll() is not None and not self.processes():
                    break
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
        if remove and self.tmpdir and os.path.isdir(self.tmpdir):
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    # ---- IMAP helpers ------------------------------------------------------------------
    def ssl_context(self):
        return ssl.create_default_context(cafile=self.ca_file)

    def connect(self, tls=True):
        c = imaplib.IMAP4(self.host, self.imap_port, timeout=10)
        if tls:
            c.starttls(ssl_context=self.ssl_context())
        return c

    def admin_login(self):
        c = self.connect()
        c.login(*self.admin)
        return c

    def admin_command(self, name, *args):
        c = self.admin_login()
        try:
            typ, data = getattr(c, name)(*args)
            if typ != "OK":
                raise CyrusError("%s %s: %s %r" % (name, args, typ, data))
            return data
        finally:
            c.logout()

    def uniqueids(self):
        """{mailbox name: uniqueid} from ctl_mboxlist -d (run as the cyrus user)."""
        import json
        p = subprocess.run(["setpriv", "--reuid=%d" % self.uid, "--regid=%d" % self.gid,
                            "--clear-groups", os.path.join(self.bin, "ctl_mboxlist"), "-C",
                            self.conf_path, "-d"], capture_output=True, env=self._env())
        if p.returncode != 0:
            raise CyrusError("ctl_mboxlist -d: %s" % p.stderr.decode(errors="replace"))
        return {k: v.get("uniqueid") for k, v in json.loads(p.stdout).items()}

    def mailboxes(self):
        """Every mailbox on the server, as the admin sees it (user/alice, user/alice/x)."""
        data = self.admin_command("list", '""', "*")
        names = []
        for d in data:
            if d is None:
                continue
            m = re.match(rb'\(([^)]*)\) (?:"[^"]*"|NIL) "?(.*?)"?$', d)
            if m:
                names.append(m.group(2).decode("utf-8", "replace"))
        return sorted(names)

    def login_as(self, user):
        """A connection into user's mailboxes: SASL PLAIN, authzid user, as the master (the
        admin may list and create mailboxes but not read them)."""
        c = self.connect()
        token = ("%s\0%s\0%s" % (user, self.master[0], self.master[1])).encode()
        c.authenticate("PLAIN", lambda _challenge: token)
        return c

    def messages(self, user, folder="INBOX"):
        """[(uid, raw bytes)] of the user's folder ("INBOX", "projects"), in UID order."""
        c = self.login_as(user)
        try:
            typ, data = c.select('"%s"' % folder, readonly=True)
            if typ != "OK":
                raise CyrusError("select %s of %s: %r" % (folder, user, data))
            typ, data = c.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
            out = []
            for item in data:
                if isinstance(item, tuple):
                    m = re.search(rb"UID (\d+)", item[0])
                    out.append((int(m.group(1)), item[1]))
            return sorted(out)
        finally:
            c.logout()

    def count(self, user, folder="INBOX"):
        return len(self.messages(user, folder))

    def subjects(self, user, folder="INBOX"):
        return [email.message_from_bytes(raw)["Subject"] for _uid, raw in
                self.messages(user, folder)]

    def quota_used(self, user):
        """KiB used in user/<user>'s quota root."""
        data = self.admin_command("getquotaroot", "user/" + user)
        for d in data:
            for item in (d if isinstance(d, list) else [d]):
                if isinstance(item, bytes):
                    m = re.search(rb"STORAGE (\d+) (\d+)", item)
                    if m:
                        return int(m.group(1))
        return None
