"""Workload identity federation against a running Tessera server, with outside issuers shaped
like GitHub Actions (static JWKS file, RS256, its real claim set) and a Kubernetes cluster
(discovered through OIDC metadata served here, its projected service-account claims), tokens
minted by PyJWT (an independent JOSE implementation) and exchanged over plain HTTP.

Usage: federation_interop.py TESSERA_BIN SERVER_DATA_DIR SERVER_URL WORKDIR
Prints one line per check; exits non-zero at the first failure.
"""
import base64, json, os, subprocess, sys, threading, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

BIN, DATA, URL, WORK = sys.argv[1:5]
TX = "urn:ietf:params:oauth:grant-type:token-exchange"
JB = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TT_JWT = "urn:ietf:params:oauth:token-type:jwt"
TT_AT = "urn:ietf:params:oauth:token-type:access_token"
GH_ISS = "https://token.actions.githubusercontent.com"
AUD = "https://tessera.example.org"


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)
    print(what)


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key, kid, alg="RS256"):
    d = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()) if alg == "RS256"
                   else jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    d.update({"kid": kid, "alg": alg, "use": "sig"})
    return d


# --- A Kubernetes-shaped issuer, discovered over HTTP ---------------------------------------
K8S_KEYS = {"keys": [(rsa_key(), "k8s-1")]}


class Issuer(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        base = f"http://127.0.0.1:{self.server.server_port}"
        if self.path == "/redirect/.well-known/openid-configuration":
            # A redirect to the real document (or anywhere): never followed.
            self.send_response(302)
            self.send_header("location", "/.well-known/openid-configuration")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if self.path == "/huge/.well-known/openid-configuration":
            body = {"issuer": base + "/huge", "jwks_uri": base + "/huge/jwks"}
        elif self.path == "/huge/jwks":
            # 64 MiB with no declared length: the reader must stop counting, not buffer it.
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            try:
                self.wfile.write(b'{"keys": [' + b" " * 1024)
                for _ in range(64 * 1024):
                    self.wfile.write(b" " * 1024)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        elif self.path == "/.well-known/openid-configuration":
            body = {"issuer": base, "jwks_uri": base + "/openid/v1/jwks",
                    "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"]}
        elif self.path == "/openid/v1/jwks":
            body = {"keys": [jwk(k, kid) for k, kid in K8S_KEYS["keys"]]}
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


srv = ThreadingHTTPServer(("127.0.0.1", 0), Issuer)
threading.Thread(target=srv.serve_forever, daemon=True).start()
K8S_ISS = f"http://127.0.0.1:{srv.server_port}"

# --- A GitHub-shaped issuer, by JWKS file -----------------------------------------------------
gh_key = rsa_key()
with open(os.path.join(WORK, "github.jwks.json"), "w") as f:
    json.dump({"keys": [jwk(gh_key, "gh-1")]}, f)

