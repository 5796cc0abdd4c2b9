"""
test_debian_package - `make deb`, then the package installed, used, upgraded and purged on this
machine with dpkg.

- `make deb` builds build/lmtpgw_VERSION_ARCH.deb (dpkg-buildpackage -b in a copy of the tree),
  once per test session: a .deb newer than every file that goes into it is reused. lintian
  reports no error or warning (the overrides in debian/ say why each remaining tag is fine).
  Nothing from the checkout's build/ directory is in it (only the files listed below).
- `dpkg -i`: the binary, both man pages, /etc/lmtpgw/lmtpgw.conf registered as a conffile, the
  examples, the systemd units and the sysusers.d entry; the system user `lmtpgw`; the state and
  spool directories owned by it, mode 0750.
- The installed binary with the installed configuration: `lmtpgw check` run as `lmtpgw`
  passes, and the daemon started on it refuses a recipient with a temporary 450 4.1.1 (the
  "not configured" default must never bounce mail).
- A delivery into a Maildir by the installed binary running as `lmtpgw` (started as root, the
  configuration's `user` drops privileges; spool in the package's /var/spool/lmtpgw): the
  message file is owned by lmtpgw.
- `dpkg -i` of the same package again (an upgrade over itself) with a locally changed conffile
  and no terminal: the change is kept, and so is a file in /var/lib/lmtpgw. Then an upgrade to
  a next version (the .deb repacked with dpkg-deb, version V+conftest) whose conffile changed
  too: dpkg's conffile question, answered by --force-confold without a terminal, keeps the
  admin's file and leaves the package's as lmtpgw.conf.dpkg-dist.
- `dpkg --purge`: every file of the package, the conffile and its .dpkg-dist, /etc/lmtpgw, /var/lib/lmtpgw and
  /var/spool/lmtpgw are gone. The user `lmtpgw` stays: Debian policy and adduser advise against
  removing a system user whose uid may still own files.
The package is purged at the end whatever happened (and before starting, if a previous run left
it installed). Needs root and dpkg-buildpackage; skipped under valgrind and ASan (the package
is built with the Debian build flags, not the sanitized binary, so such a run would test
nothing new and take a minute). python3 stdlib only.
"""
import grp
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

from harness import (ROOT, SLOW, VALGRIND, SANITIZED, Client, RealServerMissing, Skip, expect,
                     free_port, shared_tmp_base)

PACKAGE = "lmtpgw"
# What goes into the package: a .deb newer than all of these is up to date.
INPUTS = ["src", "include", "debian", "docs/man", "conf", "contrib/systemd", "Makefile",
          "README.md", "docs/configuration.md", "docs/operations.md", "docs/status-codes.md"]
EXPECTED_FILES = [
    "/usr/sbin/lmtpgw",
    "/usr/share/man/man8/lmtpgw.8.gz",
    "/usr/share/man/man5/lmtpgw.conf.5.gz",
    "/etc/lmtpgw/lmtpgw.conf",
    "/usr/share/doc/lmtpgw/examples/production.conf",
    "/usr/share/doc/lmtpgw/examples/imap.conf",
    "/usr/share/doc/lmtpgw/copyright",
    "/lib/systemd/system/lmtpgw.service",
    "/lib/systemd/system/lmtpgw.socket",
    "/usr/lib/sysusers.d/lmtpgw.conf",
]
STATE_DIRS = ["/var/lib/lmtpgw", "/var/spool/lmtpgw"]

_built = {}


def run(cmd, timeout=300, **kw):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                       env=env, **kw)
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


def dpkg(*args):
    """dpkg, waiting (up to 2 minutes) while apt or another dpkg holds the lock."""
    deadline = time.time() + 120
    while True:
        rc, out = run(["dpkg"] + list(args))
        if rc == 0 or "lock" not in out or time.time() > deadline:
            return rc, out
        time.sleep(2)


def newest_input():
    newest = 0.0
    for item in INPUTS:
        path = os.path.join(ROOT, item)
        if os.path.isfile(path):
            newest = max(newest, os.stat(path).st_mtime)
        for dirpath, _dirs, files in os.walk(path):
            for f in files:
                newest = max(newest, os.stat(os.path.join(dirpath, f)).st_mtime)
    return newest


