#!/usr/bin/env python3
"""run.py - lmtpgw beside its peers, in one run (issue 7).

    python3 tests/bench/run.py            # full run (~10 min)
    python3 tests/bench/run.py --quick    # < 2 min: fewer messages, fewer peers
    make bench BENCH_ARGS=--quick

Every server is started and stopped here (random 127.0.0.1 ports, unix sockets in a temp dir,
stopped by PID). The client is Postfix's `smtp-source -L -d` (LMTP, one connection per session
reused for all its messages, as Postfix's LMTP connection cache does). For each workload the
servers run interleaved (A B C A B C ...), each for the same number of messages, and the table
shows the median of the rounds:

  msg/s     messages (transactions) per second, wall clock of smtp-source
  MB/s      body bytes (smtp-source -l) x messages / wall time (not x recipients)
  cpu/1k    server CPU seconds (utime+stime, all threads/processes) per 1000 messages
  cpu/MB    server CPU milliseconds per MB of body
  RSS       server peak RSS (VmHWM, reset through /proc/PID/clear_refs before each run)

Servers:
  smtp-sink       Postfix smtp-sink -L: the protocol ceiling (throws mail away)
  gw-discard      lmtpgw, discard backend
  dovecot-lmtp    Dovecot 2.3 LMTP into Maildir (mail_fsync = optimized: file fsync, rename
                  into new/, fsync of new/), quota plugin on (as in tests/integration/dovecot.py)
  gw-maildir      lmtpgw, maildir backend, fsync = true (file fsync, rename, fsync of new/)
  gw-imap         lmtpgw, imap backend (STARTTLS, master login) into the same Dovecot
  loopback        python socket pair on 127.0.0.1, 64 KiB writes: the bandwidth W3 is
                  compared with

Every run is verified before it counts: smtp-source exits 0 (it aborts on any unexpected
reply), smtp-sink counted the messages, lmtpgw logged exactly messages x recipients ok
deliveries and nothing else, every Maildir holds exactly one file per message.

Every run delivers to recipients of its own (r17@bench.test, 2r17@..., all of them Dovecot
users), so each run starts with empty Maildirs on every server (Dovecot slows down as a mailbox
fills: equal counts into fresh mailboxes only) and nothing is deleted or renamed under a live
server. Nothing is deleted until the end (ext4's inode allocator pays for recently freed inodes
for minutes, see /work/shared/facts.md); before each run the cost of creating an empty file is
measured and above 100 us a warning is printed.

python3 stdlib only. Needs postfix (smtp-source, smtp-sink), dovecot-imapd, dovecot-lmtpd.
"""
import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import dovecot as dovecot_mod  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")
DOMAIN = "bench.test"
MAX_RCPTS = 5


def run_users(k, rcpts):
    """Recipients of run k: smtp-source -r N -t rK@d makes rK@d, 2rK@d, 3rK@d, ..."""
    return ["r%d" % k] + ["%dr%d" % (i, k) for i in range(2, rcpts + 1)]


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def cstr(s):
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---- /proc ------------------------------------------------------------------------------

