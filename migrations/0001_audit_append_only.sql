-- Custom SQL migration file, put your code below! --
-- The audit log is legal evidence: the application only ever appends to it. These triggers make
-- the database refuse any UPDATE or DELETE of a recorded event, so a bug or a careless operator
-- cannot rewrite history through the Worker. Someone with raw database access can still drop
-- them; the hash chain (GET /admin/api/audit/verify) is what detects that.
CREATE TRIGGER `audit_events_no_update`
BEFORE UPDATE ON `audit_events`
BEGIN
  SELECT RAISE(ABORT, 'audit_events is append-only');
END;
--> statement-breakpoint
CREATE TRIGGER `audit_events_no_delete`
BEFORE DELETE ON `audit_events`
BEGIN
  SELECT RAISE(ABORT, 'audit_events is append-only');
END;