def build_package():
    """Path of the .deb, built at most once per session (and reused while up to date)."""
    if "deb" in _built:
        return _built["deb"]
    rc, version = run(["dpkg-parsechangelog", "-l", os.path.join(ROOT, "debian", "changelog"),
                       "-S", "Version"])
    assert rc == 0, version
    rc, arch = run(["dpkg-architecture", "-qDEB_HOST_ARCH"])
    assert rc == 0, arch
    deb = os.path.join(ROOT, "build", "lmtpgw_%s_%s.deb" % (version.strip(), arch.strip()))
    if not (os.path.exists(deb) and os.stat(deb).st_mtime > newest_input()):
        rc, out = run(["make", "-C", ROOT, "--no-print-directory", "deb"], timeout=600)
        assert rc == 0, out[-4000:]
    assert os.path.exists(deb), deb
    _built["deb"] = deb
    return deb


def installed():
    rc, out = run(["dpkg-query", "-W", "-f=${Status}", PACKAGE])
    return rc == 0 and "installed" in out and "not-installed" not in out


def purge():
    rc, out = dpkg("--purge", PACKAGE)
    return rc, out


def as_user(user, cmd):
    """cmd as user (and its groups), without a login shell."""
    return ["setpriv", "--reuid=" + user, "--regid=" + user, "--init-groups", "--"] + cmd


def start_daemon(conf, port, log_path):
    log = open(log_path, "ab")
    proc = subprocess.Popen(["/usr/sbin/lmtpgw", "-f", "-c", conf, "--listen",
                             "127.0.0.1:%d" % port], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=log)
    log.close()
    deadline = time.time() + 15 * SLOW
    while True:
        try:
            c = Client.connect_tcp("127.0.0.1", port, timeout=10 * SLOW)
            return proc, c
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                stop_daemon(proc)
                with open(log_path, "rb") as f:
                    raise AssertionError("installed lmtpgw did not start:\n" +
                                         f.read().decode("utf-8", "replace")[-2000:])
            time.sleep(0.05)


def stop_daemon(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20 * SLOW)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def check_lintian(deb):
    if shutil.which("lintian") is None:
        return
    rc, out = run(["lintian", "--fail-on", "error,warning", deb], timeout=300)
    tags = [l for l in out.splitlines() if l[:2] in ("E:", "W:")]
    assert rc == 0 and not tags, out


def check_installed_files():
    for path in EXPECTED_FILES:
        assert os.path.exists(path), "%s not installed" % path
    rc, out = run(["dpkg-query", "-W", "-f=${Conffiles}", PACKAGE])
    assert "/etc/lmtpgw/lmtpgw.conf" in out, "not a conffile: %r" % out
    rc, listing = run(["dpkg", "-L", PACKAGE])
    # Only installed paths; nothing from a build directory.
    assert "/build/" not in listing and ".o\n" not in listing, listing
    pw = pwd.getpwnam("lmtpgw")
    assert pw.pw_uid < 1000, "not a system user: %d" % pw.pw_uid
    assert grp.getgrnam("lmtpgw").gr_gid == pw.pw_gid
    for d in STATE_DIRS:
        st = os.stat(d)
        assert st.st_uid == pw.pw_uid and st.st_gid == pw.pw_gid, d
        assert st.st_mode & 0o7777 == 0o750, "%s mode %o" % (d, st.st_mode & 0o7777)
    rc, out = run(["/usr/sbin/lmtpgw", "-V"])
    assert rc == 0 and out.startswith("lmtpgw "), out
    if shutil.which("man"):
        rc, out = run(["man", "-P", "cat", "lmtpgw.conf"])
        assert rc == 0 and "syslog_facility" in out, out[-500:]


