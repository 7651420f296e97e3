CREATE TABLE `download_budgets` (
	`jti` text NOT NULL,
	`path` text NOT NULL,
	`downloads` integer DEFAULT 0 NOT NULL,
	`bytes_served` integer DEFAULT 0 NOT NULL,
	PRIMARY KEY(`jti`, `path`)
);
--> statement-breakpoint
CREATE TABLE `download_manifests` (
	`jti` text PRIMARY KEY NOT NULL,
	`grant_id` text NOT NULL,
	`token_id` text NOT NULL,
	`model` text NOT NULL,
	`revision_id` text NOT NULL,
	`max_downloads` integer NOT NULL,
	`expires_at` text NOT NULL,
	`created_at` text NOT NULL
);
--> statement-breakpoint
CREATE INDEX `download_manifests_grant` ON `download_manifests` (`grant_id`);