-- No query reads usage_ledger by billed_at (billing_state has its own index), and every request's
-- ledger row paid for keeping this one.
DROP INDEX `usage_ledger_unbilled`;
