"""py-spiffe against a Tessera agent whose workload federates with another authority.

Usage: spiffe_federation.py unix:///agent.sock FEDERATED_TD LOCAL_TD PEER_CHAIN.pem PEER_JWT AUDIENCE
Reads the federated bundle from the Workload API (X.509 context, X.509 bundles, JWT bundles),
validates the other authority's X.509-SVID chain with it (cryptography's verifier, not ours),
checks that the local bundle does not validate it, and has the agent validate the other side's
JWT-SVID. Prints one line per check; exits non-zero on the first failure.
"""
import sys

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from spiffe import WorkloadApiClient

socket, federated, local, chain_file, peer_jwt, audience = sys.argv[1:7]

with open(chain_file, "rb") as f:
    chain = x509.load_pem_x509_certificates(f.read())
leaf, intermediates = chain[0], chain[1:]


def verify(authorities):
    verifier = PolicyBuilder().store(Store(authorities)).build_client_verifier()
    return verifier.verify(leaf, intermediates)


with WorkloadApiClient(socket_path=socket) as c:
    ctx = c.fetch_x509_context()
    tds = sorted(str(b.trust_domain) for b in ctx.x509_bundle_set.bundles)
    print("x509 context bundles", " ".join(tds))
    assert federated in tds and local in tds, tds
    bundles = c.fetch_x509_bundles()
    fed = [b for b in bundles.bundles if str(b.trust_domain) == federated]
    own = [b for b in bundles.bundles if str(b.trust_domain) == local]
    assert fed and own, [str(b.trust_domain) for b in bundles.bundles]
    verified = verify(list(fed[0].x509_authorities))
    sans = verified.subjects
    print("peer svid validated with the federated bundle:", sans[0].value if sans else "-")
    try:
        verify(list(own[0].x509_authorities))
        print("the local bundle validated another trust domain's SVID")
        sys.exit(1)
    except VerificationError:
        print("the local bundle does not validate it")
    jb = c.fetch_jwt_bundles()
    jtds = sorted(str(b.trust_domain) for b in jb.bundles)
    print("jwt bundles", " ".join(jtds))
    assert federated in jtds, jtds
    v = c.validate_jwt_svid(peer_jwt, audience)
    print("peer jwt-svid validated:", v.spiffe_id)
    assert str(v.spiffe_id).startswith("spiffe://" + federated + "/"), v.spiffe_id
