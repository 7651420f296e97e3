ALTER TABLE `acceptances` ADD `confirmed_at` text;--> statement-breakpoint
ALTER TABLE `acceptances` ADD `confirmed_by_user_id` text REFERENCES users(id);--> statement-breakpoint
ALTER TABLE `acceptances` ADD `confirmed_ip` text;--> statement-breakpoint
ALTER TABLE `acceptances` ADD `confirmed_country` text;--> statement-breakpoint
ALTER TABLE `acceptances` ADD `confirmed_user_agent` text;