MESH = f'''
[[workload]]
id = "spiffe://example.org/deploy/orders-pipeline"
owner = "team-orders"
purpose = "Deploys orders"
kind = "deployment"

[[workload]]
id = "spiffe://example.org/prod/orders"
owner = "team-orders"
purpose = "Takes orders (in Kubernetes)"
environment = "prod"

[[workload]]
id = "spiffe://example.org/prod/api"
owner = "team-api"
purpose = "The API orders call"
environment = "edge"       # unlike its callers: the delegated token's `environment` is the caller's
aliases = ["api"]
scopes = ["orders:read", "orders:write"]

[[workload]]
id = "spiffe://example.org/prod/db"
owner = "team-db"
purpose = "Storage the API calls on the caller's behalf"
environment = "prod"
aliases = ["db"]
scopes = ["orders:read", "orders:write"]

[[workload]]
id = "spiffe://example.org/prod/ledger"
owner = "team-db"
purpose = "Second hop"
environment = "prod"
aliases = ["ledger"]
scopes = ["orders:read"]

[[workload]]
id = "spiffe://example.org/prod/vault"
owner = "team-sec"
purpose = "Refuses delegated tokens by policy"
environment = "prod"
aliases = ["vault"]
scopes = ["orders:read"]

[[workload]]
id = "spiffe://example.org/deploy/registry"
owner = "team-orders"
purpose = "Where the pipeline pushes"
kind = "deployment"
aliases = ["registry"]
scopes = ["push"]

[[grant]]
from = "spiffe://example.org/deploy/orders-pipeline"
to = "spiffe://example.org/deploy/registry"
scopes = ["push"]
why = "The pipeline pushes images"

[[grant]]
from = "spiffe://example.org/deploy/orders-pipeline"
to = "spiffe://example.org/prod/api"
scopes = ["orders:read"]
why = "A mistake: the policy below keeps deployment identities from run-time services anyway"

[[grant]]
from = "spiffe://example.org/prod/orders"
to = "spiffe://example.org/prod/api"
scopes = ["orders:read", "orders:write"]
why = "Orders calls the API"

[[grant]]
from = "spiffe://example.org/prod/api"
to = "spiffe://example.org/prod/db"
scopes = ["orders:read"]
why = "The API reads orders on the caller's behalf"

[[grant]]
from = "spiffe://example.org/prod/db"
to = "spiffe://example.org/prod/ledger"
scopes = ["orders:read"]
why = "Second hop"

[[grant]]
from = "spiffe://example.org/prod/api"
to = "spiffe://example.org/prod/vault"
scopes = ["orders:read"]
why = "Direct calls only; delegation is refused by policy"

[[client]]
id = "api"
workload = "spiffe://example.org/prod/api"
auth = "client_secret"

[[client]]
id = "db"
workload = "spiffe://example.org/prod/db"
auth = "client_secret"

[[trust]]
name = "github-actions"
issuer = "{GH_ISS}"
jwks_file = "github.jwks.json"
audience = "{AUD}"
max_age = "15m"
single_use = true

[[trust.map]]
claims = {{ repository_id = "690123456", repository_owner_id = "12345678", ref = "refs/heads/*", environment = "production" }}
workload = "spiffe://example.org/deploy/orders-pipeline"

[[trust]]
name = "prod-cluster"
issuer = "{K8S_ISS}"
audience = "tessera"
# The test issuer runs on loopback: a private address needs the trust's opt-in.
private_network = true

[[trust.map]]
claims = {{ "kubernetes.io" = {{ namespace = "orders", serviceaccount = {{ name = "orders" }} }} }}
workload = "spiffe://example.org/prod/orders"

[[trust]]
name = "gone-cluster"
issuer = "http://127.0.0.1:9"
audience = "tessera"
private_network = true

[[trust.map]]
claims = {{ sub = "system:serviceaccount:*" }}
workload = "spiffe://example.org/prod/orders"

# The same issuer, without the opt-in: its private address is refused.
[[trust]]
name = "sneaky"
issuer = "{K8S_ISS}/sneaky"
audience = "tessera"

[[trust.map]]
claims = {{ sub = "system:serviceaccount:*" }}
workload = "spiffe://example.org/prod/orders"

[[trust]]
name = "redirecting"
issuer = "{K8S_ISS}/redirect"
audience = "tessera"
private_network = true

[[trust.map]]
claims = {{ sub = "system:serviceaccount:*" }}
workload = "spiffe://example.org/prod/orders"

[[trust]]
name = "huge"
issuer = "{K8S_ISS}/huge"
audience = "tessera"
private_network = true

[[trust.map]]
claims = {{ sub = "system:serviceaccount:*" }}
workload = "spiffe://example.org/prod/orders"

[policies]
files = ["no-delegation-to-vault.cedar", "deployment-apart.cedar"]
'''
with open(os.path.join(WORK, "mesh.toml"), "w") as f:
    f.write(MESH)
with open(os.path.join(WORK, "no-delegation-to-vault.cedar"), "w") as f:
    f.write('forbid (principal, action, resource == Service::"spiffe://example.org/prod/vault")\n'
            'when { context.delegated };\n')
with open(os.path.join(WORK, "deployment-apart.cedar"), "w") as f:
    f.write('// Deployment identities (CI) never call run-time services, whatever a grant says.\n'
            'forbid (principal, action, resource)\n'
            'when { principal.kind == "deployment" && resource.kind == "runtime" };\n')
out = subprocess.run([BIN, "apply", "-f", os.path.join(WORK, "mesh.toml"), "--data", DATA],
                     capture_output=True, text=True)
check(out.returncode == 0, "identity file with three trusts applied" + ("" if out.returncode == 0 else ": " + out.stderr))


