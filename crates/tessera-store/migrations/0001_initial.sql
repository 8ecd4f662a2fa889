-- Shared by SQLite and PostgreSQL: types are those both accept (BIGINT, TEXT; blobs as base64 TEXT).
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    trust_domain TEXT NOT NULL,
    alg TEXT NOT NULL,
    sealed TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    activate_at BIGINT NOT NULL,
    retire_at BIGINT
);
CREATE TABLE workloads (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    revoked_at BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE TABLE grants (
    from_id TEXT NOT NULL,
    to_id TEXT NOT NULL,
    spec TEXT NOT NULL,
    PRIMARY KEY (from_id, to_id)
);
CREATE TABLE clients (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    secret_hash TEXT,
    secret_created_at BIGINT,
    secret_expires_at BIGINT
);
CREATE TABLE trusts (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
CREATE TABLE policy_files (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL
);
CREATE TABLE used_assertions (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    subject TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_subject ON audit (subject, seq);
