"""
test_syslog - log lines through a real rsyslog (Debian's rsyslogd), on a socket of the test's own.

Each test starts `rsyslogd -n -f CONF -i PIDFILE` with imuxsock on a private socket (the system
socket off) and three files: mail.* into mail.log, everything else into other.log, and every
line into all.log with facility, severity, program name and pid spelled out by a template, so
an assertion can say "facility mail, severity warning, lmtpgw[PID]". lmtpgw is pointed at that
socket with `syslog_socket` (syslog(3) could only write to /dev/log, the machine's own daemon).

Covered: program name and pid (also the pid of the detached daemon when started without -f and
syslog_facility left at "auto"), facility (a line in mail.log and none in other.log; local3
goes elsewhere), the level -> severity mapping (error->err, warn->warning, info, debug),
log_format = "json" through syslog, a line longer than LOG_LINE_MAX (truncated with "..." by
lmtpgw, not by rsyslog), the syslog socket missing at start (lines on stderr, the delivery
unaffected, then `event=syslog_restored lines_to_stderr=N` once rsyslog is there) and rsyslog
restarted while lmtpgw runs (the next line reaches the new daemon), a burst of lines longer than
the kernel's datagram queue (all reach rsyslog), and the "<N>" severity prefix when stderr is
the systemd journal.
rsyslog is stopped by PID. python3 stdlib only.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from harness import Lmtpgw, RealServerMissing, SLOW, expect, binary, free_port, shared_tmp_base

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"


class Rsyslog:
    """A private rsyslogd: socket DIR/log.sock, files DIR/{mail,other,all}.log."""

    def __init__(self, directory):
        self.dir = directory
        self.socket = os.path.join(directory, "log.sock")
        self.conf = os.path.join(directory, "rsyslog.conf")
        self.pidfile = os.path.join(directory, "rsyslogd.pid")
        self.proc = None
        work = os.path.join(directory, "work")
        os.makedirs(work, exist_ok=True)
        with open(self.conf, "w") as f:
            f.write("""\
global(workDirectory="%(work)s" maxMessageSize="16k")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="%(sock)s" RateLimit.Interval="0" CreatePath="on")
template(name="plain" type="string" string="%%programname%%[%%procid%%]:%%msg%%\\n")
template(name="full" type="string"
         string="%%syslogfacility-text%%.%%syslogseverity-text%% %%programname%%[%%procid%%]:%%msg%%\\n")
mail.* action(type="omfile" file="%(dir)s/mail.log" template="plain")
*.*;mail.none action(type="omfile" file="%(dir)s/other.log" template="plain")
*.* action(type="omfile" file="%(dir)s/all.log" template="full")
""" % {"work": work, "sock": self.socket, "dir": directory})

    def start(self):
        if not os.access(RSYSLOGD, os.X_OK):
            raise RealServerMissing("rsyslog", "no rsyslogd (apt-get install rsyslog)")
        self.err = open(os.path.join(self.dir, "rsyslogd.err"), "ab")
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", self.conf, "-i", self.pidfile],
                                     stdin=subprocess.DEVNULL, stdout=self.err, stderr=self.err)
        deadline = time.time() + 10 * SLOW
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise AssertionError("rsyslogd did not start: %s" % self.read("rsyslogd.err"))
            time.sleep(0.02)
        return self

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.err.close()

    def read(self, name):
        try:
            with open(os.path.join(self.dir, name), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, name, pattern, timeout=10.0, count=1):
        deadline = time.time() + timeout * SLOW
        while True:
            lines = [l for l in self.read(name).splitlines() if re.search(pattern, l)]
            if len(lines) >= count:
                return lines
            if time.time() > deadline:
                raise AssertionError("%s never had %r (%d times):\n%s"
                                     % (name, pattern, count, self.read(name)[-3000:]))
            time.sleep(0.02)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class SyslogLmtpgw(Lmtpgw):
    """An Lmtpgw whose log is what rsyslog wrote to mail.log plus lmtpgw's own stderr."""

    def __init__(self, rsyslog, config=None, syslog_file="mail.log", **kw):
        cfg = {"syslog_facility": "mail", "syslog_socket": rsyslog.socket}
        cfg.update(config or {})
        self.rsyslog = rsyslog
        self.syslog_file = syslog_file
        super().__init__(config=cfg, **kw)

    def stderr(self):
        return Lmtpgw.log(self)

    def log(self):
        return self.rsyslog.read(self.syslog_file) + self.stderr()


