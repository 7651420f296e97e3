CREATE TABLE `acceptances` (
	`id` text PRIMARY KEY NOT NULL,
	`application_id` text NOT NULL,
	`license_version_id` text NOT NULL,
	`license_sha256` text NOT NULL,
	`aup_sha256` text NOT NULL,
	`accepted_at` text NOT NULL,
	`ip` text,
	`country` text,
	`user_agent` text,
	FOREIGN KEY (`application_id`) REFERENCES `applications`(`id`) ON UPDATE no action ON DELETE no action,
	FOREIGN KEY (`license_version_id`) REFERENCES `license_versions`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE TABLE `applications` (
	`id` text PRIMARY KEY NOT NULL,
	`family` text NOT NULL,
	`organization_id` text NOT NULL,
	`organization_name` text NOT NULL,
	`website` text,
	`country` text NOT NULL,
	`contact_name` text NOT NULL,
	`contact_email` text NOT NULL,
	`intended_use` text NOT NULL,
	`declared_mau` integer NOT NULL,
	`models` text NOT NULL,
	`status` text NOT NULL,
	`policy_reasons` text NOT NULL,
	`required_approvals` integer NOT NULL,
	`review_round` integer DEFAULT 1 NOT NULL,
	`applicant_message` text,
	`applicant_response` text,
	`status_secret_hash` text NOT NULL,
	`license_version_id` text NOT NULL,
	`reapply_after` text,
	`created_at` text NOT NULL,
	`updated_at` text NOT NULL,
	`decided_at` text,
	FOREIGN KEY (`organization_id`) REFERENCES `organizations`(`id`) ON UPDATE no action ON DELETE no action,
	FOREIGN KEY (`license_version_id`) REFERENCES `license_versions`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE UNIQUE INDEX `applications_one_open_case` ON `applications` (`family`,`organization_id`,`contact_email`) WHERE status in ('pending_review', 'info_requested');--> statement-breakpoint
CREATE INDEX `applications_status_created` ON `applications` (`status`,`created_at`);--> statement-breakpoint
CREATE INDEX `applications_organization` ON `applications` (`organization_id`);--> statement-breakpoint
CREATE TABLE `audit_events` (
	`seq` integer PRIMARY KEY NOT NULL,
	`id` text NOT NULL,
	`at` text NOT NULL,
	`actor` text NOT NULL,
	`action` text NOT NULL,
	`subject_type` text NOT NULL,
	`subject_id` text NOT NULL,
	`data` text NOT NULL,
	`prev_hash` text NOT NULL,
	`hash` text NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX `audit_events_id` ON `audit_events` (`id`);--> statement-breakpoint
CREATE INDEX `audit_events_subject` ON `audit_events` (`subject_type`,`subject_id`);--> statement-breakpoint
CREATE INDEX `audit_events_action` ON `audit_events` (`action`);--> statement-breakpoint
CREATE TABLE `decisions` (
	`id` text PRIMARY KEY NOT NULL,
	`application_id` text NOT NULL,
	`review_round` integer NOT NULL,
	`reviewer_email` text NOT NULL,
	`decision` text NOT NULL,
	`reason` text NOT NULL,
	`visible_to_applicant` integer NOT NULL,
	`created_at` text NOT NULL,
	FOREIGN KEY (`application_id`) REFERENCES `applications`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE UNIQUE INDEX `decisions_one_approval_per_reviewer` ON `decisions` (`application_id`,`review_round`,`reviewer_email`) WHERE decision = 'approve';--> statement-breakpoint
CREATE INDEX `decisions_application` ON `decisions` (`application_id`);--> statement-breakpoint
CREATE TABLE `documents` (
	`sha256` text PRIMARY KEY NOT NULL,
	`kind` text NOT NULL,
	`media_type` text NOT NULL,
	`body` text NOT NULL,
	`source` text NOT NULL,
	`created_at` text NOT NULL
);
--> statement-breakpoint
CREATE TABLE `grants` (
	`id` text PRIMARY KEY NOT NULL,
	`application_id` text NOT NULL,
	`organization_id` text NOT NULL,
	`family` text NOT NULL,
	`license_version_id` text NOT NULL,
	`status` text NOT NULL,
	`status_reason` text,
	`created_at` text NOT NULL,
	`updated_at` text NOT NULL,
	FOREIGN KEY (`application_id`) REFERENCES `applications`(`id`) ON UPDATE no action ON DELETE no action,
	FOREIGN KEY (`organization_id`) REFERENCES `organizations`(`id`) ON UPDATE no action ON DELETE no action,
	FOREIGN KEY (`license_version_id`) REFERENCES `license_versions`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE UNIQUE INDEX `grants_application` ON `grants` (`application_id`);--> statement-breakpoint
CREATE INDEX `grants_organization_family` ON `grants` (`organization_id`,`family`);--> statement-breakpoint
CREATE TABLE `license_versions` (
	`id` text PRIMARY KEY NOT NULL,
	`family` text NOT NULL,
	`version` integer NOT NULL,
	`license_sha256` text NOT NULL,
	`aup_sha256` text NOT NULL,
	`created_at` text NOT NULL,
	FOREIGN KEY (`license_sha256`) REFERENCES `documents`(`sha256`) ON UPDATE no action ON DELETE no action,
	FOREIGN KEY (`aup_sha256`) REFERENCES `documents`(`sha256`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE UNIQUE INDEX `license_versions_family_version` ON `license_versions` (`family`,`version`);--> statement-breakpoint
CREATE TABLE `mail_outbox` (
	`id` text PRIMARY KEY NOT NULL,
	`to` text NOT NULL,
	`subject` text NOT NULL,
	`text` text NOT NULL,
	`status` text NOT NULL,
	`attempts` integer DEFAULT 0 NOT NULL,
	`next_attempt_at` text NOT NULL,
	`last_error` text,
	`created_at` text NOT NULL,
	`sent_at` text
);
--> statement-breakpoint
CREATE INDEX `mail_outbox_due` ON `mail_outbox` (`status`,`next_attempt_at`);--> statement-breakpoint
CREATE TABLE `organizations` (
	`id` text PRIMARY KEY NOT NULL,
	`name` text NOT NULL,
	`normalized_name` text NOT NULL,
	`website` text,
	`country` text NOT NULL,
	`created_at` text NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX `organizations_normalized_name` ON `organizations` (`normalized_name`);