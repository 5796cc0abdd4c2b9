"""The s3 backend against npm s3rver behind our strict front (tests/integration/s3server.py).

The front verifies SigV4 with npm aws4 (independent of our signer), the payload hash, the
checksums and If-None-Match before s3rver stores anything; objects are then read back from
s3rver directly and compared byte for byte with what was sent over LMTP.
"""
import hashlib
import json
import os
import re
import socket
import threading
import time

from harness import MEMORY_FIGURES_MEAN_SOMETHING, Lmtpgw, start_s3server, conf_value, dot_stuff, expect, free_port, split_trace


DOMAIN = "example.test"
SENDER = "sender@remote.test"


# --- helpers ---------------------------------------------------------------------------------

def s3server(**kw):
    return start_s3server(**kw)


def creds_file(s3, secret=None, mode=0o600):
    path = os.path.join(s3.dir, "creds-%d" % time.monotonic_ns())
    with open(path, "w") as f:
        f.write("%s\n%s\n" % (s3.access_key, s3.secret_key if secret is None else secret))
    os.chmod(path, mode)
    return path


def s3_backend(s3, name="archive", secret=None, endpoint=None, **opts):
    settings = {"driver": "s3", "endpoint": endpoint or s3.endpoint, "allow_http": True,
                "bucket": s3.bucket, "credentials_file": creds_file(s3, secret),
                "timeout": "20s", "connect_timeout": "2s"}
    settings.update(opts)
    return "%s: { %s };" % (name, " ".join("%s = %s;" % (k, conf_value(v))
                                          for k, v in settings.items()))


def gateway(s3, routes=None, extra="", **opts):
    return Lmtpgw(backends=s3_backend(s3, **opts) + extra,
                  routes=routes or [("*@" + DOMAIN, ["archive"])])


