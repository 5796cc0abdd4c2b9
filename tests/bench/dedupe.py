#!/usr/bin/env python3
"""dedupe.py - what the memory of stored copies (dedupe_db) costs on the Maildir path.

Runs lmtpgw with one maildir backend (fsync = true, concurrency 8) without and with
`dedupe_db`, and optionally another binary (e.g. a build of the commit before), interleaved,
and reports per variant:
  - wall-clock: `smtp-source -L -d -s 10 -m N -l 1000` (1 KB, one recipient, a fresh recipient
    per run, so every run starts with an empty Maildir): msg/s and lmtpgw's CPU per message
    (utime+stime of all threads, /proc/PID/stat), medians of the rounds;
  - --callgrind: instructions per message under `valgrind --tool=callgrind`, from the
    difference between a 100- and a 400-message run over one session (noise-free on a loaded
    machine).
Every run is verified: smtp-source exits 0 and the recipient's new/ holds one file per message.

    python3 tests/bench/dedupe.py [--binary build/lmtpgw] [--old /tmp/old/build/lmtpgw]
                                  [--messages 5000] [--rounds 3] [--callgrind]
python3 stdlib only; needs postfix's smtp-source and valgrind (for --callgrind).
"""
import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMTP_SOURCE = "/usr/sbin/smtp-source"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Gateway:
    def __init__(self, work, name, binary, dedupe, callgrind=False):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        self.port = free_port()
        self.mail = os.path.join(self.dir, "mail")
        conf = ['hostname = "bench.test";', 'log_level = "info";',
                'spool_dir = "%s";' % self.dir]
        if os.geteuid() == 0:
            conf.append("run_as_root = true;")
        if dedupe:
            conf.append('dedupe_db = "%s";' % os.path.join(self.dir, "dedupe.sqlite"))
        conf.append('backends: { local: { driver = "maildir"; path = "%s/%%{local}"; '
                    'fsync = true; }; };' % self.mail)
        conf.append('routes = ( { match = "*@bench.test"; deliver = "local"; } );')
        self.conf = os.path.join(self.dir, "lmtpgw.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(conf) + "\n")
        cmd = [binary, "-f", "-c", self.conf, "--listen", "127.0.0.1:%d" % self.port]
        self.cg_out = os.path.join(self.dir, "callgrind.out")
        if callgrind:
            cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + self.cg_out] + cmd
        self.log = open(os.path.join(self.dir, "lmtpgw.log"), "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, cwd=self.dir)
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise SystemExit("lmtpgw %s did not start" % name)
                time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=120)
        self.log.close()


def send(gw, user, messages, sessions):
    """smtp-source into gw; (wall seconds, lmtpgw cpu seconds); verifies the Maildir."""
    cpu0 = cpu_seconds(gw.proc.pid)
    t0 = time.monotonic()
    subprocess.run([SMTP_SOURCE, "-L", "-d", "-s", str(sessions), "-m", str(messages),
                    "-l", "1000", "-f", "bench@bench.test", "-t", "%s@bench.test" % user,
                    "127.0.0.1:%d" % gw.port], check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    new = os.path.join(gw.mail, user, "new")
    deadline = time.time() + 30
    while len(os.listdir(new)) < messages and time.time() < deadline:
        time.sleep(0.05)
    got = len(os.listdir(new))
    assert got == messages, "%s: %d files in new/, expected %d" % (user, got, messages)
    return wall, cpu_seconds(gw.proc.pid) - cpu0


def callgrind_total(path):
    """Instructions of the whole run (every thread: callgrind writes one file by default)."""
    with open(path) as fh:
        for line in fh:
            m = re.match(r"^(?:summary|totals):\s+(\d+)", line)
            if m:
                return int(m.group(1))
    raise SystemExit("no totals in " + path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "lmtpgw"))
    ap.add_argument("--old", help="another binary to compare (without dedupe_db)")
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--callgrind", action="store_true")
    args = ap.parse_args()
    variants = [("off", args.binary, False), ("dedupe_db", args.binary, True)]
    if args.old:
        variants.insert(0, ("old", args.old, False))
    work = tempfile.mkdtemp(prefix="lmtpgw-bench-dedupe-")
    try:
        if args.callgrind:
            print("callgrind, 1 session, 1 KB, 1 recipient: Ir per message = (Ir(400) - Ir(100)) / 300")
            for name, binary, dedupe in variants:
                totals = {}
                for n in (100, 400):
                    gw = Gateway(work, "%s-cg%d" % (name, n), binary, dedupe, callgrind=True)
                    send(gw, "u", n, 1)
                    gw.stop()
                    totals[n] = callgrind_total(gw.cg_out)
                print("%-10s Ir/msg %10.0f   (totals %d, %d)"
                      % (name, (totals[400] - totals[100]) / 300, totals[100], totals[400]))
            return
        gws = {name: Gateway(work, name, binary, dedupe) for name, binary, dedupe in variants}
        for gw in gws.values():
            send(gw, "warmup", 200, 10)
        results = {name: [] for name in gws}
        for r in range(args.rounds):
            for name, gw in gws.items():
                wall, cpu = send(gw, "r%d" % r, args.messages, 10)
                results[name].append((args.messages / wall, cpu * 1e6 / args.messages))
                print("round %d %-10s %7.0f msg/s  %6.1f us cpu/msg"
                      % (r + 1, name, *results[name][-1]), flush=True)
        for gw in gws.values():
            gw.stop()
        print("\nmedians of %d rounds, %d messages each:" % (args.rounds, args.messages))
        for name, rs in results.items():
            print("%-10s %7.0f msg/s  %6.1f us cpu/msg" % (
                name, statistics.median(x[0] for x in rs), statistics.median(x[1] for x in rs)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
