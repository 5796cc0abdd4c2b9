"""`lmtpgw deliver` run by the real MTAs with the recipes of contrib/ as shipped (only the domain,
the paths and the user substituted): OpenSMTPD 6.8 `mda` (contrib/opensmtpd/smtpd-mda.conf),
Postfix 3.7 pipe(8) (contrib/postfix/master-deliver.cf), Exim 4.96 pipe transport
(contrib/exim/lmtpgw-deliver.conf). For each: a good message is stored in its Maildir, an
unknown recipient (550 5.1.1, exit 67) bounces (the DSN comes back to the sender, whose address
the same recipe delivers into a Maildir), and a backend's temporary failure (451 4.3.0, exit 75)
leaves the message queued. No lmtpgw daemon runs: each delivery is one `lmtpgw deliver`
process started by the MTA as an unprivileged user.
"""
import os
import re
import socket
import threading

from harness import (RealServerMissing, Lmtpgw, binary, cstr, require_postfix, shared_mkdtemp,
                     split_trace)

import debpkg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOMAIN = "example.test"
SENDER = "sender@" + DOMAIN
RUN_AS = "lmtpgw-client"        # the unprivileged user the MTA runs the command as
EXIM_USER = "Debian-exim"


def run_as_user(name=RUN_AS):
    try:
        return debpkg.system_user(name, user_group=True)
    except debpkg.Unavailable as e:
        raise RealServerMissing("lmtp-clients", str(e))


class SyslogSink:
    """A syslog socket of the test's own: the recipes log with --syslog, and this machine may
    have no /dev/log (then lmtpgw would say so on stderr, ahead of the reply lines the MTA
    reads). Collects the datagrams; the MTA's user must be able to send to it."""

    def __init__(self):
        self.dir = shared_mkdtemp("deliver-syslog-")
        self.path = os.path.join(self.dir, "log")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            self.lines.append(data.decode("utf-8", "replace"))

    def text(self):
        return "\n".join(self.lines)


def gateway(run_as=RUN_AS):
    """An lmtpgw configuration (no daemon): alice, bob and the sender to Maildirs, carol to a
    Maildir under a file (451 4.3.0), ghost unrouted (550 5.1.1). The spool and the Maildirs
    belong to the user the MTA runs the command as; log lines go to a syslog socket of the
    test's own (gw.syslog)."""
    pw = run_as_user(run_as)
    sink = SyslogSink()
    gw = Lmtpgw(routes=[("carol@" + DOMAIN, ["broken"]), ("alice@" + DOMAIN, ["local"]),
                        ("bob@" + DOMAIN, ["local"]), (SENDER, ["local"])],
                config={"syslog_socket": sink.path})
    gw.syslog = sink
    os.chmod(gw.dir, 0o755)
    blocker = os.path.join(gw.dir, "broken")
    with open(blocker, "w") as f:
        f.write("not a directory\n")
    gw.backends = 'broken: { driver = "maildir"; path = %s; };' % cstr(blocker + "/%{local}")
    gw.write_config()
    gw.run_as = pw
    os.chmod(gw.conf_path, 0o644)
    os.makedirs(gw.maildir_root, exist_ok=True)
    for d in (gw.spool, gw.maildir_root):
        os.chown(d, pw.pw_uid, pw.pw_gid)
    return gw


def recipe(path, gw, user_pattern, user=RUN_AS):
    with open(os.path.join(ROOT, path)) as f:
        text = f.read()
    text = (text.replace("example.com", DOMAIN).replace("/usr/sbin/lmtpgw", binary())
            .replace("/etc/lmtpgw/lmtpgw.conf", gw.conf_path))
    if user_pattern:
        text, n = re.subn(user_pattern, lambda m: m.group(1) + user, text)
        assert n == 1, "the recipe lost its user setting: %s" % path
    return text


def message(subject):
    """LF line ends, as MTAs hand a message to a command; 8-bit; a line that starts with a dot."""
    return (b"From: <%s>\nTo: <alice@%s>\nSubject: %s\nDate: Thu, 03 Dec 2026 12:00:00 +0000\n"
            b"Message-ID: <%s@deliver-mta.test>\nMIME-Version: 1.0\n"
            b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            b"caf\xc3\xa9 8-bit\n.dot line\n" % (SENDER.encode(), DOMAIN.encode(),
                                                subject.encode(), subject.encode())
            + b"w" * 900 + b"\nend\n")


