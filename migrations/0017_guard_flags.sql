CREATE TABLE `guard_flags` (
	`id` text PRIMARY KEY NOT NULL,
	`organization_id` text NOT NULL,
	`grant_id` text NOT NULL,
	`token_id` text,
	`usage_id` text NOT NULL,
	`model` text NOT NULL,
	`stage` text NOT NULL,
	`action` text NOT NULL,
	`categories` text NOT NULL,
	`sample` text,
	`created_at` text NOT NULL,
	FOREIGN KEY (`organization_id`) REFERENCES `organizations`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE INDEX `guard_flags_organization` ON `guard_flags` (`organization_id`,`created_at`);--> statement-breakpoint
CREATE INDEX `guard_flags_created` ON `guard_flags` (`created_at`);--> statement-breakpoint
CREATE TABLE `license_reacceptances` (
	`id` text PRIMARY KEY NOT NULL,
	`grant_id` text NOT NULL,
	`organization_id` text NOT NULL,
	`family` text NOT NULL,
	`from_license_version_id` text NOT NULL,
	`license_version_id` text NOT NULL,
	`accept_by` text NOT NULL,
	`required_at` text NOT NULL,
	`superseded_at` text,
	`accepted_at` text,
	`accepted_by_user_id` text,
	`license_sha256` text,
	`aup_sha256` text,
	`ip` text,
	`country` text,
	`user_agent` text,
	FOREIGN KEY (`grant_id`) REFERENCES `grants`(`id`) ON UPDATE no action ON DELETE no action,
	FOREIGN KEY (`organization_id`) REFERENCES `organizations`(`id`) ON UPDATE no action ON DELETE no action,
	FOREIGN KEY (`from_license_version_id`) REFERENCES `license_versions`(`id`) ON UPDATE no action ON DELETE no action,
	FOREIGN KEY (`license_version_id`) REFERENCES `license_versions`(`id`) ON UPDATE no action ON DELETE no action,
	FOREIGN KEY (`accepted_by_user_id`) REFERENCES `users`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE UNIQUE INDEX `license_reacceptances_one_pending` ON `license_reacceptances` (`grant_id`) WHERE accepted_at is null and superseded_at is null;--> statement-breakpoint
CREATE INDEX `license_reacceptances_organization` ON `license_reacceptances` (`organization_id`);--> statement-breakpoint
CREATE TABLE `organization_guard` (
	`organization_id` text PRIMARY KEY NOT NULL,
	`mode` text NOT NULL,
	`store_samples` integer NOT NULL,
	`screen_responses` integer NOT NULL,
	`updated_at` text NOT NULL,
	`updated_by` text NOT NULL,
	FOREIGN KEY (`organization_id`) REFERENCES `organizations`(`id`) ON UPDATE no action ON DELETE no action
);
