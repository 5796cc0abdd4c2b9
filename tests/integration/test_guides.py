"""The recipes of docs/guides/ and docs/scaling.md, run for real.

Each test copies a shipped configuration from conf/examples/, points its endpoints, paths and
secret files at the test servers by text substitution (nothing else is changed; every
substitution is listed in the helper that makes it), starts lmtpgw with it, delivers with the
guide's own swaks commands (read from the guide's text, only --port changed), and checks what
the guide promises: the message in the IMAP folder (Dovecot), the per-recipient verdicts of the
guide's webhook receiver (docs/guides/webhook-receiver.py, which verifies the signature), the
S3 object and its manifest with the Bcc recipient, write-once retries, and one object when the
same message goes through two lmtpgw instances.
"""
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

from harness import ROOT, Lmtpgw, binary, expect, require_dovecot, require_postfix, start_s3server

EXAMPLES = os.path.join(ROOT, "conf", "examples")
GUIDES = os.path.join(ROOT, "docs", "guides")


# --- helpers -------------------------------------------------------------------------------

def example(name):
    with open(os.path.join(EXAMPLES, name)) as f:
        return f.read()


def substitute(text, pairs):
    """Replace each (old, new) in text; every old must be there (the example changed?)."""
    for old, new in pairs:
        if old not in text:
            raise AssertionError("the example no longer contains %r" % old)
        text = text.replace(old, new)
    return text


def common_settings(text):
    """The same for every recipe: no drop to a system user that the test machine lacks (and
    run_as_root when root, as the harness does), and the listener is the harness's --listen."""
    text = re.sub(r'^user = "lmtpgw";\ngroup = "lmtpgw";\n', "", text, flags=re.M)
    if os.geteuid() == 0:
        text += "\nrun_as_root = true;   # added by test_guides.py\n"
    return text


def secret(d, name, content):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(content)
    os.chmod(path, 0o600)
    return path


def gateway(text):
    gw = Lmtpgw()
    gw.write_config(text=text)
    return gw


def guide_commands(guide, must_contain):
    """The shell commands of a guide (lines after "$ ", with "\\" continuations) that contain
    must_contain."""
    with open(os.path.join(GUIDES, guide)) as f:
        lines = f.read().splitlines()
    cmds, cur = [], None
    for line in lines:
        s = line.strip()
        if cur is not None:
            cur += " " + s.rstrip("\\").strip()
            if not s.endswith("\\"):
                cmds.append(cur)
                cur = None
        elif s.startswith("$ "):
            if s.endswith("\\"):
                cur = s[2:].rstrip("\\").strip()
            else:
                cmds.append(s[2:])
    found = [c for c in cmds if must_contain in c]
    if not found:
        raise AssertionError("no command with %r in docs/guides/%s" % (must_contain, guide))
    return found


def run_swaks(cmd, port, cwd, subst=()):
    """Run a guide's swaks command against the test gateway: --port 2424 becomes its port."""
    assert "--port 2424" in cmd, cmd
    cmd = cmd.replace("--port 2424", "--port %d" % port)
    for old, new in subst:
        cmd = cmd.replace(old, new)
    p = subprocess.run(["sh", "-c", cmd], capture_output=True, timeout=60, cwd=cwd)
    return (p.stdout + p.stderr).decode("utf-8", "replace")


def final_replies(swaks_out):
    """The replies after the final dot, from swaks' transcript: [(code, text)]."""
    lines = swaks_out.splitlines()
    i = max(n for n, l in enumerate(lines) if re.match(r"^ -> \.$", l))
    out = []
    for l in lines[i + 1:]:
        m = re.match(r"^(?:<-|<\*\*) +(\d{3}) (.*)$", l)
        if m and not l.lstrip("<-* ").startswith("221"):
            out.append((int(m.group(1)), m.group(2)))
    return out


def rcpt_replies(swaks_out):
    return [(int(m.group(1)), m.group(2)) for m in
            re.finditer(r"^(?:<-|<\*\*) +(\d{3}) (\d\.\d\.\d+ <[^>]*> .*)$", swaks_out, re.M)
            if "RCPT" in swaks_out]