def stored(gw, user):
    files = gw.messages(user)
    assert len(files) == 1, (user, files)
    return gw.read(files[0])


def check_stored(gw, user, content, trailer=b"", mta_return_path=False):
    """The message as sent with CRLF line ends, behind lmtpgw's own trace and the MTA's
    Received line(s). trailer: what the MTA adds after the message (OpenSMTPD's mda: an empty
    line, as for an mbox). mta_return_path: the MTA writes a Return-Path of its own (OpenSMTPD's
    mda always does), under lmtpgw's."""
    data = stored(gw, user)
    body = content.split(b"\n\n", 1)[1].replace(b"\n", b"\r\n") + trailer
    assert data.endswith(body), data[-200:]
    assert data.startswith(b"Return-Path: <%s>\r\nReceived: by mx.lmtpgw.test (lmtpgw deliver, "
                           b"from userid %d)" % (SENDER.encode(), gw.run_as.pw_uid)), data[:300]
    assert data.count(b"Return-Path: <%s>\r\n" % SENDER.encode()) == (
        2 if mta_return_path else 1), data[:600]
    assert b"\r\nSubject: " in data and b"\n\n" not in data.replace(b"\r\n", b""), data[:600]
    # --syslog: the delivery line went to syslog as `lmtpgw[PID]`, not into the MTA's output
    assert re.search(r"lmtpgw\[\d+\]: .*event=delivery .*rcpt=<%s@" % user, gw.syslog.text()), \
        gw.syslog.text()[-2000:]
    return data


# --- OpenSMTPD ---------------------------------------------------------------------------------

def test_deliver_opensmtpd_mda_delivers_bounces_5xx_and_defers_4xx():
    from opensmtpd import OpenSmtpd
    gw = gateway()
    conf = recipe("contrib/opensmtpd/smtpd-mda.conf", gw, None).replace(
        '"lmtpgw-client"', '"%s"' % RUN_AS)
    try:
        od = OpenSmtpd("listen on 127.0.0.1 port @PORT@\n" + conf).__enter__()
    except debpkg.Unavailable as e:
        raise RealServerMissing("opensmtpd", str(e))
    try:
        content = message("opensmtpd-mda")
        assert od.send(SENDER, ["alice@" + DOMAIN, "carol@" + DOMAIN, "ghost@" + DOMAIN],
                       content) == {}
        od.wait(lambda: gw.messages("alice"), "alice's message", timeout=30)
        data = check_stored(gw, "alice", content, trailer=b"\r\n", mta_return_path=True)
        assert b"(OpenSMTPD)" in data, data[:600]              # its Received: line
        # ghost: 550 5.1.1 -> exit 67 -> OpenSMTPD bounces; the DSN comes back to the sender
        od.wait(lambda: gw.messages("sender"), "the bounce in the sender's Maildir", timeout=60)
        bounce = stored(gw, "sender")
        assert b"Return-Path: <>\r\n" in bounce[:200], bounce[:600]
        assert b"ghost@" + DOMAIN.encode() in bounce, bounce[:3000]
        # OpenSMTPD puts the last line of the command's output in the bounce: the reply line
        assert b'"<ghost@%s>: 550 5.1.1 <ghost@%s> User unknown' % (
            DOMAIN.encode(), DOMAIN.encode()) in bounce, bounce[:3000]
        # carol: 451 4.3.0 -> exit 75 -> still queued; ghost is not
        od.wait(lambda: [l for l in od.queue() if "|carol@%s|" % DOMAIN in l],
                "carol queued after the temporary failure")
        assert not [l for l in od.queue() if "|ghost@%s|" % DOMAIN in l], od.queue()
        assert gw.messages("carol") == []
    finally:
        od.stop()


# --- Postfix -----------------------------------------------------------------------------------

