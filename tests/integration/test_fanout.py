"""Route targets an admin can shape (issue #16.1): required and best-effort targets, and a
fallback backend, against real servers: a Maildir, the real HTTP receiver
(webhook_receiver.py) answering 500 or not listening at all, and S3 (npm s3rver behind our
strict SigV4 front, s3server.py) stopped or refusing.

What each test shows:
- a best-effort webhook that is down or answers 500 leaves the reply 250, one Maildir copy, a
  delivery line with best_effort_failed=hook, and lmtpgw_best_effort_failures_total{backend};
- an S3 archive stopped, refusing (503, 400 EntityTooLarge) or held down by its breaker, with
  a Maildir fallback, gives 250 only after the fallback stored the message, an event=fallback
  warning line and lmtpgw_fallback_deliveries_total{backend,fallback};
- a fallback that fails too gives 451 4.x.x, nothing stored, no fallback counted;
- a required target that fails still defers the recipient;
- configurations without a required target or with an unknown fallback are refused at load,
  naming the file and line; `lmtpgw route` and `-n` show the roles, and -n reads back the same.
"""
import os
import re
import urllib.request

from harness import Lmtpgw, conf_value, expect, free_port, send_message, start_s3server
from webhook_receiver import Receiver

SENDER = "sender@remote.test"
CONTENT = (b"From: <sender@remote.test>\r\nTo: <alice@example.test>\r\nSubject: fan-out\r\n"
           b"Message-ID: <fanout@t>\r\n\r\nbody line\r\n")


# --- helpers ---------------------------------------------------------------------------------

def block(name, **settings):
    return "%s: { %s };" % (name, " ".join("%s = %s;" % (k, conf_value(v))
                                           for k, v in settings.items()))


def webhook(url, name="hook"):
    return block(name, driver="webhook", url=url, allow_http=True, timeout="5s",
                 connect_timeout="2s")


def s3_block(s3, name="archive", **opts):
    creds = os.path.join(s3.dir, "creds")
    with open(creds, "w") as f:
        f.write("%s\n%s\n" % (s3.access_key, s3.secret_key))
    os.chmod(creds, 0o600)
    settings = {"driver": "s3", "endpoint": s3.endpoint, "allow_http": True, "bucket": s3.bucket,
                "credentials_file": creds, "timeout": "5s", "connect_timeout": "2s"}
    settings.update(opts)
    return block(name, **settings)


def quarantine_block(gw_dir, name="quarantine", path=None):
    return block(name, driver="maildir", path=path or os.path.join(gw_dir, "quarantine"))


def files(maildir):
    new = os.path.join(maildir, "new")
    return sorted(os.listdir(new)) if os.path.isdir(new) else []


