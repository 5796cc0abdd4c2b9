"""
The metrics endpoint: Prometheus text on metrics_listen, scraped over real HTTP after real
LMTP traffic; /health answers 200.
"""
import re
import urllib.error
import urllib.request

from harness import Lmtpgw, expect, free_port


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
    port = free_port()
    with Lmtpgw(config={"metrics_listen": "127.0.0.1:%d" % port, "max_connections": 1}) as gw:
        with gw.client() as first:
            with gw.client(greeting=False) as second:
                rep = second.reply()
                expect(rep, 421, "4.3.2")
        _, _, text = scrape(port)
        assert value(text, "lmtpgw_connections_refused_total") >= 1


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
