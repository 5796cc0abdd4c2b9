"""
test_install - `make install` and the shipped example configurations.

- `make install PREFIX=/usr DESTDIR=<tmp>` puts the binary, both man pages (they render with
  `man -l`), every example configuration, the systemd units (ExecStart rewritten to
  /usr/sbin/lmtpgw) and the sysusers.d entry under <tmp>, and needs no root: when the tests run
  as root, make runs as "nobody" (setpriv) into a directory nobody owns. The installed binary
  answers -V and passes `check` on the installed examples; `systemd-analyze verify` accepts the
  installed units when it is available.
- The installed conf/examples/production.conf, with its TLS files and paths swapped for temp
  ones, serves: unix socket with the configured group and mode and no STARTTLS, TCP refused to
  clients outside allow_clients, MAIL before STARTTLS refused (tls_required), delivery after it,
  create = false refusing unknown users at RCPT, the health endpoint on loopback, and (as root)
  the privilege drop to `user`.
- Every conf/examples/*.conf passes `lmtpgw -c X check` once the files it names under
  /etc/lmtpgw/ exist (temp copies: secrets mode 0600, a generated certificate and key).

`make install` runs in a copy of the source tree under a world-traversable temp dir, with the
test suite's binary as the copy's build/lmtpgw and `-o` on it, so it installs exactly the binary
the suite uses and never rebuilds it. The copy is what lets "nobody" run it: the checkout may sit
under a directory other users cannot enter (/root, a 0700 home), as a fresh clone often does.
python3 stdlib only.
"""
import grp
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
import urllib.request

from harness import ROOT, SLOW, Client, Skip, expect, free_port, binary, shared_mkdtemp

EXAMPLES = os.path.join(ROOT, "conf", "examples")


def run(cmd, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 120)
    p = subprocess.run(cmd, **kw)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def make_cert(d, name="server", cn="mx.example.test"):
    """A self-signed certificate (also usable as its own CA) and its key (mode 0600)."""
    crt, key = os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")
    rc, out, err = run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", crt,
                        "-days", "2", "-subj", "/CN=" + cn,
                        "-addext", "subjectAltName=DNS:%s,IP:127.0.0.1" % cn])
    assert rc == 0, err
    os.chmod(key, 0o600)
    return crt, key


# --- make install --------------------------------------------------------------------------

_installed = {}

# Not copied into the install tree: builds, VCS data, npm modules (none are installed).
COPY_IGNORE = shutil.ignore_patterns(".git", "build", "build-*", "node_modules", "var",
                                     "__pycache__")


def world_readable_tree(src, dst):
    """Copy the source tree src to dst with every directory 0755 and every file readable by
    all (executables 0755), whatever the umask of the clone was: another user reads it."""
    shutil.copytree(src, dst, ignore=COPY_IGNORE, symlinks=True)
    for dirpath, dirs, files in os.walk(dst):
        os.chmod(dirpath, 0o755)
        for f in files:
            path = os.path.join(dirpath, f)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.stat(path).st_mode & 0o100 else 0o644)


def install_tree():
    """make install PREFIX=/usr DESTDIR=<tmp>, once per test run; returns the DESTDIR."""
    if "root" in _installed:
        return _installed["root"]
    exe = binary()
    assert os.path.exists(exe), "%s not built" % exe
    top = shared_mkdtemp("lmtpgw-install-")
    src = os.path.join(top, "src")
    world_readable_tree(ROOT, src)
    os.mkdir(os.path.join(src, "build"), 0o755)
    copy_exe = os.path.join(src, "build", "lmtpgw")
    shutil.copy2(exe, copy_exe)
    os.chmod(copy_exe, 0o755)
    destdir = os.path.join(top, "root")
    os.mkdir(destdir)
    cmd = ["make", "--no-print-directory", "-C", src, "-o", "build/lmtpgw", "BUILD=build",
           "PREFIX=/usr", "DESTDIR=" + destdir, "install"]
    as_user = None
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            raise Skip("running as root and setpriv is missing: cannot show that make install "
                       "needs no root")
        nobody = pwd.getpwnam("nobody")
        os.chown(destdir, nobody.pw_uid, nobody.pw_gid)
        cmd = ["setpriv", "--reuid=%d" % nobody.pw_uid, "--regid=%d" % nobody.pw_gid,
               "--clear-groups"] + cmd
        as_user = nobody.pw_uid
    env = dict(os.environ, HOME=top)
    rc, out, err = run(cmd, env=env, cwd=top)
    assert rc == 0, "make install failed (%d):\n%s\n%s" % (rc, out, err)
    _installed.update(root=destdir, uid=as_user if as_user is not None else os.geteuid(),
                      output=out)
    return destdir


