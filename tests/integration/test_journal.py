"""Exchange / Microsoft 365 envelope journal reports on the S3 archive (journal_reports = true).

Reports are built to Microsoft's documented format ([MS-XJRNL] Journal Record Message File
Format; Exchange "Understanding Journal Reports" and the journal report ABNF): a message with
the header field X-MS-Journal-Report, multipart/mixed, a text/plain part holding the envelope
(Sender:, Subject:, Message-Id:, To:/Cc:/Bcc:/Recipient: lines with ", Expanded: " and
", Forwarded: " annotations) and the original message unaltered as a message/rfc822 part.

Everything is stored through the strict SigV4 front of tests/integration/s3server.py and read
back from s3rver: the archived object must be the original byte for byte, under the original's
own content key, with the report's envelope in the manifest.
"""
import hashlib
import json
import os
import threading
import time

from harness import MEMORY_FIGURES_MEAN_SOMETHING, Lmtpgw, conf_value, expect, require_postfix, \
    split_trace, start_s3server
from postfix import PostfixServer
from test_s3 import DOMAIN, creds_file, objects, transaction

JOURNAL = "journal@" + DOMAIN
EXCHANGE = "MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.test"


def original(subject="Quarterly figures", body=b"Numbers attached.\r\n", msgid="q3@contoso.test",
             extra_headers=b""):
    return (b"From: Alice <alice@contoso.test>\r\nTo: Sales <sales@contoso.test>\r\n"
            b"Subject: " + subject.encode("utf-8") + b"\r\n"
            b"Date: Wed, 25 Nov 2026 07:00:00 +0000\r\nMessage-ID: <" + msgid.encode() + b">\r\n"
            b"MIME-Version: 1.0\r\n" + extra_headers +
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + body)


def report(orig, lines, sender="alice@contoso.test", subject="Quarterly figures",
           msgid="<q3@contoso.test>", report_id="jr-1", boundary="_000_JR_contoso_",
           env_charset="us-ascii", env_cte="7bit", envelope=None, close=True):
    """A journal report as Exchange Online sends it to the journaling address."""
    if envelope is None:
        text = "Sender: %s\r\nSubject: %s\r\nMessage-Id: %s\r\n" % (sender, subject, msgid)
        text += "".join(l + "\r\n" for l in lines)
        envelope = text.encode("utf-8" if env_charset.lower() == "utf-8" else "latin-1")
    head = ("From: Microsoft Outlook <%s>\r\n"
            "To: <%s>\r\n"
            "Date: Wed, 25 Nov 2026 07:00:05 +0000\r\n"
            "Subject: %s\r\n"
            "Message-ID: <%s@journal.contoso.test>\r\n"
            "Content-Type: multipart/mixed;\r\n\tboundary=\"%s\"\r\n"
            "MIME-Version: 1.0\r\n"
            "X-MS-Journal-Report:\r\n"
            "X-MS-Exchange-Organization-SCL: -1\r\n"
            "\r\n" % (EXCHANGE, JOURNAL, subject, report_id, boundary)).encode("utf-8")
    b = boundary.encode()
    body = (b"--" + b + b"\r\n"
            b"Content-Type: text/plain; charset=\"" + env_charset.encode() + b"\"\r\n"
            b"Content-Transfer-Encoding: " + env_cte.encode() + b"\r\n\r\n" + envelope + b"\r\n"
            b"--" + b + b"\r\n"
            b"Content-Type: message/rfc822\r\n"
            b"Content-Disposition: attachment\r\n\r\n" + orig)
    if not orig.endswith(b"\r\n"):
        body += b"\r\n"
    body += b"\r\n--" + b + (b"--\r\n" if close else b"\r\n")
    return head + body


def gateway(s3, **opts):
    settings = {"driver": "s3", "endpoint": s3.endpoint, "allow_http": True,
                "bucket": s3.bucket, "credentials_file": creds_file(s3),
                "timeout": "60s", "connect_timeout": "2s", "journal_reports": True}
    settings.update(opts)
    backend = "archive: { %s };" % " ".join("%s = %s;" % (k, conf_value(v))
                                           for k, v in settings.items())
    return Lmtpgw(backends=backend, routes=[("*@" + DOMAIN, ["archive"])])