def write_message(path, subject, body="Hello.", headers=""):
    """A fixed message (same bytes each time it is sent), without the final line break
    (swaks ends the data with CRLF . CRLF itself)."""
    text = ("From: Sender <sender@example.org>\r\nTo: alice@example.com\r\nSubject: %s\r\n"
            "Message-ID: <%s@example.org>\r\nDate: Wed, 25 Nov 2026 07:00:00 +0000\r\n%s\r\n%s"
            % (subject, hashlib.sha1(subject.encode()).hexdigest()[:16], headers, body))
    with open(path, "w") as f:
        f.write(text)
    return path


# --- (1) mailbox ingestion: Postfix -> lmtpgw -> Dovecot IMAP, master user, +detail ----------

def dovecot():
    # Only a missing Dovecot is a skip; a Dovecot that fails to start fails the test.
    require_dovecot()
    from dovecot import DovecotServer
    return DovecotServer().start()


def ingestion_config(dc, d):
    pw = secret(d, "imap-master.pw", dc.master[1] + "\n")
    text = substitute(example("mailbox-ingestion.conf"), [
        ('url = "imaps://imap.example.com";', 'url = "imaps://127.0.0.1:%d";' % dc.imaps_port),
        ('# ca_file = "/etc/lmtpgw/imap-ca.pem";', 'ca_file = "%s";' % dc.ca_file),
        ('login = "lmtpgw";', 'login = "%s";' % dc.master[0]),
        ("/etc/lmtpgw/imap-master.pw", pw),
        ("/var/lib/lmtpgw/dedupe.sqlite", d + "/dedupe.sqlite"),
    ])
    return common_settings(text)


def test_mailbox_ingestion_recipe():
    dc = dovecot()
    d = tempfile.mkdtemp(prefix="guide-imap-")
    try:
        text = ingestion_config(dc, d)
        gw = gateway(text)
        # the guide's configuration checks: check, check --probe, route
        rc, out, err = gw.run_cli("check", "--probe")
        assert rc == 0 and "TLS verified" in out, (rc, out, err)
        rc, out, err = gw.run_cli("route", "alice+lists@example.com")
        assert rc == 0 and "user=alice folder=INBOX.lists login=master" in out, out
        with gw:
            cmd = guide_commands("mailbox-ingestion.md", "--protocol LMTP")[0]
            out = run_swaks(cmd, gw.port, d)
            replies = final_replies(out)
            codes = [c for c, _ in replies]
            assert codes == [250, 250, 550], out
            assert "5.1.1 <nosuchuser@example.com> no such IMAP user" in replies[2][1], replies
            # alice's INBOX and her folder INBOX.lists, created and subscribed
            assert dc.count("alice", "INBOX") == 1, dc.list_mailboxes("alice")
            assert dc.count("alice", "INBOX.lists") == 1, dc.list_mailboxes("alice")
            m = dc.fetch("alice", "INBOX.lists")
            assert m.raw.startswith(b"Return-Path: <sender@example.org>\r\nReceived: "), m.raw[:200]
            assert b"Subject: lmtpgw test" in m.raw
            # what the admin sees in the log: one line per recipient
            lines = gw.grep(r"event=delivery ")
            assert len(lines) == 3, gw.log()
            ok = [l for l in lines if "rcpt=<alice+lists@example.com>" in l][0]
            assert "result=ok" in ok and "user=alice folder=INBOX.lists uid=" in ok, ok
            bad = [l for l in lines if "rcpt=<nosuchuser@example.com>" in l][0]
            assert "550 5.1.1" in bad, bad
            # the server is down: a temporary failure (4xx), the MTA keeps the message
            dc.stop(remove=False)
            out = run_swaks(cmd.replace(",nosuchuser@example.com", ""), gw.port, d)
            assert [c for c, _ in final_replies(out)] == [451, 451], out
            assert re.match(r"4\.4\.1 .*IMAP server not reachable", final_replies(out)[0][1]), out
    finally:
        dc.stop()