def secret(client):
    o = subprocess.run([BIN, "client", "secret", client, "--data", DATA], capture_output=True, text=True)
    return o.stdout.splitlines()[0]


now = int(time.time())


def gh_claims(**over):
    c = {  # the claim set GitHub Actions issues (docs.github.com, "About security hardening with OIDC")
        "jti": str(uuid.uuid4()), "sub": "repo:acme/orders:environment:production",
        "environment": "production", "aud": AUD, "ref": "refs/heads/main", "sha": "a" * 40,
        "repository": "acme/orders", "repository_owner": "acme", "actor_id": "4242",
        "repository_visibility": "private", "repository_id": "690123456",
        "repository_owner_id": "12345678", "run_id": "9876543210", "run_number": "42",
        "run_attempt": "1", "runner_environment": "github-hosted", "actor": "octocat",
        "workflow": "deploy", "head_ref": "", "base_ref": "", "event_name": "push",
        "ref_type": "branch", "workflow_ref": "acme/orders/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_ref": "acme/orders/.github/workflows/deploy.yml@refs/heads/main",
        "iss": GH_ISS, "nbf": now - 5, "exp": now + 300, "iat": now - 5,
    }
    c.update(over)
    return c


def k8s_claims(**over):
    c = {  # a projected service-account token (kubernetes.io/docs, "Service account tokens")
        "aud": ["tessera"], "exp": now + 3600, "iat": now - 5, "nbf": now - 5, "iss": K8S_ISS,
        "jti": str(uuid.uuid4()),
        "kubernetes.io": {"namespace": "orders",
                          "node": {"name": "node-1", "uid": str(uuid.uuid4())},
                          "pod": {"name": "orders-7d9c", "uid": str(uuid.uuid4())},
                          "serviceaccount": {"name": "orders", "uid": str(uuid.uuid4())}},
        "sub": "system:serviceaccount:orders:orders",
    }
    c.update(over)
    return c


def gh(claims=None, key=None, kid="gh-1", alg="RS256", headers=None):
    h = {"kid": kid}
    h.update(headers or {})
    return jwt.encode(claims or gh_claims(), key or gh_key, algorithm=alg, headers=h)


def k8s(claims=None, n=0):
    key, kid = K8S_KEYS["keys"][n]
    return jwt.encode(claims or k8s_claims(), key, algorithm="RS256", headers={"kid": kid})


def exchange(token, target, scope=None, tt=TT_JWT, extra=None, auth=None):
    form = {"grant_type": TX, "subject_token": token, "subject_token_type": tt, "audience": target,
            "requested_token_type": TT_AT}
    if scope:
        form["scope"] = scope
    form.update(extra or {})
    return requests.post(URL + "/token", data=form, auth=auth, timeout=10)


jwks = requests.get(URL + "/jwks", timeout=5).json()


def ours(token, aud):
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(jwt.algorithms.ECAlgorithm.from_jwk(json.dumps(k)) for k in jwks["keys"] if k["kid"] == kid)
    return jwt.decode(token, key, algorithms=["ES256"], audience=aud, issuer=URL)


# 1. GitHub Actions -> the deployment identity, RFC 8693.
tok = gh()
r = exchange(tok, "registry", "push")
check(r.status_code == 200, f"github-actions token exchanged: {r.status_code} {r.text[:200]}")
body = r.json()
check(body["issued_token_type"] == TT_AT and body["token_type"] == "Bearer", "RFC 8693 response fields")
c = ours(body["access_token"], "spiffe://example.org/deploy/registry")
check(c["sub"] == "spiffe://example.org/deploy/orders-pipeline" and c["scope"] == "push",
      "mapped to the deployment workload, verified with PyJWT")
r = exchange(tok, "registry")
check(r.status_code == 400 and r.json()["error"] == "invalid_grant" and "already exchanged" in r.json()["error_description"],
      "single-use trust refuses a second exchange of the same token")
# The deployment identity gets nothing from run-time services it has no grant for.
r = exchange(gh(), "api", "orders:read")
check(r.status_code == 400 and r.json()["error"] == "invalid_target" and "deployment-apart.cedar" in r.json()["error_description"],
      f"deployment identity kept from run-time services by policy despite a grant: {r.json().get('error_description', '')[:160]}")

