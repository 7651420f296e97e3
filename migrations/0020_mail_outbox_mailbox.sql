ALTER TABLE `mail_outbox` ADD `mailbox` text;--> statement-breakpoint
ALTER TABLE `mail_outbox` ADD `to_domain` text;--> statement-breakpoint
CREATE INDEX `mail_outbox_mailbox` ON `mail_outbox` (`mailbox`,`created_at`);--> statement-breakpoint
CREATE INDEX `mail_outbox_domain` ON `mail_outbox` (`to_domain`,`created_at`);--> statement-breakpoint
-- Mail queued before the columns existed: its address as written stands for its mailbox, for the hour its limits look back.
UPDATE `mail_outbox` SET `mailbox` = lower(`to`), `to_domain` = lower(substr(`to`, instr(`to`, '@') + 1));
