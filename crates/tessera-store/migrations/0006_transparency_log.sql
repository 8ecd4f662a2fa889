-- The transparency log over the audit records (RFC 9162): the Merkle tree in C2SP tiles (256
-- hashes of one level per row, base64), and the signed checkpoints. Records keep their
-- sequence numbers and the keyed chain; existing records become the tree's first leaves the
-- first time a server extends it, so nothing is converted in place.
ALTER TABLE audit ADD COLUMN credential TEXT;
CREATE INDEX audit_credential ON audit (credential);
CREATE TABLE audit_tiles (
    level BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    hashes TEXT NOT NULL,
    PRIMARY KEY (level, idx)
);
CREATE TABLE audit_checkpoints (
    size BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    note TEXT NOT NULL
);
