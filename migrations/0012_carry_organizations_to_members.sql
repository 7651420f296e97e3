-- Today's data in the organization model. Written by hand because drizzle-kit generates schema
-- changes only; it runs once, after 0011 made the tables.

-- A grant covers the models its application asked for (the application defaulted to the whole family).
UPDATE `grants` SET `models` = (SELECT `models` FROM `applications` WHERE `applications`.`id` = `grants`.`application_id`);--> statement-breakpoint

-- Status links expire 30 days after they were made.
UPDATE `status_links` SET `expires_at` = strftime('%Y-%m-%dT%H:%M:%fZ', `created_at`, '+30 days') WHERE `expires_at` IS NULL;--> statement-breakpoint

-- Every contact becomes a user, unverified until their first sign-in.
INSERT OR IGNORE INTO `users` (`id`, `email`, `name`, `email_verified_at`, `created_at`)
SELECT 'usr_' || lower(hex(randomblob(13))), lower(`contact_email`), `contact_name`, NULL, min(`created_at`)
FROM `applications` GROUP BY lower(`contact_email`);--> statement-breakpoint

UPDATE `applications` SET `contact_user_id` = (SELECT `id` FROM `users` WHERE `users`.`email` = lower(`applications`.`contact_email`));--> statement-breakpoint

-- The contact of an organization's first application is its owner. Contacts of later applications
-- that were matched to it by name alone do not become members: a name proves nothing.
INSERT INTO `memberships` (`id`, `organization_id`, `user_id`, `role`, `created_at`, `removed_at`)
SELECT 'mem_' || lower(hex(randomblob(13))), `a`.`organization_id`, `a`.`contact_user_id`, 'owner', `a`.`created_at`, NULL
FROM `applications` `a`
WHERE `a`.`contact_user_id` IS NOT NULL
  AND `a`.`id` = (SELECT `b`.`id` FROM `applications` `b` WHERE `b`.`organization_id` = `a`.`organization_id` ORDER BY `b`.`created_at`, `b`.`id` LIMIT 1);
