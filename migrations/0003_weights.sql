CREATE TABLE `access_tokens` (
	`id` text PRIMARY KEY NOT NULL,
	`grant_id` text NOT NULL,
	`name` text NOT NULL,
	`secret_hash` text NOT NULL,
	`display_prefix` text NOT NULL,
	`scopes` text NOT NULL,
	`created_at` text NOT NULL,
	`expires_at` text,
	`revoked_at` text,
	FOREIGN KEY (`grant_id`) REFERENCES `grants`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE UNIQUE INDEX `access_tokens_secret_hash` ON `access_tokens` (`secret_hash`);--> statement-breakpoint
CREATE INDEX `access_tokens_grant` ON `access_tokens` (`grant_id`);--> statement-breakpoint
CREATE TABLE `download_events` (
	`id` text PRIMARY KEY NOT NULL,
	`jti` text NOT NULL,
	`grant_id` text NOT NULL,
	`token_id` text NOT NULL,
	`model` text NOT NULL,
	`revision_id` text NOT NULL,
	`path` text NOT NULL,
	`status` integer NOT NULL,
	`range_start` integer,
	`range_end` integer,
	`bytes_served` integer NOT NULL,
	`complete` integer NOT NULL,
	`at` text NOT NULL
);
--> statement-breakpoint
CREATE INDEX `download_events_grant_at` ON `download_events` (`grant_id`,`at`);--> statement-breakpoint
CREATE TABLE `download_links` (
	`jti` text PRIMARY KEY NOT NULL,
	`grant_id` text NOT NULL,
	`token_id` text NOT NULL,
	`model` text NOT NULL,
	`revision_id` text NOT NULL,
	`path` text NOT NULL,
	`max_downloads` integer NOT NULL,
	`downloads` integer DEFAULT 0 NOT NULL,
	`expires_at` text NOT NULL,
	`created_at` text NOT NULL
);
--> statement-breakpoint
CREATE INDEX `download_links_grant` ON `download_links` (`grant_id`);--> statement-breakpoint
CREATE TABLE `model_files` (
	`revision_id` text NOT NULL,
	`path` text NOT NULL,
	`size` integer NOT NULL,
	`sha256` text NOT NULL,
	`r2_key` text NOT NULL,
	`etag` text NOT NULL,
	`content_type` text NOT NULL,
	FOREIGN KEY (`revision_id`) REFERENCES `model_revisions`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE UNIQUE INDEX `model_files_revision_path` ON `model_files` (`revision_id`,`path`);--> statement-breakpoint
CREATE TABLE `model_refs` (
	`model` text NOT NULL,
	`ref` text NOT NULL,
	`revision_id` text NOT NULL,
	`updated_at` text NOT NULL,
	FOREIGN KEY (`revision_id`) REFERENCES `model_revisions`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE UNIQUE INDEX `model_refs_model_ref` ON `model_refs` (`model`,`ref`);--> statement-breakpoint
CREATE TABLE `model_revisions` (
	`id` text PRIMARY KEY NOT NULL,
	`model` text NOT NULL,
	`file_count` integer NOT NULL,
	`total_bytes` integer NOT NULL,
	`created_at` text NOT NULL
);
--> statement-breakpoint
CREATE INDEX `model_revisions_model` ON `model_revisions` (`model`,`created_at`);