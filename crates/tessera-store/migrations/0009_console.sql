-- The console's views of the audit trail: counts by kind over a window (the overview), search by
-- actor (who did what), and the newest SVID of each workload (expiries).
CREATE INDEX audit_kind_at ON audit (kind, at);
CREATE INDEX audit_actor ON audit (actor, seq);