def test_make_install_into_destdir_without_root():
    destdir = install_tree()
    usr = os.path.join(destdir, "usr")
    expected = {
        "sbin/lmtpgw": 0o755,
        "share/man/man8/lmtpgw.8": 0o644,
        "share/man/man5/lmtpgw.conf.5": 0o644,
        "share/doc/lmtpgw/examples/lmtpgw.conf": 0o644,
        "lib/systemd/system/lmtpgw.service": 0o644,
        "lib/systemd/system/lmtpgw.socket": 0o644,
        "lib/sysusers.d/lmtpgw.conf": 0o644,
    }
    for name in sorted(os.listdir(EXAMPLES)):
        if name.endswith(".conf"):
            expected["share/doc/lmtpgw/examples/" + name] = 0o644
    assert "share/doc/lmtpgw/examples/production.conf" in expected
    for rel, mode in expected.items():
        path = os.path.join(usr, rel)
        assert os.path.isfile(path), "%s not installed" % rel
        st = os.stat(path)
        assert st.st_mode & 0o7777 == mode, "%s: mode %o, expected %o" % (
            rel, st.st_mode & 0o7777, mode)
        # made by the unprivileged user make ran as: no root needed
        assert st.st_uid == _installed["uid"], "%s owned by uid %d" % (rel, st.st_uid)
    # Everything under DESTDIR/usr, nothing anywhere else.
    for dirpath, _dirs, files in os.walk(destdir):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), destdir)
            assert rel.startswith("usr" + os.sep), "installed outside PREFIX: %s" % rel
    # The binary is the one that was built, byte for byte.
    with open(binary(), "rb") as a, open(os.path.join(usr, "sbin/lmtpgw"), "rb") as b:
        assert a.read() == b.read(), "installed binary differs from %s" % binary()
    # Examples are copies of the sources.
    for name in os.listdir(EXAMPLES):
        if name.endswith(".conf"):
            with open(os.path.join(EXAMPLES, name), "rb") as a, \
                    open(os.path.join(usr, "share/doc/lmtpgw/examples", name), "rb") as b:
                assert a.read() == b.read(), name
    # The unit runs the binary of this PREFIX; the socket unit is installed as shipped.
    service = open(os.path.join(usr, "lib/systemd/system/lmtpgw.service")).read()
    assert re.search(r"^ExecStart=/usr/sbin/lmtpgw -f -c /etc/lmtpgw/lmtpgw.conf$", service, re.M), \
        service
    assert "/usr/local/sbin" not in service
    with open(os.path.join(ROOT, "contrib/systemd/lmtpgw.socket"), "rb") as a, \
            open(os.path.join(usr, "lib/systemd/system/lmtpgw.socket"), "rb") as b:
        assert a.read() == b.read()


def test_installed_man_pages_render():
    if shutil.which("man") is None:
        raise Skip("man (man-db) is not installed")
    usr = os.path.join(install_tree(), "usr")
    for rel, title in (("share/man/man8/lmtpgw.8", "LMTPGW(8)"),
                       ("share/man/man5/lmtpgw.conf.5", "LMTPGW.CONF(5)")):
        env = dict(os.environ, MANPAGER="cat", PAGER="cat", MANWIDTH="80", LC_ALL="C.UTF-8")
        rc, out, err = run(["man", "-l", os.path.join(usr, rel)], env=env)
        assert rc == 0, "man -l %s: %d %s" % (rel, rc, err)
        assert "warning" not in err.lower(), "man -l %s:\n%s" % (rel, err)
        text = re.sub(r".\x08", "", out)   # overstrike bold/underline, if any
        assert title in text.upper(), "%s: no %s header:\n%s" % (rel, title, text[:500])
        assert "NAME" in text and "lmtpgw" in text
        assert len(text) > 2000, "%s renders to almost nothing" % rel


