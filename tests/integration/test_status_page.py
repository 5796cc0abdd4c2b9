"""
GET /status on metrics_listen, looked at in a real browser (Debian's headless Chromium): the
page lists every configured backend with its state; a webhook backend pointing at a closed
port, once its failures opened the circuit breaker, is shown down with its last error and the
time of it; the numbers on the page are the ones /metrics gives; and a screenshot shows the
red "down" badge (the PNG decoded here with zlib), which is absent while nothing is down.
"""
import re
import subprocess
import urllib.request
from html.parser import HTMLParser

from browser import count_colour, decode_png, dump_dom, find_chromium, screenshot
from harness import Lmtpgw, binary, expect, free_port

# The badge colours of src/status_page.c.
DOWN_RED = (0xc6, 0x28, 0x28)
UP_GREEN = (0x2e, 0x7d, 0x32)


def fetch(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
        return r.status, dict(r.headers), r.read().decode()


def metric(text, name, labels=""):
    m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    assert m, "%s%s not in /metrics" % (name, labels)
    return float(m.group(1))


class StatusDom(HTMLParser):
    """Backend rows (data-backend, data-state, and each data-k cell's text) and the figures."""

    def __init__(self):
        super().__init__()
        self.backends = {}
        self.figures = {}
        self.ids = {}
        self.scripts = 0
        self._row = None
        self._key = None
        self._id = None
        self._text = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "tr" and "data-backend" in a:
            self._row = {"state": a.get("data-state")}
            self.backends[a["data-backend"]] = self._row
        if "data-k" in a:
            self._key, self._text = a["data-k"], []
        elif "id" in a and tag == "span":
            self._id, self._text = a["id"], []

    def handle_data(self, data):
        if self._key is not None or self._id is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if self._key is not None and tag in ("td", "span", "small"):
            text = "".join(self._text).strip()
            (self._row if self._row is not None else self.figures)[self._key] = text
            self._key = None
        elif self._id is not None and tag == "span":
            self.ids[self._id] = "".join(self._text).strip()
            self._id = None
        if tag == "tr":
            self._row = None if self._key is None else self._row


def parse(dom):
    p = StatusDom()
    p.feed(dom)
    return p


def gateway():
    """local (Maildir), hook (a webhook on a port nobody listens on: every delivery fails with
    a 4.4.x, two open the breaker for a minute) and trash (configured, never used)."""
    mport, dead = free_port(), free_port()
    gw = Lmtpgw(config={"metrics_listen": "127.0.0.1:%d" % mport},
                backends=('hook: { driver = "webhook"; url = "http://127.0.0.1:%d/hook"; '
                          'allow_http = true; timeout = "2s"; breaker_failures = 2; '
                          'breaker_cooloff = "60s"; };\n'
                          '  trash: { driver = "discard"; };' % dead),
                routes=[("*@example.test", ["local"]), ("*@hook.test", ["hook"]),
                        ("*@trash.test", ["trash"])])
    return gw, mport


def deliver(gw, rcpts):
    with gw.session() as c:
        expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
        accepted = [r for r in rcpts if c.cmd("RCPT TO:<%s>" % r).code == 250]
        expect(c.cmd("DATA"), 354)
        c.send(b"Subject: status page\r\n\r\nhello\r\n.\r\n")
        return [c.reply() for _ in accepted]


def break_hook(gw):
    """Two failed deliveries to hook (each 451 4.4.1): its breaker opens."""
    for _ in range(2):
        replies = deliver(gw, ["alice@example.test", "bob@hook.test"])
        expect(replies[0], 250, "2.0.0")
        expect(replies[1], 451, "4.4.1")
    gw.wait_log(r"event=backend_down backend=hook")


def test_status_page_in_chromium_shows_down_backend_and_metrics_numbers():
    find_chromium()
    gw, mport = gateway()
    with gw:
        url = "http://127.0.0.1:%d/status" % mport
        status, headers, body = fetch(mport, "/status")
        assert status == 200 and headers["Content-Type"].startswith("text/html"), headers
        assert "script-src" not in headers.get("Content-Security-Policy", "x") and \
            "default-src 'none'" in headers["Content-Security-Policy"], headers
        before = parse(dump_dom(url))
        assert set(before.backends) == {"local", "hook", "trash"}, before.backends
        assert all(b["state"] == "idle" for b in before.backends.values()), before.backends

        break_hook(gw)
        expect(deliver(gw, ["carol@example.test"])[0], 250, "2.0.0")
        dom = dump_dom(url)
        page = parse(dom)
        _, _, metrics = fetch(mport, "/metrics")

        assert page.scripts == 0, "the status page must not need a script"
        assert page.backends["local"]["state"] == "up", page.backends
        assert page.backends["trash"]["state"] == "idle", page.backends
        hook = page.backends["hook"]
        assert hook["state"] == "down", hook
        assert metric(metrics, "lmtpgw_backend_up", '{backend="hook"}') == 0
        assert metric(metrics, "lmtpgw_backend_up", '{backend="local"}') == 1
        # its last error: the status the MTA was given, and when
        assert hook["last-error"].startswith("451 4.4.1"), hook
        assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+s ago\)$", hook["last-error-at"]), hook
        assert re.search(r'data-backend="hook"[^>]*>.*?circuit breaker open', dom, re.S)

        # the numbers are /metrics' numbers (the whole test is within the 15 minutes shown)
        for name, row in page.backends.items():
            for result in ("ok", "tempfail", "permfail"):
                want = metric(metrics, "lmtpgw_backend_results_total",
                              '{backend="%s",result="%s"}' % (name, result))
                assert float(row["total-" + result]) == want, (name, result, row, want)
                assert float(row["recent-" + result]) == want, (name, result, row, want)
        assert page.backends["local"]["total-ok"] == "3" and hook["total-tempfail"] == "2"
        figures = {
            "connections-open": ("lmtpgw_connections", ""),
            "connections-total": ("lmtpgw_connections_total", ""),
            "refused-max-connections": ("lmtpgw_connections_refused_total", '{reason="max_connections"}'),
            "refused-per-client": ("lmtpgw_connections_refused_total", '{reason="per_client"}'),
            "deadline-command": ("lmtpgw_deadline_expiries_total", '{phase="command"}'),
            "deadline-data": ("lmtpgw_deadline_expiries_total", '{phase="data"}'),
            "in-flight": ("lmtpgw_deliveries_in_flight", ""),
            "transactions": ("lmtpgw_transactions_total", ""),
            "recipients-2xx": ("lmtpgw_recipients_total", '{class="2xx"}'),
            "recipients-4xx": ("lmtpgw_recipients_total", '{class="4xx"}'),
            "recipients-5xx": ("lmtpgw_recipients_total", '{class="5xx"}'),
        }
        for key, (name, labels) in figures.items():
            assert float(page.figures[key]) == metric(metrics, name, labels), (key, page.figures)
        assert page.figures["transactions"] == "3" and page.figures["in-flight"] == "0"

        version = subprocess.run([binary(), "--version"], capture_output=True, text=True).stdout
        assert page.ids["version"] and page.ids["version"] in version, (page.ids, version)
        assert re.match(r"^\d+[smhd]", page.ids["uptime"]), page.ids


