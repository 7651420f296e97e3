CREATE TABLE `billing_accounts` (
	`organization_id` text PRIMARY KEY NOT NULL,
	`stripe_customer_id` text NOT NULL,
	`stripe_subscription_id` text,
	`plan` text NOT NULL,
	`status` text NOT NULL,
	`payment_failed_at` text,
	`subscription_event_created` integer DEFAULT 0 NOT NULL,
	`invoice_event_created` integer DEFAULT 0 NOT NULL,
	`created_at` text NOT NULL,
	`updated_at` text NOT NULL,
	FOREIGN KEY (`organization_id`) REFERENCES `organizations`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE TABLE `stripe_events` (
	`id` text PRIMARY KEY NOT NULL,
	`type` text NOT NULL,
	`created` integer NOT NULL,
	`received_at` text NOT NULL
);
--> statement-breakpoint
ALTER TABLE `usage_ledger` ADD `billing_state` text DEFAULT 'pending' NOT NULL;--> statement-breakpoint
ALTER TABLE `usage_ledger` ADD `billing_attempts` integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE `usage_ledger` ADD `billing_error` text;--> statement-breakpoint
CREATE INDEX `usage_ledger_billing_state` ON `usage_ledger` (`billing_state`,`created_at`);