"""
postfix - start a real, private Postfix instance on loopback for lmtpgw's end-to-end tests.

    with PostfixServer({"example.test": "lmtp:inet:127.0.0.1:%d" % gw.port},
                       main={"lmtp_line_length_limit": "0"}) as pf:
        pf.smtp_port                          # its smtpd on 127.0.0.1 (random port)
        pf.send_swaks("s@x.test", ["a@example.test"], data_path)   # or pf.send(...) (smtplib)
        pf.wait_queue_empty()                 # or pf.wait_status("a@example.test", "deferred")
        pf.queue()                            # `postqueue -j` as a list of dicts
        pf.flush()                            # `postqueue -f`
        pf.statuses("a@example.test")         # ["deferred", "sent"] from the maillog
        pf.log()                              # the maillog (maillog_file, written by postlogd)
    # leaving the block runs `postfix stop`, then kills what is left of THIS instance by PID

Layout under a temp dir (0755, root-owned, so the postfix user can traverse it):
  etc/      config_directory: main.cf, master.cf and the texthash transport map, all generated
  queue/    queue_directory (created by `postfix start`, i.e. post-install create-missing)
  data/     data_directory (master.lock, caches; never the system's /var/lib/postfix)
  maillog   maillog_file, written by the postlog service (no syslog needed)

Nothing in /etc/postfix or /var/spool/postfix is written: every path is ours, every daemon runs
unchrooted with `-c` pointing at etc/ (MAIL_CONFIG). Postfix must run as root (it drops to the
mail_owner "postfix", which the Debian package creates). Routing: relay_domains = the routed
domains, transport_maps = texthash:etc/transport with "DOMAIN NEXTHOP" lines; mydestination is
empty, so nothing is delivered locally. No DNS: smtp/lmtp_dns_support_level = disabled and
*_host_lookup = native. Short queue timers (queue_run_delay, minimal/maximal_backoff_time).
Stopping: `postfix -c etc stop`, then SIGTERM/SIGKILL by PID to every process whose environment
has MAIL_CONFIG=<our etc/> or whose cwd is our queue dir. python3 stdlib only.
"""
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time

import servers

SBIN = "/usr/sbin"
DAEMON_DIR = "/usr/lib/postfix/sbin"

_live = servers.Running()   # instances still running: stopped at exit or by harness.kill_all()
kill_all = _live.stop_all


class PostfixError(Exception):
    """Postfix is missing, or the instance could not be started."""


def find_postfix():
    """Raise PostfixError unless Postfix's commands and daemons are installed and we are root."""
    for p in (os.path.join(SBIN, "postfix"), os.path.join(SBIN, "postqueue"),
              os.path.join(SBIN, "postconf"), os.path.join(DAEMON_DIR, "master"),
              os.path.join(DAEMON_DIR, "lmtp"), os.path.join(DAEMON_DIR, "postlogd")):
        if not os.access(p, os.X_OK):
            raise PostfixError("Postfix is not installed (no %s): apt-get install postfix" % p)
    if os.geteuid() != 0:
        raise PostfixError("a private Postfix instance must be started as root (mail_owner "
                           "postfix); running as uid %d" % os.geteuid())
    try:
        import pwd
        pwd.getpwnam("postfix")
        import grp
        grp.getgrnam("postdrop")
    except KeyError as e:
        raise PostfixError("the postfix user or postdrop group is missing: %s" % e)


