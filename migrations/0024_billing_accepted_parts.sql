ALTER TABLE `billing_intervals` ADD `accepted_parts` text DEFAULT '[]' NOT NULL;--> statement-breakpoint
ALTER TABLE `stripe_events` ADD `ended_subscription` text;--> statement-breakpoint
CREATE INDEX `stripe_events_ended_subscription` ON `stripe_events` (`ended_subscription`);--> statement-breakpoint
ALTER TABLE `usage_ledger` ADD `billing_accepted_parts` text DEFAULT '[]' NOT NULL;