def test_installed_binary_version_and_check():
    usr = os.path.join(install_tree(), "usr")
    exe = os.path.join(usr, "sbin/lmtpgw")
    rc, out, err = run([exe, "-V"])
    assert rc == 0 and re.match(r"^lmtpgw \d+\.\d+", out), (rc, out, err)
    examples = os.path.join(usr, "share/doc/lmtpgw/examples")
    # The default configuration as installed.
    rc, out, err = run([exe, "-c", os.path.join(examples, "lmtpgw.conf"), "check"])
    assert rc == 0 and "OK" in out, (rc, out, err)
    # The hardened example as installed: it needs its TLS files.
    d = tempfile.mkdtemp(prefix="lmtpgw-prodcheck-")
    rc, out, err = run([exe, "-c", os.path.join(examples, "production.conf"), "check"])
    assert rc == 78 and "/etc/lmtpgw/tls/" in err, (rc, out, err)
    conf = production_copy(d)
    rc, out, err = run([exe, "-c", conf, "check"])
    assert rc == 0, (rc, out, err)
    assert "OK (1 backends, 1 routes)" in out, out
    shutil.rmtree(d, ignore_errors=True)


def test_installed_units_pass_systemd_analyze_verify():
    if shutil.which("systemd-analyze") is None:
        raise Skip("systemd-analyze is not installed")
    usr = os.path.join(install_tree(), "usr")
    d = tempfile.mkdtemp(prefix="lmtpgw-units-")
    # verify also checks that ExecStart exists: point it at the installed copy.
    with open(os.path.join(usr, "lib/systemd/system/lmtpgw.service")) as f:
        text = f.read().replace("/usr/sbin/lmtpgw", os.path.join(usr, "sbin/lmtpgw"))
    with open(os.path.join(d, "lmtpgw.service"), "w") as f:
        f.write(text)
    shutil.copy(os.path.join(usr, "lib/systemd/system/lmtpgw.socket"), d)
    env = dict(os.environ, MANPATH=os.path.join(usr, "share/man"), SYSTEMD_LOG_LEVEL="notice")
    rc, out, err = run(["systemd-analyze", "verify", "lmtpgw.service", "lmtpgw.socket"],
                       cwd=d, env=env)
    assert rc == 0 and not err.strip(), "systemd-analyze verify (%d):\n%s%s" % (rc, out, err)
    shutil.rmtree(d, ignore_errors=True)


# --- the hardened example, serving ----------------------------------------------------------

def production_copy(d, text=None, **subst):
    """production.conf with its TLS files in d (generated); extra (regex, replacement) pairs."""
    if text is None:
        with open(os.path.join(EXAMPLES, "production.conf")) as f:
            text = f.read()
    crt, key = make_cert(d)
    assert '"/etc/lmtpgw/tls/lmtp.crt"' in text and '"/etc/lmtpgw/tls/lmtp.key"' in text
    text = text.replace("/etc/lmtpgw/tls/lmtp.crt", crt).replace("/etc/lmtpgw/tls/lmtp.key", key)
    for pattern, repl in subst.items():
        text, n = re.subn(pattern, lambda m, r=repl: r, text, flags=re.M)
        assert n == 1, "production.conf: %r matched %d times" % (pattern, n)
    conf = os.path.join(d, "production.conf")
    with open(conf, "w") as f:
        f.write(text)
    return conf


def wait_for(pred, what, timeout=10.0):
    deadline = time.time() + timeout * SLOW
    while not pred():
        assert time.time() < deadline, "timed out waiting for " + what
        time.sleep(0.05)


