"""Independent SPIFFE and managed-identity clients against a Tessera agent.

py-spiffe (the SPIFFE project's Python library, on grpc-core) speaks the Workload API;
azure-identity's ManagedIdentityCredential speaks both the App Service and the IMDS protocols.
Usage: spiffe_interop.py unix:///path/to/agent.sock http://127.0.0.1:PORT
Prints one line per check; exits non-zero on the first failure.
"""
import os
import sys

from spiffe import WorkloadApiClient

socket, imds = sys.argv[1], sys.argv[2]

with WorkloadApiClient(socket_path=socket) as c:
    svid = c.fetch_x509_svid()
    print("x509", svid.spiffe_id)
    bundles = c.fetch_x509_bundles()
    print("x509 bundles", " ".join(str(b.trust_domain) for b in bundles.bundles))
    jwt = c.fetch_jwt_svid(audience={"spiffe://example.org/api"})
    print("jwt", jwt.spiffe_id)
    jb = c.fetch_jwt_bundles()
    print("jwt bundles", " ".join(str(b.trust_domain) for b in jb.bundles))
    v = c.validate_jwt_svid(jwt.token, "spiffe://example.org/api")
    print("validated", v.spiffe_id)
    try:
        c.validate_jwt_svid(jwt.token, "spiffe://example.org/not-me")
        print("validate accepted a wrong audience")
        sys.exit(1)
    except Exception:
        print("validate refused a wrong audience")

from azure.identity import ManagedIdentityCredential

os.environ["IDENTITY_ENDPOINT"] = imds + "/msi/token"
os.environ["IDENTITY_HEADER"] = "any-value"
t = ManagedIdentityCredential().get_token("api/.default")
assert t.token.count(".") == 2 and t.expires_on > 0
print("azure app service ok")
del os.environ["IDENTITY_ENDPOINT"]
del os.environ["IDENTITY_HEADER"]
os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = imds
t = ManagedIdentityCredential().get_token("api/.default")
assert t.token.count(".") == 2 and t.expires_on > 0
print("azure imds ok")
