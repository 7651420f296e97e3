ALTER TABLE `license_versions` ADD `reaccept_by` text;--> statement-breakpoint
-- A version loaded with a deadline before the column existed: the deadline its requirements carry.
UPDATE `license_versions` SET `reaccept_by` = (SELECT max(`accept_by`) FROM `license_reacceptances` WHERE `license_reacceptances`.`license_version_id` = `license_versions`.`id`);