# 2. Kubernetes -> the run-time identity, RFC 7523 jwt-bearer, keys discovered.
r = requests.post(URL + "/token", data={"grant_type": JB, "assertion": k8s(), "audience": "api"}, timeout=10)
check(r.status_code == 200, f"kubernetes token via jwt-bearer: {r.status_code} {r.text[:200]}")
orders_token = r.json()["access_token"]
c = ours(orders_token, "spiffe://example.org/prod/api")
check(c["sub"] == "spiffe://example.org/prod/orders" and c["scope"] == "orders:read orders:write",
      "kubernetes service account mapped through nested claims")
check(exchange(k8s(), "api", tt="urn:ietf:params:oauth:token-type:id_token").status_code == 200,
      "id_token subject type accepted")

# 3. Refusals, each with a specific reason.
rogue = rsa_key()


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def hs256_with_public_key():
    # The classic confusion attack: HMAC keyed with the issuer's public key (PEM), built by hand
    # because PyJWT refuses to make it.
    import hashlib, hmac
    pem = gh_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    head = b64(json.dumps({"alg": "HS256", "kid": "gh-1", "typ": "JWT"}).encode()) + "." + b64(json.dumps(gh_claims()).encode())
    return head + "." + b64(hmac.new(pem, head.encode(), hashlib.sha256).digest())
unsigned = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": "gh-1"}).encode()).rstrip(b"=").decode() + "." + \
    base64.urlsafe_b64encode(json.dumps(gh_claims()).encode()).rstrip(b"=").decode() + "."
cases = [
    ("unknown issuer", gh(gh_claims(iss="https://evil.example.com")), "no trust for issuer"),
    ("wrong audience", gh(gh_claims(aud="https://other.example.org")), "not for this authority"),
    ("expired", gh(gh_claims(exp=now - 120, iat=now - 400, nbf=now - 400)), "expired"),
    ("not yet valid", gh(gh_claims(nbf=now + 600, iat=now)), "not valid yet"),
    ("too old for max_age", gh(gh_claims(iat=now - 3600, nbf=now - 3600, exp=now + 300)), "older than"),
    ("no exp", gh({k: v for k, v in gh_claims().items() if k != "exp"}), "exp"),
    ("rogue key under a known kid", gh(key=rogue), "does not verify"),
    ("alg none", unsigned, "not accepted"),
    ("HS256 keyed with the public key", hs256_with_public_key(), "not accepted"),
    ("no mapping rule", gh(gh_claims(repository_id="1")), "no mapping rule"),
    ("branch outside the glob", gh(gh_claims(ref="refs/tags/v1")), "no mapping rule"),
    ("not a JWT", "definitely-not-a-jwt", "not an acceptable JWT"),
    ("oversized", gh(gh_claims(padding="x" * 20000)), "not an acceptable JWT"),
    ("unreachable discovery", jwt.encode(k8s_claims(iss="http://127.0.0.1:9"), K8S_KEYS["keys"][0][0], algorithm="RS256", headers={"kid": "k8s-1"}), "unreachable"),
    ("an issuer on a private address without the opt-in", k8s(k8s_claims(iss=K8S_ISS + "/sneaky")), "private address"),
    ("a redirecting discovery document", k8s(k8s_claims(iss=K8S_ISS + "/redirect")), "HTTP 302"),
    ("a 64 MiB JWKS", k8s(k8s_claims(iss=K8S_ISS + "/huge")), "larger than 1024 KiB"),
]
for name, token, why in cases:
    r = exchange(token, "registry")
    ok = r.status_code == 400 and r.json().get("error") == "invalid_grant" and why in r.json().get("error_description", "")
    check(ok, f"refused {name}: {r.json().get('error')}: {r.json().get('error_description', '')[:120]}")
r = requests.post(URL + "/token", data={"grant_type": TX, "subject_token": gh(), "audience": "registry"}, timeout=10)
check(r.status_code == 400 and r.json()["error"] == "invalid_request", "missing subject_token_type is invalid_request")

# 4. Key rotation at the outside issuer, picked up without a restart.
K8S_KEYS["keys"] = [(rsa_key(), "k8s-2")]
# An unknown kid refetches the issuer's keys, at most once per 10 s (the verifier's rule).
deadline = time.time() + 15
while True:
    r = exchange(k8s(), "api")
    if r.status_code == 200 or time.time() > deadline:
        break
    time.sleep(0.5)
