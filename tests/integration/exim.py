"""
exim - a private Exim 4.96 (Debian 12's exim4-daemon-light, unpacked, never installed) as an
LMTP client of lmtpgw.

    with EximInstance(routers, transports, domains) as ex:
        ex.send("sender@example.test", ["alice@example.test"], content)   # -odi: delivered now
        ex.queue()                      # {message id: [recipients still waiting]} (exim -bp)
        ex.log()                        # its mainlog: "=>" delivered, "**" bounced, "==" deferred
        ex.results("alice@example.test")  # ["=>"], ["**"], ["=="] ... per delivery attempt
        ex.version                      # "4.96"

Exim cannot be installed beside Postfix (both are mail-transport-agent), so it runs from its
unpacked package (debpkg, cached). Debian's binary aborts until the system user Debian-exim
exists (created here when missing). It re-executes itself for deliveries, where LD_LIBRARY_PATH
is ignored, so the cached copy gets an RPATH to the unpacked libraries (libidn12 is not
installed on a Postfix machine) with the unpacked patchelf, and is owned by root, mode 4755,
like the packaged one; exim_path names that copy (Exim re-executes exim_path, compiled in as
/usr/sbin/exim4). Each instance has its own configuration (-C), spool_directory and
log_file_path in a temp dir; the main section, routers and transports given by the test follow
a fixed minimal main section. Messages are injected with `exim -C conf -oi -odi -f sender
rcpt...` (delivered before the command returns); nothing listens, nothing to stop but a queue
runner a test may start. python3 stdlib only.
"""
import os
import re
import shutil
import subprocess
import tempfile

import debpkg

PACKAGES = ["exim4-daemon-light", "libidn12", "patchelf"]
EXIM_USER = "Debian-exim"


def binary():
    """Path of the cached, RPATH-patched, setuid-root exim4 (built once)."""
    root = debpkg.unpacked("exim", PACKAGES)
    debpkg.system_user(EXIM_USER, user_group=True)
    libdir = os.path.join(root, "usr", "lib", "x86_64-linux-gnu")
    with debpkg.cache_lock():
        return _patched(root, libdir)


def _patched(root, libdir):
    out_dir = os.path.join(debpkg.cache_dir(), "exim-bin")
    out = os.path.join(out_dir, "exim4")
    stamp = out + ".rpath"
    with open(os.path.join(debpkg.cache_dir(), "exim.unpacked")) as f:
        want = libdir + "\n" + f.read()          # redone when the package changes
    try:
        with open(stamp) as f:
            if f.read() == want and os.stat(out).st_mode & 0o4000:
                return out
    except OSError:
        pass
    os.makedirs(out_dir, exist_ok=True)
    tmp = out + ".new"
    shutil.copyfile(os.path.join(root, "usr", "sbin", "exim4"), tmp)
    p = subprocess.run([os.path.join(root, "usr", "bin", "patchelf"), "--force-rpath",
                        "--set-rpath", libdir, tmp], capture_output=True)
    if p.returncode != 0:
        raise debpkg.Unavailable("patchelf on exim4: %s" % p.stderr.decode(errors="replace"))
    os.chown(tmp, 0, 0)
    os.chmod(tmp, 0o4755)
    os.rename(tmp, out)
    with open(stamp, "w") as f:
        f.write(want)
    return out


class EximError(Exception):
    pass


class EximInstance:
    def __init__(self, main="", routers="", transports="", tmpdir=None):
        self.exim = binary()
        self.user = EXIM_USER
        self.tmpdir = tmpdir or tempfile.mkdtemp(prefix="lmtpgw-exim-")
        os.chmod(self.tmpdir, 0o755)
        self.spool = os.path.join(self.tmpdir, "spool")
        self.logdir = os.path.join(self.tmpdir, "log")
        for d in (self.spool, self.logdir):
            os.makedirs(d, exist_ok=True)
            os.chown(d, _uid(self.user), _gid(self.user))
            os.chmod(d, 0o750)
        self.conf_path = os.path.join(self.tmpdir, "exim.conf")
        with open(self.conf_path, "w") as f:
            f.write("# written by tests/integration/exim.py\n"
                    "exim_path = %s\n"
                    "primary_hostname = exim.lmtpgw.test\n"
                    "qualify_domain = exim.lmtpgw.test\n"
                    "spool_directory = %s\n"
                    "log_file_path = %s/%%slog\n"
                    "exim_user = %s\n"
                    "exim_group = %s\n"
                    "keep_environment =\n"
                    "tls_advertise_hosts =\n"
                    "%s\n"
                    "begin routers\n%s\n"
                    "begin transports\n%s\n"
                    "begin retry\n*  *  F,1d,1d\n"
                    % (self.exim, self.spool, self.logdir, self.user, self.user, main, routers,
                       transports))
        self.version = None

    def __enter__(self):
        p = self.run("-bV")
        if p.returncode != 0:
            raise EximError("exim -bV: %s%s" % (p.stdout, p.stderr))
        m = re.search(r"Exim version (\S+)", p.stdout)
        self.version = m.group(1) if m else None
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def run(self, *args, data=None, timeout=120):
        return subprocess.run([self.exim, "-C", self.conf_path] + list(args), input=data,
                              capture_output=True, timeout=timeout,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                              **({} if data is not None else {"text": True}))

    def send(self, sender, rcpts, content):
        """Inject content (LF or CRLF lines) and deliver at once (-odi); returns exim's exit
        status (0 even when some recipients were deferred or bounced)."""
        p = self.run("-oi", "-odi", "-f", sender, "--", *rcpts, data=content)
        if p.returncode not in (0, 1):
            raise EximError("exim exited %d: %s" % (p.returncode, p.stderr.decode(errors="replace")))
        return p.returncode

    def queue(self):
        """{message id: [undelivered recipients]} from `exim -bp`."""
        p = self.run("-bp")
        out, current = {}, None
        for line in p.stdout.splitlines():
            m = re.match(r"^\s*\S+\s+\S+\s+(\S{16,23}) <", line)
            if m:
                current = m.group(1)
                out[current] = []
            elif current and line.strip() and not line.strip().startswith("D "):
                out[current].append(line.strip())
        return out

    def log(self):
        try:
            with open(os.path.join(self.logdir, "mainlog"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def results(self, rcpt):
        """The mainlog's delivery flags for rcpt in order: "=>" delivered, "**" bounced,
        "==" deferred, "->" additional address delivered."""
        return [flag for flag, _line in self._events(rcpt)]

    def lines(self, rcpt):
        return [line for _flag, line in self._events(rcpt)]

    def _events(self, rcpt):
        """(flag, line) per mainlog delivery line of rcpt ("=> alice <alice@d> ..." or
        "== carol@d ...")."""
        out = []
        for line in self.log().splitlines():
            m = re.search(r" (=>|\*\*|==|->) (\S+)(?: <([^>]+)>)?", line)
            if m and rcpt in (m.group(2), m.group(3)):
                out.append((m.group(1), line))
        return out


def _uid(user):
    import pwd
    return pwd.getpwnam(user).pw_uid


def _gid(user):
    import pwd
    return pwd.getpwnam(user).pw_gid
