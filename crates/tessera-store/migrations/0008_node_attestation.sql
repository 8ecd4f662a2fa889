-- Node attestation without join tokens: the Kubernetes clusters identity files declare, and what
-- each agent was attested with (a JSON list of selectors; empty for a join token).
CREATE TABLE clusters (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
ALTER TABLE agents ADD COLUMN selectors TEXT NOT NULL DEFAULT '[]';