def proc_stat(pid):
    """(own cpu seconds, reaped children's cpu seconds) of pid, or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    fl = s[s.rindex(")") + 2:].split()
    # fields after the comm: state(0) ... utime(11) stime(12) cutime(13) cstime(14)
    return (int(fl[11]) + int(fl[12])) / CLK, (int(fl[13]) + int(fl[14])) / CLK


def vm_hwm_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_hwm(pid):
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
    except OSError:
        pass


def stop_pid(proc, timeout=10):
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass


def wait_accepting(addr, proc, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("server exited with %s at start" % proc.returncode)
        try:
            if addr.startswith("unix:"):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(addr[5:])
            else:
                host, port = addr.rsplit(":", 1)
                s = socket.create_connection((host, int(port)), timeout=2)
            s.settimeout(5)
            g = s.recv(512)
            s.close()
            if g.startswith(b"220"):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("nothing accepts on %s" % addr)
        time.sleep(0.02)


# ---- the file system probe (facts.md: ext4 inode allocator after mass deletes) --------------

class FsProbe:
    def __init__(self, d):
        self.dir = os.path.join(d, "fsprobe")
        os.makedirs(self.dir)
        self.n = 0
        self.samples = []

    def measure(self, count=100):
        """Median cost in microseconds of creating one empty file (the files are kept)."""
        t = []
        for _ in range(count):
            self.n += 1
            p = os.path.join(self.dir, "%d" % self.n)
            t0 = time.perf_counter()
            fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
            os.close(fd)
            t.append(time.perf_counter() - t0)
        us = statistics.median(t) * 1e6
        self.samples.append(us)
        return us


# ---- servers -----------------------------------------------------------------------------

class Server:
    """A server under test. addr: what smtp-source connects to."""
    label = "?"
    kind = "server"
    users_dir = None                 # maildir root for counting (None: nothing stored)

    def start(self):
        pass

    def stop(self):
        pass

    def pids(self):
        return []

    def cpu(self):
        return sum((proc_stat(p) or (0, 0))[0] for p in self.pids())

    def own_cpu(self):
        """CPU of lmtpgw alone (differs from cpu() for gw-imap, which adds Dovecot's)."""
        return self.cpu()

    def reset_rss(self):
        for p in self.pids():
            reset_hwm(p)

    def rss_kb(self):
        return max([vm_hwm_kb(p) for p in self.pids()] or [0])

    def begin(self):
        return None

    def verify(self, token, msgs, rcpts, users):
        return None


def count_files(d):
    try:
        return sum(1 for e in os.scandir(d) if e.is_file())
    except FileNotFoundError:
        return 0


class Sink(Server):
    label = "smtp-sink"

    def __init__(self, work, unix=False):
        self.work = work
        self.unix = unix
        self.out = os.path.join(work, "smtp-sink%s.out" % ("-unix" if unix else ""))
        self.proc = None

    def start(self):
        if self.unix:
            self.addr = "unix:" + os.path.join(self.work, "sink.sock")
        else:
            self.addr = "127.0.0.1:%d" % free_port()
        cmd = ["smtp-sink", "-L", "-c", "-h", "sink.bench.test"]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]
        cmd += [self.addr, "1000"]
        self.fh = open(self.out, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.work)
        wait_accepting(self.addr, self.proc)

    def stop(self):
        stop_pid(self.proc)
        self.fh.close()

    def pids(self):
        return [self.proc.pid]

    def count(self):
        with open(self.out, "rb") as f:
            data = f.read()
        m = re.findall(rb"mesg=(\d+)", data)
        return int(m[-1]) if m else 0

    def begin(self):
        return self.count()

    def verify(self, token, msgs, rcpts, users):
        got = self.count() - token
        if got != msgs:
            return "smtp-sink counted %d messages, expected %d" % (got, msgs)
        return None