def transaction(c, rcpts, content, sender=SENDER):
    expect(c.cmd("MAIL FROM:<%s>" % sender), 250, "2.1.0")
    for r in rcpts:
        expect(c.cmd("RCPT TO:<%s>" % r), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    wire = dot_stuff(content)
    if not wire.endswith(b"\r\n"):
        wire += b"\r\n"
    c.send(wire + b".\r\n")
    return c.replies(len(rcpts))


def deliver(gw, code, enhanced, rcpts, content, sender=SENDER):
    """One transaction in a session of its own; its (first) reply must be code enhanced.
    Returns that reply."""
    with gw.session() as c:
        r = transaction(c, rcpts, content, sender)[0]
        expect(r, code, enhanced)
    return r


def message(subject="test", body=b"hello\r\n", size=None):
    head = b"From: <%s>\r\nTo: <x@%s>\r\nSubject: %s\r\nMessage-ID: <%s@t>\r\n\r\n" % (
        SENDER.encode(), DOMAIN.encode(), subject.encode(), subject.encode())
    if size is not None:
        line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
        body = line * (max(0, size - len(head)) // len(line) + 1)
    return head + body


def objects(s3):
    keys = s3.keys()
    return [k for k in keys if not k.endswith(".json")], [k for k in keys if k.endswith(".json")]


def manifests_by_object(s3):
    """{object key: [manifest, ...]} over every manifest in the bucket, whatever its key: the
    manifest names its object in "object"."key"."""
    out = {}
    for k in objects(s3)[1]:
        m = json.loads(s3.get(k))
        m["_key"] = k
        out.setdefault(m["object"]["key"], []).append(m)
    return out


def named(manifests):
    """Every recipient the manifests vouch for (their "targets")."""
    return sorted(set(a for m in manifests for a in m["targets"]))


def manifest_puts(s3):
    return [q for q in s3.requests() if q["method"] == "PUT" and q["url"].endswith(".json")]


def no_secret_in_log(gw, s3):
    log = gw.log()
    assert s3.secret_key not in log, "the secret key appears in lmtpgw's log"


# --- tests -----------------------------------------------------------------------------------

def test_object_is_the_stored_message_and_manifest_is_complete():
    with s3server() as s3, gateway(s3) as gw:
        content = message("first", b"line one\r\n.dot line\r\n\xc3\xa9 8bit\r\n")
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<%s> BODY=8BITMIME RET=HDRS ENVID=env42" % SENDER), 250)
            expect(c.cmd("RCPT TO:<alice@%s> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@%s"
                         % (DOMAIN, DOMAIN)), 250)
            expect(c.cmd("RCPT TO:<bcc-bob@%s>" % DOMAIN), 250)
            expect(c.cmd("DATA"), 354)
            c.send(dot_stuff(content) + b".\r\n")
            for r in c.replies(2):
                expect(r, 250, "2.0.0")
        objs, manifests = objects(s3)
        assert len(objs) == 1 and len(manifests) == 1, s3.keys()
        key = objs[0]
        sha = hashlib.sha256(content).hexdigest()
        assert key == "%s.eml" % sha, key  # the default key: content-addressed
        # one manifest per envelope, under <key>.manifests/ (docs/backends/s3.md)
        assert re.fullmatch(re.escape(key) + r"\.manifests/[0-9a-f]{64}\.json", manifests[0]), manifests
        stored = s3.get(key)
        split_trace(stored, content)
        m = json.loads(s3.get(manifests[0]))
        assert m["sha256"] == sha and m["size"] == len(content), m
        assert m["mail_from"]["address"] == SENDER and m["mail_from"]["envid"] == "env42", m
        assert m["mail_from"]["ret"] == "HDRS" and m["mail_from"]["body"] == "8BITMIME", m
        addrs = [r["address"] for r in m["recipients"]]
        assert addrs == ["alice@%s" % DOMAIN, "bcc-bob@%s" % DOMAIN], m
        assert m["recipients"][0]["orcpt"] == "rfc822;alice@%s" % DOMAIN, m
        assert m["recipients"][0]["notify"] == ["SUCCESS", "FAILURE"], m
        assert m["client"]["lhlo"] == "client.test", m
        assert m["object"]["key"] == key and m["object"]["size"] == len(stored), m
        assert m["object"]["sha256"] == hashlib.sha256(stored).hexdigest(), m
        h = s3.head(key)
        assert h.get("x-amz-meta-sender") == SENDER, h
        assert h.get("x-amz-meta-recipient-count") == "2", h
        assert h.get("x-amz-meta-sha256") == sha, h
        # the front saw a signed, checksummed, conditional PUT
        puts = [r for r in s3.requests() if r["method"] == "PUT" and r["url"].endswith(".eml")]
        assert puts and puts[0]["headers"].get("if-none-match") == "*", puts
        assert puts[0]["headers"].get("x-amz-checksum-sha256"), puts
        lines = gw.grep(r"event=delivery .*rcpt=<alice@")
        assert lines and "key=" in lines[0] and "etag=" in lines[0], lines
        no_secret_in_log(gw, s3)


def test_archive_mode_one_object_for_three_recipients():
    with s3server() as s3, gateway(s3) as gw:
        rcpts = ["a@%s" % DOMAIN, "b@%s" % DOMAIN, "c@%s" % DOMAIN]
        with gw.session() as c:
            for r in transaction(c, rcpts, message("three")):
                expect(r, 250, "2.0.0")
        objs, manifests = objects(s3)
        assert len(objs) == 1 and len(manifests) == 1, s3.keys()
        m = json.loads(s3.get(manifests[0]))
        assert m["targets"] == rcpts, m
        assert s3.head(objs[0])["x-amz-meta-recipient-count"] == "3"


def test_recipient_mode_one_object_each():
    with s3server() as s3, gateway(s3, mode="recipient", key="%{rcpt}/%{sha256}.eml") as gw:
        rcpts = ["a@%s" % DOMAIN, "b+tag@%s" % DOMAIN, "c@%s" % DOMAIN]
        content = message("each")
        with gw.session() as c:
            for r in transaction(c, rcpts, content):
                expect(r, 250, "2.0.0")
        objs, manifests = objects(s3)
        sha = hashlib.sha256(content).hexdigest()
        # values are percent-encoded in keys: '@' -> %40, '+' -> %2B
        assert objs == sorted(["a%%40%s/%s.eml" % (DOMAIN, sha), "b%%2Btag%%40%s/%s.eml" % (DOMAIN, sha),
                               "c%%40%s/%s.eml" % (DOMAIN, sha)]), objs
        assert len(manifests) == 3
        by_object = manifests_by_object(s3)
        for k in objs:
            split_trace(s3.get(k), content)
            assert len(by_object[k]) == 1, by_object
            m = by_object[k][0]
            assert m["_key"].startswith(k + ".manifests/"), m["_key"]
            assert len(m["targets"]) == 1 and len(m["recipients"]) == 3, m


def test_retry_of_the_same_message_creates_no_second_object():
    with s3server() as s3, gateway(s3) as gw:
        content = message("again")
        for _ in range(2):
            with gw.session() as c:
                r = transaction(c, ["a@%s" % DOMAIN], content)[0]
                expect(r, 250, "2.0.0")
        objs, manifests = objects(s3)
        assert len(objs) == 1 and len(manifests) == 1, s3.keys()
        assert "already stored" in r.text, r
        assert gw.grep(r"already-stored"), gw.log()[-1500:]
        statuses = [q["status"] for q in s3.requests() if q["method"] == "PUT" and q["url"].endswith(".eml")]
        assert statuses == [200, 412], statuses
        # the same envelope again: its manifest is there already (412), none is added
        assert [q["status"] for q in manifest_puts(s3)] == [200, 412], manifest_puts(s3)


def test_later_transaction_with_the_same_content_records_its_recipients():
    """Issue 13 item 2: one message in two LMTP transactions (Postfix splits above its
    recipient limit, retries deferred recipients, adds always_bcc). Transaction 1 (alice)
    stores the object; transaction 2, the same content to a Bcc recipient, finds the object
    (412: already stored) but must still record its envelope, write-once, before its 250.
    A retry of transaction 2 adds no second manifest; another sender is another envelope."""
    with s3server() as s3, gateway(s3) as gw:
        content = message("split")
        key = hashlib.sha256(content).hexdigest() + ".eml"
        alice, bcc = "alice@" + DOMAIN, "bcc-audit@" + DOMAIN
        deliver(gw, 250, "2.0.0", [alice], content)
        r = deliver(gw, 250, "2.0.0", [bcc], content)
        assert "already stored" in r.text, r
        objs, _ = objects(s3)
        assert objs == [key], s3.keys()
        by_object = manifests_by_object(s3)
        assert named(by_object.get(key, [])) == sorted([alice, bcc]), by_object
        assert len(by_object[key]) == 2, by_object
        second = [m for m in by_object[key] if m["targets"] == [bcc]][0]
        assert second["object"].get("already_stored") is True, second
        assert second["sha256"] == hashlib.sha256(content).hexdigest(), second
        assert second["mail_from"]["address"] == SENDER, second
        tx = re.search(r"event=delivery .* tx=(\S+) .*rcpt=<%s>" % re.escape(bcc), gw.log())
        assert tx and second["transaction"] == tx.group(1), (second, gw.log()[-1500:])
        for m in by_object[key]:
            assert m["_key"] == "%s.manifests/%s.json" % (key, m["envelope_id"]), m
        keys_before = s3.keys()

        # The MTA retries transaction 2 (say its reply was lost): no second manifest.
        deliver(gw, 250, "2.0.0", [bcc], content)
        assert s3.keys() == keys_before, s3.keys()
        assert [q["status"] for q in manifest_puts(s3)] == [200, 200, 412], manifest_puts(s3)
        assert all(q["headers"].get("if-none-match") == "*" for q in manifest_puts(s3))

        # The same content and recipient from another sender is another envelope.
        deliver(gw, 250, "2.0.0", [bcc], content, sender="other@remote.test")
        by_object = manifests_by_object(s3)
        assert sorted(m["mail_from"]["address"] for m in by_object[key]
                      if m["targets"] == [bcc]) == ["other@remote.test", SENDER], by_object
        assert objects(s3)[0] == [key], s3.keys()


def test_manifest_of_a_later_transaction_is_stored_before_its_250():
    """The object is there (412) but the transaction's own manifest cannot be written: 4xx,
    never 250 for a recipient no manifest names. The MTA's retry then records it."""
    with s3server() as s3, gateway(s3) as gw:
        content = message("manifest-fails")
        key = hashlib.sha256(content).hexdigest() + ".eml"
        alice, carol = "alice@" + DOMAIN, "carol@" + DOMAIN
        deliver(gw, 250, "2.0.0", [alice], content)
        s3.fail(count=1, status=500, code="InternalError", match=".manifests/")
        deliver(gw, 451, "4.3.0", [carol], content)
        assert named(manifests_by_object(s3).get(key, [])) == [alice], s3.keys()
        assert gw.grep(r"event=s3_error op=\"?PUT manifest"), gw.log()[-1500:]
        deliver(gw, 250, "2.0.0", [carol], content)
        assert named(manifests_by_object(s3)[key]) == [alice, carol], s3.keys()
        assert objects(s3)[0] == [key], s3.keys()


def test_key_without_sha256_that_exists_is_refused_not_overwritten():
    with s3server() as s3, gateway(s3, key="fixed/%{msgid}.eml") as gw:
        for body, code in ((b"one\r\n", 250), (b"two\r\n", 451)):
            with gw.session() as c:
                r = transaction(c, ["a@%s" % DOMAIN], message("same-id", body))[0]
                expect(r, code, "2.0.0" if code == 250 else "4.3.0")
        assert s3.get("fixed/same-id%40t.eml").endswith(b"one\r\n")
        assert gw.grep(r"event=s3_key_exists"), gw.log()[-1500:]


def test_wrong_secret_is_451_470_and_never_logged():
    with s3server() as s3, gateway(s3, secret="not-the-secret-XYZ") as gw:
        deliver(gw, 451, "4.7.0", ["a@%s" % DOMAIN], message("bad"))
        assert s3.keys() == []
        assert gw.grep(r"code=SignatureDoesNotMatch"), gw.log()[-1500:]
        assert "not-the-secret-XYZ" not in gw.log()
        no_secret_in_log(gw, s3)


def test_missing_bucket_is_451_430():
    with s3server() as s3, gateway(s3, bucket="no-such-bucket") as gw:
        deliver(gw, 451, "4.3.0", ["a@%s" % DOMAIN], message("nb"))
        assert gw.grep(r"code=NoSuchBucket"), gw.log()[-1500:]


def test_slowdown_is_451_445():
    with s3server() as s3, gateway(s3) as gw:
        s3.fail(count=1, status=503, code="SlowDown")
        with gw.session() as c:
            expect(transaction(c, ["a@%s" % DOMAIN], message("slow"))[0], 451, "4.4.5")
            s3.fail(count=1, status=429, code="TooManyRequests")
            expect(transaction(c, ["a@%s" % DOMAIN], message("slow2"))[0], 451, "4.4.5")
            s3.fail(count=1, status=500, code="InternalError")
            expect(transaction(c, ["a@%s" % DOMAIN], message("slow3"))[0], 451, "4.3.0")
            expect(transaction(c, ["a@%s" % DOMAIN], message("slow4"))[0], 250, "2.0.0")
        objs, _ = objects(s3)
        assert len(objs) == 1, objs


def test_server_down_is_451_441():
    with s3server() as s3:
        port = free_port()
        with gateway(s3, endpoint="http://127.0.0.1:%d" % port) as gw:
            deliver(gw, 451, "4.4.1", ["a@%s" % DOMAIN], message("down"))


def test_connection_cut_mid_upload_is_4xx_and_stores_nothing():
    with s3server() as s3, gateway(s3) as gw:
        s3.cut(after=100000)
        with gw.session() as c:
            r = transaction(c, ["a@%s" % DOMAIN], message("cut", size=400000))[0]
            expect(r, "4")
        assert s3.keys() == [], s3.keys()
        assert any(q.get("cut_after") for q in s3.requests())


def vm_hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_20mb_message_through_multipart_with_bounded_memory():
    with s3server() as s3, gateway(s3, multipart_threshold="5M", part_size="5M") as gw:
        content = message("big", size=20 * 1024 * 1024)
        with gw.session() as c:
            c.settimeout(120)
            expect(transaction(c, ["a@%s" % DOMAIN, "b@%s" % DOMAIN], content)[0], 250, "2.0.0")
        hwm = vm_hwm_kib(gw.pid)
        objs, manifests = objects(s3)
        assert len(objs) == 1, objs
        stored = s3.get(objs[0])
        split_trace(stored, content)
        reqs = s3.requests()
        parts = [q for q in reqs if q["method"] == "PUT" and "partNumber=" in q["url"]]
        assert len(parts) == 5, [q["url"] for q in parts]
        assert all(q["headers"].get("x-amz-checksum-sha256") for q in parts)
        assert any(q["method"] == "POST" and "uploads=" in q["url"] for q in reqs)
        m = json.loads(s3.get(manifests[0]))
        assert m["object"]["sha256"] == hashlib.sha256(stored).hexdigest()
        # a 20 MB message must not be held in memory (spool file + streamed parts)
        assert not MEMORY_FIGURES_MEAN_SOMETHING or hwm < 30 * 1024, "lmtpgw peak RSS %d KiB" % hwm


def test_multipart_failure_aborts_the_upload():
    with s3server() as s3, gateway(s3, multipart_threshold="5M", part_size="5M") as gw:
        with gw.session() as c:
            c.settimeout(120)
            # CreateMultipartUpload goes through; the first part is cut after 2 MB: the
            # upload must be aborted and nothing stored.
            s3.cut(after=2 * 1024 * 1024)
            content = message("big-fail", size=11 * 1024 * 1024)
            expect(transaction(c, ["a@%s" % DOMAIN], content)[0], "4")
        assert objects(s3)[0] == []
        reqs = s3.requests()
        assert any(q["method"] == "DELETE" and "uploadId=" in q["url"] for q in reqs), \
            [(q["method"], q["url"]) for q in reqs]


def test_object_lock_encryption_class_and_tags_are_sent():
    with s3server() as s3, gateway(s3, object_lock_mode="COMPLIANCE", retention_days=2555,
                                   legal_hold=True, sse="AES256", storage_class="STANDARD_IA",
                                   tags=["archive=mail", "team=legal ops"]) as gw:
        deliver(gw, 250, "2.0.0", ["a@%s" % DOMAIN], message("lock"))
        put = [q for q in s3.requests() if q["method"] == "PUT" and q["url"].endswith(".eml")][0]
        h = put["headers"]
        assert h.get("x-amz-object-lock-mode") == "COMPLIANCE", h
        until = h.get("x-amz-object-lock-retain-until-date", "")
        assert until.endswith("Z") and int(until[:4]) >= time.gmtime().tm_year + 6, h
        assert h.get("x-amz-object-lock-legal-hold") == "ON", h
        assert h.get("x-amz-server-side-encryption") == "AES256", h
        assert h.get("x-amz-storage-class") == "STANDARD_IA", h
        assert h.get("x-amz-tagging") == "archive=mail&team=legal%20ops", h
        # the manifest is under the same retention as the object it describes: an envelope
        # that could be deleted would make the archive's Bcc record deletable
        mput = manifest_puts(s3)
        assert len(mput) == 1 and mput[0]["status"] == 200, mput
        mh = mput[0]["headers"]
        for name in ("x-amz-object-lock-mode", "x-amz-object-lock-retain-until-date",
                     "x-amz-object-lock-legal-hold", "x-amz-server-side-encryption",
                     "x-amz-storage-class", "x-amz-tagging"):
            assert mh.get(name) == h.get(name), (name, mh, h)
        assert mh.get("content-type") == "application/json" and mh.get("if-none-match") == "*", mh


def test_object_lock_refused_by_the_bucket_is_451_430_with_a_clear_log_line():
    with s3server() as s3, gateway(s3, object_lock_mode="GOVERNANCE", retention_days=30) as gw:
        s3.nolock(True)
        deliver(gw, 451, "4.3.0", ["a@%s" % DOMAIN], message("nolock"))
        assert gw.grep(r"event=s3_object_lock_refused .*Object Lock"), gw.log()[-1500:]
        assert s3.keys() == []


def test_config_errors_are_refused_at_load():
    with s3server() as s3:
        gw = gateway(s3, key="%{rcpt}/%{sha256}.eml")    # message mode with a recipient key
        rc, out, err = gw.run_cli("check")
        assert rc != 0 and "mode" in (out + err), (rc, out, err)
        gw = gateway(s3, endpoint="http://127.0.0.1:1", allow_http=False)
        rc, out, err = gw.run_cli("check")
        assert rc != 0 and "allow_http" in (out + err), (rc, out, err)
        loose = creds_file(s3, mode=0o644)
        gw = gateway(s3, credentials_file=loose)
        rc, out, err = gw.run_cli("check")
        assert rc != 0 and "chmod 600" in (out + err), (rc, out, err)
        assert s3.secret_key not in out + err


# --- a real Postfix splits one message into several LMTP transactions ------------------------

def test_postfix_120_recipients_one_object_every_recipient_in_a_manifest():
    """Issue 13 item 2 end to end: a real Postfix sends one message to 120 recipients through
    an S3 route. Its lmtp client sends at most 50 recipients per transaction (set explicitly:
    the stock default), so lmtpgw sees three transactions of the same content, possibly at
    once on parallel connections. Afterwards exactly one message object exists and its
    manifests together name all 120 recipients, each recipient delivered ("sent") once."""
    try:
        from postfix import PostfixError, PostfixServer, find_postfix
        find_postfix()
    except PostfixError as e:
        raise Skip(str(e))
    with s3server() as s3, gateway(s3) as gw:
        with PostfixServer({DOMAIN: "lmtp:inet:127.0.0.1:%d" % gw.port},
                           main={"lmtp_destination_recipient_limit": "50",
                                 "lmtp_line_length_limit": "0"}) as pf:
            rcpts = ["r%03d@%s" % (i, DOMAIN) for i in range(1, 121)]
            content = (b"From: <%s>\r\nTo: <list@%s>\r\nSubject: to 120\r\n"
                       b"Date: Wed, 25 Nov 2026 07:00:00 +0000\r\nMessage-ID: <to120@client.test>"
                       b"\r\n\r\nhello all\r\n" % (SENDER.encode(), DOMAIN.encode()))
            assert pf.send(SENDER, rcpts, content) == {}
            pf.wait_queue_empty(timeout=60)
            for r in rcpts:
                assert pf.statuses(r) == ["sent"], pf.delivery_lines(r)
        txs = set(re.findall(r"event=delivery .* tx=(\S+) .*result=ok", gw.log()))
        assert len(txs) >= 3, txs               # the split happened: the case under test
        objs, manifests = objects(s3)
        assert len(objs) == 1, objs
        by_object = manifests_by_object(s3)
        assert list(by_object) == objs, by_object.keys()
        assert named(by_object[objs[0]]) == rcpts, sorted(set(rcpts) - set(named(by_object[objs[0]])))
        assert len(manifests) == len(txs), (manifests, txs)   # one per transaction, no duplicate
        assert all(m["_key"].startswith(objs[0] + ".manifests/") for m in by_object[objs[0]])
        puts = [q["status"] for q in s3.requests() if q["method"] == "PUT" and q["url"].endswith(".eml")]
        assert puts.count(200) == 1, puts       # written once; the others found it (412)
