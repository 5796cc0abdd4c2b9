"""Exim 4.96 (Debian 12's, unpacked: tests/integration/exim.py) as the LMTP client of lmtpgw, with
contrib/exim/lmtpgw.conf as shipped: only example.com, the socket path and the TCP port are
substituted, and the commented TCP transport is uncommented. Per recipient the tests check what
Exim did (its mainlog: delivered "=>", bounced "**", deferred "==" and still in `exim -bp`),
the bytes lmtpgw stored, and the message counts.
"""
import os
import re

from harness import RealServerMissing, Lmtpgw, cstr, free_port, split_trace

import debpkg
from exim import EXIM_USER, EximInstance

CONTRIB = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "contrib", "exim", "lmtpgw.conf")
DOMAIN = "example.test"
TCP_DOMAIN = "tcp.test"
SENDER = "sender@" + DOMAIN


def contrib_parts(sock, port):
    """(main, routers, transports) of contrib/exim/lmtpgw.conf, paths substituted; the TCP
    transport uncommented."""
    with open(CONTRIB) as f:
        text = f.read().replace("example.com", DOMAIN).replace("/run/lmtpgw/lmtp.sock", sock)
    parts = re.split(r"^# --- (main section|routers[^-]*|transports) ---\n", text, flags=re.M)
    sections = dict(zip(parts[1::2], parts[2::2]))
    main = sections["main section"]
    routers = sections[[k for k in sections if k.startswith("routers")][0]]
    transports = sections["transports"]
    tcp = re.search(r"^#lmtpgw_lmtp_tcp:\n(?:#.*\n?)+", transports, flags=re.M)
    assert tcp, "contrib/exim/lmtpgw.conf lost its TCP variant"
    block = "".join(l[1:] + "\n" for l in tcp.group(0).splitlines())
    transports = transports.replace(tcp.group(0), block.replace("port = 2424",
                                                                "port = %d" % port))
    return main, routers, transports


def content_lf(subject, body_lines):
    head = ["From: <%s>" % SENDER, "To: <alice@%s>" % DOMAIN, "Subject: %s" % subject,
            "Date: Thu, 03 Dec 2026 12:00:00 +0000", "Message-ID: <%s@exim.test>" % subject,
            "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit", ""]
    return ("\n".join(head).encode() + b"\n" + b"\n".join(body_lines) + b"\n")


def crlf(lf):
    return lf.replace(b"\n", b"\r\n")


def stored_one(gw, user):
    files = gw.messages(user)
    assert len(files) == 1, (user, files)
    return gw.read(files[0])


def exim_user():
    try:
        debpkg.system_user(EXIM_USER, user_group=True)
    except debpkg.Unavailable as e:
        raise RealServerMissing("exim", str(e))


def gateway():
    exim_user()                             # the socket's group must exist before lmtpgw starts
    # ghost@ has no route: 550 5.1.1 at RCPT.
    gw = Lmtpgw(routes=[("carol@" + DOMAIN, ["broken"]), ("alice@" + DOMAIN, ["local"]),
                        ("bob@" + DOMAIN, ["local"]), (SENDER, ["local"]),
                        ("*@" + TCP_DOMAIN, ["local"])])
    os.chmod(gw.dir, 0o755)                 # Debian-exim must reach the socket
    blocker = os.path.join(gw.dir, "broken")
    with open(blocker, "w") as f:
        f.write("not a directory\n")         # carol's Maildir parent is a file: 451 4.3.0
    gw.backends = 'broken: { driver = "maildir"; path = %s; };' % cstr(blocker + "/%{local}")
    sock = os.path.join(gw.dir, "lmtp.sock")
    gw.tcp_port = free_port()
    gw.config.update({"listen": ["unix:" + sock, "127.0.0.1:%d" % gw.tcp_port],
                      "unix_socket_group": "Debian-exim", "unix_socket_mode": "0660"})
    gw.write_config()
    gw.sock = sock
    return gw


def exim_for(gw):
    main, routers, transports = contrib_parts(gw.sock, gw.tcp_port)
    # Test-only additions: the TCP domain's router, before the contrib one.
    routers = ("lmtpgw_tcp:\n  driver = accept\n  domains = %s\n  transport = lmtpgw_lmtp_tcp\n"
               % TCP_DOMAIN) + routers
    try:
        return EximInstance(main, routers, transports)
    except debpkg.Unavailable as e:
        raise RealServerMissing("exim", str(e))