def test_deliver_postfix_pipe_delivers_bounces_5xx_and_defers_4xx():
    require_postfix()
    from postfix import PostfixServer
    gw = gateway()
    entry = recipe("contrib/postfix/master-deliver.cf", gw, r"(?m)^([ \t]+[^#\s].*?\buser=)lmtpgw\b")
    assert "flags=" in entry and "argv=" in entry
    pf = PostfixServer({DOMAIN: "lmtpgw-deliver:"}, master_extra=entry,
                       main={"lmtpgw-deliver_destination_recipient_limit": "1",
                             "queue_run_delay": "300s", "minimal_backoff_time": "300s",
                             "maximal_backoff_time": "600s"})
    with pf:
        content = message("postfix-pipe")
        pf.send(SENDER, ["alice@" + DOMAIN, "carol@" + DOMAIN, "ghost@" + DOMAIN],
                content.replace(b"\n", b"\r\n"))
        pf.wait_status("alice@" + DOMAIN, "sent", timeout=30)
        data = check_stored(gw, "alice", content)
        assert b"mta.postfix.test" in data, data[:600]           # Postfix's Received: line
        [line] = pf.wait_status("ghost@" + DOMAIN, "bounced", timeout=30)
        assert "550 5.1.1" in line, line                          # lmtpgw's line in the log
        [line] = pf.wait_status("carol@" + DOMAIN, "deferred", timeout=30)
        assert "451 4.3.0" in line, line
        # the bounce went to the sender, through the same transport
        pf.wait_status(SENDER, "sent", timeout=30)
        bounce = stored(gw, "sender")
        assert b"Return-Path: <>\r\n" in bounce[:200], bounce[:600]
        assert b"ghost@" + DOMAIN.encode() in bounce and b"550 5.1.1" in bounce, bounce[:3000]
        assert [q["recipients"][0]["address"] for q in pf.queue()] == ["carol@" + DOMAIN], \
            pf.queue()
        assert gw.messages("carol") == []


# --- Exim --------------------------------------------------------------------------------------

def exim_parts(gw):
    # Exim run with -C (a configuration of its own) gives up root ("exim user lost privilege
    # for using -C option"), so it can only run the command as the Exim user; with the system
    # configuration it switches to `user` as the recipe says.
    text = recipe("contrib/exim/lmtpgw-deliver.conf", gw, r"(?m)^([ \t]+user = )lmtpgw\b",
                  user=EXIM_USER)
    parts = re.split(r"^# --- (main section|routers[^-]*|transports) ---\n", text, flags=re.M)
    sections = dict(zip(parts[1::2], parts[2::2]))
    routers = sections[[k for k in sections if k.startswith("routers")][0]]
    return sections["main section"], routers, sections["transports"]


def test_deliver_exim_pipe_delivers_bounces_5xx_and_defers_4xx():
    from exim import EximInstance
    gw = gateway(run_as=EXIM_USER)
    try:
        main, routers, transports = exim_parts(gw)
        ex = EximInstance(main=main, routers=routers, transports=transports).__enter__()
    except debpkg.Unavailable as e:
        raise RealServerMissing("exim", str(e))
    try:
        content = message("exim-pipe")
        ex.send(SENDER, ["alice@" + DOMAIN, "carol@" + DOMAIN, "ghost@" + DOMAIN], content)
        assert ex.results("alice@" + DOMAIN) == ["=>"], ex.log()[-3000:]
        check_stored(gw, "alice", content)
        assert ex.results("ghost@" + DOMAIN) == ["**"], ex.log()[-3000:]
        # log_output: lmtpgw's reply line in Exim's log; the exit status names the reason
        assert re.search(r"<ghost@%s>: lmtpgw_deliver transport output: <ghost@%s>: 550 5\.1\.1 "
                         % (DOMAIN, DOMAIN), ex.log()), ex.log()[-3000:]
        assert any("returned 67" in l for l in ex.lines("ghost@" + DOMAIN)), ex.log()[-3000:]
        assert ex.results("carol@" + DOMAIN) == ["=="], ex.log()[-3000:]
        queue = ex.queue()
        assert any("carol@" + DOMAIN in r for rs in queue.values() for r in rs), queue
        # the bounce went to the sender, through the same transport
        bounce = stored(gw, "sender")
        assert b"Return-Path: <>\r\n" in bounce[:200], bounce[:600]
        assert b"ghost@" + DOMAIN.encode() in bounce and b"550 5.1.1" in bounce, bounce[:3000]
        assert gw.messages("carol") == []
    finally:
        ex.__exit__(None, None, None)