def free_port(host="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


# master.cf: every service unchrooted (chroot column "n"); "%(smtp)s" is the smtpd listener.
MASTER_CF = """\
# written by tests/integration/postfix.py
# service type  private unpriv  chroot  wakeup  maxproc command + args
%(listen)s inet n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp %(lmtp_args)s
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixServer:
    """A private Postfix: own config/queue/data dirs under a temp dir, smtpd on 127.0.0.1:random.

    routes: {domain: nexthop}, e.g. {"example.test": "lmtp:inet:127.0.0.1:2424"}; the domains
            become relay_domains and lines of the texthash transport map.
    main:   extra/overriding main.cf settings {name: value}.
    main_text: text appended to main.cf (after everything: its settings win).
    master_extra: text appended to master.cf.
    lmtp_args: arguments of the "lmtp" service's command in master.cf, e.g. "flags=X".
    """

    def __init__(self, routes, main=None, main_text="", master_extra="", lmtp_args="",
                 start_timeout=30.0):
        find_postfix()
        self.routes = dict(routes)
        self.extra_main = dict(main or {})
        self.main_text = main_text
        self.master_extra = master_extra
        self.lmtp_args = lmtp_args
        self.start_timeout = start_timeout
        # the postfix user traverses it: under a base other users can enter
        from harness import shared_tmp_base
        self.tmpdir = tempfile.mkdtemp(prefix="lmtpgw-postfix-", dir=shared_tmp_base())
        os.chmod(self.tmpdir, 0o755)
        self.config_dir = os.path.join(self.tmpdir, "etc")
        self.queue_dir = os.path.join(self.tmpdir, "queue")
        self.data_dir = os.path.join(self.tmpdir, "data")
        self.maillog = os.path.join(self.tmpdir, "maillog")
        self.transport = os.path.join(self.config_dir, "transport")
        os.makedirs(self.config_dir)
        os.makedirs(self.queue_dir)
        for d in (self.config_dir, self.queue_dir):
            os.chmod(d, 0o755)
        self.smtp_port = None
        self.running = False

    # ---- configuration ------------------------------------------------------------------
    def main_settings(self):
        s = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue_dir,
            "data_directory": self.data_dir,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": "postfix-lmtpgw-test",
            "maillog_file": self.maillog,
            "maillog_file_prefixes": self.tmpdir,
            "myhostname": "mta.postfix.test",
            "mydomain": "postfix.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": ", ".join(sorted(self.routes)),
            "transport_maps": "texthash:" + self.transport,
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtp_dns_support_level": "disabled",
            "lmtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "4s",
            "delay_warning_time": "0",
            "biff": "no",
            "in_flow_delay": "0",
            "default_process_limit": "20",
            "smtpd_banner": "$myhostname ESMTP",
            "append_dot_mydomain": "no",
            "smtputf8_enable": "yes",
        }
        s.update(self.extra_main)
        return s

    def write_config(self):
        with open(os.path.join(self.config_dir, "main.cf"), "w") as f:
            f.write("# written by tests/integration/postfix.py\n")
            for k, v in self.main_settings().items():
                f.write("%s = %s\n" % (k, v))
            f.write(self.main_text)
        with open(os.path.join(self.config_dir, "master.cf"), "w") as f:
            f.write(MASTER_CF % {"listen": "127.0.0.1:%d" % self.smtp_port,
                                 "lmtp_args": self.lmtp_args})
            f.write(self.master_extra)
        self.write_transport()

    def write_transport(self):
        with open(self.transport, "w") as f:
            for dom, nexthop in sorted(self.routes.items()):
                f.write("%s %s\n" % (dom, nexthop))

    def set(self, **settings):
        """Change main.cf settings of the running instance (postfix reload)."""
        self.extra_main.update({k: str(v) for k, v in settings.items()})
        self.write_config()
        if self.running:
            self._postfix("reload")

    # ---- commands -----------------------------------------------------------------------
    def _run(self, argv, check=True, timeout=30, input=None):
        env = dict(os.environ, MAIL_CONFIG=self.config_dir)
        p = subprocess.run(argv, capture_output=True, timeout=timeout, env=env, input=input)
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        if check and p.returncode != 0:
            raise PostfixError("%s exited %d: %s" % (" ".join(argv), p.returncode, out.strip()))
        return p.returncode, out

    def _postfix(self, *args, check=True):
        return self._run([os.path.join(SBIN, "postfix"), "-c", self.config_dir] + list(args),
                         check=check)

    def postconf(self, *args):
        return self._run([os.path.join(SBIN, "postconf"), "-c", self.config_dir] + list(args))[1]

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self):
        last = None
        for _attempt in range(3):
            self.smtp_port = free_port()
            self.write_config()
            rc, out = self._postfix("start", check=False)
            if rc != 0:
                last = "postfix start exited %d: %s\n--- maillog ---\n%s" % (rc, out, self.log()[-3000:])
                self._kill_leftovers()
                if "bind" in out or "Address already in use" in self.log():
                    continue
                raise PostfixError(last)
            _live.append(self)
            self.running = True
            deadline = time.time() + self.start_timeout
            while time.time() < deadline:
                try:
                    with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=5) as s:
                        s.settimeout(5)
                        banner = s.recv(512)
                        if banner.startswith(b"220"):
                            s.sendall(b"QUIT\r\n")
                            return self
                except OSError:
                    pass
                time.sleep(0.05)
            last = "smtpd on 127.0.0.1:%d never greeted\n--- maillog ---\n%s" % (
                self.smtp_port, self.log()[-3000:])
            self.stop(remove=False)
        raise PostfixError(last)

    def master_pid(self):
        try:
            with open(os.path.join(self.queue_dir, "pid", "master.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def processes(self):
        """PIDs of this instance: MAIL_CONFIG in the environment or cwd in our queue dir."""
        pids = []
        mine = ("MAIL_CONFIG=" + self.config_dir).encode()
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            pid = int(name)
            try:
                with open("/proc/%d/environ" % pid, "rb") as f:
                    env = f.read().split(b"\0")
                cwd = os.readlink("/proc/%d/cwd" % pid)
            except OSError:
                continue
            if mine in env or cwd == self.queue_dir or cwd.startswith(self.queue_dir + "/"):
                pids.append(pid)
        return pids

    def _kill_leftovers(self):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.processes()
            if not pids:
                return
            for pid in pids:
                servers.signal_pid(pid, sig)
            deadline = time.time() + 3
            while time.time() < deadline and self.processes():
                time.sleep(0.05)

    def stop(self, remove=True):
        if self.running:
            self.running = False
            try:
                self._postfix("stop", check=False)
            except Exception:
                pass
        self._kill_leftovers()
        _live.discard(self)
        if remove and os.environ.get("LMTPGW_KEEP_TMP") is None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type, exc, tb):
        keep = exc_type is not None
        if keep:
            print("  (kept %s for inspection)" % self.tmpdir)
        self.stop(remove=not keep)
        return False

    # ---- mail in ------------------------------------------------------------------------
    def send(self, sender, rcpts, content, mail_options=(), rcpt_options=(), helo="client.test"):
        """Submit content (bytes, CRLF lines, not dot-stuffed) over SMTP with smtplib; returns
        smtplib's refused-recipients dict. smtplib dot-stuffs and sends the bytes unchanged."""
        with smtplib.SMTP("127.0.0.1", self.smtp_port, local_hostname=helo, timeout=30) as s:
            return s.sendmail(sender, list(rcpts), content, mail_options=list(mail_options),
                              rcpt_options=list(rcpt_options))

    def send_swaks(self, sender, rcpts, data_path=None, extra=()):
        """Submit with swaks (--data FILE, or swaks' own test message); returns its output.
        swaks sends CRLF . CRLF after the data itself: a file ending in a line break gets an
        empty line added to the message (leave the last line break out for exact content)."""
        argv = ["swaks", "--server", "127.0.0.1", "--port", str(self.smtp_port),
                "--helo", "client.test", "--from", sender, "--to", ",".join(rcpts),
                "--timeout", "30"]
        if data_path:
            argv += ["--data", data_path]
        argv += list(extra)
        p = subprocess.run(argv, capture_output=True, timeout=60)
        out = (p.stdout + p.stderr).decode("utf-8", "replace")
        if p.returncode != 0:
            raise AssertionError("swaks exited %d:\n%s" % (p.returncode, out[-3000:]))
        return out

    # ---- queue --------------------------------------------------------------------------
    def queue(self):
        """`postqueue -j`: one dict per queued message (queue_name, queue_id, recipients...)."""
        _rc, out = self._run([os.path.join(SBIN, "postqueue"), "-c", self.config_dir, "-j"])
        return [json.loads(l) for l in out.splitlines() if l.startswith("{")]

    def queued_recipients(self, queue_name=None):
        """{address: [queue ids]} of recipients still queued (in queue_name if given)."""
        out = {}
        for m in self.queue():
            if queue_name and m.get("queue_name") != queue_name:
                continue
            for r in m.get("recipients", []):
                out.setdefault(r["address"], []).append(m["queue_id"])
        return out

    def flush(self):
        self._run([os.path.join(SBIN, "postqueue"), "-c", self.config_dir, "-f"])

    def wait_queue_empty(self, timeout=20.0, flush_every=None):
        """Wait until nothing is queued; with flush_every (seconds), `postqueue -f` that often."""
        deadline = time.time() + timeout
        next_flush = time.time() + flush_every if flush_every else None
        while True:
            q = self.queue()
            if not q:
                return
            if next_flush and time.time() >= next_flush:
                self.flush()
                next_flush = time.time() + flush_every
            if time.time() > deadline:
                raise AssertionError("Postfix queue not empty after %ss: %s\n--- maillog ---\n%s"
                                     % (timeout, q, self.log()[-3000:]))
            time.sleep(0.1)

    # ---- maillog ------------------------------------------------------------------------
    def log(self):
        try:
            with open(self.maillog, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def delivery_lines(self, rcpt=None):
        """The maillog's delivery lines (to=<...>, status=...), of rcpt if given."""
        out = []
        for l in self.log().splitlines():
            m = re.search(r" to=<([^>]*)>.* status=(\w+)", l)
            if m and (rcpt is None or m.group(1).lower() == rcpt.lower()):
                out.append(l)
        return out

    def statuses(self, rcpt):
        return [re.search(r" status=(\w+)", l).group(1) for l in self.delivery_lines(rcpt)]

    def wait_status(self, rcpt, status, count=1, timeout=20.0):
        """Wait until the maillog shows status (sent, deferred, bounced) count times for rcpt."""
        deadline = time.time() + timeout
        while True:
            if self.statuses(rcpt).count(status) >= count:
                return self.delivery_lines(rcpt)
            if time.time() > deadline:
                raise AssertionError("maillog never showed status=%s for %s (%d times) in %ss\n"
                                     "--- maillog ---\n%s" % (status, rcpt, count, timeout,
                                                              self.log()[-4000:]))
            time.sleep(0.1)
