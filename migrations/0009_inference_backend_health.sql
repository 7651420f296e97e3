-- The last health change of each inference server, shared between isolates and shown in the console.
CREATE TABLE `inference_backend_health` (
	`url` text PRIMARY KEY NOT NULL,
	`state` text NOT NULL,
	`reason` text,
	`since` text NOT NULL,
	`down_until` integer,
	`seen_at` integer NOT NULL
);