def metrics(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        return r.read().decode()


def metric(text, name, labels):
    m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    return float(m.group(1)) if m else 0.0


def deliver(gw, rcpts=("alice@example.test",), content=CONTENT):
    with gw.session() as c:
        return send_message(c, SENDER, list(rcpts), content)


def delivery_lines(gw):
    return [l for l in gw.log().splitlines() if "event=delivery " in l]


def gateway(backends, routes, **kw):
    """A gateway whose extra backends may need its own directory: backends is a function of
    that directory, returning libconfig text."""
    port = free_port()
    config = {"metrics_listen": "127.0.0.1:%d" % port}
    config.update(kw.pop("config", {}))
    gw = Lmtpgw(config=config, routes=routes, **kw)
    gw.backends = backends(gw.dir)
    gw.write_config()
    gw.metrics_port = port
    return gw


# --- best-effort ------------------------------------------------------------------------------

BEST_EFFORT_ROUTE = [("*@example.test", ["local", {"backend": "hook", "required": False}])]


def test_best_effort_webhook_down_still_250():
    """Nothing listens on the webhook's port (connection refused, 4.4.1): the recipient still
    gets the Maildir's 250, once; the line and the metric say the webhook failed."""
    url = "http://127.0.0.1:%d/hook" % free_port()
    gw = gateway(lambda d: webhook(url), BEST_EFFORT_ROUTE)
    with gw:
        replies = deliver(gw, ["alice@example.test", "bob@example.test"])
        for r, who in zip(replies, ("alice", "bob")):
            expect(r, 250, "2.0.0")
            assert "<%s@example.test>" % who in str(r), r
        assert len(gw.messages("alice")) == 1 and len(gw.messages("bob")) == 1
        stored = gw.read(gw.messages("alice")[0])
        assert stored.endswith(CONTENT), stored[-200:]
        lines = delivery_lines(gw)
        assert len(lines) == 2, lines
        for line in lines:
            assert "result=ok" in line and "best_effort_failed=hook" in line, line
            assert 'targets="local:250:2.0.0:' in line and ",hook:451:4.4.1:" in line, line
        text = metrics(gw.metrics_port)
        assert metric(text, "lmtpgw_best_effort_failures_total", '{backend="hook"}') == 2, text
        assert metric(text, "lmtpgw_recipients_total", '{class="2xx"}') == 2


def test_best_effort_webhook_500_still_250():
    """The real receiver gets the request and answers 500 (a 451 4.3.0 for a required target):
    best-effort, the reply is the Maildir's 250; the answer is in the log line and metric."""
    with Receiver(rule=lambda req: {"status": 500, "text": "broken"}) as recv:
        gw = gateway(lambda d: webhook(recv.url), BEST_EFFORT_ROUTE)
        with gw:
            r = deliver(gw)[0]
            expect(r, 250, "2.0.0")
            assert len(recv.requests) == 1, recv.requests
            assert len(gw.messages("alice")) == 1
            line = delivery_lines(gw)[-1]
            assert "best_effort_failed=hook" in line and "hook:451:4.3.0" in line, line
            text = metrics(gw.metrics_port)
            assert metric(text, "lmtpgw_best_effort_failures_total", '{backend="hook"}') == 1
            # a best-effort target that works is listed among the stores, and not counted
            recv.rule = lambda req: {"status": 200}
            r = deliver(gw)[0]
            expect(r, 250, "2.0.0", "stored (local, hook)")
            assert "best_effort_failed" not in delivery_lines(gw)[-1]
            text = metrics(gw.metrics_port)
            assert metric(text, "lmtpgw_best_effort_failures_total", '{backend="hook"}') == 1


def test_required_target_failing_still_defers():
    """A plain name is a required target: the webhook's 500 defers the recipient (451), as
    before, beside a best-effort target that is down."""
    down = "http://127.0.0.1:%d/hook" % free_port()
    with Receiver(rule=lambda req: {"status": 500}) as recv:
        gw = gateway(lambda d: webhook(recv.url) + " " + webhook(down, "hook2"),
                     [("*@example.test", ["local", "hook",
                                          {"backend": "hook2", "required": False}])])
        with gw:
            r = deliver(gw)[0]
            expect(r, 451, "4.3.0")
            line = delivery_lines(gw)[-1]
            assert "result=tempfail" in line and "best_effort_failed=hook2" in line, line


# --- fallback ---------------------------------------------------------------------------------

ARCHIVE_ROUTE = [("*@example.test", ["local", {"backend": "archive", "fallback": "quarantine"}])]


def fallback_lines(gw):
    return [l for l in gw.log().splitlines() if "event=fallback " in l]


def test_fallback_when_s3_stopped():
    """The archive works, then its S3 store stops (connection refused): the message goes to
    the Maildir quarantine and the recipient gets 250 only then, naming both; a warning line
    and the metric say so."""
    s3 = start_s3server()
    try:
        gw = gateway(lambda d: s3_block(s3) + " " + quarantine_block(d), ARCHIVE_ROUTE)
        with gw:
            quarantine = os.path.join(gw.dir, "quarantine")
            expect(deliver(gw)[0], 250, "2.0.0", "stored (local, archive)")
            assert len([k for k in s3.keys() if ".manifests/" not in k]) == 1
            assert files(quarantine) == []
            s3.stop()
            r = deliver(gw)[0]
            expect(r, 250, "2.0.0", "stored (local, quarantine in place of archive)")
            assert len(gw.messages("alice")) == 2
            q = files(quarantine)
            assert len(q) == 1, q
            with open(os.path.join(quarantine, "new", q[0]), "rb") as f:
                assert f.read().endswith(CONTENT)
            warn = fallback_lines(gw)
            assert len(warn) == 1, warn
            assert " warn event=fallback " in warn[0], warn
            assert "backend=archive fallback=quarantine" in warn[0] and 'failed="451 4.4.' in warn[0], warn
            assert "result=ok" in warn[0], warn
            line = delivery_lines(gw)[-1]
            assert "fallback=archive>quarantine" in line and "quarantine:250:2.0.0:" in line, line
            text = metrics(gw.metrics_port)
            assert metric(text, "lmtpgw_fallback_deliveries_total",
                          '{backend="archive",fallback="quarantine"}') == 1, text
    finally:
        s3.stop()


def test_fallback_when_s3_refuses():
    """S3 answers 503 SlowDown (temporary) and then 400 EntityTooLarge (permanent): both go
    to the fallback, and the archive alone (no other target) never rejects."""
    s3 = start_s3server()
    try:
        gw = gateway(lambda d: s3_block(s3) + " " + quarantine_block(d),
                     [("*@example.test", [{"backend": "archive", "fallback": "quarantine"}])])
        with gw:
            quarantine = os.path.join(gw.dir, "quarantine")
            s3.fail(count=5, status=503, code="SlowDown")
            expect(deliver(gw)[0], 250, "2.0.0", "stored (quarantine in place of archive)")
            assert 'failed="451 4.4.5' in fallback_lines(gw)[-1], fallback_lines(gw)
            s3.reset()
            s3.fail(count=5, status=400, code="EntityTooLarge")
            expect(deliver(gw)[0], 250, "2.0.0", "stored (quarantine in place of archive)")
            assert 'failed="552 5.3.4' in fallback_lines(gw)[-1], fallback_lines(gw)
            assert len(files(quarantine)) == 2
            assert [k for k in s3.keys() if ".manifests/" not in k] == []
            text = metrics(gw.metrics_port)
            assert metric(text, "lmtpgw_fallback_deliveries_total",
                          '{backend="archive",fallback="quarantine"}') == 2, text
    finally:
        s3.stop()


def test_fallback_while_breaker_open_not_tried_and_rcpt_accepted():
    """With the archive's breaker open, a required target without fallback would be refused
    at RCPT (451 4.4.1); one with a fallback is accepted, not tried, and goes straight to the
    fallback."""
    s3 = start_s3server()
    try:
        gw = gateway(lambda d: s3_block(s3, breaker_failures=1, breaker_cooloff="60s") + " " +
                     quarantine_block(d),
                     [("*@example.test", [{"backend": "archive", "fallback": "quarantine"}])])
        with gw:
            s3.stop()
            expect(deliver(gw)[0], 250, "2.0.0", "stored (quarantine in place of archive)")
            gw.wait_log(r"event=backend_down backend=archive")
            r = deliver(gw)[0]     # RCPT accepted (send_message asserts 250 2.1.5)
            expect(r, 250, "2.0.0", "stored (quarantine in place of archive)")
            assert "circuit breaker open" in fallback_lines(gw)[-1], fallback_lines(gw)
            assert len(files(os.path.join(gw.dir, "quarantine"))) == 2
            text = metrics(gw.metrics_port)
            # tried once only: the skipped attempt is not a backend result
            assert metric(text, "lmtpgw_backend_results_total",
                          '{backend="archive",result="tempfail"}') == 1, text
            assert metric(text, "lmtpgw_fallback_deliveries_total",
                          '{backend="archive",fallback="quarantine"}') == 2, text
    finally:
        s3.stop()


def test_fallback_failing_too_defers():
    """The archive is down and the quarantine cannot be written (its path runs through a
    regular file): 451 4.x.x, nothing stored, no fallback delivery counted. A permanent refusal
    of the archive with a failing fallback is still only 4xx."""
    s3 = start_s3server()
    try:
        def backends(d):
            blocker = os.path.join(d, "blocker")
            with open(blocker, "w") as f:
                f.write("not a directory\n")
            return s3_block(s3) + " " + quarantine_block(d, path=os.path.join(blocker, "q"))
        gw = gateway(backends, [("*@example.test", [{"backend": "archive",
                                                    "fallback": "quarantine"}])])
        with gw:
            s3.fail(count=5, status=400, code="EntityTooLarge")
            r = deliver(gw)[0]
            assert r.code == 451 and r.enhanced.startswith("4."), r
            warn = fallback_lines(gw)[-1]
            assert "result=tempfail" in warn and 'failed="552 5.3.4' in warn, warn
            s3.reset()
            s3.stop()
            r = deliver(gw)[0]
            assert r.code == 451 and r.enhanced.startswith("4."), r
            assert "result=tempfail" in fallback_lines(gw)[-1]
            text = metrics(gw.metrics_port)
            assert metric(text, "lmtpgw_fallback_deliveries_total",
                          '{backend="archive",fallback="quarantine"}') == 0, text
            assert metric(text, "lmtpgw_recipients_total", '{class="4xx"}') == 2, text
    finally:
        s3.stop()


# --- configuration ----------------------------------------------------------------------------

def line_of(text, needle):
    return [i + 1 for i, l in enumerate(text.splitlines()) if needle in l][0]


def test_config_errors_name_the_line():
    gw = Lmtpgw(backends=webhook("http://127.0.0.1:9/hook"))
    cases = [
        ([{"backend": "hook", "required": False}], "no required target"),
        (["local", {"backend": "hook", "fallback": "nosuch"}],
         "unknown fallback backend 'nosuch' of 'hook' (defined: local, hook)"),
        ([{"backend": "hook", "fallback": "local"}, "local"], "is also a target"),
    ]
    for deliver_list, message in cases:
        text = gw.config_text(routes=[("*@example.test", deliver_list)])
        gw.write_config(text)
        rc, out, err = gw.run_cli("check")
        assert rc != 0, "accepted:\n%s" % text
        assert re.search(r"lmtpgw\.conf:%d: route 1" % line_of(text, "deliver ="), out + err), \
            (out + err, text)
        assert message in out + err, out + err


def test_route_explain_and_print_show_roles():
    gw = Lmtpgw(backends=webhook("http://127.0.0.1:9/hook") + " " +
                block("quarantine", driver="maildir", path="/var/tmp/q") + " " +
                block("archive", driver="discard"),
                routes=[("*@example.test", ["local", {"backend": "hook", "required": False},
                                            {"backend": "archive", "fallback": "quarantine"}])])
    rc, out, err = gw.run_cli("route", "alice@example.test")
    assert rc == 0, (out, err)
    assert re.search(r"\n  -> local \(driver maildir\): maildir .*/alice/new/ \[required\]\n", out), out
    assert re.search(r"\n  -> hook \(driver webhook\): POST http://127\.0\.0\.1:9/hook .*"
                     r" \[best-effort\]\n", out), out
    assert "\n  -> archive (driver discard): discarded (not stored) [required, fallback quarantine]\n" \
        "     fallback quarantine (driver maildir): maildir /var/tmp/q/new/\n" in out, out
    rc, printed, err = gw.run_cli("-n")
    assert rc == 0, err
    assert ('deliver = ( "local", { backend = "hook"; required = false; }, '
            '{ backend = "archive"; required = true; fallback = "quarantine"; } );') in printed, printed
    path = os.path.join(gw.dir, "printed.conf")
    with open(path, "w") as f:
        f.write(printed)
    rc2, again, err2 = gw.run_cli("-n", conf=path)
    assert rc2 == 0, err2

    def settings(text):
        return [l for l in text.splitlines() if not l.lstrip().startswith("#")]
    assert settings(again) == settings(printed)
    assert gw.run_cli("route", "alice@example.test", conf=path)[1] == out


# --- end to end through a real Postfix --------------------------------------------------------

def test_postfix_best_effort_down_and_archive_stopped_all_sent_once():
    """smtplib -> Postfix -> lmtp:inet -> lmtpgw: three recipients routed to a Maildir, a
    best-effort webhook nobody listens to, and an S3 archive whose store is stopped, with a
    Maildir fallback. Postfix logs status=sent once per recipient (nothing deferred, so no
    retry and no second Maildir copy), its log names the fallback, and every recipient has
    exactly one mailbox copy and one quarantined copy."""
    from test_postfix_e2e import message, postfix
    s3 = start_s3server()
    try:
        url = "http://127.0.0.1:%d/hook" % free_port()
        route = [("*@example.test", ["local", {"backend": "hook", "required": False},
                                     {"backend": "archive", "fallback": "quarantine"}])]
        gw = gateway(lambda d: webhook(url) + " " + s3_block(s3) + " " +
                     quarantine_block(d, path=os.path.join(d, "quarantine", "%{local}")), route)
        with gw, postfix(gw) as pf:
            s3.stop()
            content = message("fan-out")
            rcpts = ["alice@example.test", "bob@example.test", "carol@example.test"]
            assert pf.send(SENDER, rcpts, content) == {}
            pf.wait_queue_empty()
            for r in rcpts:
                user = r.split("@")[0]
                assert pf.statuses(r) == ["sent"], pf.delivery_lines(r)
                line = pf.delivery_lines(r)[0]
                assert "stored (local, quarantine in place of archive)" in line, line
                assert len(gw.messages(user)) == 1, gw.messages(user)
                q = files(os.path.join(gw.dir, "quarantine", user))
                assert len(q) == 1, q
                body = content.split(b"\r\n\r\n", 1)[1]
                assert gw.read(gw.messages(user)[0]).endswith(body)
                with open(os.path.join(gw.dir, "quarantine", user, "new", q[0]), "rb") as f:
                    assert f.read().endswith(body)
            lines = delivery_lines(gw)
            assert len(lines) == 3, lines
            for l in lines:
                assert "best_effort_failed=hook" in l and "fallback=archive>quarantine" in l, l
            assert len(fallback_lines(gw)) == 3
            text = metrics(gw.metrics_port)
            assert metric(text, "lmtpgw_fallback_deliveries_total",
                          '{backend="archive",fallback="quarantine"}') == 3, text
            assert metric(text, "lmtpgw_best_effort_failures_total", '{backend="hook"}') == 3
    finally:
        s3.stop()