def deliver(gw, content, rcpts=(JOURNAL,), sender=EXCHANGE):
    with gw.session() as c:
        c.settimeout(180)
        for r in transaction(c, list(rcpts), content, sender=sender):
            expect(r, 250, "2.0.0")


def key_of(content):
    return hashlib.sha256(content).hexdigest() + ".eml"


def manifests_of(s3, key):
    return [json.loads(s3.get(k)) for k in s3.keys()
            if k.startswith(key + ".manifests/") and k.endswith(".json")]


def only_manifest(s3, key):
    ms = manifests_of(s3, key)
    assert len(ms) == 1, (key, s3.keys())
    return ms[0]


# --- tests -----------------------------------------------------------------------------------

def test_journal_single_recipient_original_byte_exact_8bit():
    """One To: recipient, an 8-bit body and an 8-bit (UTF-8) subject in the envelope: the
    object is the original byte for byte under its own content key; the manifest has the LMTP
    envelope and the report's; the report is kept (default) under its own key."""
    orig = original(subject="Zahlen f\u00fcr Q3", body=b"Gr\xc3\xbc\xc3\x9fe, \xe2\x82\xac 12\r\n"
                    b".a line with a leading dot\r\n")
    rep = report(orig, ["To: bob@contoso.test"], subject="Zahlen f\u00fcr Q3",
                 env_charset="utf-8", env_cte="8bit")
    with start_s3server() as s3, gateway(s3) as gw:
        deliver(gw, rep)
        key = key_of(orig)
        assert s3.get(key) == orig
        m = only_manifest(s3, key)
        assert m["targets"] == [JOURNAL] and m["mail_from"]["address"] == EXCHANGE
        j = m["journal"]
        assert j["parsed"] is True
        assert j["sender"] == "alice@contoso.test"
        assert j["subject"] == "Zahlen f\u00fcr Q3"
        assert j["message_id"] == "<q3@contoso.test>"
        assert j["recipients"] == [{"address": "bob@contoso.test", "field": "to"}]
        assert j["original_key"] == key and j["original_sha256"] == hashlib.sha256(orig).hexdigest()
        assert m["object"]["sha256"] == hashlib.sha256(orig).hexdigest()
        assert m["object"]["size"] == len(orig)
        assert s3.head(key).get("x-amz-meta-message-id") == "q3@contoso.test"
        # the report itself, kept: trace headers + the report as received
        rkey = j["report_key"]
        assert rkey == key_of(rep) and rkey != key
        split_trace(s3.get(rkey), rep)
        assert only_manifest(s3, rkey)["journal"]["original_key"] == key
        assert len(objects(s3)[0]) == 2
        assert gw.grep(r"result=ok .*journal-report"), gw.log()[-2000:]


def test_journal_recipients_to_cc_bcc_expanded_forwarded():
    """Several recipients of every kind the format has: To, Cc, Bcc, Recipient (addressing not
    verifiable), members of an expanded distribution group, a forwarded (alternate)
    recipient, and several LMTP recipients of the report (all named as targets)."""
    orig = original()
    lines = ["To: bob@contoso.test",
             "Cc: carol@contoso.test",
             "Bcc: dave@contoso.test",
             "Recipient: erin@fabrikam.test",
             "To: frank@contoso.test, Expanded: sales@contoso.test",
             "To: grace@contoso.test, Expanded: sales@contoso.test",
             "Cc: heidi-delegate@contoso.test, Forwarded: heidi@contoso.test"]
    rep = report(orig, lines)
    with start_s3server() as s3, gateway(s3) as gw:
        deliver(gw, rep, rcpts=(JOURNAL, "journal2@" + DOMAIN))
        key = key_of(orig)
        assert s3.get(key) == orig
        m = only_manifest(s3, key)
        assert sorted(m["targets"]) == sorted([JOURNAL, "journal2@" + DOMAIN])
        assert m["journal"]["recipients"] == [
            {"address": "bob@contoso.test", "field": "to"},
            {"address": "carol@contoso.test", "field": "cc"},
            {"address": "dave@contoso.test", "field": "bcc"},
            {"address": "erin@fabrikam.test", "field": "recipient"},
            {"address": "frank@contoso.test", "field": "to", "expanded_from": "sales@contoso.test"},
            {"address": "grace@contoso.test", "field": "to", "expanded_from": "sales@contoso.test"},
            {"address": "heidi-delegate@contoso.test", "field": "cc",
             "forwarded_from": "heidi@contoso.test"}]


