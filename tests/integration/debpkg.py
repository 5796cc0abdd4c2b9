"""
debpkg - Debian packages for the interop tests, downloaded and unpacked, never installed.

    root = debpkg.unpacked("cyrus", ["cyrus-imapd", "cyrus-common", ...])   # a directory
    debpkg.system_user("cyrus", group="mail")

Exim, OpenSMTPD and Cyrus IMAP cannot be installed beside Postfix and Dovecot (they conflict as
mail-transport-agent, and cyrus-imapd removes dovecot-imapd), so the tests run them from their
unpacked .deb files (docs/interop.md). `apt-get download` fetches each package into the cache
(CACHE/debs; `apt-get update` first when the package lists do not know it), `dpkg-deb -x`
unpacks the set into CACHE/<name>, and a stamp file naming the exact .deb files marks a complete
unpack: a second run costs a stat. A lock file serialises parallel runs that share the cache.

The cache is $LMTPGW_TEST_CACHE, else /var/cache/lmtpgw-tests as root, else build/interop-cache.
Unavailable here (not root, no apt-get, no network) raises Unavailable with the reason; the
caller turns it into harness.Skip naming its suite (run-tests.py decides what a skip of a
real-server suite means under CI=true). python3 stdlib only.
"""
import fcntl
import glob
import grp
import os
import pwd
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Unavailable(Exception):
    """The packages cannot be had on this machine (the test is skipped, saying why)."""


def cache_dir():
    d = os.environ.get("LMTPGW_TEST_CACHE")
    if not d:
        d = ("/var/cache/lmtpgw-tests" if os.geteuid() == 0
             else os.path.join(ROOT, "build", "interop-cache"))
    os.makedirs(d, exist_ok=True)
    return d


def _run(args, cwd=None):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    return subprocess.run(args, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                          env=env, timeout=600)


def _debs(debdir, packages):
    """{package: path of its newest .deb in debdir} for those present."""
    found = {}
    for p in packages:
        files = sorted(glob.glob(os.path.join(debdir, "%s_*.deb" % p)))
        if files:
            found[p] = files[-1]
    return found


def _download(debdir, packages):
    if shutil.which("apt-get") is None:
        raise Unavailable("no apt-get to download %s" % " ".join(packages))
    # Root downloads into a directory _apt cannot write: tell apt not to drop privileges.
    args = ["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download"] + packages
    p = _run(args, cwd=debdir)
    if p.returncode != 0:
        # A fresh machine (or container) may have empty package lists.
        upd = _run(["apt-get", "-q", "update"])
        p = _run(args, cwd=debdir)
        if p.returncode != 0:
            raise Unavailable("apt-get download %s failed: %s %s" % (
                " ".join(packages), p.stderr.decode("utf-8", "replace")[-800:],
                upd.stderr.decode("utf-8", "replace")[-400:]))


def unpacked(name, packages):
    """Directory where the packages are unpacked (downloaded and unpacked once, then cached)."""
    if os.geteuid() != 0:
        raise Unavailable("%s runs from unpacked packages with system users: needs root" % name)
    cache = cache_dir()
    debdir = os.path.join(cache, "debs")
    os.makedirs(debdir, exist_ok=True)
    root = os.path.join(cache, name)
    stamp = os.path.join(cache, name + ".unpacked")
    with open(os.path.join(cache, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        debs = _debs(debdir, packages)
        missing = [p for p in packages if p not in debs]
        if missing:
            _download(debdir, missing)
            debs = _debs(debdir, packages)
            missing = [p for p in packages if p not in debs]
            if missing:
                raise Unavailable("apt-get download did not fetch %s" % " ".join(missing))
        want = "\n".join(os.path.basename(debs[p]) for p in packages) + "\n"
        try:
            with open(stamp) as f:
                if f.read() == want and os.path.isdir(root):
                    return root
        except OSError:
            pass
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        for p in packages:
            r = _run(["dpkg-deb", "-x", debs[p], root])
            if r.returncode != 0:
                raise Unavailable("dpkg-deb -x %s: %s" % (debs[p],
                                                          r.stderr.decode("utf-8", "replace")))
        with open(stamp, "w") as f:
            f.write(want)
        return root


class cache_lock:
    """with cache_lock(): ... -- one test run at a time prepares something in the cache."""
    def __enter__(self):
        self.f = open(os.path.join(cache_dir(), ".prepare.lock"), "w")
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.f.close()


def system_user(name, group=None, user_group=False):
    """Create the system user (and group) when missing; returns its pwd entry. A parallel run
    that creates it first is fine."""
    with open(os.path.join(cache_dir(), ".users.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
        args = ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                "--shell", "/usr/sbin/nologin"]
        if group is not None:
            args += ["--gid", group]
        elif user_group:
            args += ["--user-group"]
        r = _run(args + [name])
        try:
            return pwd.getpwnam(name)
        except KeyError:
            raise Unavailable("useradd %s failed: %s" % (
                name, r.stderr.decode("utf-8", "replace")))


def system_group(name):
    """Create the system group when missing; returns its grp entry."""
    try:
        return grp.getgrnam(name)
    except KeyError:
        pass
    r = _run(["groupadd", "--system", name])
    try:
        return grp.getgrnam(name)
    except KeyError:
        raise Unavailable("groupadd %s failed: %s" % (name, r.stderr.decode("utf-8", "replace")))


def prefetch():
    """Download and unpack every interop package set now (contrib/test-servers/setup.sh, run
    by `make check`), so a first run's download does not count against a test's time limit.
    Best effort: what fails here is reported by the test that needs it."""
    import cyrus
    import exim
    import opensmtpd
    for name, packages in (("cyrus", cyrus.PACKAGES), ("exim", exim.PACKAGES),
                           ("opensmtpd", opensmtpd.PACKAGES)):
        try:
            unpacked(name, packages)
        except Unavailable as e:
            print("debpkg: %s not prepared (its tests will say why): %s" % (name, e))


if __name__ == "__main__":
    prefetch()
