#!/usr/bin/env python3
"""
sigv4_botocore - random S3 requests signed by botocore's S3SigV4Auth, one JSON line each, for
tests/unit/test_sigv4.c to sign again with our signer and compare (an independent oracle).

    sigv4_botocore.py COUNT SEED

Each line: {"method", "path" (raw), "query" [[name, value]...] (raw), "headers" [[name, value]...]
(exactly the headers botocore signed, host and x-amz-date included), "payload_hash", "amz_date",
"region", "access_key", "secret_key", "token", "authorization"}.
Exit status 77 when botocore is not importable (the C test then skips).

Query names are drawn so that none is a prefix of another: botocore sorts "k=v" pairs as
tuples, which agrees with the AWS rule (by name, then value) in every other case.
"""
import hashlib
import json
import random
import sys
from urllib.parse import quote

try:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
except ImportError:
    sys.exit(77)

PATH_CHARS = "abcXYZ019-._~ !$&'()*+,;=:@%/" + "\u00e9\u1234"
VALUE_CHARS = "abcXYZ019-._~ !$&'()*+,;=:@%/?#[]" + "\u00e9"
QUERY_NAMES = ["uploads", "uploadId", "partNumber", "versionId", "tagging", "x-id", "Zeta",
               "acl", "b%c", "d e"]
HEADER_NAMES = ["Content-Type", "Content-Length", "x-amz-meta-sender", "X-Amz-Storage-Class",
                "x-amz-checksum-sha256", "If-None-Match", "x-amz-object-lock-mode",
                "x-amz-tagging", "Content-MD5", "x-amz-meta-rcpt-count"]


def rand_text(rng, chars, lo, hi):
    return "".join(rng.choice(chars) for _ in range(rng.randint(lo, hi)))


def one(rng):
    method = rng.choice(["PUT", "POST", "GET", "DELETE", "HEAD"])
    path = "/" + rand_text(rng, PATH_CHARS, 0, 40)
    query = []
    for name in rng.sample(QUERY_NAMES, rng.randint(0, 4)):
        value = "" if rng.random() < 0.3 else rand_text(rng, VALUE_CHARS, 1, 20)
        query.append((name, value))
    headers = {}
    for name in rng.sample(HEADER_NAMES, rng.randint(0, 6)):
        v = rand_text(rng, "abc XYZ019-=/+", 1, 30)
        if rng.random() < 0.3:
            v = "  " + v + "   "
        headers[name] = v
    body = rand_text(rng, "abcdef\r\n", 0, 200).encode()
    region = rng.choice(["us-east-1", "eu-west-3", "garage", "auto"])
    access = "AK" + rand_text(rng, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 10, 18)
    secret = rand_text(rng, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/+", 40, 40)
    token = rand_text(rng, "abcdefABCDEF0123456789/+=", 20, 80) if rng.random() < 0.4 else None
    port = rng.choice(["", ":9000", ":8443"])
    # S3SigV4Auth signs the URL's path as it is: botocore's serializer has encoded the key
    # with quote(key, safe="/~") before, so do that here.
    url = "http://s3.example.test" + port + quote(path, safe="/~")
    req = AWSRequest(method=method, url=url, headers=headers, data=body,
                     params=dict(query) if query else None)
    S3SigV4Auth(Credentials(access, secret, token), "s3", region).add_auth(req)
    signed = []
    for k, v in req.headers.items():
        if k.lower() in ("authorization", "user-agent", "expect", "x-amzn-trace-id"):
            continue
        signed.append([k, v])
    if not any(k.lower() == "host" for k, _ in signed):
        signed.append(["host", "s3.example.test" + port])
    return {
        "method": method, "path": path, "query": [list(q) for q in query], "headers": signed,
        "payload_hash": hashlib.sha256(body).hexdigest(),
        "amz_date": req.headers["X-Amz-Date"], "region": region, "access_key": access,
        "secret_key": secret, "token": token or "", "authorization": req.headers["Authorization"],
    }


def main():
    count, seed = int(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    for _ in range(count):
        print(json.dumps(one(rng)))


if __name__ == "__main__":
    main()
