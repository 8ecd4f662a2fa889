-- SPIFFE federation between authorities: the relationships identity files declare, and the last
-- good bundle fetched for each federated trust domain (kept when a refresh fails).
CREATE TABLE federations (
    trust_domain TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
CREATE TABLE federated_bundles (
    trust_domain TEXT PRIMARY KEY,
    bundle TEXT NOT NULL,
    sequence BIGINT,
    fetched_at BIGINT NOT NULL
);
