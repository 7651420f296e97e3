CREATE TABLE `status_links` (
	`secret_hash` text PRIMARY KEY NOT NULL,
	`application_id` text NOT NULL,
	`created_at` text NOT NULL,
	FOREIGN KEY (`application_id`) REFERENCES `applications`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE INDEX `status_links_application` ON `status_links` (`application_id`);--> statement-breakpoint
ALTER TABLE `applications` DROP COLUMN `status_secret_hash`;