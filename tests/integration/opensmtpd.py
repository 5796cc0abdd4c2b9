"""
opensmtpd - a private OpenSMTPD 6.8.0p2 (Debian 12's, unpacked, never installed) in its own
mount namespace, as an LMTP client of lmtpgw.

    with OpenSmtpd(conf_text) as od:          # conf_text may use @PORT@ for its listener
        od.smtp_port                          # 127.0.0.1, plain SMTP
        od.send(sender, rcpts, content)       # smtplib; {} when every RCPT was accepted
        od.queue()                            # `smtpctl show queue` lines, one per envelope
        od.wait_queue(lambda q: ..., "why")   # poll until the predicate holds
        od.log()                              # smtpd -d -v stderr

OpenSMTPD cannot be installed beside Postfix (both are mail-transport-agent), and its paths are
compiled in (/var/spool/smtpd, /usr/libexec/opensmtpd, /run/smtpd.sock, /var/lib/opensmtpd/
empty). So smtpd runs under `unshare --mount --propagation private`, where a small shell binds
directories of our temp dir over /var/spool, /run and /var/lib, and the unpacked
/usr/libexec over /usr/libexec; nothing outside that namespace sees those mounts. It needs the
system users opensmtpd and opensmtpq (created when missing). smtpctl runs in the same
namespace (nsenter -m -t PID), from a cached copy that is setgid opensmtpq as packaged. stop() sends SIGTERM to smtpd by PID, then SIGKILL to whatever
of its namespace is left. Requires root. python3 stdlib only.
"""
import os
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time

import debpkg
import servers
from dovecot import free_port

PACKAGES = ["opensmtpd"]
_live = servers.Running()   # instances still running: stopped at exit or by harness.kill_all()
kill_all = _live.stop_all


class OpenSmtpdError(Exception):
    pass


def _mnt_ns(pid):
    try:
        return os.readlink("/proc/%d/ns/mnt" % pid)
    except OSError:
        return None


class OpenSmtpd:
    def __init__(self, conf_text, start_timeout=15.0):
        self.conf_text = conf_text
        self.start_timeout = start_timeout
        self.proc = None
        self.tmpdir = None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        if shutil.which("unshare") is None or shutil.which("nsenter") is None:
            raise debpkg.Unavailable("opensmtpd needs unshare and nsenter (util-linux)")
        self.root = debpkg.unpacked("opensmtpd", PACKAGES)
        for user in ("opensmtpd", "opensmtpq"):
            debpkg.system_user(user, user_group=True)
        with debpkg.cache_lock():
            self.smtpctl_path = self._setgid_smtpctl()
        self.tmpdir = tempfile.mkdtemp(prefix="lmtpgw-opensmtpd-")
        os.chmod(self.tmpdir, 0o755)
        d = self.tmpdir
        for sub in ("varspool/smtpd", "run", "varlib/opensmtpd/empty"):
            os.makedirs(os.path.join(d, sub))
        os.chmod(os.path.join(d, "varspool", "smtpd"), 0o711)
        self.smtp_port = free_port()
        self.conf_path = os.path.join(d, "smtpd.conf")
        with open(self.conf_path, "w") as f:
            f.write(self.conf_text.replace("@PORT@", str(self.smtp_port)))
        os.chmod(self.conf_path, 0o644)
        self.stderr_path = os.path.join(d, "smtpd.log")
        script = ("set -e\n"
                  "mount --bind %(d)s/varspool /var/spool\n"
                  "mount --bind %(d)s/run /run\n"
                  "mount --bind %(d)s/varlib /var/lib\n"
                  "mount --bind %(root)s/usr/libexec /usr/libexec\n"
                  "exec %(root)s/usr/sbin/smtpd -d -v -f %(conf)s\n"
                  % {"d": d, "root": self.root, "conf": self.conf_path})
        err = open(self.stderr_path, "ab")
        try:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=d,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, start_new_session=True)
        finally:
            err.close()
        _live.append(self)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise OpenSmtpdError("smtpd exited with %s: %s" % (self.proc.returncode,
                                                                   self.log()[-3000:]))
            try:
                with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=2) as s:
                    s.noop()
                break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise OpenSmtpdError("smtpd did not answer on port %d: %s" % (
                    self.smtp_port, self.log()[-3000:]))
            time.sleep(0.05)
        self.version = "6.8.0p2" if "6.8.0p2" in os.path.basename(
            debpkg._debs(os.path.join(debpkg.cache_dir(), "debs"), PACKAGES)["opensmtpd"]) \
            else None
        return self

    def _setgid_smtpctl(self):
        """smtpctl refuses to run unless setgid opensmtpq (as packaged): a cached copy."""
        import grp
        out = os.path.join(debpkg.cache_dir(), "opensmtpd-bin", "smtpctl")
        gid = grp.getgrnam("opensmtpq").gr_gid
        try:
            st = os.stat(out)
            if st.st_gid == gid and st.st_mode & 0o2000:
                return out
        except OSError:
            pass
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copyfile(os.path.join(self.root, "usr", "sbin", "smtpctl"), out + ".new")
        os.chown(out + ".new", 0, gid)
        os.chmod(out + ".new", 0o2555)
        os.rename(out + ".new", out)
        return out

    def namespace_pids(self):
        """Every process in smtpd's mount namespace (smtpd and its children)."""
        if self.proc is None:
            return []
        ns = _mnt_ns(self.proc.pid)
        if ns is None or ns == _mnt_ns(os.getpid()):
            return [self.proc.pid] if self.proc.poll() is None else []
        return [p for p in servers.all_pids() if _mnt_ns(p) == ns]

    def stop(self):
        _live.discard(self)
        if self.proc is not None:
            pids = self.namespace_pids()
            if self.proc.poll() is None:
                servers.signal_pid(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            for pid in set(pids) | set(self.namespace_pids()):
                servers.signal_pid(pid, signal.SIGKILL)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
        if self.tmpdir and os.path.isdir(self.tmpdir):
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def log(self):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        except (OSError, AttributeError, TypeError):
            return ""

    def smtpctl(self, *args):
        p = subprocess.run(["nsenter", "-m", "-t", str(self.proc.pid), self.smtpctl_path]
                           + list(args),
                           capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise OpenSmtpdError("smtpctl %s: %s%s" % (" ".join(args), p.stdout, p.stderr))
        return p.stdout

    def queue(self):
        """`smtpctl show queue`: one line per envelope ("id|...|rcpt|...|state|...")."""
        return [l for l in self.smtpctl("show", "queue").splitlines() if l.strip()]

    def send(self, sender, rcpts, content):
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as s:
            return s.sendmail(sender, rcpts, content)

    def wait(self, predicate, what, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for %s\n--- smtpd log ---\n%s" % (
                    what, self.log()[-4000:]))
            time.sleep(0.1)
