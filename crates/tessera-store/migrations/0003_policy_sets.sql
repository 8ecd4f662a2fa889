-- Versioned policy sets: every change to grants or policy files is recorded as a whole set, so
-- that a shadow candidate can be evaluated beside the active one, promoted, and rolled back.
CREATE TABLE policy_sets (
    version BIGINT PRIMARY KEY,
    -- active | shadow | superseded | promoted | discarded
    status TEXT NOT NULL,
    grants TEXT NOT NULL,
    policies TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    note TEXT NOT NULL
);
CREATE INDEX policy_sets_status ON policy_sets (status);