def deliver(gw, rcpt="alice@example.test"):
    with gw.session() as c:
        expect(c.cmd("MAIL FROM:<s@example.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<%s>" % rcpt), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        c.send(b"Subject: syslog\r\n\r\nhi\r\n.\r\n")
        expect(c.reply(), 250, "2.0.0")


def tmpdir(test):
    return tempfile.mkdtemp(prefix="lmtpgw-syslog-%s-" % test, dir=shared_tmp_base())


def test_lines_reach_mail_log_with_name_pid_and_severities():
    d = tmpdir("sev")
    try:
        with Rsyslog(d) as rs, SyslogLmtpgw(rs, config={"log_level": "debug",
                                                         "max_connections": 1}) as gw:
            pid = gw.proc.pid
            disconnects = len(gw.grep(r"event=disconnect"))
            deliver(gw)
            rs.wait_for("mail.log", r"event=delivery ")
            gw.wait_log(r"event=disconnect", count=disconnects + 1)  # the one slot is free
            # warn: the second connection over max_connections = 1 is refused
            with gw.client() as held:
                extra = socket.create_connection((gw.host, gw.port), timeout=10 * SLOW)
                extra.settimeout(10 * SLOW)
                assert extra.recv(200).startswith(b"421 "), "not refused"
                extra.close()
                rs.wait_for("mail.log", r"event=connection_refused")
            # error: a reload with a broken file is refused (and logged as an error)
            gw.write_config("this is not a configuration\n")
            gw.signal(signal.SIGHUP)
            rs.wait_for("mail.log", r"event=reload_failed")
            full = rs.read("all.log")
            mine = [l for l in full.splitlines() if " lmtpgw[" in l]
            assert mine, full
            # program name and pid of the process that logged
            for line in mine:
                assert re.match(r"^mail\.\w+ lmtpgw\[%d\]: " % pid, line), line
            def severity_of(pattern):
                found = [l for l in mine if re.search(pattern, l)]
                assert found, (pattern, full[-2000:])
                return found[0].split(" ", 1)[0]
            assert severity_of(r"event=reload_failed") == "mail.err"
            assert severity_of(r"event=connection_refused") == "mail.warning"
            assert severity_of(r"event=delivery ") == "mail.info"
            assert severity_of(r"event=command ") == "mail.debug"
            # facility mail only: nothing of ours anywhere else, nothing on stderr
            assert "lmtpgw[" not in rs.read("other.log"), rs.read("other.log")
            assert "event=" not in gw.stderr(), gw.stderr()
            # syslog stamps its own time: the message is "event=..." without ours
            assert re.search(r"lmtpgw\[\d+\]: event=started version=", rs.read("mail.log"))
            gw.write_config()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_other_facility_stays_out_of_mail_log():
    d = tmpdir("fac")
    try:
        with Rsyslog(d) as rs, SyslogLmtpgw(rs, config={"syslog_facility": "local3"},
                                            syslog_file="other.log") as gw:
            deliver(gw)
            rs.wait_for("other.log", r"event=delivery ")
            assert re.search(r"^local3\.info lmtpgw\[%d\]: event=delivery " % gw.proc.pid,
                             rs.read("all.log"), re.M), rs.read("all.log")
            assert rs.read("mail.log") == "", rs.read("mail.log")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_json_format_through_syslog():
    d = tmpdir("json")
    try:
        with Rsyslog(d) as rs, SyslogLmtpgw(rs, config={"log_format": "json"}) as gw:
            deliver(gw)
            lines = rs.wait_for("mail.log", r'"event":"delivery"')
            body = lines[0].split(": ", 1)[1]
            record = json.loads(body)
            assert record["level"] == "info" and record["event"] == "delivery", record
            assert record["time"] == "", record  # syslog stamps the time
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_long_line_truncated_by_lmtpgw_not_by_syslog():
    d = tmpdir("long")
    try:
        with Rsyslog(d) as rs:
            gw = SyslogLmtpgw(rs)
            # event=started names the configuration file: give it a path of ~3000 octets, so
            # the line is longer than lmtpgw's 2048-octet limit.
            deep = gw.dir
            for i in range(12):
                deep = os.path.join(deep, ("d%02d" % i) + "x" * 240)
            os.makedirs(deep)
            conf = os.path.join(deep, "lmtpgw.conf")
            shutil.copy(gw.conf_path, conf)
            gw.conf_path = conf
            with gw:
                line = rs.wait_for("mail.log", r"event=started ")[0]
                message = line.split(": ", 1)[1]
                assert message.endswith("..."), message[-100:]
                # 2048 octets minus the newline and NUL, minus no timestamp and level:
                # the message is what lmtpgw's buffer held, whole.
                assert 1900 < len(message) <= 2046, len(message)
                assert ("config=" + gw.dir) in message
                deliver(gw)
                rs.wait_for("mail.log", r"event=delivery ")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_socket_missing_at_start_then_rsyslog_arrives_and_restarts():
    d = tmpdir("missing")
    try:
        rs = Rsyslog(d)
        gw = SyslogLmtpgw(rs)
        with gw:
            # No syslog daemon: the lines go to stderr, once announced, and mail flows.
            assert re.search(r"warn event=syslog_unavailable socket=%s " % re.escape(rs.socket),
                             gw.stderr()), gw.stderr()
            assert len(re.findall(r"event=syslog_unavailable", gw.stderr())) == 1
            assert re.search(r"info event=started ", gw.stderr()), gw.stderr()
            t0 = time.time()
            deliver(gw)
            assert time.time() - t0 < 5 * SLOW
            assert gw.messages("alice"), "not delivered"
            assert re.search(r"info event=delivery ", gw.stderr()), gw.stderr()
            with rs:
                deliver(gw)
                # the first line that reaches syslog reports how many went to stderr
                restored = rs.wait_for("mail.log", r"event=syslog_restored lines_to_stderr=\d+")
                n = int(re.search(r"lines_to_stderr=(\d+)", restored[0]).group(1))
                assert n >= 3, restored  # at least started, the first delivery, a disconnect
                rs.wait_for("mail.log", r"event=delivery ")
                assert re.search(r"^mail\.warning lmtpgw\[%d\]: event=syslog_restored"
                                 % gw.proc.pid, rs.read("all.log"), re.M), rs.read("all.log")
            # rsyslog gone again, then back (a restart): nothing is lost without a trace
            before = len(re.findall(r"event=delivery ", gw.stderr()))
            deliver(gw)
            assert len(re.findall(r"event=delivery ", gw.stderr())) == before + 1
            with rs:
                deliver(gw)
                rs.wait_for("mail.log", r"event=delivery ", count=2)
                rs.wait_for("mail.log", r"event=syslog_restored", count=2)
            assert len(gw.messages("alice")) == 4
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_rsyslog_restarted_while_running():
    d = tmpdir("restart")
    try:
        with Rsyslog(d) as rs, SyslogLmtpgw(rs) as gw:
            disconnects = len(gw.grep(r"event=disconnect"))
            deliver(gw)
            rs.wait_for("mail.log", r"event=delivery ")
            # lmtpgw is quiet now (the session's last line is in): nothing to log while down
            rs.wait_for("mail.log", r"event=disconnect", count=disconnects + 1)
            rs.stop()
            if os.path.exists(rs.socket):
                os.unlink(rs.socket)
            rs.start()
            deliver(gw)
            rs.wait_for("mail.log", r"event=delivery ", count=2)
            # straight to the new daemon: nothing had to go to stderr
            assert "event=" not in gw.stderr(), gw.stderr()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_detached_daemon_logs_to_syslog_mail_by_default():
    """Without -f and with syslog_facility left at "auto", lmtpgw logs to syslog, facility
    mail, with the pid of the detached process."""
    d = tmpdir("daemon")
    try:
        with Rsyslog(d) as rs:
            gw = Lmtpgw(config={"syslog_socket": rs.socket})
            port = free_port()
            proc = subprocess.run([binary(), "-c", gw.conf_path, "--listen",
                                   "127.0.0.1:%d" % port], cwd=gw.dir,
                                  capture_output=True, timeout=30)
            assert proc.returncode == 0, proc.stderr
            line = rs.wait_for("mail.log", r"event=started ")[0]
            pid = int(re.search(r"lmtpgw\[(\d+)\]:", line).group(1))
            try:
                assert re.search(r"pid=%d\b" % pid, line), line
                assert pid != os.getpid()
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    assert b"lmtpgw" in f.read()
                assert re.search(r"^mail\.info lmtpgw\[%d\]:" % pid, rs.read("all.log"), re.M)
                assert proc.stderr == b"", proc.stderr
            finally:
                os.kill(pid, signal.SIGTERM)
                deadline = time.time() + 20 * SLOW
                while os.path.exists("/proc/%d" % pid) and time.time() < deadline:
                    time.sleep(0.05)
            rs.wait_for("mail.log", r"event=stopp|event=exit|event=shutdown", timeout=5)
            shutil.rmtree(gw.dir, ignore_errors=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def start_with_journal_stream(gw, value):
    """Start gw with JOURNAL_STREAM=value in its environment (as systemd would set it)."""
    old = os.environ.get("JOURNAL_STREAM")
    os.environ["JOURNAL_STREAM"] = value
    try:
        gw.start()
    finally:
        if old is None:
            del os.environ["JOURNAL_STREAM"]
        else:
            os.environ["JOURNAL_STREAM"] = old


def test_stderr_to_the_journal_carries_the_severity():
    """Under systemd (the packaged unit runs -f) stderr is the journal: each line then starts
    with "<N>", its syslog severity, which journald takes as the priority and strips (so
    rsyslog reading the journal files it as mail.err, mail.warning, ...). Only when stderr
    really is the stream JOURNAL_STREAM names (DEVICE:INODE): here the log file plays the
    journal's part."""
    gw = Lmtpgw(config={"log_level": "debug", "max_connections": 1})
    open(gw.log_path, "ab").close()
    st = os.stat(gw.log_path)
    start_with_journal_stream(gw, "%d:%d" % (st.st_dev, st.st_ino))
    with gw:
        disconnects = len(gw.grep(r"event=disconnect"))
        deliver(gw)
        gw.wait_log(r"event=disconnect", count=disconnects + 1)
        with gw.client():
            extra = socket.create_connection((gw.host, gw.port), timeout=10 * SLOW)
            extra.settimeout(10 * SLOW)
            assert extra.recv(200).startswith(b"421 ")
            extra.close()
            gw.wait_log(r"event=connection_refused")
        gw.write_config("not a configuration\n")
        gw.signal(signal.SIGHUP)
        gw.wait_log(r"event=reload_failed")
        gw.write_config()
        lines = gw.log().splitlines()
        assert lines and all(re.match(r"^<[0-7]>\d{4}-", l) for l in lines), lines[:5]
        def prefix(pattern):
            return [l for l in lines if re.search(pattern, l)][0][:3]
        assert prefix(r"event=reload_failed") == "<3>"
        assert prefix(r"event=connection_refused") == "<4>"
        assert prefix(r"event=delivery ") == "<6>"
        assert prefix(r"event=command ") == "<7>"
    # Another stream (stderr redirected by someone else): plain lines.
    gw = Lmtpgw()
    start_with_journal_stream(gw, "1:1")
    with gw:
        deliver(gw)
        assert re.match(r"^\d{4}-", gw.log().splitlines()[0]), gw.log()[:200]


def test_burst_of_lines_all_reach_syslog():
    """A burst far longer than the kernel's queue for a unix datagram socket
    (net.unix.max_dgram_qlen, 10 on Debian 12): every line reaches rsyslog, none goes to
    stderr. lmtpgw waits (briefly) for room in the daemon's queue instead of giving up."""
    d = tmpdir("burst")
    try:
        with Rsyslog(d) as rs, SyslogLmtpgw(rs, config={"log_level": "debug"}) as gw:
            n = 400
            with gw.session() as c:
                c.send(b"NOOP\r\n" * n)
                for _ in range(n):
                    expect(c.reply(), 250)
            # debug: a command line and a reply line for each NOOP
            rs.wait_for("mail.log", r"event=command line=\"NOOP\"", count=n)
            rs.wait_for("mail.log", r"event=reply reply=\"250 ", count=n)
            assert "event=" not in gw.stderr(), gw.stderr()[:2000]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_reload_moves_lines_to_new_socket_and_facility():
    """SIGHUP with another syslog_socket and syslog_facility: the next lines go to the new
    daemon with the new facility (the connection to the old socket is dropped)."""
    d1, d2 = tmpdir("reload1"), tmpdir("reload2")
    try:
        with Rsyslog(d1) as rs1, Rsyslog(d2) as rs2, SyslogLmtpgw(rs1) as gw:
            deliver(gw)
            rs1.wait_for("mail.log", r"event=delivery ")
            gw.config.update({"syslog_socket": rs2.socket, "syslog_facility": "local3"})
            gw.write_config()
            gw.signal(signal.SIGHUP)
            rs2.wait_for("other.log", r"event=reloaded ")
            deliver(gw)
            rs2.wait_for("other.log", r"event=delivery ")
            assert re.search(r"^local3\.info lmtpgw\[%d\]: event=delivery " % gw.proc.pid,
                             rs2.read("all.log"), re.M), rs2.read("all.log")
            assert len(re.findall(r"event=delivery ", rs1.read("all.log"))) == 1
            assert "event=" not in gw.stderr(), gw.stderr()
            gw.log = lambda: rs2.read("other.log") + gw.stderr()  # for the harness's stop
    finally:
        shutil.rmtree(d1, ignore_errors=True)
        shutil.rmtree(d2, ignore_errors=True)


def test_slow_syslog_daemon_costs_bounded_waiting():
    """A syslog daemon that is slow rather than stuck (it reads 5 lines a second, so its queue
    is full again right after each line it takes) must not make lmtpgw wait on every line: the
    waits for room are bounded by a budget (500 ms per 10 s), the rest goes to stderr. Before
    the budget, each success re-armed a 100 ms wait, and the event loop stalled about half of
    the time. Measured as the summed latency of 160 NOOPs, one every 50 ms (8 s)."""
    d = tmpdir("slow")
    path = os.path.join(d, "log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    stop = threading.Event()
    received = []

    def slow_reader():
        while not stop.is_set():
            time.sleep(0.2)
            try:
                received.append(sock.recv(65536, socket.MSG_DONTWAIT).decode("utf-8", "replace"))
            except BlockingIOError:
                pass
    reader = threading.Thread(target=slow_reader, daemon=True)
    reader.start()

    class SlowSyslogLmtpgw(Lmtpgw):
        def log(self):
            return "\n".join(received) + "\n" + Lmtpgw.log(self)
    try:
        gw = SlowSyslogLmtpgw(config={"syslog_facility": "mail", "syslog_socket": path,
                                      "log_level": "debug"})
        with gw, gw.session() as c:
            waited = 0.0
            for _ in range(160):
                t0 = time.monotonic()
                expect(c.cmd("NOOP"), 250)
                waited += time.monotonic() - t0
                time.sleep(0.05)
            assert waited < 2.0 * SLOW, "NOOPs waited %.2f s in total for syslog" % waited
            assert "event=syslog_unavailable" in gw.log(), gw.log()[-2000:]
    finally:
        stop.set()
        reader.join()
        sock.close()
        shutil.rmtree(d, ignore_errors=True)
