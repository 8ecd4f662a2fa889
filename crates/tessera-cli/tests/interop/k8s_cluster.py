"""Plays the parts of a Kubernetes cluster that a node agent and the authority talk to, for
tests/attestation.rs:

- the cluster's service-account issuer: OIDC discovery and a JWKS over http on loopback, and
  projected service-account tokens signed by PyJWT with its RSA key, in the shape Kubernetes 1.30
  gives them (`kubernetes.io` with namespace, service account, pod and node);
- the kubelet's authenticated port: `GET /pods` over https (a certificate made here with the
  `cryptography` package), a bearer token required, answering with a kubelet pod list kept as a
  fixture (hand-written in the shape of Kubernetes 1.30's, not captured from a live kubelet).
  What it answers is steered by the file WORK/kubelet-mode: `ok`, `garbage`, `unauthorized`;
- the API server's TokenReview (`POST /apis/authentication.k8s.io/v1/tokenreviews`, the same TLS
  server, another bearer token): a token is authenticated unless its name is a line of
  WORK/deleted (its pod deleted, as the API server would then say).

Usage: k8s_cluster.py WORK AUTHORITY_URL FIXTURE. Writes the tokens and the kubelet's CA into
WORK, prints one JSON line (issuer, kubelet URL), then serves until killed.
"""

import datetime
import ipaddress
import json
import os
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

WORK, AUTHORITY, FIXTURE = sys.argv[1], sys.argv[2], sys.argv[3]
KUBELET_TOKEN = "kubelet-bearer-token-for-the-test"
REVIEWER_TOKEN = "token-reviewer-bearer-token-for-the-test"

key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
jwk.update({"kid": "sa-1", "alg": "RS256", "use": "sig"})


class Issuer(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path == "/.well-known/openid-configuration":
            body = {"issuer": ISSUER, "jwks_uri": ISSUER + "/openid/v1/jwks",
                    "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"]}
        elif self.path == "/openid/v1/jwks":
            body = {"keys": [jwk]}
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


issuer_srv = ThreadingHTTPServer(("127.0.0.1", 0), Issuer)
ISSUER = "http://127.0.0.1:%d" % issuer_srv.server_address[1]


def token(ns="tessera", sa="tessera-agent", node="node-a", aud=AUTHORITY, exp_in=3600,
          signer=key, with_node=True):
    now = int(time.time())
    claims = {
        "aud": [aud], "iss": ISSUER, "iat": now, "nbf": now, "exp": now + exp_in,
        "jti": os.urandom(8).hex(),
        "sub": "system:serviceaccount:%s:%s" % (ns, sa),
        "kubernetes.io": {
            "namespace": ns,
            "pod": {"name": "tessera-agent-x7k2p", "uid": "5a6b7c8d-1e2f-4a3b-8c4d-5e6f7a8b9c0d"},
            "serviceaccount": {"name": sa, "uid": "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"},
        },
    }
    if with_node:
        claims["kubernetes.io"]["node"] = {"name": node, "uid": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"}
    return jwt.encode(claims, signer, algorithm="RS256", headers={"kid": "sa-1"})


tokens = {
    "good": token(),
    "node-b": token(node="node-b"),
    "node-c": token(node="node-c"),
    "wrong-audience": token(aud="https://some-other-authority.example"),
    "wrong-account": token(sa="default"),
    "expired": token(exp_in=-120),
    "no-node": token(with_node=False),
    "forged": token(signer=stranger),
}
for name, t in tokens.items():
    with open(os.path.join(WORK, name + ".jwt"), "w") as f:
        f.write(t + "\n")
with open(os.path.join(WORK, "kubelet-token"), "w") as f:
    f.write(KUBELET_TOKEN + "\n")
with open(os.path.join(WORK, "reviewer-token"), "w") as f:
    f.write(REVIEWER_TOKEN + "\n")
with open(os.path.join(WORK, "deleted"), "w") as f:
    f.write("")
NAMES = {t: name for name, t in tokens.items()}
with open(os.path.join(WORK, "kubelet-mode"), "w") as f:
    f.write("ok")

# The kubelet's serving certificate, from a CA made here.
now = datetime.datetime.now(datetime.timezone.utc)
ca_key = ec.generate_private_key(ec.SECP256R1())
ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node-a kubelet CA")])
ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
      .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
      .not_valid_before(now - datetime.timedelta(minutes=5))
      .not_valid_after(now + datetime.timedelta(days=1))
      .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
      .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                   content_commitment=False, key_encipherment=False,
                                   data_encipherment=False, key_agreement=False,
                                   encipher_only=False, decipher_only=False), critical=True)
      .sign(ca_key, hashes.SHA256()))
leaf_key = ec.generate_private_key(ec.SECP256R1())
leaf = (x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node-a")]))
        .issuer_name(ca_name).public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256()))
pem = lambda c: c.public_bytes(serialization.Encoding.PEM)
with open(os.path.join(WORK, "kubelet-ca.pem"), "wb") as f:
    f.write(pem(ca))
with open(os.path.join(WORK, "kubelet.pem"), "wb") as f:
    f.write(pem(leaf))
with open(os.path.join(WORK, "kubelet-key.pem"), "wb") as f:
    f.write(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))

with open(FIXTURE, "rb") as f:
    PODS = f.read()


class Kubelet(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        with open(os.path.join(WORK, "kubelet-mode")) as f:
            mode = f.read().strip()
        authorized = self.headers.get("authorization") == "Bearer " + KUBELET_TOKEN
        if self.path != "/pods":
            status, body = 404, b"404 page not found\n"
        elif not authorized or mode == "unauthorized":
            status, body = 401, b"Unauthorized\n"
        elif mode == "garbage":
            status, body = 200, b"<html>not a pod list</html>"
        else:
            status, body = 200, PODS
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        if self.path != "/apis/authentication.k8s.io/v1/tokenreviews":
            status, body = 404, {}
        elif self.headers.get("authorization") != "Bearer " + REVIEWER_TOKEN:
            status, body = 401, {"kind": "Status", "status": "Failure", "code": 401}
        else:
            t = review["spec"]["token"]
            with open(os.path.join(WORK, "deleted")) as f:
                deleted = f.read().split()
            claims = jwt.decode(t, options={"verify_signature": False})
            status = 201
            if NAMES.get(t) in deleted or t not in NAMES:
                body = {"kind": "TokenReview", "status": {"authenticated": False,
                        "error": "[invalid bearer token, pod not found]"}}
            else:
                body = {"kind": "TokenReview", "status": {
                    "authenticated": True, "audiences": review["spec"].get("audiences", []),
                    "user": {"username": claims["sub"], "groups": ["system:serviceaccounts"],
                             "extra": {"authentication.kubernetes.io/node-name":
                                       [claims["kubernetes.io"]["node"]["name"]]}}}}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


kubelet_srv = ThreadingHTTPServer(("127.0.0.1", 0), Kubelet)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(os.path.join(WORK, "kubelet.pem"), os.path.join(WORK, "kubelet-key.pem"))
kubelet_srv.socket = ctx.wrap_socket(kubelet_srv.socket, server_side=True)

threading.Thread(target=issuer_srv.serve_forever, daemon=True).start()
threading.Thread(target=kubelet_srv.serve_forever, daemon=True).start()
print(json.dumps({"issuer": ISSUER, "kubelet": "https://127.0.0.1:%d" % kubelet_srv.server_address[1]}), flush=True)
threading.Event().wait()
