"""
XFORWARD only from trusted peers (docs/reliability.md, "The second attack", case 11): with xforward = true, only clients in
trusted_networks and unix socket peers are offered XFORWARD and may send it; anyone else is not
offered it and gets 550 5.7.0 (as Postfix's smtpd_authorized_xforward_hosts). The delivery line
always names the real peer as client=, and what XFORWARD said as xforward_client= beside it.

127.0.0.1 and 127.0.0.2 play an untrusted and a trusted client (see test_slowloris.py).
"""
import os
import re

from harness import Lmtpgw, expect
from test_slowloris import connect_from

XF = "XFORWARD NAME=mx.remote.test ADDR=192.0.2.7 IDENT=ABC123"
MESSAGE = b"Subject: xf\r\n\r\nhi\r\n.\r\n"


def offered(lhlo_reply):
    return any(l.startswith("XFORWARD ") for l in lhlo_reply.lines)


def deliver(c, rcpt):
    expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<%s>" % rcpt), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    c.send(MESSAGE)
    expect(c.reply(), 250, "2.0.0")


def delivery_line(gw, rcpt):
    lines = gw.grep(r"event=delivery .* rcpt=<%s> " % re.escape(rcpt))
    assert len(lines) == 1, gw.log()[-2000:]
    return lines[0]


def test_xforward_refused_from_untrusted_peer():
    with Lmtpgw(config={"xforward": True, "trusted_networks": ["127.0.0.2"]}) as gw:
        with connect_from(gw, "127.0.0.1") as c:
            r = c.lhlo()
            assert not offered(r), r
            expect(c.cmd(XF), 550, "5.7.0")
            assert "XFORWARD" not in str(c.cmd("HELP"))
            deliver(c, "alice@example.test")
        line = delivery_line(gw, "alice@example.test")
        assert re.search(r" client=\[127\.0\.0\.1\]:\d+ from=", line), line
        assert "xforward_client=" not in line and " qid=" not in line, line
        assert "mx.remote.test" not in line, line
        gw.wait_log(r"event=xforward_refused client=\[127\.0\.0\.1\]:\d+ reason=not_trusted")


def test_xforward_from_trusted_peer_logged_beside_real_client():
    with Lmtpgw(config={"xforward": True, "trusted_networks": ["127.0.0.2/32"]}) as gw:
        with connect_from(gw, "127.0.0.2") as c:
            r = c.lhlo()
            assert offered(r), r
            expect(c.cmd(XF), 250, "2.0.0")
            deliver(c, "alice@example.test")
        line = delivery_line(gw, "alice@example.test")
        assert " qid=ABC123 " in line, line
        assert re.search(r" client=\[127\.0\.0\.2\]:\d+ xforward_client=mx\.remote\.test\[192\.0\.2\.7\] "
                         r"from=", line), line


def test_xforward_from_unix_socket_peer():
    gw = Lmtpgw(config={"xforward": True})
    gw.listen_arg = "unix:" + os.path.join(gw.dir, "lmtp.sock")
    with gw:
        with gw.client() as c:
            assert offered(c.lhlo())
            expect(c.cmd(XF), 250, "2.0.0")
            deliver(c, "bob@example.test")
        line = delivery_line(gw, "bob@example.test")
        assert " client=unix xforward_client=mx.remote.test[192.0.2.7] " in line, line


def test_xforward_off_refused_even_when_trusted():
    with Lmtpgw(config={"trusted_networks": ["127.0.0.0/8"]}) as gw:
        with gw.session() as c:
            assert not offered(c.lhlo())
            expect(c.cmd(XF), 550, "5.7.0")


def test_xforward_attributes_accumulate_over_commands():
    """Postfix sends the client in one XFORWARD and IDENT in the next: the second must not wipe
    the first (the S3 manifest and the webhook got an empty client that way)."""
    with Lmtpgw(config={"xforward": True, "trusted_networks": ["127.0.0.2"]}) as gw:
        with connect_from(gw, "127.0.0.2") as c:
            c.lhlo()
            expect(c.cmd("XFORWARD NAME=mx.remote.test ADDR=192.0.2.7 PROTO=ESMTP"), 250, "2.0.0")
            expect(c.cmd("XFORWARD IDENT=QID42"), 250, "2.0.0")
            deliver(c, "carol@example.test")
        line = delivery_line(gw, "carol@example.test")
        assert " qid=QID42 " in line, line
        assert " xforward_client=mx.remote.test[192.0.2.7] " in line, line
