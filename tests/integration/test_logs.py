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