def test_status_page_screenshot_shows_down_badge():
    """Rendered for real: red (the down badge) appears once hook is down, and not before;
    the page is not blank (the green up badge of local, text, many colours)."""
    find_chromium()
    gw, mport = gateway()
    with gw:
        url = "http://127.0.0.1:%d/status" % mport
        expect(deliver(gw, ["alice@example.test"])[0], 250, "2.0.0")
        _, _, healthy = decode_png(screenshot(url, 1000, 600))
        assert count_colour(healthy, DOWN_RED) == 0, "red on a page with nothing down"
        assert count_colour(healthy, UP_GREEN) > 200, "no green up badge"

        break_hook(gw)
        width, height, rows = decode_png(screenshot(url, 1000, 600))
        assert (width, height) == (1000, 600), (width, height)
        red = count_colour(rows, DOWN_RED)
        assert red > 200, "the down badge is not in the screenshot (%d red pixels)" % red
        assert count_colour(rows, UP_GREEN) > 200, "no green up badge"
        white = count_colour(rows, (255, 255, 255), tolerance=2)
        assert white < width * height * 0.98, "the page is (nearly) blank"
        colours = {px for row in rows[::8] for px in row[::8]}
        assert len(colours) > 20, "too few colours for a page with text: %d" % len(colours)


def test_status_page_and_backend_up_follow_a_reload():
    """SIGHUP: a backend the reload removed leaves the page; one it kept unchanged keeps its
    open breaker (down); one it changed is opened afresh with a closed breaker, and
    lmtpgw_backend_up says 1 again (it used to stay 0 until a delivery succeeded)."""
    import signal
    gw, mport = gateway()
    dead = re.search(r"127\.0\.0\.1:(\d+)/hook", gw.backends).group(1)
    with gw:
        break_hook(gw)
        hook = ('hook: { driver = "webhook"; url = "http://127.0.0.1:%s/hook"; allow_http = true; '
                'timeout = "%s"; breaker_failures = 2; breaker_cooloff = "60s"; };')
        gw.backends = hook % (dead, "2s")                     # trash removed, hook unchanged
        gw.routes = [("*@example.test", ["local"]), ("*@hook.test", ["hook"])]
        gw.write_config()
        gw.signal(signal.SIGHUP)
        gw.wait_log(r"event=reloaded", count=1)
        page = parse(fetch(mport, "/status")[2])
        assert set(page.backends) == {"local", "hook"}, page.backends
        assert page.backends["hook"]["state"] == "down", page.backends
        assert metric(fetch(mport, "/metrics")[2], "lmtpgw_backend_up", '{backend="hook"}') == 0

        gw.backends = hook % (dead, "3s")                     # hook changed: opened afresh
        gw.write_config()
        gw.signal(signal.SIGHUP)
        gw.wait_log(r"event=reloaded", count=2)
        page = parse(fetch(mport, "/status")[2])
        assert page.backends["hook"]["state"] != "down", page.backends
        assert page.backends["hook"]["last-error"].startswith("451 4.4.1"), page.backends
        assert metric(fetch(mport, "/metrics")[2], "lmtpgw_backend_up", '{backend="hook"}') == 1
