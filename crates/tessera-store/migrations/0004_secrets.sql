-- The vault: secrets (metadata) and their immutable versions. Values are stored only sealed:
-- each under its own data key, the data key under the key-encryption key, both bound to the
-- secret's name and version (tessera-vault::envelope).
CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    purpose TEXT NOT NULL,
    content_type TEXT NOT NULL,
    environment TEXT NOT NULL,
    -- JSON object of tags.
    tags TEXT NOT NULL,
    -- Seconds; NULL: no rotation is expected.
    rotation_period BIGINT,
    current_version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    -- Soft delete: readable by nobody, restorable until purge_after, purged after.
    deleted_at BIGINT,
    purge_after BIGINT
);

CREATE TABLE secret_versions (
    name TEXT NOT NULL REFERENCES secrets (name) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    ciphertext TEXT NOT NULL,
    wrapped_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    not_before BIGINT,
    expires_at BIGINT,
    PRIMARY KEY (name, version)
);
