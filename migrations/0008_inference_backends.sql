-- Inference servers admins add in the console, beside the pools of INFERENCE_BACKENDS.
CREATE TABLE `inference_backends` (
	`id` text PRIMARY KEY NOT NULL,
	`model` text NOT NULL,
	`url` text NOT NULL,
	`served_model` text,
	`weight` real NOT NULL,
	`timeout_ms` integer NOT NULL,
	`api_key_sealed` text,
	`enabled` integer NOT NULL,
	`created_at` text NOT NULL,
	`updated_at` text NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX `inference_backends_model_url` ON `inference_backends` (`model`,`url`);