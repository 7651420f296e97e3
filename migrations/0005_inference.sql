CREATE TABLE `organization_limits` (
	`organization_id` text PRIMARY KEY NOT NULL,
	`plan` text NOT NULL,
	`requests_per_minute` integer NOT NULL,
	`tokens_per_minute` integer NOT NULL,
	`monthly_token_budget` integer NOT NULL,
	`updated_at` text NOT NULL,
	FOREIGN KEY (`organization_id`) REFERENCES `organizations`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE TABLE `usage_ledger` (
	`id` text PRIMARY KEY NOT NULL,
	`organization_id` text NOT NULL,
	`grant_id` text NOT NULL,
	`token_id` text NOT NULL,
	`model` text NOT NULL,
	`backend` text,
	`endpoint` text NOT NULL,
	`stream` integer NOT NULL,
	`prompt_tokens` integer NOT NULL,
	`completion_tokens` integer NOT NULL,
	`total_tokens` integer NOT NULL,
	`usage_reported` integer NOT NULL,
	`outcome` text NOT NULL,
	`partial` integer NOT NULL,
	`status` integer NOT NULL,
	`latency_ms` integer NOT NULL,
	`started_at` text NOT NULL,
	`created_at` text NOT NULL,
	`billed_at` text
);
--> statement-breakpoint
CREATE INDEX `usage_ledger_org_started` ON `usage_ledger` (`organization_id`,`started_at`);--> statement-breakpoint
CREATE INDEX `usage_ledger_unbilled` ON `usage_ledger` (`billed_at`,`created_at`);