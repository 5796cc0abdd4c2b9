"""
Log lines: key=value by default, one JSON object per line with log_format = "json"; the
transaction id of the log line also appears in the client's replies.
"""
import json
import re

from harness import Lmtpgw, expect


def deliver(gw):
    with gw.session() as c:
        rep = c.cmd("MAIL FROM:<s@example.test>")
        expect(rep, 250, "2.1.0")
        txid = re.search(r"\(transaction (\S+)\)", str(rep)).group(1)
        expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send(b"Subject: logs\r\n\r\nhi \xc3\xa9\r\n.\r\n")
        final = c.reply()
        expect(final, 250, "2.0.0")
        assert final.text.endswith("[%s]" % txid), final
    return txid


def test_text_log_line_matches_reply_ids():
    with Lmtpgw() as gw:
        txid = deliver(gw)
        lines = gw.grep(r"event=delivery ")
        assert len(lines) == 1 and "tx=%s " % txid in lines[0], lines


def test_json_log_lines():
    with Lmtpgw(config={"log_format": "json"}) as gw:
        txid = deliver(gw)
        records = []
        for line in gw.log().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        deliveries = [r for r in records if r.get("event") == "delivery"]
        assert len(deliveries) == 1, records
        d = deliveries[0]
        assert d["tx"] == txid and d["rcpt"] == "<alice@example.test>" and d["result"] == "ok", d
        assert d["level"] == "info" and re.match(r"\d{4}-\d\d-\d\dT", d["time"]), d
        assert d["reply"].startswith("250 2.0.0 <alice@example.test> stored"), d
        assert any(r.get("event") == "started" for r in records), records


def test_bad_log_format_refused():
    import subprocess
    from harness import binary
    gw = Lmtpgw(config={"log_format": "xml"})
    p = subprocess.run([binary(), "-c", gw.conf_path, "check"], capture_output=True, text=True)
    assert p.returncode != 0 and "'log_format' must be one of: text, json" in p.stderr, p.stderr


def test_client_gone_during_delivery_logged_once():
    """A client that sends the final dot and hangs up while a backend still stores (the webhook
    answers after 1 s): the delivery completes, and event=client_gone_during_delivery is logged
    exactly once for it, with its session and transaction ids and how it went (a FIN, or a
    RST). A client that waits for its replies gets no such line."""
    import socket
    import struct
    from harness import conf_value
    from webhook_receiver import Receiver

    with Receiver(rule=lambda req: {"status": 200, "delay": 1.0}) as hook:
        backend = ('hook: { driver = "webhook"; url = %s; allow_http = true; format = "raw"; '
                   'timeout = 30; };' % conf_value(hook.url))
        with Lmtpgw(backends=backend, routes=[("*@example.test", ["local", "hook"])]) as gw:
            ids = {}
            for how in ("eof", "reset", "stays"):
                c = gw.session()
                sid = re.search(r"\(session (\w+)\)", str(c.greeting)).group(1)
                rep = c.cmd("MAIL FROM:<s@example.test>")
                txid = re.search(r"\(transaction (\S+)\)", str(rep)).group(1)
                expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
                expect(c.cmd("DATA"), 354)
                c.send(b"Subject: gone\r\n\r\n" + how.encode() + b"\r\n.\r\n")
                if how == "stays":
                    expect(c.reply(), 250, "2.0.0")
                    c.close()
                else:
                    if how == "reset":
                        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                          struct.pack("ii", 1, 0))
                    c.close()                      # before the webhook's answer
                ids[how] = (sid, txid)
            gw.wait_log(r"event=delivery .*rcpt=<alice@example.test>", count=3, timeout=15)
            gw.wait_log(r"session=%s event=disconnect" % ids["reset"][0], timeout=5)
            gw.wait_log(r"session=%s event=disconnect" % ids["eof"][0], timeout=5)
            lines = gw.grep(r"event=delivery .*rcpt=<alice@example.test>")
            assert all('reply="250 ' in l for l in lines), lines
            gone = gw.grep(r"event=client_gone_during_delivery")
            assert len(gone) == 2, gw.log()
            for how in ("eof", "reset"):
                sid, txid = ids[how]
                mine = [l for l in gone if "session=%s " % sid in l]
                assert len(mine) == 1, (how, gone)
                assert " tx=%s " % txid in mine[0] + " " and " how=%s" % how in mine[0], mine
            assert len(gw.messages("alice")) == 3
