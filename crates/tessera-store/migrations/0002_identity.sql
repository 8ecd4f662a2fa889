-- Workload identity: the CAs of each trust domain, node agents, their join tokens, and every
-- X.509-SVID issued.
CREATE TABLE ca_certs (
    id TEXT PRIMARY KEY,
    trust_domain TEXT NOT NULL,
    sealed TEXT NOT NULL,
    cert TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    activate_at BIGINT NOT NULL,
    retire_at BIGINT,
    not_after BIGINT NOT NULL
);
CREATE TABLE join_tokens (
    token_hash TEXT PRIMARY KEY,
    trust_domain TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    trust_domain TEXT NOT NULL,
    joined_at BIGINT NOT NULL,
    svid_serial TEXT NOT NULL,
    svid_not_after BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE x509_svids (
    serial TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    not_after BIGINT NOT NULL
);
CREATE INDEX x509_svids_by_id ON x509_svids (spiffe_id, issued_at);
