"""
A client that half-closes (shutdown SHUT_WR) after pipelining the end of DATA and more commands
still gets every reply, then the close: the recipient's 250 is never lost (which would make the
MTA resend a stored message). Found by the session fuzzer.
"""
import socket

from harness import Lmtpgw, SLOW


def read_all(s):
    data = b""
    s.settimeout(10 * SLOW)
    while True:
        d = s.recv(65536)
        if not d:
            return data
        data += d


def test_half_close_after_pipelined_data_gets_every_reply():
    with Lmtpgw() as gw:
        s = socket.create_connection((gw.host, gw.port))
        s.sendall(b"LHLO mx\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<keep@example.test>\r\n"
                  b"RCPT TO:<also@example.test>\r\nDATA\r\nhello\r\n.\r\nNOOP\r\n")
        s.shutdown(socket.SHUT_WR)
        lines = read_all(s).decode().split("\r\n")
        s.close()
        assert [l[:9] for l in lines[-4:-1]] == ["250 2.0.0", "250 2.0.0", "250 2.0.0"], lines
        assert "<keep@example.test> stored" in lines[-4] and "<also@example.test> stored" in lines[-3], lines
        assert lines[-2] == "250 2.0.0 OK", lines
        assert len(gw.messages("keep")) == 1 and len(gw.messages("also")) == 1


def test_half_close_mid_data_stores_nothing():
    with Lmtpgw() as gw:
        s = socket.create_connection((gw.host, gw.port))
        s.sendall(b"LHLO mx\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<keep@example.test>\r\n"
                  b"DATA\r\nunfinished\r\n")
        s.shutdown(socket.SHUT_WR)
        data = read_all(s)
        s.close()
        assert data.rstrip().endswith(b"354 Go ahead, end with <CRLF>.<CRLF>"), data
        assert gw.messages("keep") == []
        assert gw.grep(r"event=lost_during_data stored=none"), gw.log()
