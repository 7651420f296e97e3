CREATE TABLE `billing_intervals` (
	`id` text PRIMARY KEY NOT NULL,
	`organization_id` text NOT NULL,
	`hour` text NOT NULL,
	`requests` integer NOT NULL,
	`prompt_tokens` integer NOT NULL,
	`completion_tokens` integer NOT NULL,
	`state` text DEFAULT 'pending' NOT NULL,
	`attempts` integer DEFAULT 0 NOT NULL,
	`error` text,
	`created_at` text NOT NULL,
	`billed_at` text
);
--> statement-breakpoint
CREATE INDEX `billing_intervals_state` ON `billing_intervals` (`state`,`created_at`);--> statement-breakpoint
CREATE INDEX `billing_intervals_org_hour` ON `billing_intervals` (`organization_id`,`hour`);--> statement-breakpoint
CREATE TABLE `download_hours` (
	`organization_id` text NOT NULL,
	`hour` text NOT NULL,
	`grant_id` text NOT NULL,
	`token_id` text NOT NULL,
	`model` text NOT NULL,
	`part` text NOT NULL,
	`requests` integer NOT NULL,
	`complete_requests` integer NOT NULL,
	`error_requests` integer NOT NULL,
	`bytes_served` integer NOT NULL,
	`last_at` text NOT NULL,
	`updated_at` text NOT NULL,
	PRIMARY KEY(`organization_id`, `hour`, `grant_id`, `token_id`, `model`, `part`)
);
--> statement-breakpoint
CREATE INDEX `download_hours_hour` ON `download_hours` (`hour`);--> statement-breakpoint
CREATE INDEX `download_hours_grant` ON `download_hours` (`grant_id`,`hour`);--> statement-breakpoint
CREATE TABLE `usage_hours` (
	`organization_id` text NOT NULL,
	`hour` text NOT NULL,
	`model` text NOT NULL,
	`grant_id` text NOT NULL,
	`token_id` text NOT NULL,
	`part` text NOT NULL,
	`requests` integer NOT NULL,
	`prompt_tokens` integer NOT NULL,
	`completion_tokens` integer NOT NULL,
	`total_tokens` integer NOT NULL,
	`error_requests` integer NOT NULL,
	`partial_requests` integer NOT NULL,
	`latency_ms_sum` integer NOT NULL,
	`last_at` text NOT NULL,
	`updated_at` text NOT NULL,
	PRIMARY KEY(`organization_id`, `hour`, `model`, `grant_id`, `token_id`, `part`)
);
--> statement-breakpoint
CREATE INDEX `usage_hours_hour` ON `usage_hours` (`hour`);--> statement-breakpoint
CREATE INDEX `usage_hours_grant` ON `usage_hours` (`grant_id`);--> statement-breakpoint
ALTER TABLE `download_events` ADD `aggregated_at` text;--> statement-breakpoint
ALTER TABLE `usage_ledger` ADD `aggregated_at` text;