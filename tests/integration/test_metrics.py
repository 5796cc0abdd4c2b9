"""
The metrics endpoint: Prometheus text on metrics_listen, scraped over real HTTP after real
LMTP traffic; /health answers 200.
"""
import re
import urllib.error
import urllib.request

from harness import Lmtpgw, cstr, expect, free_port


def scrape(port, path="/metrics"):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode()


def value(text, name, labels=""):
    m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    assert m, "%s%s not in metrics:\n%s" % (name, labels, text)
    return float(m.group(1))


def send(c, rcpts):
    expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
    ok = 0
    for r in rcpts:
        if c.cmd("RCPT TO:<%s>" % r).code == 250:
            ok += 1
    expect(c.cmd("DATA"), 354)
    c.send(b"Subject: m\r\n\r\n" + b"x" * 1000 + b"\r\n.\r\n")
    return [c.reply() for _ in range(ok)]


def test_metrics_counts_real_traffic():
    port = free_port()
    with Lmtpgw(config={"metrics_listen": "127.0.0.1:%d" % port}) as gw:
        status, ctype, text = scrape(port)
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4"), ctype
        assert value(text, "lmtpgw_transactions_total") == 0
        with gw.session() as c:
            for _ in range(3):
                for r in send(c, ["alice@example.test", "bob@example.test", "x@nowhere.test"]):
                    expect(r, 250, "2.0.0")
        _, _, text = scrape(port)
        assert value(text, "lmtpgw_transactions_total") == 3
        assert value(text, "lmtpgw_recipients_total", '{class="2xx"}') == 6
        assert value(text, "lmtpgw_backend_results_total", '{backend="local",result="ok"}') == 6
        assert value(text, "lmtpgw_backend_delivery_seconds_count", '{backend="local"}') == 6
        assert value(text, "lmtpgw_backend_delivery_seconds_bucket", '{backend="local",le="+Inf"}') == 6
        assert value(text, "lmtpgw_backend_up", '{backend="local"}') == 1
        assert value(text, "lmtpgw_received_bytes_total") >= 3 * 1000
        assert value(text, "lmtpgw_connections_total") >= 2  # harness probe + our session
        assert value(text, "lmtpgw_deliveries_in_flight") == 0
        # Histogram buckets are cumulative: never decreasing.
        buckets = [float(v) for v in re.findall(
            r'^lmtpgw_backend_delivery_seconds_bucket\{backend="local",le="[^"]+"\} (\S+)$', text, re.M)]
        assert len(buckets) >= 5 and buckets == sorted(buckets), buckets
        status, _, body = scrape(port, "/health")
        assert status == 200 and body.strip() == "ok"
        try:
            scrape(port, "/nope")
            assert False, "expected 404"
        except urllib.error.HTTPError as e:
            assert e.code == 404


def test_metrics_count_refused_connections():
    """Each refusal is counted under its reason; every reason is there (0) before the first,
    so an alert on increase() sees the first refusal."""
    port = free_port()
    with Lmtpgw(config={"metrics_listen": "127.0.0.1:%d" % port, "max_connections": 1}) as gw:
        _, _, text = scrape(port)
        for reason in ("max_connections", "per_client", "allow_clients"):
            assert value(text, "lmtpgw_connections_refused_total", '{reason="%s"}' % reason) == 0
        with gw.client() as first:
            with gw.client(greeting=False) as second:
                rep = second.reply()
                expect(rep, 421, "4.3.2")
        _, _, text = scrape(port)
        assert value(text, "lmtpgw_connections_refused_total", '{reason="max_connections"}') == 1
        assert value(text, "lmtpgw_connections_refused_total", '{reason="per_client"}') == 0
        assert not re.search(r"^lmtpgw_connections_refused_total \S+$", text, re.M), \
            "the unlabelled series is gone: its reason is a label now"


