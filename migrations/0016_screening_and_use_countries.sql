CREATE TABLE `organization_countries` (
	`organization_id` text NOT NULL,
	`day` text NOT NULL,
	`country` text NOT NULL,
	`declared_country` text NOT NULL,
	`surface` text NOT NULL,
	`refused` integer NOT NULL,
	`first_seen_at` text NOT NULL,
	PRIMARY KEY(`organization_id`, `day`, `country`),
	FOREIGN KEY (`organization_id`) REFERENCES `organizations`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE INDEX `organization_countries_day` ON `organization_countries` (`day`);--> statement-breakpoint
CREATE TABLE `screening_entries` (
	`id` text PRIMARY KEY NOT NULL,
	`source` text NOT NULL,
	`name` text NOT NULL,
	`alt_names` text NOT NULL,
	`country` text,
	`addresses` text,
	`loaded_at` text NOT NULL
);
--> statement-breakpoint
CREATE TABLE `screening_names` (
	`name_key` text NOT NULL,
	`entry_id` text NOT NULL,
	PRIMARY KEY(`name_key`, `entry_id`),
	FOREIGN KEY (`entry_id`) REFERENCES `screening_entries`(`id`) ON UPDATE no action ON DELETE no action
);
