"""Interop checks against a running Tessera server with independent implementations:
authlib (OAuth 2.0 client, RFC 7523 private_key_jwt, RFC 7009), joserfc and PyJWT (JOSE).

  python3 oauth_interop.py keygen DIR
  python3 oauth_interop.py run BASE_URL CLIENT_SECRET DIR
"""
import json
import sys
import time
import uuid

import jwt as pyjwt
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.integrations.base_client.errors import OAuthError
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, KeySet

AUD = "spiffe://example.org/prod/inventory-api"
SUB = "spiffe://example.org/prod/order-processor"
passed, failed = 0, 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


def keygen(out):
    key = ECKey.generate_key("P-256", parameters={"use": "sig", "alg": "ES256"})
    kid = key.thumbprint()
    private = key.as_dict(private=True)
    private["kid"] = kid
    public = key.as_dict(private=False)
    public["kid"] = kid
    with open(f"{out}/client.jwk.json", "w") as f:
        json.dump(private, f)
    with open(f"{out}/client.jwks.json", "w") as f:
        json.dump({"keys": [public]}, f)


def verify_with_joserfc(token, jwks, issuer):
    keys = KeySet.import_key_set(jwks)
    tok = jose_jwt.decode(token, keys, algorithms=["ES256"])
    reg = jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": AUD},
        sub={"essential": True, "value": SUB},
        exp={"essential": True},
        jti={"essential": True},
    )
    reg.validate(tok.claims)
    return tok


