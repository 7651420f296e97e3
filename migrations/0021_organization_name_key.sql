ALTER TABLE `organizations` ADD `name_key` text;--> statement-breakpoint
CREATE INDEX `organizations_name_key` ON `organizations` (`name_key`);