check(r.status_code == 200, f"rotated kubernetes key picked up without a restart: {r.status_code} {r.text[:160]}")
r = exchange(jwt.encode(k8s_claims(), rogue, algorithm="RS256", headers={"kid": "k8s-1"}), "api")
check(r.status_code == 400, "the withdrawn kid is refused")

# 5. Delegation: api passes orders' token on to db, then db to ledger.
api_secret, db_secret = secret("api"), secret("db")
r = exchange(orders_token, "db", "orders:read", tt=TT_AT, auth=("api", api_secret))
check(r.status_code == 200, f"api exchanged orders' token for db: {r.status_code} {r.text[:200]}")
d1 = r.json()["access_token"]
c1 = ours(d1, "spiffe://example.org/prod/db")
orig = ours(orders_token, "spiffe://example.org/prod/api")
check(c1.get("environment") == "prod", "the environment claim describes the subject")
check(c1["sub"] == "spiffe://example.org/prod/orders" and c1["act"] == {"sub": "spiffe://example.org/prod/api"}
      and c1["scope"] == "orders:read" and c1["exp"] <= orig["exp"],
      "delegated token: sub is the caller, act names the actor, scope narrowed, no longer-lived")
r = exchange(d1, "ledger", tt=TT_AT, auth=("db", db_secret))
check(r.status_code == 200, f"second hop: {r.status_code} {r.text[:200]}")
c2 = ours(r.json()["access_token"], "spiffe://example.org/prod/ledger")
check(c2["act"] == {"sub": "spiffe://example.org/prod/db", "act": {"sub": "spiffe://example.org/prod/api"}},
      "act chain nests both actors")
r = exchange(orders_token, "db", "orders:write", tt=TT_AT, auth=("api", api_secret))
check(r.status_code == 400 and r.json()["error"] == "invalid_scope", "delegation cannot widen scopes")
r = exchange(orders_token, "db", tt=TT_AT, auth=("db", db_secret))
check(r.status_code == 400 and "not to the actor" in r.json()["error_description"], "only the token's audience may pass it on")
r = exchange(orders_token, "vault", tt=TT_AT, auth=("api", api_secret))
check(r.status_code == 400 and r.json()["error"] == "invalid_target", "a policy refuses delegation to vault")
r = requests.post(URL + "/token", data={"grant_type": "client_credentials", "audience": "vault"}, auth=("api", api_secret), timeout=10)
check(r.status_code == 200, "while direct calls to vault stay allowed")
r = exchange(orders_token, "db", tt=TT_AT)
check(r.status_code == 400 and r.json()["error"] == "invalid_request", "delegation without the actor's credential")
# Without `scope`, the default is the original's scopes the actor may use on the target; none in
# common is a refusal, never the actor's full grant.
r = requests.post(URL + "/token", data={"grant_type": "client_credentials", "audience": "api", "scope": "orders:write"},
                  auth=("api", api_secret), timeout=10)
check(r.status_code == 400, "api has no grant to itself (setup)")
narrow = requests.post(URL + "/token", data={"grant_type": JB, "assertion": k8s(), "audience": "api", "scope": "orders:write"}, timeout=10)
check(narrow.status_code == 200, "orders gets an orders:write-only token for api")
r = exchange(narrow.json()["access_token"], "db", tt=TT_AT, auth=("api", api_secret))
check(r.status_code == 400 and r.json()["error"] == "invalid_scope", "delegation with no scope in common is refused, not widened")

# 6. The CLI explains which rule matches.
o = subprocess.run([BIN, "federation", "test", "--trust", "github-actions", gh(), "--data", DATA], capture_output=True, text=True)
check(o.returncode == 0 and "orders-pipeline" in o.stdout, "federation test shows the matching rule")
o = subprocess.run([BIN, "federation", "test", "--trust", "github-actions", gh(gh_claims(repository_id="1")), "--data", DATA], capture_output=True, text=True)
check(o.returncode == 1 and "no mapping rule" in o.stdout + o.stderr, "federation test says why none matches")
o = subprocess.run([BIN, "describe", "trust", "prod-cluster", "--data", DATA], capture_output=True, text=True)
check(o.returncode == 0 and "k8s-2" in o.stdout, "describe trust shows the discovered keys")
print("all federation checks passed")