def test_exim_contrib_unix_socket_per_recipient_outcomes():
    """alice and bob delivered, carol deferred (451: stays in Exim's queue), ghost bounced (550
    at RCPT; the bounce comes back to the sender through lmtpgw); one LMTP transaction; 8-bit,
    dot lines and a 2000-octet line stored byte for byte."""
    gw = gateway()
    with gw, exim_for(gw) as ex:
        assert ex.version == "4.96", ex.version
        body = [b"caf\xc3\xa9 \xe2\x82\xac 8-bit", b".", b"..two dots", b".dot line",
                b"x" * 2000, b"end"]
        lf = content_lf("exim-unix", body)
        rcpts = ["alice@" + DOMAIN, "bob@" + DOMAIN, "carol@" + DOMAIN, "ghost@" + DOMAIN]
        ex.send(SENDER, rcpts, lf)
        assert ex.results("alice@" + DOMAIN) == ["=>"], ex.log()
        assert ex.results("bob@" + DOMAIN) == ["->"], ex.log()    # same delivery as alice
        assert ex.results("carol@" + DOMAIN) == ["=="], ex.log()
        assert ex.results("ghost@" + DOMAIN) == ["**"], ex.log()
        assert "451 4.3.0" in ex.lines("carol@" + DOMAIN)[0], ex.lines("carol@" + DOMAIN)
        assert "550 5.1.1" in ex.lines("ghost@" + DOMAIN)[0], ex.lines("ghost@" + DOMAIN)
        assert "T=lmtpgw_lmtp" in ex.lines("alice@" + DOMAIN)[0]
        queue = ex.queue()
        assert list(queue.values()) == [["carol@" + DOMAIN]], queue
        for user in ("alice", "bob"):
            trace = split_trace(stored_one(gw, user), crlf(lf))
            assert b"by exim.lmtpgw.test" in trace, trace     # Exim's own Received:
        assert gw.messages("carol") == [] and gw.messages("ghost") == []
        bounce = stored_one(gw, "sender")                      # Exim's DSN, via lmtpgw
        assert b"ghost@" + DOMAIN.encode() in bounce and b"550 5.1.1" in bounce, bounce[:3000]
        txs = {re.search(r" tx=(\S+)", l).group(1)
               for l in gw.grep(r"event=delivery .*rcpt=<(alice|bob|carol)@")}
        assert len(txs) == 1, txs                              # batch_max: one transaction
        # The backend repaired, a forced queue run delivers carol, once, and nobody else again.
        blocker = os.path.join(gw.dir, "broken")
        os.unlink(blocker)
        os.mkdir(blocker)
        p = ex.run("-qff")
        assert p.returncode == 0, p.stderr
        assert ex.results("carol@" + DOMAIN) == ["==", "=>"], ex.log()
        assert ex.queue() == {}
        split_trace(gw.read(_only_file(blocker, "carol")), crlf(lf))
        for user in ("alice", "bob", "sender"):
            assert len(gw.messages(user)) == 1, user


def test_exim_contrib_tcp_transport_and_30mb():
    """The TCP variant (smtp transport, protocol = lmtp, message_linelength_limit raised):
    a 2000-octet line and a 30 MB message stored byte for byte, once each."""
    gw = gateway()
    with gw, exim_for(gw) as ex:
        small = content_lf("exim-tcp", [b"y" * 2000, b".", b"caf\xc3\xa9"])
        big = content_lf("exim-big", [(b"%07d " % i) + b"z" * 90 for i in range(320000)])
        assert len(big) > 29 * 1024 * 1024
        ex.send(SENDER, ["alice@" + TCP_DOMAIN], small)
        ex.send(SENDER, ["bob@" + TCP_DOMAIN], big)
        for r in ("alice@" + TCP_DOMAIN, "bob@" + TCP_DOMAIN):
            assert ex.results(r) == ["=>"], ex.log()
            assert "T=lmtpgw_lmtp_tcp" in ex.lines(r)[0], ex.lines(r)
        assert ex.queue() == {}
        split_trace(stored_one_domain(gw, "alice", TCP_DOMAIN), crlf(small))
        split_trace(stored_one_domain(gw, "bob", TCP_DOMAIN), crlf(big))


def _only_file(root, user):
    new = os.path.join(root, user, "new")
    files = os.listdir(new)
    assert len(files) == 1, files
    return os.path.join(new, files[0])


def stored_one_domain(gw, user, domain):
    files = gw.messages(user, domain=domain)
    assert len(files) == 1, (user, files)
    return gw.read(files[0])
