-- The console's views of the audit trail: counts by kind over a window (the overview) and the
-- advisor's pages through a window (kind, then time and sequence: keyset pagination), and search
-- by actor (who did what; a service's reported calls).
CREATE INDEX audit_kind_at ON audit (kind, at, seq);
CREATE INDEX audit_actor ON audit (actor, seq);
