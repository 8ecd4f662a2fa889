-- Dynamic PostgreSQL credentials: a database declared once (its admin password is a vault
-- secret), role templates, and the leases of the roles made from them. A lease row is written
-- before its role is created and removed only by marking it revoked, so a role is never left
-- behind without a record that says to drop it.
CREATE TABLE db_connections (
    name TEXT PRIMARY KEY,
    -- postgres://host:port/database, without credentials.
    url TEXT NOT NULL,
    admin_user TEXT NOT NULL,
    -- The vault secret holding the admin user's password.
    password_secret TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE db_roles (
    name TEXT PRIMARY KEY,
    connection TEXT NOT NULL REFERENCES db_connections (name),
    -- JSON arrays of SQL statements with {{name}}, {{password}}, {{expiry}}.
    creation TEXT NOT NULL,
    revocation TEXT NOT NULL,
    default_ttl BIGINT NOT NULL,
    max_ttl BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE db_leases (
    id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    connection TEXT NOT NULL,
    username TEXT NOT NULL,
    workload TEXT NOT NULL,
    -- The revocation statements as they were when the lease was made (JSON array).
    revocation TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    max_expires_at BIGINT NOT NULL,
    -- active | revoking | revoked
    state TEXT NOT NULL,
    revoked_at BIGINT,
    attempts BIGINT NOT NULL,
    last_error TEXT
);
CREATE INDEX db_leases_state ON db_leases (state, expires_at);