def check_default_config_refuses_temporarily(tmp):
    rc, out = run(as_user("lmtpgw", ["/usr/sbin/lmtpgw", "check"]))
    assert rc == 0 and "/etc/lmtpgw/lmtpgw.conf: OK" in out, out
    port = free_port()
    proc, c = start_daemon("/etc/lmtpgw/lmtpgw.conf", port, os.path.join(tmp, "default.log"))
    try:
        with c:
            expect(c.read_greeting(), 220)
            expect(c.lhlo(), 250)
            expect(c.cmd("MAIL FROM:<sender@example.org>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.org>"), 450, "4.1.1")
            c.cmd("QUIT")
        # It dropped to the packaged user ("user" in the installed configuration).
        with open("/proc/%d/status" % proc.pid) as f:
            uid_line = [l for l in f if l.startswith("Uid:")][0]
        assert int(uid_line.split()[1]) == pwd.getpwnam("lmtpgw").pw_uid, uid_line
    finally:
        assert stop_daemon(proc) == 0, open(os.path.join(tmp, "default.log")).read()


def check_delivery_as_lmtpgw(tmp):
    pw = pwd.getpwnam("lmtpgw")
    mail = os.path.join(tmp, "mail")
    os.makedirs(mail)
    os.chown(mail, pw.pw_uid, pw.pw_gid)
    conf = os.path.join(tmp, "maildir.conf")
    with open(conf, "w") as f:
        f.write('user = "lmtpgw";\n'
                'spool_dir = "/var/spool/lmtpgw";\n'
                'spool_memory_max = 0;\n'       # the message goes through the spool directory
                'backends: { local: { driver = "maildir"; path = "%s/%%{domain}/%%{local}"; }; };\n'
                'routes = ( { match = "*@example.test"; deliver = "local"; } );\n' % mail)
    os.chmod(conf, 0o644)
    rc, out = run(as_user("lmtpgw", ["/usr/sbin/lmtpgw", "-c", conf, "check"]))
    assert rc == 0, out
    port = free_port()
    log = os.path.join(tmp, "maildir.log")
    proc, c = start_daemon(conf, port, log)
    try:
        with c:
            expect(c.read_greeting(), 220)
            expect(c.lhlo(), 250)
            expect(c.cmd("MAIL FROM:<sender@example.org>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            c.send(b"Subject: from the package\r\n\r\nhello\r\n.\r\n")
            expect(c.reply(), 250, "2.0.0")
            c.cmd("QUIT")
    finally:
        assert stop_daemon(proc) == 0, open(log).read()
    new = os.path.join(mail, "example.test", "alice", "new")
    files = os.listdir(new)
    assert len(files) == 1, files
    st = os.stat(os.path.join(new, files[0]))
    assert st.st_uid == pw.pw_uid, "message owned by uid %d" % st.st_uid
    with open(os.path.join(new, files[0]), "rb") as f:
        assert b"Subject: from the package" in f.read()


def check_upgrade_keeps_conffile(deb):
    marker = "# changed locally by test_debian_package\n"
    with open("/etc/lmtpgw/lmtpgw.conf", "a") as f:
        f.write(marker)
    keep = "/var/lib/lmtpgw/kept-by-upgrade"
    with open(keep, "w") as f:
        f.write("x")
    rc, out = dpkg("--force-confdef", "--force-confold", "-i", deb)
    assert rc == 0, out
    with open("/etc/lmtpgw/lmtpgw.conf") as f:
        assert f.read().endswith(marker), "local change lost on upgrade"
    assert os.path.exists(keep)
    assert not os.path.exists("/etc/lmtpgw/lmtpgw.conf.dpkg-new")
    os.unlink(keep)
    rc, out = run(["/usr/sbin/lmtpgw", "check"])
    assert rc == 0, out


def next_version_with_new_conffile(deb, tmp):
    """The same package as version V+conftest whose /etc/lmtpgw/lmtpgw.conf changed (repacked
    with dpkg-deb: no second build), to reach dpkg's conffile prompt."""
    root = os.path.join(tmp, "next")
    rc, out = run(["dpkg-deb", "-R", deb, root])
    assert rc == 0, out
    control = os.path.join(root, "DEBIAN", "control")
    with open(control) as f:
        text = f.read()
    text = "\n".join(l + "+conftest" if l.startswith("Version: ") else l
                     for l in text.split("\n"))
    with open(control, "w") as f:
        f.write(text)
    with open(os.path.join(root, "etc", "lmtpgw", "lmtpgw.conf"), "a") as f:
        f.write("# new in the next version\n")
    md5 = os.path.join(root, "DEBIAN", "md5sums")
    if os.path.exists(md5):
        os.unlink(md5)  # optional; dpkg recomputes what it needs
    out_deb = os.path.join(tmp, "lmtpgw-next.deb")
    rc, out = run(["dpkg-deb", "--root-owner-group", "-b", root, out_deb])
    assert rc == 0, out
    return out_deb


def check_upgrade_with_changed_package_conffile(deb, tmp):
    """Both the admin and the new version changed the conffile: without a terminal, dpkg
    --force-confold keeps the admin's file and puts the package's beside it (.dpkg-dist)."""
    next_deb = next_version_with_new_conffile(deb, tmp)
    rc, out = dpkg("--force-confdef", "--force-confold", "-i", next_deb)
    assert rc == 0, out
    rc, version = run(["dpkg-query", "-W", "-f=${Version}", PACKAGE])
    assert version.endswith("+conftest"), version
    with open("/etc/lmtpgw/lmtpgw.conf") as f:
        mine = f.read()
    assert "# changed locally by test_debian_package" in mine and "next version" not in mine
    with open("/etc/lmtpgw/lmtpgw.conf.dpkg-dist") as f:
        assert f.read().endswith("# new in the next version\n")
    rc, out = run(["/usr/sbin/lmtpgw", "check"])
    assert rc == 0, out


def check_purged():
    """Purge removes everything of the package, but never mail: a quarantine Maildir an admin
    put in the spool directory (the unit may write there) stays, with the directory holding
    it; the rest goes."""
    kept = "/var/spool/lmtpgw/quarantine/new/1796000000.M1P2.mx,S=5"
    os.makedirs(os.path.dirname(kept))
    with open(kept, "w") as f:
        f.write("mail\n")
    rc, out = purge()
    assert rc == 0, out
    assert not installed()
    assert os.path.exists(kept), "purge deleted mail in the spool directory"
    assert "/var/spool/lmtpgw is not empty" in out, out
    shutil.rmtree("/var/spool/lmtpgw")
    for path in EXPECTED_FILES + STATE_DIRS + ["/etc/lmtpgw", "/usr/share/doc/lmtpgw",
                                               "/etc/lmtpgw/lmtpgw.conf.dpkg-dist"]:
        assert not os.path.lexists(path), "%s left after purge" % path


def test_debian_package_build_install_upgrade_purge():
    if VALGRIND or SANITIZED:
        raise Skip("the package holds the Debian-flags build, not the valgrind/ASan one: "
                   "nothing new to check there")
    if os.geteuid() != 0:
        raise Skip("installs a package with dpkg: needs root")
    for tool in ("dpkg-buildpackage", "dh", "setpriv"):
        if shutil.which(tool) is None:
            raise RealServerMissing("debian-package",
                                    "no %s (apt-get install dpkg-dev debhelper util-linux)" % tool)
    deb = build_package()
    check_lintian(deb)
    if installed():
        purge()
    tmp = tempfile.mkdtemp(prefix="lmtpgw-deb-", dir=shared_tmp_base())
    os.chmod(tmp, 0o755)  # lmtpgw (the user) reads the configuration and writes mail in here
    try:
        rc, out = dpkg("-i", deb)
        assert rc == 0, out
        check_installed_files()
        check_default_config_refuses_temporarily(tmp)
        check_delivery_as_lmtpgw(tmp)
        check_upgrade_keeps_conffile(deb)
        check_upgrade_with_changed_package_conffile(deb, tmp)
        check_purged()
    finally:
        if installed() or os.path.exists("/etc/lmtpgw/lmtpgw.conf"):
            purge()
        shutil.rmtree(tmp, ignore_errors=True)


test_debian_package_build_install_upgrade_purge.timeout = 420