def test_installed_production_example_serves():
    usr = os.path.join(install_tree(), "usr")
    exe = os.path.join(usr, "sbin/lmtpgw")
    d = shared_mkdtemp("lmtpgw-prod-")     # lmtpgw reads it after dropping to nobody
    if os.geteuid() == 0:
        run_user, run_group, sock_group = "nobody", "nogroup", "mail"
        try:
            pwd.getpwnam(run_user), grp.getgrnam(run_group), grp.getgrnam(sock_group)
        except KeyError as e:
            raise Skip("needs the user nobody and groups nogroup, mail: %s" % e)
    else:
        run_user = pwd.getpwuid(os.geteuid()).pw_name
        run_group = sock_group = grp.getgrgid(os.getegid()).gr_name
    uid, gid = pwd.getpwnam(run_user).pw_uid, grp.getgrnam(run_group).gr_gid
    mail = os.path.join(d, "mail")
    # create = false: only existing Maildirs receive mail.
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(mail, "example.test", "alice", sub))
    for dirpath, _dirs, _files in os.walk(mail):
        os.chown(dirpath, uid, gid)
    # Like the unit's RuntimeDirectory: a directory the unprivileged user owns, so lmtpgw can
    # remove its socket at exit after the privilege drop.
    os.mkdir(os.path.join(d, "run"))
    os.chown(os.path.join(d, "run"), uid, gid)
    sock_path = os.path.join(d, "run", "lmtp.sock")
    # Like the unit's StateDirectory, for the memory of stored copies.
    os.mkdir(os.path.join(d, "state"))
    os.chown(os.path.join(d, "state"), uid, gid)
    port, mport = free_port(), free_port()
    conf = production_copy(
        d,
        **{r'^listen = .*$': 'listen = [ "unix:%s", "127.0.0.1:%d" ];' % (sock_path, port),
           r'^unix_socket_group = .*$': 'unix_socket_group = "%s";' % sock_group,
           r'^user = .*$': 'user = "%s";' % run_user,
           r'^group = .*$': 'group = "%s";' % run_group,
           r'^metrics_listen = .*$': 'metrics_listen = "127.0.0.1:%d";' % mport,
           r'^    path = .*$': '    path = "%s/%%{domain}/%%{local}";' % mail,
           r'^dedupe_db = .*$': 'dedupe_db = "%s/state/dedupe.sqlite";' % d})
    # The key must be readable after the privilege drop (SIGHUP re-reads it as `user`).
    for f in ("server.crt", "server.key"):
        os.chown(os.path.join(d, f), uid, gid)
    log_path = os.path.join(d, "lmtpgw.log")
    log = open(log_path, "wb")
    proc = subprocess.Popen([exe, "-f", "-c", conf], stdout=log, stderr=subprocess.STDOUT,
                            cwd=d)

    def logtext():
        with open(log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    try:
        def started():
            assert proc.poll() is None, "lmtpgw exited %s:\n%s" % (proc.returncode, logtext())
            return "event=started" in logtext()
        wait_for(started, "event=started")
        text = logtext()
        # Privileges: dropped to `user` when started as root; never root afterwards.
        with open("/proc/%d/status" % proc.pid) as f:
            status = f.read()
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", status, re.M).groups()
        gids = re.search(r"^Gid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", status, re.M).groups()
        assert set(uids) == {str(uid)}, status
        assert set(gids) == {str(gid)}, status
        if os.geteuid() == 0:
            assert "event=privileges_dropped user=%s" % run_user in text, text
        # The unix socket: the configured group and mode 0660.
        st = os.stat(sock_path)
        assert st.st_mode & 0o777 == 0o660, oct(st.st_mode)
        assert st.st_gid == grp.getgrnam(sock_group).gr_gid, st.st_gid
        # Unix socket: no STARTTLS offered, not required; delivered; unknown user at RCPT.
        with Client.connect_unix(sock_path) as c:
            c.read_greeting()
            r = c.lhlo()
            assert not any("STARTTLS" in line for line in r.lines), r
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            expect(c.cmd("RCPT TO:<nobody-here@example.test>"), 550, "5.1.1")
            expect(c.cmd("DATA"), 354)
            c.send(b"Subject: production example\r\n\r\nhello\r\n.\r\n")
            expect(c.reply(), 250, "2.0.0")
            expect(c.cmd("QUIT"), 221)
        new = os.listdir(os.path.join(mail, "example.test", "alice", "new"))
        assert len(new) == 1, new
        st = os.stat(os.path.join(mail, "example.test", "alice", "new", new[0]))
        assert st.st_uid == uid and st.st_mode & 0o777 == 0o600, (st.st_uid, oct(st.st_mode))
        # TCP from an address outside allow_clients (127.0.0.1 is in, 127.0.0.2 is not).
        s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW,
                                     source_address=("127.0.0.2", 0))
        with Client(s) as c:
            expect(c.reply(), 554, "5.7.1")
            c.expect_closed()
        # TCP from loopback: STARTTLS offered and required before MAIL.
        with Client.connect_tcp("127.0.0.1", port) as c:
            c.read_greeting()
            r = c.lhlo()
            assert any("STARTTLS" in line for line in r.lines), r
            expect(c.cmd("MAIL FROM:<s@example.test>"), 530, "5.7.0")
            expect(c.cmd("STARTTLS"), 220, "2.0.0")
            ctx = ssl.create_default_context(cafile=os.path.join(d, "server.crt"))
            c.sock = ctx.wrap_socket(c.sock, server_hostname="mx.example.test")
            c.buf = b""
            c.lhlo()
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            c.send(b"Subject: over TLS\r\n\r\nhello\r\n.\r\n")
            expect(c.reply(), 250, "2.0.0")
            expect(c.cmd("QUIT"), 221, "2.0.0")
        assert len(os.listdir(os.path.join(mail, "example.test", "alice", "new"))) == 2
        # Health and metrics on loopback.
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % mport, timeout=10) as r:
            assert r.status == 200
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=10) as r:
            assert b"lmtpgw_connections_total" in r.read()
        # A reload as the unprivileged user re-reads the configuration and the key.
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "event=reloaded" in logtext() or "event=reload_failed" in logtext(),
                 "the reload")
        assert "event=reload_failed" not in logtext(), logtext()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=10 * SLOW)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        log.close()
    assert rc == 0, "exit status %r:\n%s" % (rc, logtext())
    assert not os.path.exists(sock_path), "unix socket left behind"
    shutil.rmtree(d, ignore_errors=True)