# --- (2) mail-to-API bridge: webhook, Standard Webhooks signature, per-recipient verdicts --

def start_guide_receiver(d, secret_path, ca):
    p = subprocess.Popen([sys.executable, os.path.join(GUIDES, "webhook-receiver.py"),
                          "--listen", "127.0.0.1:0", "--secret-file", secret_path,
                          "--tickets", os.path.join(d, "tickets"),
                          "--tls-cert", ca.cert, "--tls-key", ca.key],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    line = p.stdout.readline().decode()
    m = re.match(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not m:
        p.kill()
        raise AssertionError("the guide's receiver did not start: %r" % line)
    return p, int(m.group(1))


def bridge_config(d, port, ca, lmtpgw_secret):
    secret(d, "helpdesk-current.key", lmtpgw_secret)
    secret(d, "ingest.token", "token\n")
    text = substitute(example("api-bridge.conf"), [
        ("https://helpdesk.example.test/", "https://127.0.0.1:%d/" % port),
        ('# ca_file = "/etc/lmtpgw/helpdesk-ca.pem";', 'ca_file = "%s";' % ca.ca_file),
        ("/etc/lmtpgw/", d + "/"),
        ("/var/mail/vhosts/", d + "/mail/"),
    ])
    return common_settings(text)


def tickets(d):
    t = os.path.join(d, "tickets")
    return sorted(os.listdir(t)) if os.path.isdir(t) else []


def test_api_bridge_recipe():
    from webhook_receiver import TestCA
    d = tempfile.mkdtemp(prefix="guide-hook-")
    ca = TestCA(os.path.join(d, "ca"))
    key = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n"
    receiver_secret = secret(d, "receiver.key", key)
    recv, port = start_guide_receiver(d, receiver_secret, ca)
    try:
        gw = gateway(bridge_config(d, port, ca, key))
        rc, out, err = gw.run_cli("check", "--probe")
        assert "helpdesk" in out and re.search(r"helpdesk.*ok.*reachable", out), (rc, out, err)
        with gw:
            msg = write_message(os.path.join(d, "ticket.eml"), "printer on fire")
            cmd = guide_commands("api-bridge.md", "--protocol LMTP")[0]
            out = run_swaks(cmd, gw.port, d, [("ticket.eml", msg)])
            replies = final_replies(out)
            assert [c for c, _ in replies] == [250, 452, 550], out
            assert "ticket 1" in replies[0][1], replies
            assert "4.2.2" in replies[1][1] and "queue paused" in replies[1][1], replies
            assert "5.1.1" in replies[2][1] and "no such queue" in replies[2][1], replies
            assert tickets(d) == ["ticket-1.json"], tickets(d)
            with open(os.path.join(d, "tickets", "ticket-1.json")) as f:
                t = json.load(f)
            assert t["rcpt"] == "tickets@example.test" and t["queue"] == "general", t
            # The same message to the same recipients again: the same webhook-id; the receiver
            # answers as the first time and opens no second ticket.
            out = run_swaks(cmd, gw.port, d, [("ticket.eml", msg)])
            assert [c for c, _ in final_replies(out)] == [250, 452, 550], out
            assert tickets(d) == ["ticket-1.json"], tickets(d)
            ids = re.findall(r":id=(msg_[0-9a-f]{64}) http=200", gw.log())
            assert len(ids) >= 2 and len(set(ids)) == 1, ids
        # Section 6: verify_url added to the helpdesk block; the unknown queue is refused at
        # RCPT and the message goes out for the other recipient only.
        text = bridge_config(d, port, ca, key)
        block = 'url = "https://127.0.0.1:%d/api/inbound-mail";' % port
        assert block in text, text
        text = text.replace(block, block + '\n    verify_url = "https://127.0.0.1:%d/api/inbound-mail/verify";'
                            '\n    verify_timeout = "3s";\n    verify_on_error = "accept";' % port)
        gw = gateway(text)
        with gw:
            cmd6 = guide_commands("api-bridge.md", "--protocol LMTP")[1]
            assert "tickets+nosuch@" in cmd6, cmd6
            out = run_swaks(cmd6, gw.port, d, [("ticket.eml", msg)])
            assert re.search(r"^<\*\* +550 5\.1\.1 <tickets\+nosuch@example\.test> no such queue",
                             out, re.M), out
            assert [c for c, _ in final_replies(out)] == [250], out
            assert "ticket 2" in final_replies(out)[0][1], out
            assert tickets(d) == ["ticket-1.json", "ticket-2.json"], tickets(d)
            assert gw.grep(r"event=refused stage=rcpt .*rcpt=<tickets\+nosuch@example\.test>"), gw.log()
        # lmtpgw with another secret than the receiver's: 401, every recipient 451 4.7.0
        gw = gateway(bridge_config(d, port, ca, "whsec_" + "QUFB" * 8 + "\n"))
        with gw:
            out = run_swaks(cmd, gw.port, d, [("ticket.eml", msg)])
            assert [(c, t[:5]) for c, t in final_replies(out)] == [(451, "4.7.0")] * 3, out
            assert tickets(d) == ["ticket-1.json", "ticket-2.json"], tickets(d)
    finally:
        recv.kill()
        recv.wait()


# --- (3) compliance archive: S3 Object Lock, manifest with Bcc, write-once, never bounce ----

def s3server(**kw):
    return start_s3server(**kw)


def archive_config(s3, d):
    creds = secret(d, "s3.credentials", "%s\n%s\n" % (s3.access_key, s3.secret_key))
    text = substitute(example("compliance-archive.conf"), [
        ('endpoint = "https://s3.eu-central-1.amazonaws.com";',
         'endpoint = "%s"; allow_http = true;' % s3.endpoint),
        ('addressing = "virtual";', 'addressing = "path";'),
        ("/etc/lmtpgw/s3.credentials", creds),
        ("/var/lib/lmtpgw/mail/", d + "/mail/"),
        ("/var/lib/lmtpgw/dedupe.sqlite", d + "/dedupe.sqlite"),
    ])
    return common_settings(text)


def maildir_count(d, user):
    p = os.path.join(d, "mail", "example.com", user, "new")
    return len(os.listdir(p)) if os.path.isdir(p) else 0


def archived(s3):
    keys = s3.keys()
    return [k for k in keys if k.endswith(".eml")], [k for k in keys if k.endswith(".json")]


def test_compliance_archive_recipe():
    s3 = s3server(bucket="mail-archive", region="eu-central-1")
    d = tempfile.mkdtemp(prefix="guide-s3-")
    try:
        gw = gateway(archive_config(s3, d))
        rc, out, err = gw.run_cli("check", "--probe")
        assert rc == 0 and "bucket mail-archive" in out, (rc, out, err)
        with gw:
            msg = write_message(os.path.join(d, "report.eml"), "Q3 report")
            cmd = guide_commands("compliance-archive.md", "--protocol LMTP")[0]
            out = run_swaks(cmd, gw.port, d, [("report.eml", msg)])
            assert [c for c, _ in final_replies(out)] == [250, 250], out
            objs, manifests = archived(s3)
            with open(msg, "rb") as f:
                content = f.read() + b"\r\n"
            sha = hashlib.sha256(content).hexdigest()
            assert objs == [sha + ".eml"] and len(manifests) == 1, s3.keys()
            assert manifests[0].startswith(sha + ".eml.manifests/"), manifests  # the guide's listing
            stored = s3.get(objs[0])
            assert stored.endswith(content) and stored.startswith(b"Return-Path: "), stored[:300]
            man = json.loads(s3.get(manifests[0]))
            rcpts = [r["address"] for r in man["recipients"]]
            assert rcpts == ["alice@example.com", "auditor@example.com"], man
            assert b"auditor" not in content            # the Bcc is only in the envelope
            assert man["sha256"] == sha and man["object"]["key"] == objs[0], man
            put = [q for q in s3.requests() if q["method"] == "PUT" and q["url"].endswith(".eml")][0]
            h = put["headers"]
            assert h.get("if-none-match") == "*", h
            assert h.get("x-amz-object-lock-mode") == "COMPLIANCE", h
            assert int(h["x-amz-object-lock-retain-until-date"][:4]) >= time.gmtime().tm_year + 6, h
            assert maildir_count(d, "alice") == 1 and maildir_count(d, "auditor") == 1

            # The archive fails temporarily: both recipients 4xx although the Maildirs
            # stored their copies; the MTA's retry finds the Maildir copy in the memory of
            # stored copies (dedupe_db, set by the example) and the object already archived.
            msg2 = write_message(os.path.join(d, "report.eml"), "Q4 report")
            s3.fail(count=1, status=503, code="SlowDown")
            out = run_swaks(cmd, gw.port, d, [("report.eml", msg2)])
            assert [c for c, _ in final_replies(out)] == [451, 451], out
            assert "4.4.5" in final_replies(out)[0][1], out
            assert maildir_count(d, "alice") == 2
            out = run_swaks(cmd, gw.port, d, [("report.eml", msg2)])
            assert [c for c, _ in final_replies(out)] == [250, 250], out
            assert maildir_count(d, "alice") == 2
            assert gw.grep(r"rcpt=<alice@example\.com> .*duplicate=suppressed"), gw.log()[-2000:]
            # The same message once more (the MTA's retry after a lost reply, or after a 4xx
            # from another backend): the object is there, "already stored", no second object.
            out = run_swaks(cmd, gw.port, d, [("report.eml", msg2)])
            assert [c for c, _ in final_replies(out)] == [250, 250], out
            assert gw.grep(r"rcpt=<alice@example\.com> .*already-stored"), gw.log()[-2000:]
            objs, manifests = archived(s3)
            assert len(objs) == 2 and len(manifests) == 2, s3.keys()
            assert maildir_count(d, "alice") == 2        # the memory of stored copies: still one
            puts = [q["status"] for q in s3.requests()
                    if q["method"] == "PUT" and q["url"].endswith(".eml")]
            assert puts[-3:] == [503, 200, 412], puts  # stored once; then "already stored"

            # Too big for the store: soft_bounce turns 552 into 452 (never a bounce).
            s3.fail(count=1, status=413, code="EntityTooLarge")
            msg3 = write_message(os.path.join(d, "report.eml"), "huge")
            out = run_swaks(cmd, gw.port, d, [("report.eml", msg3)])
            assert [(c, t[:5]) for c, t in final_replies(out)] == [(452, "4.3.4")] * 2, out
            assert gw.grep(r"targets=\"mailboxes:250:2\.0\.0:.*archive:452:4\.3\.4")
    finally:
        s3.stop()


def test_compliance_archive_split_transactions_record_every_envelope():
    """docs/guides/compliance-archive.md, "Who received a message": when one message reaches
    lmtpgw in two transactions (Postfix splits above its recipient limit, or delivers deferred
    recipients later), the second finds the object (412) and adds its own manifest under
    <key>.manifests/; listing that prefix names every recipient."""
    s3 = s3server(bucket="mail-archive", region="eu-central-1")
    d = tempfile.mkdtemp(prefix="guide-s3-")
    try:
        with gateway(archive_config(s3, d)) as gw:
            msg = write_message(os.path.join(d, "split.eml"), "split")
            for rcpt in ("alice@example.com", "bob@example.com"):
                out = run_swaks("swaks --protocol LMTP --server 127.0.0.1 --port 2424 "
                                "--from sender@example.org --to %s --data @split.eml" % rcpt,
                                gw.port, d)
                assert [c for c, _ in final_replies(out)] == [250], out
            objs, manifests = archived(s3)
            assert len(objs) == 1 and len(manifests) == 2, s3.keys()
            assert all(m.startswith(objs[0] + ".manifests/") for m in manifests), manifests
            named = sorted(a for m in manifests for a in json.loads(s3.get(m))["targets"])
            assert named == ["alice@example.com", "bob@example.com"], named
            assert gw.grep(r"rcpt=<bob@example\.com> .*already-stored"), gw.log()[-2000:]
    finally:
        s3.stop()


# --- scaling: several instances, no shared state --------------------------------------------

def test_scaling_two_instances_one_s3_object():
    s3 = s3server(bucket="mail-archive", region="eu-central-1")
    d1 = tempfile.mkdtemp(prefix="guide-scale1-")
    d2 = tempfile.mkdtemp(prefix="guide-scale2-")
    try:
        with gateway(archive_config(s3, d1)) as gw1, gateway(archive_config(s3, d2)) as gw2:
            msg = write_message(os.path.join(d1, "same.eml"), "through both")
            cmd = guide_commands("compliance-archive.md", "--protocol LMTP")[0]
            r1 = final_replies(run_swaks(cmd, gw1.port, d1, [("report.eml", msg)]))
            r2 = final_replies(run_swaks(cmd, gw2.port, d1, [("report.eml", msg)]))
            assert [c for c, _ in r1 + r2] == [250] * 4, (r1, r2)
            assert gw2.grep(r"already-stored") and not gw1.grep(r"already-stored"), gw2.log()
            objs, manifests = archived(s3)
            assert len(objs) == 1 and len(manifests) == 1, s3.keys()
    finally:
        s3.stop()


def test_scaling_webhook_id_is_the_same_through_two_instances():
    from webhook_receiver import Receiver
    key = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    with Receiver(secrets=[key]) as r:
        gws = []
        for _ in range(2):
            d = tempfile.mkdtemp(prefix="guide-scale-hook-")
            secret(d, "hook.key", key + "\n")
            gws.append(Lmtpgw(backends='api: { driver = "webhook"; url = "%s"; allow_http = true; '
                                       'secret_files = [ "%s/hook.key" ]; };' % (r.url, d),
                              routes=[("*@example.test", ["api"])]))
        with gws[0] as a, gws[1] as b:
            msg = write_message(os.path.join(a.dir, "m.eml"), "hook twice")
            for gw in (a, b):
                out = run_swaks("swaks --protocol LMTP --server 127.0.0.1 --port 2424 "
                                "--to x@example.test,y@example.test --data @" + msg, gw.port, a.dir)
                assert [c for c, _ in final_replies(out)] == [250, 250], out
        reqs = r.wait_requests(2)
        assert all(q.signature_ok for q in reqs)
        assert reqs[0].headers["webhook-id"] == reqs[1].headers["webhook-id"]
        assert reqs[0].headers["webhook-timestamp"] is not None


def test_scaling_postfix_nexthop_list_fails_over_in_order():
    """docs/scaling.md: "lmtp:inet:HOST1:2424, HOST2:2424" (Postfix >= 3.5; only the first
    element carries "inet:" -- Postfix 3.7.11 calls "inet:HOST2:2424" in second place "fatal:
    valid hostname or network address required") tries the destinations in order: all mail to
    the first while it answers, the next one when it does not."""
    from postfix import PostfixServer
    require_postfix()
    with Lmtpgw() as a, Lmtpgw() as b:
        nexthop = "lmtp:inet:127.0.0.1:%d, 127.0.0.1:%d" % (a.port, b.port)
        with PostfixServer({"example.test": nexthop}) as pf:
            pf.send("s@remote.test", ["one@example.test"],
                    b"Subject: one\r\nMessage-ID: <one@t>\r\n\r\none\r\n")
            pf.wait_queue_empty()
            assert len(a.messages("one")) == 1 and b.messages("one") == []
            a.stop()                                   # the first destination is down
            pf.send("s@remote.test", ["two@example.test"],
                    b"Subject: two\r\nMessage-ID: <two@t>\r\n\r\ntwo\r\n")
            pf.wait_queue_empty()
            assert len(b.messages("two")) == 1, pf.log()[-3000:]
            assert pf.statuses("two@example.test") == ["sent"], pf.log()[-3000:]
            assert "]:%d: Connection refused" % a.port in pf.log(), pf.log()[-3000:]