class Lmtpgw(Server):
    """build/lmtpgw -f with one backend ("discard", "maildir" or "imap") for *@bench.test."""

    def __init__(self, work, backend, binary, unix=False, dovecot=None, concurrency=None,
                 plaintext=False):
        self.plaintext = plaintext
        self.work = os.path.join(work, "gw-%s%s%s" % (backend, "-unix" if unix else "",
                                                     "-plain" if plaintext else ""))
        os.makedirs(self.work)
        self.backend = backend
        self.binary = binary
        self.unix = unix
        self.dc = dovecot
        self.concurrency = concurrency
        self.label = "gw-%s%s" % (backend, "-plain" if plaintext else "")
        self.proc = None
        self.log = os.path.join(self.work, "lmtpgw.log")
        self.spool = os.path.join(self.work, "spool")
        os.makedirs(self.spool)
        if backend == "maildir":
            self.users_dir = os.path.join(self.work, "mail")

    def backend_block(self):
        if self.backend == "discard":
            return 'b: { driver = "discard"; };'
        if self.backend == "maildir":
            return ('b: { driver = "maildir"; path = %s; fsync = true; };'
                    % cstr(self.users_dir + "/%{local}"))
        if self.backend == "imap":
            pw = os.path.join(self.work, "master.pw")
            with open(pw, "w") as f:
                f.write(self.dc.master[1] + "\n")
            os.chmod(pw, 0o600)
            extra = "concurrency = %d; " % self.concurrency if self.concurrency else ""
            # Pooled connections idle past idle_timeout (default 60 s) crash lmtpgw at HEAD
            # 16944b1: pool_take() closes an expired one with the lock dropped, then goes on
            # indexing idle[] that other workers changed meanwhile (SIGSEGV in SSL_read under
            # imapconn_close). Servers wait minutes between rounds here: keep them unexpired.
            extra += 'idle_timeout = "1h"; '
            if self.plaintext:
                # loopback without TLS, as the Dovecot LMTP peer is: equal footing
                extra += 'allow_plaintext = true; '

            return ('b: { driver = "imap"; url = %s; ca_file = %s; login_mode = "master"; '
                    'login = %s; password_file = %s; %s};'
                    % (cstr("imap://127.0.0.1:%d" % self.dc.imap_port), cstr(self.dc.ca_file),
                       cstr(self.dc.master[0]), cstr(pw), extra))
        raise ValueError(self.backend)

    def settings(self):
        if self.plaintext:
            return ("imap backend as gw-imap but imap:// without TLS (allow_plaintext, "
                    "loopback): the same footing as Dovecot LMTP over TCP")
        return {"discard": "discard backend",
                "maildir": "maildir backend, fsync = true (file fsync + rename + fsync of new/),"
                           " concurrency 8 (default)",
                "imap": "imap backend, imap:// + STARTTLS (verified), master login, "
                        "concurrency %s, pool max_idle 16, multiappend 16 (default)" % (self.concurrency or "32 (default)")
                }[self.backend]

    def start(self):
        self.conf = os.path.join(self.work, "lmtpgw.conf")
        with open(self.binary, "rb") as f:
            # as root, newer builds refuse to serve unless told (a benchmark is a trial)
            as_root = os.geteuid() == 0 and b"run_as_root" in f.read()
        with open(self.conf, "w") as f:
            if as_root:
                f.write("run_as_root = true;\n")
            f.write("hostname = \"gw.bench.test\";\nspool_dir = %s;\nlog_level = \"info\";\n"
                    "backends: { %s };\nroutes = ( { match = \"*@%s\"; deliver = [ \"b\" ]; } );\n"
                    % (cstr(self.spool), self.backend_block(), DOMAIN))
        if self.unix:
            self.addr = "unix:" + os.path.join(self.work, "lmtp.sock")
        else:
            self.addr = "127.0.0.1:%d" % free_port()
        self.fh = open(self.log, "ab")
        self.proc = subprocess.Popen([self.binary, "-f", "-c", self.conf, "--listen", self.addr],
                                     stdout=self.fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.work)
        wait_accepting(self.addr, self.proc)

    def stop(self):
        stop_pid(self.proc)
        self.fh.close()
        if self.proc.returncode not in (0, None):
            print("warning: %s exited with %s" % (self.label, self.proc.returncode))

    def pids(self):
        return [self.proc.pid]

    def begin(self):
        self.fh.flush()
        return os.path.getsize(self.log)

    def verify(self, token, msgs, rcpts, users):
        with open(self.log, "rb") as f:
            f.seek(token)
            data = f.read()
        ok = len(re.findall(rb"event=delivery .* result=ok ", data))
        deliveries = len(re.findall(rb"event=delivery ", data))
        if ok != msgs * rcpts or deliveries != ok:
            bad = [l for l in data.split(b"\n") if b"event=delivery" in l and b"result=ok " not in l]
            return ("lmtpgw logged %d ok of %d deliveries, expected %d; e.g. %r"
                    % (ok, deliveries, msgs * rcpts, bad[:1]))
        if self.users_dir:
            for u in users:
                n = count_files(os.path.join(self.users_dir, u, "new"))
                if n != msgs:
                    return "%s/new holds %d files, expected %d" % (u, n, msgs)
        if self.dc:
            for u in users:
                n = sum(count_files(os.path.join(self.dc.maildir(u), s)) for s in ("new", "cur"))
                if n != msgs:
                    return "dovecot %s Maildir holds %d files, expected %d" % (u, n, msgs)
        return None

    # the imap case costs CPU on both sides: report both
    def cpu(self):
        own = (proc_stat(self.proc.pid) or (0, 0))[0]
        return own + (self.dc_cpu() if self.dc else 0.0)

    def own_cpu(self):
        return (proc_stat(self.proc.pid) or (0, 0))[0]

    def dc_cpu(self):
        return DovecotLmtp.instance_cpu(self.dc)