# --- every shipped example passes check ------------------------------------------------------

# Content of a secret file, by the key that names it (first line is what lmtpgw reads).
SECRET_CONTENT = {
    "passwords_file": "alice:secret-a\nbob:secret-b\n",
    "credentials_file": "AKIDEXAMPLE\nwJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
    "basic_auth_file": "user:password\n",
    "secret_files": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
}
CERT_KEYS = ("tls_cert_file", "client_cert_file", "ca_file", "tls_client_ca_file")
KEY_KEYS = ("tls_key_file", "client_key_file")
UNBUILT = re.compile(r"unknown driver '([^']+)'")


def example_copy(src, d, crt, key):
    """A copy of src with every /etc/lmtpgw/... file it names created in d."""
    with open(src) as f:
        text = f.read()
    made = []
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        m = re.match(r'\s*([a-z_]+)\s*[=:]', code)
        if not m:
            continue
        k = m.group(1)
        for path in re.findall(r'"(/etc/lmtpgw/[^"]+)"', code):
            dst = os.path.join(d, path[len("/etc/lmtpgw/"):])
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if k == "ca_path":
                os.makedirs(dst, exist_ok=True)
            elif k in CERT_KEYS:
                shutil.copy(crt, dst)
            elif k in KEY_KEYS:
                shutil.copy(key, dst)
                os.chmod(dst, 0o600)
            else:
                with open(dst, "w") as f:
                    f.write(SECRET_CONTENT.get(k, "a-secret-for-%s\n" % k))
                os.chmod(dst, 0o600)
            made.append(path)
    conf = os.path.join(d, os.path.basename(src))
    with open(conf, "w") as f:
        f.write(text.replace("/etc/lmtpgw/", d + "/"))
    return conf, made


def test_every_example_config_passes_check():
    names = sorted(n for n in os.listdir(EXAMPLES) if n.endswith(".conf"))
    assert "production.conf" in names, names
    top = tempfile.mkdtemp(prefix="lmtpgw-examples-")
    crt, key = make_cert(top, "pair")
    checked, unbuilt, failures = [], [], []
    for name in names:
        d = os.path.join(top, name[:-5])
        os.mkdir(d)
        conf, made = example_copy(os.path.join(EXAMPLES, name), d, crt, key)
        rc, out, err = run([binary(), "-c", conf, "check"], cwd=d)
        m = UNBUILT.search(err)
        if rc != 0 and m:
            unbuilt.append("%s (driver %s)" % (name, m.group(1)))
        elif rc != 0 or "OK" not in out:
            failures.append("%s: exit %d: %s%s (files made: %s)" % (name, rc, out, err.strip(),
                                                                    made))
        else:
            checked.append(name)
            # The secrets are really needed: without them check fails and names the file.
            if made:
                rc2, _out, err2 = run([binary(), "-c", os.path.join(EXAMPLES, name), "check"])
                assert rc2 == 78 and "/etc/lmtpgw/" in err2, (name, rc2, err2)
    assert not failures, "examples refused by check:\n  " + "\n  ".join(failures)
    shutil.rmtree(top, ignore_errors=True)
    if unbuilt:
        raise Skip("checked %s; not checked, driver not built yet: %s"
                   % (", ".join(checked), ", ".join(unbuilt)))