def test_journal_envelope_quoted_printable_latin1():
    """An envelope part in ISO-8859-1, quoted-printable: decoded by libetpan, converted to
    UTF-8 for the manifest."""
    orig = original(subject="caf\u00e9")
    env = b"Sender: alice@contoso.test\r\nSubject: caf=E9\r\nMessage-Id: <q3@contoso.test>\r\n" \
          b"Bcc: <dave@contoso.test>\r\n"
    rep = report(orig, [], envelope=env, env_charset="iso-8859-1", env_cte="quoted-printable")
    with start_s3server() as s3, gateway(s3) as gw:
        deliver(gw, rep)
        j = only_manifest(s3, key_of(orig))["journal"]
        assert j["subject"] == "caf\u00e9"
        assert j["recipients"] == [{"address": "dave@contoso.test", "field": "bcc"}]


def test_journal_same_message_twice_one_object_two_manifests():
    """The same message journaled twice (two reports: another report id, another envelope):
    one object (the second PUT gets 412 for the content key), two manifests beside it. With
    journal_keep_report = false nothing else is stored."""
    orig = original()
    rep1 = report(orig, ["To: bob@contoso.test"], report_id="jr-1")
    rep2 = report(orig, ["To: bob@contoso.test", "Bcc: dave@contoso.test"], report_id="jr-2")
    with start_s3server() as s3, gateway(s3, journal_keep_report=False) as gw:
        deliver(gw, rep1)
        deliver(gw, rep2)
        deliver(gw, rep2)   # the MTA's retry of the second: nothing new
        key = key_of(orig)
        objs, _ = objects(s3)
        assert objs == [key], objs
        assert s3.get(key) == orig
        ms = manifests_of(s3, key)
        assert len(ms) == 2, s3.keys()
        assert sorted(len(m["journal"]["recipients"]) for m in ms) == [1, 2]
        assert all("report_key" not in m["journal"] for m in ms)
        assert gw.grep(r"already-stored journal-report"), gw.log()[-2000:]


def test_journal_keep_report_off_stores_only_the_original():
    orig = original()
    rep = report(orig, ["To: bob@contoso.test"])
    with start_s3server() as s3, gateway(s3, journal_keep_report=False) as gw:
        deliver(gw, rep)
        objs, manifests = objects(s3)
        assert objs == [key_of(orig)], objs
        assert len(manifests) == 1
        assert s3.get(objs[0]) == orig


