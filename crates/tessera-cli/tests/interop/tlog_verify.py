"""An inclusion proof from Tessera's audit log, checked by code written here from the specs
(RFC 9162 §2.1.1 and §2.1.3.2, C2SP signed-note and tlog-checkpoint), with the `cryptography`
package for Ed25519 only. Nothing of Tessera's is imported.

usage: tlog_verify.py PROOF_URL VKEY TOKEN
Prints `included seq=<n> size=<size>` and exits 0, or names what failed and exits 1.
"""
import base64
import hashlib
import json
import sys

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def fail(why):
    print(why)
    sys.exit(1)


def parse_vkey(vkey):
    name, key_id, key = vkey.strip().split("+", 2)
    raw = base64.b64decode(key)
    if raw[0] != 0x01 or len(raw) != 33:
        fail("not an Ed25519 note key")
    # The key ID is the first four bytes of SHA-256(name || "\n" || type || key).
    if hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() != key_id:
        fail("the verifier key's ID does not match its key")
    return name, bytes.fromhex(key_id), Ed25519PublicKey.from_public_bytes(raw[1:])


def open_checkpoint(note, vkey):
    name, key_id, public = parse_vkey(vkey)
    text, _, sigs = note.rpartition("\n\n")
    text += "\n"
    ok = False
    for line in sigs.strip("\n").split("\n"):
        if not line.startswith("\u2014 "):
            fail("malformed signature line")
        who, b64 = line[2:].split(" ", 1)
        raw = base64.b64decode(b64)
        if who == name and raw[:4] == key_id:
            public.verify(raw[4:], text.encode())  # raises on a bad signature
            ok = True
    if not ok:
        fail("the checkpoint is not signed by the log key")
    origin, size, root = text.split("\n")[:3]
    if origin != name:
        fail("the checkpoint's origin is not the key's name")
    return int(size), base64.b64decode(root)


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(leaf_hash, index, size, proof, root):
    # RFC 9162 §2.1.3.2, step by step.
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def main():
    proof_url, vkey, token = sys.argv[1:4]
    p = requests.get(proof_url, timeout=10).json()
    size, root = open_checkpoint(p["checkpoint"], vkey)
    if size != p["tree_size"]:
        fail("the proof's size is not the checkpoint's")
    leaf = base64.b64decode(p["leaf"])
    seq, _at, kind, _actor, _subject, outcome, detail = json.loads(leaf)
    detail = json.loads(detail)
    if kind != "token.issued" or outcome != "ok":
        fail(f"the leaf is a {kind} record")
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    if detail["jti"] != claims["jti"]:
        fail("the leaf is another token's record")
    digest = base64.urlsafe_b64encode(hashlib.sha256(token.encode()).digest()).rstrip(b"=").decode()
    if detail["digest"] != digest:
        fail("the leaf's digest is not this token's")
    if "access_token" in leaf.decode() or token in leaf.decode():
        fail("the log holds the token itself")
    if seq - 1 != p["leaf_index"]:
        fail("the record is not at its index")
    proof = [base64.b64decode(h) for h in p["proof"]]
    leaf_hash = hashlib.sha256(b"\x00" + leaf).digest()
    if not verify_inclusion(leaf_hash, p["leaf_index"], size, proof, root):
        fail("the inclusion proof does not verify")
    # The same proof with one hash flipped must not verify: the check above can fail.
    if proof:
        bad = [bytes([proof[0][0] ^ 1]) + proof[0][1:]] + proof[1:]
        if verify_inclusion(leaf_hash, p["leaf_index"], size, bad, root):
            fail("a tampered proof verified")
    print(f"included seq={seq} size={size}")


main()
