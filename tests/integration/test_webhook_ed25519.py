"""Asymmetric webhook signatures per Standard Webhooks: Ed25519 "v1a," signatures beside or
instead of the HMAC "v1,", one per key (rotation), keys from PEM files made with
`openssl genpkey -algorithm ed25519`, verified by the receiver with Python's `cryptography`
(webhook_receiver.py), never with lmtpgw's code. `check` refuses a key that is not Ed25519,
a key file others may read, and anything that is not a PEM private key."""
import os
import subprocess
import tempfile

from harness import Lmtpgw, expect
from test_webhook import CONTENT, SECRET1, backend, deliver, gateway, secret_file
from webhook_receiver import Receiver, ed25519_public_key


def genpkey(dir, name, *args):
    path = os.path.join(dir, name)
    subprocess.run(["openssl", "genpkey", *args, "-out", path], check=True, capture_output=True)
    os.chmod(path, 0o600)
    return path


def ed25519_key(dir, name="ed.pem"):
    return genpkey(dir, name, "-algorithm", "ed25519")


def entries(req):
    return req.headers.get("webhook-signature", "").split()


def test_ed25519_instead_of_hmac():
    """Only ed25519_key_files: one v1a, entry, valid for its public key, not for another."""
    d = tempfile.mkdtemp(prefix="hook-ed-")
    key, other = ed25519_key(d, "k.pem"), ed25519_key(d, "other.pem")
    with Receiver(public_keys=[ed25519_public_key(key)]) as r:
        with gateway(r.url, format="json", ed25519_key_files=[key]) as gw:
            expect(deliver(gw, ["alice@example.test"])[0], 250, "2.0.0")
        req = r.wait_requests(1)[0]
        sigs = entries(req)
        assert len(sigs) == 1 and sigs[0].startswith("v1a,"), sigs
        assert req.ed_signature_ok and req.ed_sig_matches == [0]
        assert req.signature_ok is None        # no HMAC secret known or sent
    with Receiver(public_keys=[ed25519_public_key(other)]) as r:
        with gateway(r.url, ed25519_key_files=[key]) as gw:
            expect(deliver(gw, ["alice@example.test"])[0], 250)
        assert r.wait_requests(1)[0].ed_signature_ok is False


def test_ed25519_beside_hmac():
    d = tempfile.mkdtemp(prefix="hook-ed-")
    key = ed25519_key(d)
    with Receiver(secrets=[SECRET1], public_keys=[ed25519_public_key(key)]) as r:
        with gateway(r.url, format="multipart", secret_files=[secret_file(d, "s", SECRET1)],
                     ed25519_key_files=[key]) as gw:
            for rep in deliver(gw, ["alice@example.test", "bob@example.test"]):
                expect(rep, 250, "2.0.0")
        req = r.wait_requests(1)[0]
        assert [s.split(",")[0] for s in entries(req)] == ["v1", "v1a"], entries(req)
        assert req.signature_ok and req.ed_signature_ok


def test_ed25519_rotation_one_signature_per_key():
    """Two keys: two v1a, entries; a receiver that knows only the old or only the new public key
    verifies the request."""
    d = tempfile.mkdtemp(prefix="hook-ed-")
    old, new = ed25519_key(d, "old.pem"), ed25519_key(d, "new.pem")
    for known in (old, new):
        with Receiver(public_keys=[ed25519_public_key(known)]) as r:
            with gateway(r.url, ed25519_key_files=[old, new]) as gw:
                expect(deliver(gw, ["alice@example.test"])[0], 250)
            req = r.wait_requests(1)[0]
            assert [s[:4] for s in entries(req)] == ["v1a,", "v1a,"], entries(req)
            assert req.ed_signature_ok, (known, entries(req))


def test_ed25519_signs_a_streamed_body():
    """A message above spool_memory_max is streamed from the spool file to curl; the Ed25519
    signature still covers exactly the bytes sent."""
    d = tempfile.mkdtemp(prefix="hook-ed-")
    key = ed25519_key(d)
    content = b"Subject: streamed\r\n\r\n" + (b"z" * 998 + b"\r\n") * 3000
    with Receiver(public_keys=[ed25519_public_key(key)]) as r:
        with gateway(r.url, format="raw", ed25519_key_files=[key],
                     config={"spool_memory_max": "64K"}) as gw:
            expect(deliver(gw, ["alice@example.test"], content=content)[0], 250, "2.0.0")
        req = r.wait_requests(1)[0]
        assert req.body.endswith(content)
        assert req.ed_signature_ok, entries(req)


def test_check_refuses_keys_that_are_not_ed25519():
    d = tempfile.mkdtemp(prefix="hook-ed-")
    good = ed25519_key(d, "good.pem")
    rsa = genpkey(d, "rsa.pem", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048")
    ec = genpkey(d, "ec.pem", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
    loose = ed25519_key(d, "loose.pem")
    os.chmod(loose, 0o644)
    public = os.path.join(d, "public.pem")
    subprocess.run(["openssl", "pkey", "-in", good, "-pubout", "-out", public], check=True)
    os.chmod(public, 0o600)
    garbage = secret_file(d, "garbage", "not a key at all")
    with open(good) as f:
        private_text = f.read()
    cases = [
        ([rsa], "not an Ed25519 key"),
        ([ec], "not an Ed25519 key"),
        ([loose], "chmod 600"),
        ([public], "not a PEM private key"),
        ([garbage], "not a PEM private key"),
        ([os.path.join(d, "missing.pem")], "missing.pem"),
        ([good] * 5, "at most 4"),
    ]
    for files, word in cases:
        gw = Lmtpgw(backends=backend("https://hook.example.test/in", ed25519_key_files=files),
                    routes=[("*@example.test", ["hook"])])
        rc, out, err = gw.run_cli("check")
        assert rc != 0 and word in err, (files, rc, err)
        # the key text is never printed
        assert "PRIVATE KEY" not in out + err and private_text.splitlines()[1] not in out + err
    gw = Lmtpgw(backends=backend("https://hook.example.test/in", ed25519_key_files=[good]),
                routes=[("*@example.test", ["hook"])])
    rc, out, err = gw.run_cli("check")
    assert rc == 0, err
    rc, out, err = gw.run_cli("-n")
    assert "good.pem" in out and private_text.splitlines()[1] not in out + err
