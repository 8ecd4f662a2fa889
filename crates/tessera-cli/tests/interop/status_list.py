"""Checks a token's status the way a verifier written by others would, from
draft-ietf-oauth-status-list (JSON/JWT form), with PyJWT for the signatures and the
standard library's zlib for the list:

    status_list.py ACCESS_TOKEN JWKS_URL   ->  prints `status=N`

The token's `status.status_list` names `idx` and `uri`; the Status List Token at `uri` must be a
`statuslist+jwt` signed by the issuer's key, whose `sub` is that `uri`; `lst` is base64url of a
ZLIB stream of `bits`-wide statuses, least significant bits first.
"""

import base64
import json
import sys
import time
import urllib.request
import zlib

import jwt


def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def key_for(token, jwks):
    head = jwt.get_unverified_header(token)
    k = next(k for k in jwks["keys"] if k["kid"] == head["kid"])
    return head, jwt.PyJWK(k).key


def main():
    token, jwks_url = sys.argv[1], sys.argv[2]
    jwks = json.load(urllib.request.urlopen(jwks_url))
    head, key = key_for(token, jwks)
    claims = jwt.decode(token, key, algorithms=[head["alg"]], options={"verify_aud": False})
    ref = claims["status"]["status_list"]
    idx, uri = ref["idx"], ref["uri"]
    assert isinstance(idx, int) and idx >= 0, ref

    req = urllib.request.Request(uri, headers={"Accept": "application/statuslist+jwt"})
    with urllib.request.urlopen(req) as resp:
        ctype = resp.headers.get("Content-Type")
        body = resp.read().decode()
    assert ctype == "application/statuslist+jwt", ctype
    lhead, lkey = key_for(body, jwks)
    assert lhead["typ"] == "statuslist+jwt", lhead
    lst_claims = jwt.decode(body, lkey, algorithms=[lhead["alg"]], options={"require": ["sub", "iat"]})
    assert lst_claims["sub"] == uri, (lst_claims["sub"], uri)
    if "exp" in lst_claims:
        assert lst_claims["exp"] > time.time()
    sl = lst_claims["status_list"]
    bits = sl["bits"]
    assert bits in (1, 2, 4, 8), bits
    raw = zlib.decompress(b64url(sl["lst"]))
    per_byte = 8 // bits
    byte = raw[idx // per_byte]
    status = (byte >> ((idx % per_byte) * bits)) & ((1 << bits) - 1)
    print(f"status={status}")


main()