class DovecotLmtp(Server):
    label = "dovecot-lmtp"

    def __init__(self, dc, unix=False):
        self.dc = dc
        self.unix = unix

    def start(self):
        self.addr = ("unix:" + self.dc.lmtp_socket) if self.unix else \
            "127.0.0.1:%d" % self.dc.lmtp_port

    @staticmethod
    def instance_cpu(dc):
        """CPU of every live process of the instance plus what the master reaped."""
        total = 0.0
        for p in dc.processes():
            st = proc_stat(p)
            if st:
                total += st[0]
                if p == dc.pid:
                    total += st[1]
        return total

    def cpu(self):
        return self.instance_cpu(self.dc)

    def pids(self):
        return self.dc.processes()

    def rss_kb(self):
        """Sum of VmHWM over the instance's processes (shared pages counted in each)."""
        return sum(vm_hwm_kb(p) for p in self.pids())

    def verify(self, token, msgs, rcpts, users):
        for u in users:
            n = sum(count_files(os.path.join(self.dc.maildir(u), s)) for s in ("new", "cur"))
            if n != msgs:
                return "dovecot %s Maildir holds %d files, expected %d" % (u, n, msgs)
        return None


# ---- loopback bandwidth ------------------------------------------------------------------

def loopback_bandwidth(total, chunk=65536):
    """Seconds to move total bytes over one 127.0.0.1 TCP connection with chunk-sized writes,
    and the CPU seconds of this process (sender + receiver threads)."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    got = [0]

    def rx():
        c, _ = ls.accept()
        buf = bytearray(1 << 20)
        n = 0
        while True:
            k = c.recv_into(buf)
            if not k:
                break
            n += k
        got[0] = n
        c.close()

    t = threading.Thread(target=rx)
    t.start()
    s = socket.create_connection(ls.getsockname())
    data = b"x" * chunk
    c0 = time.process_time()
    t0 = time.perf_counter()
    sent = 0
    while sent < total:
        s.sendall(data)
        sent += chunk
    s.shutdown(socket.SHUT_WR)
    t.join()
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    s.close()
    ls.close()
    if got[0] != sent:
        raise RuntimeError("loopback: received %d of %d bytes" % (got[0], sent))
    return dt, cpu, sent


# ---- workloads ---------------------------------------------------------------------------

class Workload:
    def __init__(self, name, desc, size, rcpts, sessions, msgs, servers, unix=False):
        self.name, self.desc, self.size, self.rcpts = name, desc, size, rcpts
        self.sessions, self.msgs, self.servers, self.unix = sessions, msgs, servers, unix



def smtp_source(w, addr, msgs, users):
    cmd = ["smtp-source", "-L", "-d", "-s", str(w.sessions), "-m", str(msgs),
           "-l", str(w.size), "-r", str(w.rcpts), "-M", "client.bench.test",
           "-f", "sender@" + DOMAIN, "-t", "%s@%s" % (users[0], DOMAIN), addr]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ccpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return dt, ccpu, p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


class RunIds:
    def __init__(self, limit):
        self.k = 0
        self.limit = limit

    def next(self):
        self.k += 1
        if self.k > self.limit:
            raise RuntimeError("more runs than recipients prepared")
        return self.k


def one_run(w, srv, msgs, ids, probe):
    """One verified run of smtp-source against srv, to fresh recipients. A result dict."""
    users = run_users(ids.next(), w.rcpts)
    us = probe.measure()
    if us > 100:
        print("  WARNING: creating an empty file costs %.0f us (> 100 us): the file system is "
              "slow right now (recent mass delete?); Maildir results are pessimistic" % us)
    token = srv.begin()
    srv.reset_rss()
    c0 = srv.cpu()
    o0 = srv.own_cpu()
    dt, ccpu, rc, out = smtp_source(w, srv.addr, msgs, users)
    cpu = srv.cpu() - c0
    own = srv.own_cpu() - o0
    rss = srv.rss_kb()
    if rc != 0:
        raise RuntimeError("%s %s: smtp-source exited %d: %s" % (w.name, srv.label, rc, out[-500:]))
    err = srv.verify(token, msgs, w.rcpts, users)
    if err:
        raise RuntimeError("%s %s: verification failed: %s" % (w.name, srv.label, err))
    return {"secs": dt, "msgs": msgs, "cpu": cpu, "rss_kb": rss, "fs_us": us, "client_cpu": ccpu,
            "own_cpu": own,
            "msg_s": msgs / dt, "mb_s": msgs * w.size / dt / 1e6}


def run_loopback(w, msgs):
    total = msgs * w.size
    dt, cpu, sent = loopback_bandwidth(total)
    return {"secs": dt, "msgs": msgs, "cpu": cpu, "rss_kb": 0, "fs_us": 0, "client_cpu": 0.0,
            "own_cpu": cpu,
            "msg_s": msgs / dt, "mb_s": sent / dt / 1e6}


def med(rs, k):
    return statistics.median(r[k] for r in rs)


def machine():
    info = {"nproc": os.cpu_count(), "kernel": platform.release()}
    try:
        with open("/proc/meminfo") as f:
            info["mem_gb"] = round(int(f.readline().split()[1]) / 1048576, 1)
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            info["cpu"] = m.group(1) if m else "?"
    except OSError:
        pass
    try:
        info["fs"] = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,OPTIONS", "-T", tempfile.gettempdir()],
                                    capture_output=True, text=True).stdout.strip()
    except OSError:
        info["fs"] = "?"
    for tool, args in (("dovecot", ["--version"]), ("postconf", ["-d", "mail_version"])):
        try:
            info[tool] = subprocess.run([tool] + args, capture_output=True,
                                        text=True).stdout.strip()
        except OSError:
            info[tool] = "?"
    return info


LOOP = "loopback"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="< 2 minutes: fewer messages and peers")
    ap.add_argument("--rounds", type=int, help="rounds per workload (default 3)")
    ap.add_argument("--only", help="comma-separated workloads, e.g. W1,W3")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "lmtpgw"))
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--imap-concurrency", type=int,
                    help="concurrency of the imap backend (default: the driver's, 8)")
    a = ap.parse_args()
    q = a.quick
    rounds = a.rounds or 3
    for tool in ("smtp-source", "smtp-sink"):
        if not shutil.which(tool) and not os.path.exists("/usr/sbin/" + tool):
            sys.exit("%s not found: apt-get install postfix (make check installs it)" % tool)
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    if not os.access(a.binary, os.X_OK):
        sys.exit("%s not built: run make" % a.binary)

    def n(full, quick):
        return max(10, int((quick if q else full) * a.scale))

    if q:
        wl = [
            Workload("W1", "1 KB, 1 rcpt, 10 sessions", 1024, 1, 10, None,
                     [("sink", n(20000, 10000)), ("gd", n(20000, 10000)),
                      ("dl", n(20000, 2000)), ("gm", n(20000, 2000)), ("gi", n(20000, 2000))]),
            Workload("W1u", "W1 over a unix socket", 1024, 1, 10, None,
                     [("sink_u", n(20000, 10000)), ("gd_u", n(20000, 10000))], unix=True),
            Workload("W2", "64 KB, 5 rcpts, 10 sessions", 65536, 5, 10, None,
                     [("sink", n(4000, 1000)), ("gd", n(4000, 1000)),
                      ("dl", n(2000, 200)), ("gm", n(2000, 200)), ("gi", n(2000, 200))]),
            Workload("W3", "5 MB, 1 rcpt, 4 sessions", 5 * 1024 * 1024, 1, 4, None,
                     [(LOOP, n(100, 20)), ("sink", n(100, 20)), ("gd", n(100, 20)),
                      ("dl", n(100, 20)), ("gm", n(100, 20))]),
            Workload("W4", "1 KB, 1 rcpt, 1 session (latency)", 1024, 1, 1, None,
                     [("sink", n(2000, 500)), ("gd", n(2000, 500)),
                      ("dl", n(2000, 200)), ("gm", n(2000, 200)), ("gi", n(2000, 200))]),
        ]
    else:
        wl = [
            Workload("W1", "1 KB, 1 rcpt, 10 sessions", 1024, 1, 10, None,
                     [("sink", n(20000, 0)), ("gd", n(20000, 0)), ("dl", n(20000, 0)),
                      ("gm", n(20000, 0))]),
            # the IMAP pair with fewer messages: APPENDs into one mailbox run ~200/s here
            Workload("W1i", "W1 with the imap backend", 1024, 1, 10, None,
                     [("dl", n(4000, 0)), ("gi", n(4000, 0)), ("gp", n(4000, 0))]),
            Workload("W1u", "W1 over a unix socket", 1024, 1, 10, None,
                     [("sink_u", n(20000, 0)), ("gd_u", n(20000, 0)), ("dl_u", n(5000, 0)),
                      ("gm_u", n(5000, 0))], unix=True),
            Workload("W2", "64 KB, 5 rcpts, 10 sessions", 65536, 5, 10, None,
                     [("sink", n(4000, 0)), ("gd", n(4000, 0)), ("dl", n(2000, 0)),
                      ("gm", n(2000, 0)), ("gi", n(2000, 0)), ("gp", n(2000, 0))]),
            Workload("W3", "5 MB, 1 rcpt, 4 sessions", 5 * 1024 * 1024, 1, 4, None,
                     [(LOOP, n(100, 0)), ("sink", n(100, 0)), ("gd", n(100, 0)),
                      ("dl", n(100, 0)), ("gm", n(100, 0)), ("gi", n(100, 0)),
                      ("gp", n(100, 0))]),
            Workload("W4", "1 KB, 1 rcpt, 1 session (latency)", 1024, 1, 1, None,
                     [("sink", n(5000, 0)), ("gd", n(5000, 0)), ("dl", n(2000, 0)),
                      ("gm", n(2000, 0)), ("gi", n(2000, 0))]),
        ]
    if a.only:
        keep = set(a.only.split(","))
        wl = [w for w in wl if w.name in keep]

    work = tempfile.mkdtemp(prefix="lmtpgw-bench-", dir="/tmp")
    os.chmod(work, 0o755)
    probe = FsProbe(work)
    servers = []
    dc = None
    results = {}
    started = time.monotonic()
    try:
        nruns = 0
        for w in wl:
            nruns += (rounds + 1) * len(w.servers)
        ids = RunIds(nruns)
        users = {"alice": "alice-pw", "bob": "bob-pw"}
        for k in range(1, nruns + 1):
            for u in run_users(k, MAX_RCPTS):
                users[u] = "pw"
        dc = dovecot_mod.DovecotServer(tmpdir=os.path.join(work, "dc"), users=users, quotas={},
                                       default_quota="100G", lmtp=True)
        dc.start()
        sink, sink_u = Sink(work), Sink(work, unix=True)
        gd, gd_u = Lmtpgw(work, "discard", a.binary), Lmtpgw(work, "discard", a.binary, unix=True)
        gm, gm_u = Lmtpgw(work, "maildir", a.binary), Lmtpgw(work, "maildir", a.binary, unix=True)
        gi = Lmtpgw(work, "imap", a.binary, dovecot=dc, concurrency=a.imap_concurrency)
        gp = Lmtpgw(work, "imap", a.binary, dovecot=dc, concurrency=a.imap_concurrency,
                    plaintext=True)
        dl, dl_u = DovecotLmtp(dc), DovecotLmtp(dc, unix=True)
        byname = {"sink": sink, "sink_u": sink_u, "gd": gd, "gd_u": gd_u, "gm": gm,
                  "gm_u": gm_u, "gi": gi, "gp": gp, "dl": dl, "dl_u": dl_u}
        used = set(k for w in wl for k, _ in w.servers)
        servers = [v for k, v in byname.items() if k in used]
        for s in servers:
            s.start()
        for w in wl:
            w.servers = [(s if s == LOOP else byname[s], m) for s, m in w.servers]

        print("lmtpgw benchmark (%s): %d rounds, interleaved; work dir %s"
              % ("quick" if q else "full", rounds, work))
        for s in (gd, gm, gi, gp):
            if s in servers:
                print("  %-13s %s" % (s.label, s.settings()))
        print("  %-13s Dovecot LMTP, mail_location = maildir, mail_fsync = optimized (fsync file,"
              " rename into new/, fsync new/), quota plugin on" % dl.label)
        print("  %-13s smtp-source -L -d (sessions keep their connection), sender and client on"
              " this machine" % "client")
        # warm-up (not measured): first-use costs (Dovecot process forks, TLS, thread pools)
        for w in wl:
            for s, msgs in w.servers:
                if s != LOOP:
                    one_run(w, s, min(50, msgs), ids, probe)
        for w in wl:
            res = {}
            print("%s: %s" % (w.name, w.desc))
            for r in range(rounds):
                for s, msgs in w.servers:
                    if s == LOOP:
                        x = run_loopback(w, msgs)
                        key = LOOP
                    else:
                        x = one_run(w, s, msgs, ids, probe)
                        key = s.label
                    res.setdefault(key, []).append(x)
                    print("  round %d %-13s %6d msgs %7.2f s %9.1f msg/s %8.1f MB/s cpu %6.3f s"
                          " client %6.3f s rss %6.1f MB fs %4.0f us"
                          % (r + 1, key, x["msgs"], x["secs"], x["msg_s"], x["mb_s"], x["cpu"],
                             x["client_cpu"], x["rss_kb"] / 1024, x["fs_us"]))
                    sys.stdout.flush()
            results[w.name] = {"desc": w.desc, "size": w.size, "rcpts": w.rcpts,
                               "sessions": w.sessions, "runs": res}
        report(results, rounds, q)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"machine": machine(), "quick": q, "rounds": rounds,
                           "results": results}, f, indent=1)
        print("total time %.0f s" % (time.monotonic() - started))
    finally:
        for s in servers:
            try:
                s.stop()
            except Exception as e:
                print("warning: stopping %s: %s" % (s.label, e))
        if dc:
            dc.stop(remove=False)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


TARGETS = [
    # (title, workload, A, B, target ratio A/B or None)
    ("W1 protocol: gw-discard / smtp-sink", "W1", "gw-discard", "smtp-sink", 1.0),
    ("W1 unix socket: gw-discard / smtp-sink", "W1u", "gw-discard", "smtp-sink", 1.0),
    ("W1 Maildir: gw-maildir / dovecot-lmtp", "W1", "gw-maildir", "dovecot-lmtp", 2.0),
    ("W1 unix Maildir: gw-maildir / dovecot-lmtp", "W1u", "gw-maildir", "dovecot-lmtp", 2.0),
    ("W2 Maildir: gw-maildir / dovecot-lmtp", "W2", "gw-maildir", "dovecot-lmtp", 2.0),
    ("W1 IMAP: gw-imap / dovecot-lmtp", "W1", "gw-imap", "dovecot-lmtp", 0.8),
    ("W1 IMAP: gw-imap / dovecot-lmtp", "W1i", "gw-imap", "dovecot-lmtp", 0.8),
    ("W2 IMAP: gw-imap / dovecot-lmtp", "W2", "gw-imap", "dovecot-lmtp", 0.8),
    ("W3 IMAP: gw-imap / dovecot-lmtp", "W3", "gw-imap", "dovecot-lmtp", 0.8),
    ("W1 IMAP plaintext: gw-imap-plain / dovecot-lmtp", "W1i", "gw-imap-plain", "dovecot-lmtp",
     0.8),
    ("W2 IMAP plaintext: gw-imap-plain / dovecot-lmtp", "W2", "gw-imap-plain", "dovecot-lmtp",
     0.8),
    ("W3 IMAP plaintext: gw-imap-plain / dovecot-lmtp", "W3", "gw-imap-plain", "dovecot-lmtp",
     0.8),
    ("W2 protocol: gw-discard / smtp-sink", "W2", "gw-discard", "smtp-sink", None),
    ("W3 discard MB/s / loopback MB/s", "W3", "gw-discard", "loopback", 0.5),
    ("W3 maildir MB/s / loopback MB/s", "W3", "gw-maildir", "loopback", 0.5),
    ("W3 Maildir: gw-maildir / dovecot-lmtp", "W3", "gw-maildir", "dovecot-lmtp", None),
    ("W4 latency: gw-discard / smtp-sink", "W4", "gw-discard", "smtp-sink", None),
    ("W4 latency: gw-maildir / dovecot-lmtp", "W4", "gw-maildir", "dovecot-lmtp", None),
    ("W4 latency: gw-imap / dovecot-lmtp", "W4", "gw-imap", "dovecot-lmtp", None),
]


def report(results, rounds, quick):
    print()
    print("Medians of %d rounds. cpu/1k: server CPU s per 1000 messages (gw-imap: lmtpgw + "
          "Dovecot; dovecot-lmtp: all Dovecot processes). RSS: peak (VmHWM) of lmtpgw / "
          "smtp-sink; sum over Dovecot's processes for dovecot-lmtp." % rounds)
    hdr = "%-4s %-13s %6s %9s %8s %8s %8s %8s %8s %7s" % (
        "wl", "server", "msgs", "msg/s", "MB/s", "ms/msg", "cpu/1k", "cpuMs/MB", "cli/1k",
        "RSS MB")
    print(hdr)
    print("-" * len(hdr))
    for wn, w in results.items():
        for key, rs in w["runs"].items():
            msg_s = med(rs, "msg_s")
            cpu_k = statistics.median(r["cpu"] / r["msgs"] * 1000 for r in rs)
            cpu_mb = statistics.median(r["cpu"] * 1000 / (r["msgs"] * w["size"] / 1e6) for r in rs)
            rss = max(r["rss_kb"] for r in rs) / 1024
            cli_k = statistics.median(r["client_cpu"] / r["msgs"] * 1000 for r in rs)
            print("%-4s %-13s %6d %9.1f %8.1f %8.3f %8.3f %8.2f %8.3f %7s" % (
                wn, key, rs[0]["msgs"], msg_s, med(rs, "mb_s"), w["sessions"] / msg_s * 1000,
                cpu_k, cpu_mb, cli_k, "%.1f" % rss if rss else "-"))
    for wn, w in results.items():
        for label in ("gw-imap", "gw-imap-plain"):
            rs = w["runs"].get(label)
            if rs:
                own = statistics.median(r["own_cpu"] / r["msgs"] * 1000 for r in rs)
                tot = statistics.median(r["cpu"] / r["msgs"] * 1000 for r in rs)
                print("%-4s %s cpu/1k split: lmtpgw %.3f s + Dovecot %.3f s"
                      % (wn, label, own, tot - own))
    print()
    print("Ratios (of medians; per-round ratio range in brackets):")
    for title, wn, A, B, target in TARGETS:
        w = results.get(wn)
        if not w or A not in w["runs"] or B not in w["runs"]:
            continue
        k = "mb_s" if B == "loopback" else "msg_s"
        ra, rb = w["runs"][A], w["runs"][B]
        ratio = med(ra, k) / med(rb, k)
        per = [x[k] / y[k] for x, y in zip(ra, rb)]
        verdict = ""
        if target is not None:
            verdict = "target >= %.1fx: %s" % (target, "MET" if ratio >= target else "not met")
        print("  %-45s %6.2fx [%.2f-%.2f]  %s" % (title, ratio, min(per), max(per), verdict))


if __name__ == "__main__":
    main()