def run(base, secret, d):
    meta = requests.get(f"{base}/.well-known/oauth-authorization-server").json()
    token_url = meta["token_endpoint"]
    jwks = requests.get(meta["jwks_uri"]).json()
    check("discovery names every endpoint", all(k in meta for k in [
        "issuer", "token_endpoint", "jwks_uri", "introspection_endpoint", "revocation_endpoint",
        "grant_types_supported", "token_endpoint_auth_methods_supported"]))

    # client_secret_basic with authlib
    s = OAuth2Session("orders", secret, token_endpoint_auth_method="client_secret_basic")
    tok = s.fetch_token(token_url, grant_type="client_credentials", resource="inventory-api", scope="inventory:read")
    at = tok["access_token"]
    check("authlib client_secret_basic gets a token", tok.get("token_type") == "Bearer" and tok.get("scope") == "inventory:read", tok)

    # The token verified by two independent JOSE libraries.
    t = verify_with_joserfc(at, jwks, meta["issuer"])
    check("joserfc verifies it (ES256, iss, aud, sub, exp, jti)", t.header.get("typ") == "at+jwt" and t.claims["client_id"] == "orders", t.header)
    signing_key = pyjwt.PyJWKClient(meta["jwks_uri"]).get_signing_key_from_jwt(at)
    claims = pyjwt.decode(at, signing_key.key, algorithms=["ES256"], audience=AUD, issuer=meta["issuer"],
                          options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]})
    check("PyJWT verifies it with the JWKS", claims["scope"] == "inventory:read")
    check("kid is the RFC 7638 thumbprint", pyjwt.get_unverified_header(at)["kid"] ==
          ECKey.import_key(next(k for k in jwks["keys"] if k["kid"] == pyjwt.get_unverified_header(at)["kid"])).thumbprint())
    try:
        pyjwt.decode(at, signing_key.key, algorithms=["ES256"], audience="spiffe://example.org/prod/payments-api", issuer=meta["issuer"])
        check("PyJWT refuses the wrong audience", False)
    except pyjwt.InvalidAudienceError:
        check("PyJWT refuses the wrong audience", True)

    # client_secret_post with authlib
    s2 = OAuth2Session("orders", secret, token_endpoint_auth_method="client_secret_post")
    tok2 = s2.fetch_token(token_url, grant_type="client_credentials", audience=AUD)
    check("authlib client_secret_post gets a token", "access_token" in tok2)

    # RFC 6749 errors parsed by authlib
    try:
        s.fetch_token(token_url, grant_type="client_credentials", resource="spiffe://example.org/prod/payments-api")
        check("authlib sees invalid_target for a target without a grant", False)
    except OAuthError as e:
        check("authlib sees invalid_target for a target without a grant", e.error == "invalid_target", e.description)
    try:
        OAuth2Session("orders", "tsk_wrong").fetch_token(token_url, grant_type="client_credentials", resource="inventory-api")
        check("authlib sees invalid_client for a wrong secret", False)
    except OAuthError as e:
        check("authlib sees invalid_client for a wrong secret", e.error == "invalid_client")

    # private_key_jwt (RFC 7523) with authlib signing the assertion
    private = json.load(open(f"{d}/client.jwk.json"))
    # authlib signs assertions valid for an hour by default; Tessera takes at most 5 minutes
    # (RFC 7523 leaves the bound to the server), so the client asks for a short one.
    auth = PrivateKeyJWT(token_url, alg="ES256", headers={"kid": private["kid"]}, claims={"exp": int(time.time()) + 120})
    s3 = OAuth2Session("batch", ECKey.import_key(private), token_endpoint_auth_method=auth)
    tok3 = s3.fetch_token(token_url, grant_type="client_credentials", resource="inventory-api")
    t3 = verify_with_joserfc(tok3["access_token"], jwks, meta["issuer"])
    check("authlib private_key_jwt gets a token", t3.claims["client_id"] == "batch")

    # authlib as it comes: its assertions name no `kid` (RFC 7523 does not require one).
    no_kid = {k: v for k, v in private.items() if k != "kid"}
    auth = PrivateKeyJWT(token_url, alg="ES256", claims={"exp": int(time.time()) + 120})
    s4 = OAuth2Session("batch", ECKey.import_key(no_kid), token_endpoint_auth_method=auth)
    tok4 = s4.fetch_token(token_url, grant_type="client_credentials", resource="inventory-api")
    check("authlib private_key_jwt without a kid gets a token", verify_with_joserfc(tok4["access_token"], jwks, meta["issuer"]).claims["client_id"] == "batch")
    stranger = ECKey.generate_key("P-256", private=True)
    now = int(time.time())
    forged = jose_jwt.encode({"alg": "ES256"},
                             {"iss": "batch", "sub": "batch", "aud": token_url, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())},
                             stranger)
    r = requests.post(token_url, data={"grant_type": "client_credentials", "resource": "inventory-api",
                                       "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                                       "client_assertion": forged})
    check("an assertion without a kid from another key is refused", r.status_code == 401 and r.json()["error"] == "invalid_client", r.text)

    # An assertion made by joserfc, used twice: the second use is a replay.
    now = int(time.time())
    assertion = jose_jwt.encode({"alg": "ES256", "kid": private["kid"]},
                                {"iss": "batch", "sub": "batch", "aud": token_url, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())},
                                ECKey.import_key(private))
    form = {"grant_type": "client_credentials", "resource": "inventory-api",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer", "client_assertion": assertion}
    r1 = requests.post(token_url, data=form)
    r2 = requests.post(token_url, data=form)
    check("a joserfc assertion is accepted once", r1.status_code == 200, r1.text)
    check("and refused when replayed", r2.status_code == 401 and r2.json()["error"] == "invalid_client", r2.text)
    far = jose_jwt.encode({"alg": "ES256", "kid": private["kid"]},
                          {"iss": "batch", "sub": "batch", "aud": token_url, "exp": now + 3600, "jti": str(uuid.uuid4())},
                          ECKey.import_key(private))
    r = requests.post(token_url, data={**form, "client_assertion": far})
    check("an assertion living longer than 5 minutes is refused", r.status_code == 401, r.text)
    none_alg = pyjwt.encode({"iss": "batch", "sub": "batch", "aud": token_url, "exp": now + 60, "jti": str(uuid.uuid4())}, None, algorithm="none")
    r = requests.post(token_url, data={**form, "client_assertion": none_alg})
    check("an alg=none assertion is refused", r.status_code == 401, r.text)

    # Introspection (RFC 7662) by the audience's client, and revocation (RFC 7009) via authlib.
    intro = requests.post(meta["introspection_endpoint"], data={"token": at}, auth=("inventory", sys.argv[5])).json()
    check("introspection says active with the claims", intro.get("active") is True and intro.get("sub") == SUB, intro)
    resp = s.revoke_token(meta["revocation_endpoint"], token=at)
    check("authlib revokes the token", resp.status_code == 200, resp.text)
    intro = requests.post(meta["introspection_endpoint"], data={"token": at}, auth=("inventory", sys.argv[5])).json()
    check("introspection then says inactive, and nothing more", intro == {"active": False}, intro)

    print(f"interop: {passed} passed, {failed} failed")
    sys.exit(0 if failed == 0 else 1)


if __name__ == "__main__":
    if sys.argv[1] == "keygen":
        keygen(sys.argv[2])
    else:
        run(sys.argv[2], sys.argv[3], sys.argv[4])  # argv[5]: the inventory client secret