def test_metrics_count_refused_per_client():
    """max_connections_per_client refusals (421 4.7.0) are reason="per_client"."""
    port = free_port()
    with Lmtpgw(config={"metrics_listen": "127.0.0.1:%d" % port, "max_connections": 10,
                        "max_connections_per_client": 1}) as gw:
        with gw.client() as first:
            with gw.client(greeting=False) as second:
                expect(second.reply(), 421, "4.7.0")
            with gw.client(greeting=False) as third:
                expect(third.reply(), 421, "4.7.0")
        _, _, text = scrape(port)
        assert value(text, "lmtpgw_connections_refused_total", '{reason="per_client"}') == 2
        assert value(text, "lmtpgw_connections_refused_total", '{reason="max_connections"}') == 0


def test_metrics_count_deadline_expiries_by_phase():
    """A client silent after the greeting or after LHLO (timeout_greeting/timeout_command) is
    phase="command"; one stalled in DATA (timeout_data, min_data_rate) is phase="data"."""
    port = free_port()
    with Lmtpgw(config={"metrics_listen": "127.0.0.1:%d" % port, "timeout_command": "1s",
                        "timeout_greeting": "1s", "timeout_data": "1s",
                        "min_data_rate": 1000}) as gw:
        _, _, text = scrape(port)
        assert "# TYPE lmtpgw_deadline_expiries_total counter" in text
        assert value(text, "lmtpgw_deadline_expiries_total", '{phase="command"}') == 0
        assert value(text, "lmtpgw_deadline_expiries_total", '{phase="data"}') == 0
        with gw.client() as silent:                       # greeting read, no LHLO
            with gw.session() as idle:                    # LHLO, then nothing
                with gw.session() as stalled:             # DATA, a few bytes, then nothing
                    expect(stalled.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
                    expect(stalled.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
                    expect(stalled.cmd("DATA"), 354)
                    stalled.send(b"Subject: slow\r\n")
                    for c in (silent, idle, stalled):
                        expect(c.reply(), 421, "4.4.2")
        gw.wait_log(r"event=timeout phase=data", timeout=5)
        _, _, text = scrape(port)
        assert value(text, "lmtpgw_deadline_expiries_total", '{phase="command"}') == 2
        assert value(text, "lmtpgw_deadline_expiries_total", '{phase="data"}') == 1


def test_metrics_listen_bad_value_refused_at_start():
    gw = Lmtpgw(config={"metrics_listen": "localhost:notaport"})
    try:
        # (an `assert False` inside a `try: ... except Exception` was caught by its own except)
        started = False
        try:
            gw.start()
            started = True
        except AssertionError:
            pass
        assert not started, "lmtpgw started with a bad metrics_listen"
        assert "metrics_listen" in gw.log(), gw.log()
    finally:
        try:
            gw.stop(expect_clean=False)
        except Exception:
            pass


def classes(port):
    _, _, text = scrape(port)
    return {c: value(text, "lmtpgw_recipients_total", '{class="%s"}' % c)
            for c in ("2xx", "4xx", "5xx")}


def test_metrics_count_rcpt_time_refusals():
    """lmtpgw_recipients_total counts every final per-recipient reply (include/metrics.h), those
    given at RCPT included: no route (550 5.1.1), a verification in the session (maildir
    create = false: 550 5.1.1) and in a worker (webhook verify_url: 550 5.1.1 and 452 4.2.2),
    the open circuit breaker (451 4.4.1), too many recipients (452 4.5.3), a malformed address
    (501), and after the message those the session refuses itself (552 5.3.4). A 250 to RCPT is
    not final: the recipient is counted once, by its reply after the message. So the counter
    equals the number of event=refused and event=delivery lines."""
    import os
    from webhook_receiver import Receiver
    from test_reliability import imap_backend
    from test_webhook import backend as webhook_backend
    from test_webhook_verify import verdicts

    port = free_port()
    down_port = free_port()                       # nothing listens there: connection refused
    with Receiver(rule=verdicts) as hook:
        gw = Lmtpgw(config={"metrics_listen": "127.0.0.1:%d" % port, "max_recipients": 3,
                            "max_message_size": "4K"},
                    routes=[("down@example.test", ["down"]), ("*@example.test", ["local"]),
                            ("*@strict.test", ["strict"]), ("*@hook.test", ["hook"])])
        pw = os.path.join(gw.dir, "imap.pw")
        with open(pw, "w") as f:
            f.write("secret\n")
        os.chmod(pw, 0o600)
        gw.backends = (
            imap_backend("down", down_port, 'breaker_failures = 1; breaker_cooloff = "60s";')
            % {"pw": cstr(pw)}
            + 'strict: { driver = "maildir"; path = %s; create = false; };'
            % cstr(os.path.join(gw.dir, "strict", "%{local}"))
            + webhook_backend(hook.url, verify_url=hook.base + "/verify/%{domain}/%{local}"))
        gw.write_config()
        with gw:
            assert classes(port) == {"2xx": 0, "4xx": 0, "5xx": 0}
            with gw.session() as c:
                # After the message: one 451 4.4.1 from the backend; the breaker opens.
                expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
                expect(c.cmd("RCPT TO:<down@example.test>"), 250, "2.1.5")
                expect(c.cmd("DATA"), 354)
                c.send(b"Subject: t\r\n\r\nx\r\n.\r\n")
                expect(c.reply(), 451, "4.4.1")
                gw.wait_log(r"event=backend_down backend=down")
                assert classes(port) == {"2xx": 0, "4xx": 1, "5xx": 0}

                expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
                expect(c.cmd("RCPT TO:<down@example.test>"), 451, "4.4.1")      # breaker
                expect(c.cmd("RCPT TO:<nobody@unrouted.test>"), 550, "5.1.1")   # no route
                expect(c.cmd("RCPT TO:<ghost@strict.test>"), 550, "5.1.1")      # maildir verify
                expect(c.cmd("RCPT TO:<unknown@hook.test>"), 550, "5.1.1")      # webhook verify
                expect(c.cmd("RCPT TO:<full@hook.test>"), 452, "4.2.2")         # webhook verify
                expect(c.cmd("RCPT TO:<no-brackets"), 501)                      # syntax
                assert classes(port) == {"2xx": 0, "4xx": 3, "5xx": 4}, "RCPT-time replies"

                for r in ("alice", "bob", "carol"):
                    expect(c.cmd("RCPT TO:<%s@example.test>" % r), 250, "2.1.5")
                expect(c.cmd("RCPT TO:<dave@example.test>"), 452, "4.5.3")      # limit
                # A 250 to RCPT is no final reply: nothing counted for alice, bob, carol yet.
                assert classes(port) == {"2xx": 0, "4xx": 4, "5xx": 4}
                expect(c.cmd("DATA"), 354)
                c.send(b"Subject: t\r\n\r\nhello\r\n.\r\n")
                for _ in range(3):
                    expect(c.reply(), 250, "2.0.0")
                assert classes(port) == {"2xx": 3, "4xx": 4, "5xx": 4}

                # Refused by the session after the message (too big): one per recipient.
                expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
                expect(c.cmd("RCPT TO:<alice@example.test>"), 250, "2.1.5")
                expect(c.cmd("RCPT TO:<bob@example.test>"), 250, "2.1.5")
                expect(c.cmd("DATA"), 354)
                c.send(b"Subject: big\r\n\r\n" + b"x" * 5000 + b"\r\n.\r\n")
                expect(c.reply(), 552, "5.3.4")
                expect(c.reply(), 552, "5.3.4")
            got = classes(port)
            assert got == {"2xx": 3, "4xx": 4, "5xx": 6}, got
            lines = gw.grep(r"event=(refused|delivery) ")
            assert len(lines) == sum(got.values()), lines


def test_metrics_count_soft_bounced_rcpt_refusals_as_sent():
    """With soft_bounce the client gets 450 4.1.1 for an unknown recipient: counted as 4xx, the
    class of the reply sent."""
    port = free_port()
    with Lmtpgw(config={"metrics_listen": "127.0.0.1:%d" % port, "soft_bounce": True}) as gw:
        with gw.session() as c:
            expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<nobody@unrouted.test>"), 450, "4.1.1")
        assert classes(port) == {"2xx": 0, "4xx": 1, "5xx": 0}
