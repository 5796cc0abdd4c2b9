"""OpenSMTPD 6.8.0p2 (Debian 12's, unpacked, in its own mount namespace:
tests/integration/opensmtpd.py) as the LMTP client of lmtpgw, with contrib/opensmtpd/smtpd.conf
as shipped (only example.com and the socket path substituted; a test-only `listen on` line in
front). Per recipient: what OpenSMTPD did (delivered, still queued: `smtpctl show queue`,
bounced), the bytes lmtpgw stored, and the counts.
"""
import os
import re

from harness import RealServerMissing, Lmtpgw, cstr, split_trace

import debpkg
from opensmtpd import OpenSmtpd

CONTRIB = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "contrib", "opensmtpd", "smtpd.conf")
DOMAIN = "example.test"
SENDER = "sender@" + DOMAIN
CLIENT_USER = "lmtpgw-client"          # the user of the contrib file's virtual table


def gateway():
    """lmtpgw on a unix socket of group lmtpgw-client (as the contrib file says): alice, bob and
    the sender to Maildirs, carol to a broken backend (451 4.3.0), ghost unrouted (550 5.1.1)."""
    try:
        debpkg.system_user(CLIENT_USER, user_group=True)
    except debpkg.Unavailable as e:
        raise RealServerMissing("opensmtpd", str(e))
    gw = Lmtpgw(routes=[("carol@" + DOMAIN, ["broken"]), ("alice@" + DOMAIN, ["local"]),
                        ("bob@" + DOMAIN, ["local"]), (SENDER, ["local"])])
    os.chmod(gw.dir, 0o755)
    blocker = os.path.join(gw.dir, "broken")
    with open(blocker, "w") as f:
        f.write("not a directory\n")
    gw.backends = 'broken: { driver = "maildir"; path = %s; };' % cstr(blocker + "/%{local}")
    gw.sock = os.path.join(gw.dir, "lmtp.sock")
    gw.listen_arg = "unix:" + gw.sock
    gw.config.update({"unix_socket_group": CLIENT_USER, "unix_socket_mode": "0660"})
    gw.write_config()
    return gw


def smtpd(gw, action_options=""):
    with open(CONTRIB) as f:
        conf = f.read().replace("example.com", DOMAIN).replace("/run/lmtpgw/lmtp.sock", gw.sock)
    if action_options:
        conf = conf.replace("virtual <lmtpgwvirt>\n", "virtual <lmtpgwvirt> %s\n" % action_options)
        assert action_options in conf
    server = OpenSmtpd("listen on 127.0.0.1 port @PORT@\n" + conf)
    try:
        return server.__enter__()
    except debpkg.Unavailable as e:
        raise RealServerMissing("opensmtpd", str(e))


def message(subject):
    return (b"From: <%s>\r\nTo: <alice@%s>\r\nSubject: %s\r\n"
            b"Date: Thu, 03 Dec 2026 12:00:00 +0000\r\nMessage-ID: <%s@opensmtpd.test>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n"
            b"caf\xc3\xa9 8-bit\r\n.dot line\r\n" % (SENDER.encode(), DOMAIN.encode(),
                                                    subject.encode(), subject.encode())
            + b"w" * 900 + b"\r\nend\r\n")


def queued(od, rcpt):
    return [l for l in od.queue() if "|%s|" % rcpt in l]


def only(gw, user):
    files = gw.messages(user)
    assert len(files) == 1, (user, files)
    return gw.read(files[0])


def test_opensmtpd_contrib_as_shipped_delivers_and_keeps_5xx_queued():
    """The virtual table lets OpenSMTPD accept every address of the domain; alice and bob are
    delivered byte for byte, one LMTP transaction each (full addresses, rcpt-to). lmtpgw's 451
    for carol AND its 550 for ghost both leave the envelope queued: mail.lmtp exits 75
    (tempfail) on every non-2xx reply, so OpenSMTPD 6.8 does not bounce a 5xx (README.md)."""
    gw = gateway()
    with gw:
        od = smtpd(gw)
        try:
            content = message("opensmtpd")
            rcpts = ["alice@" + DOMAIN, "bob@" + DOMAIN, "carol@" + DOMAIN, "ghost@" + DOMAIN]
            assert od.send(SENDER, rcpts, content) == {}
            gw.wait_log(r"event=delivery .*rcpt=<bob@", timeout=30)
            od.wait(lambda: queued(od, "carol@" + DOMAIN) and "451 4.3.0" in
                    queued(od, "carol@" + DOMAIN)[0], "carol queued with lmtpgw's 451")
            od.wait(lambda: queued(od, "ghost@" + DOMAIN) and "550 5.1.1" in
                    queued(od, "ghost@" + DOMAIN)[0], "ghost queued with lmtpgw's 550")
            assert len(od.queue()) == 2, od.queue()
            for user in ("alice", "bob"):
                trace = split_trace(only(gw, user), content)
                assert b"(OpenSMTPD)" in trace, trace          # its Received: header
            log = od.log()
            assert re.search(r"to=<ghost@%s> .*result=TempFail .*550 5\.1\.1" % DOMAIN, log), \
                log[-3000:]
            assert re.search(r"to=<alice@%s> rcpt=<alice@%s> .*result=Ok" % (DOMAIN, DOMAIN),
                             log), log[-3000:]
            txs = {re.search(r" tx=(\S+)", l).group(1)
                   for l in gw.grep(r"event=delivery .*rcpt=<(alice|bob)@")}
            assert len(txs) == 2, txs                          # one envelope, one transaction
            assert gw.messages("sender") == [], "a bounce, though 6.8 should not bounce"
        finally:
            od.stop()


def test_opensmtpd_action_ttl_bounces_the_5xx():
    """The README's remedy: `ttl` on the lmtpgw action. ghost's 550 stays queued only until the
    ttl, then OpenSMTPD bounces it to the sender (delivered through lmtpgw); alice is delivered
    once."""
    gw = gateway()
    with gw:
        od = smtpd(gw, "ttl 3s")
        try:
            content = message("opensmtpd-ttl")
            assert od.send(SENDER, ["alice@" + DOMAIN, "ghost@" + DOMAIN], content) == {}
            od.wait(lambda: gw.messages("sender"), "the bounce in the sender's Maildir",
                    timeout=60)
            bounce = only(gw, "sender")
            assert b"ghost@" + DOMAIN.encode() in bounce, bounce[:3000]
            od.wait(lambda: od.queue() == [], "an empty queue")
            split_trace(only(gw, "alice"), content)
        finally:
            od.stop()