def test_journal_unparsable_report_is_stored_as_it_came():
    """A report that cannot be taken apart (no closing delimiter: truncated; no envelope
    recipient; a base64-encoded message/rfc822) is stored as received, never refused, with a
    warning line and the reason in its manifest."""
    orig = original()
    broken = [
        truncated(report(orig, ["To: bob@contoso.test"], report_id="trunc"), 60),
        report(orig, [], report_id="norcpt"),
        report(orig, ["To: bob@contoso.test"], report_id="b64").replace(
            b"Content-Type: message/rfc822\r\n",
            b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n"),
    ]
    with start_s3server() as s3, gateway(s3) as gw:
        for rep in broken:
            deliver(gw, rep)
        for rep in broken:
            keys = [k for k in objects(s3)[0]]
            stored = [k for k in keys if split_ok(s3.get(k), rep)]
            assert len(stored) == 1, (keys, rep[-200:])
            m = only_manifest(s3, stored[0])
            assert m["journal"]["parsed"] is False and m["journal"]["error"], m
        assert key_of(orig) not in objects(s3)[0]
        warns = gw.grep(r"event=journal_report_unparsable .*action=stored_as_received")
        assert len(warns) == 3, gw.log()[-3000:]


def truncated(content, cut):
    """content cut inside its last lines, ending at a line end (as an MTA would pass it on)."""
    return content[:content.rindex(b"\r\n", 0, len(content) - cut) + 2]


def split_ok(stored, content):
    try:
        split_trace(stored, content)
        return True
    except AssertionError:
        return False


def test_journal_off_or_not_a_report_stores_as_received():
    """Without X-MS-Journal-Report a message is archived as usual (trace + content); with
    journal_reports = false a report is too."""
    orig = original()
    rep = report(orig, ["To: bob@contoso.test"])
    with start_s3server() as s3, gateway(s3) as gw:
        deliver(gw, orig, sender="alice@contoso.test")
        objs, _ = objects(s3)
        # the usual key: the content digest (the same key the original gets from a report)
        assert objs == [key_of(orig)], objs
        split_trace(s3.get(objs[0]), orig)
        assert "journal" not in only_manifest(s3, objs[0])
    with start_s3server() as s3, gateway(s3, journal_reports=False) as gw:
        deliver(gw, rep)
        objs, _ = objects(s3)
        assert len(objs) == 1
        split_trace(s3.get(objs[0]), rep)
        assert "journal" not in only_manifest(s3, objs[0])


def test_journal_config_needs_content_key_and_message_mode():
    with start_s3server() as s3:
        for opts in ({"key": "fixed/%{date:%Y}.eml"}, {"mode": "recipient", "key": "%{rcpt}/%{sha256}.eml"},
                     {"manifest": False}):
            gw = gateway(s3, **opts)
            import subprocess
            from harness import binary
            r = subprocess.run([binary(), "-c", gw.conf_path, "check"], capture_output=True,
                               text=True, timeout=30)
            assert r.returncode != 0 and "journal_reports needs" in r.stdout + r.stderr, \
                (opts, r.stdout, r.stderr)


def rss_anon_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def test_journal_big_attachment_multipart_streamed():
    """A ~30 MB original (a base64 attachment) inside a report: stored byte-exact as a
    multipart upload of its window of the spool; the spool file is mapped and read, never
    copied to the heap (anonymous memory stays far below the message size)."""
    att = (b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3\r\n"
           * (30 * 1024 * 1024 // 82))
    orig = original(extra_headers=b"", body=b"see attachment\r\n").replace(
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nsee attachment\r\n",
        b"Content-Type: multipart/mixed; boundary=\"inner\"\r\n\r\n--inner\r\n"
        b"Content-Type: text/plain\r\n\r\nsee attachment\r\n--inner\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + att + b"--inner--\r\n")
    assert len(orig) > 30 * 1000 * 1000
    rep = report(orig, ["To: bob@contoso.test", "Bcc: dave@contoso.test"])
    with start_s3server() as s3, gateway(s3, journal_keep_report=False) as gw:
        peak = [0]
        done = threading.Event()

        def sample():
            while not done.is_set():
                try:
                    peak[0] = max(peak[0], rss_anon_kib(gw.pid))
                except OSError:
                    pass
                time.sleep(0.02)
        t = threading.Thread(target=sample)
        t.start()
        try:
            deliver(gw, rep)
        finally:
            done.set()
            t.join()
        key = key_of(orig)
        stored = s3.get(key)
        assert len(stored) == len(orig) and stored == orig
        parts = [q for q in s3.requests() if q["method"] == "PUT" and "partNumber=" in q["url"]]
        assert len(parts) >= 2, [q["url"] for q in s3.requests()]
        m = only_manifest(s3, key)
        assert m["object"]["sha256"] == hashlib.sha256(orig).hexdigest()
        assert len(m["journal"]["recipients"]) == 2
        assert not MEMORY_FIGURES_MEAN_SOMETHING or peak[0] < 20 * 1024, \
            "lmtpgw anonymous memory peaked at %d KiB" % peak[0]


def test_journal_through_postfix():
    """Microsoft 365 → (the journaling address's MX) Postfix → lmtp → lmtpgw → S3: a report
    relayed by a real Postfix is taken apart the same way."""
    require_postfix()
    orig = original(body=b"relayed \xc3\xa9\r\n")
    rep = report(orig, ["To: bob@contoso.test", "Bcc: dave@contoso.test"])
    with start_s3server() as s3, gateway(s3) as gw:
        main = {"lmtp_line_length_limit": "0"}
        with PostfixServer({DOMAIN: "lmtp:inet:127.0.0.1:%d" % gw.port}, main=main) as pf:
            assert pf.send(EXCHANGE, [JOURNAL], rep, mail_options=["BODY=8BITMIME"]) == {}
            pf.wait_status(JOURNAL, "sent", timeout=60)
        key = key_of(orig)
        assert s3.get(key) == orig
        m = only_manifest(s3, key)
        assert [r["field"] for r in m["journal"]["recipients"]] == ["to", "bcc"]
        assert m["client"].get("lhlo")
        # the kept report carries Postfix's Received: line in front of what Exchange sent
        split_trace(s3.get(m["journal"]["report_key"]), rep)
