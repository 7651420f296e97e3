/**
 * The database schema: the one source of `migrations/` (`npm run db:generate`). Times are ISO-8601
 * UTC strings, which sort and compare correctly as text; JSON columns hold arrays and small records.
 */
import { sql } from "drizzle-orm";
import { index, integer, primaryKey, real, sqliteTable, text, uniqueIndex } from "drizzle-orm/sqlite-core";

/** Content-addressed legal documents (license texts, acceptable use policies). */
export const documents = sqliteTable("documents", {
  sha256: text("sha256").primaryKey(),
  kind: text("kind", { enum: ["license", "aup"] }).notNull(),
  mediaType: text("media_type").notNull(),
  body: text("body").notNull(),
  /** `placeholder` for seeded stand-in text, `official` for text loaded by an operator. */
  source: text("source", { enum: ["placeholder", "official"] }).notNull(),
  createdAt: text("created_at").notNull(),
});

/** A version of a family's license: the pair of documents an applicant accepts together. */
export const licenseVersions = sqliteTable(
  "license_versions",
  {
    id: text("id").primaryKey(),
    family: text("family").notNull(),
    version: integer("version").notNull(),
    licenseSha256: text("license_sha256")
      .notNull()
      .references(() => documents.sha256),
    aupSha256: text("aup_sha256")
      .notNull()
      .references(() => documents.sha256),
    /**
     * When grants under an older version must have accepted this one, if the operator set a
     * deadline: the grants live when it was loaded got their requirement then, a grant issued
     * later under an older version gets it when issued.
     */
    reacceptBy: text("reaccept_by"),
    createdAt: text("created_at").notNull(),
  },
  (t) => [uniqueIndex("license_versions_family_version").on(t.family, t.version)],
);

export const organizations = sqliteTable(
  "organizations",
  {
    id: text("id").primaryKey(),
    name: text("name").notNull(),
    /**
     * Lower-cased, whitespace-collapsed name. Never how an applicant joins an organization (a
     * name is a claim): only how resembling cases are found and linked for reviewers.
     */
    normalizedName: text("normalized_name").notNull(),
    /**
     * The name as resemblance compares it (`resemblanceKey`): punctuation, legal forms, word order
     * and look-alike letters of other scripts make no difference. Empty for a name of legal forms
     * or punctuation alone (it matches nothing); null for an organization created before the key
     * was kept, until the scheduled handler keys it (`keyOrganizationNames`).
     */
    nameKey: text("name_key"),
    website: text("website"),
    country: text("country").notNull(),
    createdAt: text("created_at").notNull(),
  },
  (t) => [index("organizations_normalized_name").on(t.normalizedName), index("organizations_name_key").on(t.nameKey)],
);

/** People, known by an e-mail address; `emailVerifiedAt` once a link mailed to it was used. */
export const users = sqliteTable(
  "users",
  {
    id: text("id").primaryKey(),
    /** Lower-cased. */
    email: text("email").notNull(),
    name: text("name"),
    emailVerifiedAt: text("email_verified_at"),
    createdAt: text("created_at").notNull(),
  },
  (t) => [uniqueIndex("users_email").on(t.email)],
);

/**
 * An organization's verified e-mail domains: the domains of its verified contacts, free-mail
 * domains never. A domain belongs to one organization; a verified contact at it joins that one.
 */
export const organizationDomains = sqliteTable("organization_domains", {
  domain: text("domain").primaryKey(),
  organizationId: text("organization_id")
    .notNull()
    .references(() => organizations.id),
  verifiedByUserId: text("verified_by_user_id")
    .notNull()
    .references(() => users.id),
  verifiedAt: text("verified_at").notNull(),
});

export const MEMBER_ROLES = ["owner", "admin", "developer", "viewer"] as const;
export type MemberRole = (typeof MEMBER_ROLES)[number];

/** Who works in an organization, and as what. A removed member keeps the row (`removedAt`). */
export const memberships = sqliteTable(
  "memberships",
  {
    id: text("id").primaryKey(),
    organizationId: text("organization_id")
      .notNull()
      .references(() => organizations.id),
    userId: text("user_id")
      .notNull()
      .references(() => users.id),
    role: text("role", { enum: MEMBER_ROLES }).notNull(),
    createdAt: text("created_at").notNull(),
    removedAt: text("removed_at"),
  },
  (t) => [
    uniqueIndex("memberships_one_live").on(t.organizationId, t.userId).where(sql`removed_at is null`),
    index("memberships_user").on(t.userId),
  ],
);

/** An invitation to join an organization: a single-use link mailed to `email`, sha256 stored. */
export const invitations = sqliteTable(
  "invitations",
  {
    id: text("id").primaryKey(),
    organizationId: text("organization_id")
      .notNull()
      .references(() => organizations.id),
    /** Lower-cased; only this address may accept. */
    email: text("email").notNull(),
    role: text("role", { enum: MEMBER_ROLES }).notNull(),
    secretHash: text("secret_hash").notNull(),
    invitedByUserId: text("invited_by_user_id")
      .notNull()
      .references(() => users.id),
    createdAt: text("created_at").notNull(),
    expiresAt: text("expires_at").notNull(),
    acceptedAt: text("accepted_at"),
    acceptedByUserId: text("accepted_by_user_id"),
    revokedAt: text("revoked_at"),
  },
  (t) => [
    uniqueIndex("invitations_secret_hash").on(t.secretHash),
    index("invitations_organization").on(t.organizationId),
  ],
);

export const EMAIL_LINK_PURPOSES = ["verify_application", "sign_in"] as const;
export type EmailLinkPurpose = (typeof EMAIL_LINK_PURPOSES)[number];

/**
 * Single-use links mailed to an address to prove it is the reader's: confirming an application's
 * contact (24 h) or signing in (15 min). Only the secret's sha256 is stored; `usedAt` is set by
 * the conditional update that consumes it, so a link works once however often it is replayed.
 */
export const emailLinks = sqliteTable(
  "email_links",
  {
    secretHash: text("secret_hash").primaryKey(),
    purpose: text("purpose", { enum: EMAIL_LINK_PURPOSES }).notNull(),
    /** Lower-cased. */
    email: text("email").notNull(),
    applicationId: text("application_id"),
    createdAt: text("created_at").notNull(),
    expiresAt: text("expires_at").notNull(),
    usedAt: text("used_at"),
  },
  (t) => [index("email_links_email").on(t.email, t.createdAt)],
);

/** A signed-in person's session (a `__Host-` cookie holds the secret; its sha256 is here). */
export const sessions = sqliteTable(
  "sessions",
  {
    id: text("id").primaryKey(),
    secretHash: text("secret_hash").notNull(),
    userId: text("user_id")
      .notNull()
      .references(() => users.id),
    createdAt: text("created_at").notNull(),
    lastSeenAt: text("last_seen_at").notNull(),
    expiresAt: text("expires_at").notNull(),
    revokedAt: text("revoked_at"),
    ip: text("ip"),
    userAgent: text("user_agent"),
  },
  (t) => [uniqueIndex("sessions_secret_hash").on(t.secretHash), index("sessions_user").on(t.userId)],
);

/**
 * Applications as submitted, before their contact confirmed the address: they decide nothing and
 * reviewers never see them. Confirming turns one into an application with the same id.
 */
export const applicationDrafts = sqliteTable(
  "application_drafts",
  {
    id: text("id").primaryKey(),
    family: text("family").notNull(),
    /** Lower-cased contact address the confirmation link was mailed to. */
    contactEmail: text("contact_email").notNull(),
    /** The validated application input, as submitted. */
    input: text("input", { mode: "json" }).$type<Record<string, unknown>>().notNull(),
    licenseVersionId: text("license_version_id")
      .notNull()
      .references(() => licenseVersions.id),
    /** Where and how the license was accepted (`AcceptanceEvidence`). */
    evidence: text("evidence", { mode: "json" }).$type<Record<string, unknown>>().notNull(),
    createdAt: text("created_at").notNull(),
    expiresAt: text("expires_at").notNull(),
    confirmedAt: text("confirmed_at"),
  },
  (t) => [index("application_drafts_email").on(t.contactEmail, t.createdAt)],
);

/** Cases that resemble each other (name, website, e-mail domain), linked for reviewers. */
export const caseLinks = sqliteTable(
  "case_links",
  {
    applicationId: text("application_id")
      .notNull()
      .references(() => applications.id),
    relatedApplicationId: text("related_application_id")
      .notNull()
      .references(() => applications.id),
    /** What resembles: `name`, `website`, `email_domain`. */
    reasons: text("reasons", { mode: "json" }).$type<string[]>().notNull(),
    createdAt: text("created_at").notNull(),
  },
  (t) => [uniqueIndex("case_links_pair").on(t.applicationId, t.relatedApplicationId)],
);

export const APPLICATION_STATUSES = ["pending_review", "info_requested", "approved", "rejected"] as const;
export type ApplicationStatus = (typeof APPLICATION_STATUSES)[number];
/** Statuses in which a case is still open: a repeat application returns the open case. */
export const OPEN_STATUSES: readonly ApplicationStatus[] = ["pending_review", "info_requested"];

export const applications = sqliteTable(
  "applications",
  {
    id: text("id").primaryKey(),
    family: text("family").notNull(),
    organizationId: text("organization_id")
      .notNull()
      .references(() => organizations.id),
    organizationName: text("organization_name").notNull(),
    website: text("website"),
    country: text("country").notNull(),
    contactName: text("contact_name").notNull(),
    contactEmail: text("contact_email").notNull(),
    /** The contact as a verified user; null only for cases from before addresses were verified. */
    contactUserId: text("contact_user_id"),
    intendedUse: text("intended_use").notNull(),
    declaredMau: integer("declared_mau").notNull(),
    models: text("models", { mode: "json" }).$type<string[]>().notNull(),
    status: text("status", { enum: APPLICATION_STATUSES }).notNull(),
    /** Machine-readable reasons from the license policy (`PolicyReason[]`). */
    policyReasons: text("policy_reasons", { mode: "json" }).$type<PolicyReasonRow[]>().notNull(),
    /** Approvals the policy requires before a grant is issued (2 for over-threshold cases). */
    requiredApprovals: integer("required_approvals").notNull(),
    /** The review round; a request for information starts a new one, voiding earlier approvals. */
    reviewRound: integer("review_round").notNull().default(1),
    /** Reason shown to the applicant, when a reviewer chose to show one. */
    applicantMessage: text("applicant_message"),
    /** Applicant's answer to a request for information. */
    applicantResponse: text("applicant_response"),
    licenseVersionId: text("license_version_id")
      .notNull()
      .references(() => licenseVersions.id),
    reapplyAfter: text("reapply_after"),
    createdAt: text("created_at").notNull(),
    updatedAt: text("updated_at").notNull(),
    decidedAt: text("decided_at"),
  },
  (t) => [
    // At most one open case per organization, contact and family, enforced by the database so
    // that two simultaneous submissions cannot both create one.
    uniqueIndex("applications_one_open_case")
      .on(t.family, t.organizationId, t.contactEmail)
      .where(sql`status in ('pending_review', 'info_requested')`),
    index("applications_status_created").on(t.status, t.createdAt),
    index("applications_organization").on(t.organizationId),
  ],
);

/** Stored shape of a policy reason. */
export interface PolicyReasonRow {
  code: string;
  outcome: "review" | "reject";
  detail: string;
}

/**
 * Status-page capabilities: the sha256 of each secret link sent to an owner who applied for a
 * case. A repeat application mails a new link rather than handing the existing one to whoever
 * asked.
 */
export const statusLinks = sqliteTable(
  "status_links",
  {
    secretHash: text("secret_hash").primaryKey(),
    applicationId: text("application_id")
      .notNull()
      .references(() => applications.id),
    /**
     * The owner who holds the link; null for links from before holders were kept, which belong
     * to the case's contact. A link works only while its holder owns the case's organization.
     */
    userId: text("user_id").references(() => users.id),
    createdAt: text("created_at").notNull(),
    /**
     * 30 days after it was made. Each owner holds their own link; a new one for the same owner
     * and case revokes the ones that owner held before, and leaves other owners' links alone.
     */
    expiresAt: text("expires_at"),
    revokedAt: text("revoked_at"),
  },
  (t) => [index("status_links_application").on(t.applicationId)],
);

/**
 * Evidence of what the applicant accepted, written in the same batch as the application. It keeps
 * both steps of an application, because they may be two people: `acceptedAt`, `ip`, `country` and
 * `userAgent` are the submission's (anyone may post the form, naming any address), the
 * `confirmed…` columns are the confirmation's, made with the link mailed to the contact, which
 * states the hashes of the texts accepted on the organization's behalf and so is the acceptance
 * of the person whose address was proven. Rows from before confirmations were acceptances, and
 * those of a request for more models (one request by a signed-in owner), have no confirmation.
 */
export const acceptances = sqliteTable("acceptances", {
  id: text("id").primaryKey(),
  applicationId: text("application_id")
    .notNull()
    .references(() => applications.id),
  licenseVersionId: text("license_version_id")
    .notNull()
    .references(() => licenseVersions.id),
  licenseSha256: text("license_sha256").notNull(),
  aupSha256: text("aup_sha256").notNull(),
  /** When the submission was made (for a request for more models, the request). */
  acceptedAt: text("accepted_at").notNull(),
  ip: text("ip"),
  country: text("country"),
  userAgent: text("user_agent"),
  /** When the contact confirmed, accepting the texts of these hashes; null before confirmations were acceptances. */
  confirmedAt: text("confirmed_at"),
  /** The user the mailed link proved: the contact who accepted. */
  confirmedByUserId: text("confirmed_by_user_id").references(() => users.id),
  confirmedIp: text("confirmed_ip"),
  /** Cloudflare's country of the confirming request. */
  confirmedCountry: text("confirmed_country"),
  confirmedUserAgent: text("confirmed_user_agent"),
});

export const DECISIONS = ["approve", "reject", "request_info"] as const;
export type Decision = (typeof DECISIONS)[number];

export const decisions = sqliteTable(
  "decisions",
  {
    id: text("id").primaryKey(),
    applicationId: text("application_id")
      .notNull()
      .references(() => applications.id),
    reviewRound: integer("review_round").notNull(),
    reviewerEmail: text("reviewer_email").notNull(),
    decision: text("decision", { enum: DECISIONS }).notNull(),
    reason: text("reason").notNull(),
    visibleToApplicant: integer("visible_to_applicant", { mode: "boolean" }).notNull(),
    createdAt: text("created_at").notNull(),
  },
  (t) => [
    // Four-eyes: one approval per approver per round, enforced by the database.
    uniqueIndex("decisions_one_approval_per_reviewer")
      .on(t.applicationId, t.reviewRound, t.reviewerEmail)
      .where(sql`decision = 'approve'`),
    index("decisions_application").on(t.applicationId),
  ],
);

export const GRANT_STATUSES = ["active", "suspended", "revoked"] as const;
export type GrantStatus = (typeof GRANT_STATUSES)[number];

/** Permission for an organization to use a model family under a license version. */
export const grants = sqliteTable(
  "grants",
  {
    id: text("id").primaryKey(),
    applicationId: text("application_id")
      .notNull()
      .references(() => applications.id),
    organizationId: text("organization_id")
      .notNull()
      .references(() => organizations.id),
    family: text("family").notNull(),
    /** The models of the family this grant covers: what was applied for. */
    models: text("models", { mode: "json" }).$type<string[]>().notNull().default(sql`'[]'`),
    licenseVersionId: text("license_version_id")
      .notNull()
      .references(() => licenseVersions.id),
    status: text("status", { enum: GRANT_STATUSES }).notNull(),
    statusReason: text("status_reason"),
    createdAt: text("created_at").notNull(),
    updatedAt: text("updated_at").notNull(),
  },
  (t) => [
    uniqueIndex("grants_application").on(t.applicationId),
    index("grants_organization_family").on(t.organizationId, t.family),
  ],
);

/**
 * Append-only, hash-chained audit log. `seq` is dense and unique: two writers that read the
 * same head collide on it, one batch fails whole, and the loser retries on the new head.
 */
export const auditEvents = sqliteTable(
  "audit_events",
  {
    seq: integer("seq").primaryKey(),
    id: text("id").notNull(),
    at: text("at").notNull(),
    actor: text("actor").notNull(),
    action: text("action").notNull(),
    subjectType: text("subject_type").notNull(),
    subjectId: text("subject_id").notNull(),
    data: text("data", { mode: "json" }).$type<Record<string, unknown>>().notNull(),
    prevHash: text("prev_hash").notNull(),
    hash: text("hash").notNull(),
  },
  (t) => [
    uniqueIndex("audit_events_id").on(t.id),
    index("audit_events_subject").on(t.subjectType, t.subjectId),
    index("audit_events_action").on(t.action),
  ],
);

/** `suppressed`: never sent, because its recipient or their domain was over a send limit (`last_error` says which). */
export const MAIL_STATUSES = ["pending", "sent", "failed", "suppressed"] as const;

/** Outgoing mail, written in the same batch as the state change it reports. */
export const mailOutbox = sqliteTable(
  "mail_outbox",
  {
    id: text("id").primaryKey(),
    to: text("to").notNull(),
    /** The recipient's mailbox, however spelt (`canonicalEmail`): what the per-address limit counts. */
    mailbox: text("mailbox"),
    /** The recipient's domain, lower-cased: what the per-domain limit counts. */
    toDomain: text("to_domain"),
    subject: text("subject").notNull(),
    text: text("text").notNull(),
    status: text("status", { enum: MAIL_STATUSES }).notNull(),
    attempts: integer("attempts").notNull().default(0),
    nextAttemptAt: text("next_attempt_at").notNull(),
    lastError: text("last_error"),
    createdAt: text("created_at").notNull(),
    sentAt: text("sent_at"),
  },
  (t) => [
    index("mail_outbox_due").on(t.status, t.nextAttemptAt),
    index("mail_outbox_mailbox").on(t.mailbox, t.createdAt),
    index("mail_outbox_domain").on(t.toDomain, t.createdAt),
  ],
);

export type Application = typeof applications.$inferSelect;
export type User = typeof users.$inferSelect;
export type Membership = typeof memberships.$inferSelect;
export type Invitation = typeof invitations.$inferSelect;
export type Session = typeof sessions.$inferSelect;
export type ApplicationDraft = typeof applicationDrafts.$inferSelect;
export type Grant = typeof grants.$inferSelect;
export type AuditEvent = typeof auditEvents.$inferSelect;
export type MailMessage = typeof mailOutbox.$inferSelect;

export const TOKEN_SCOPES = ["download", "inference"] as const;

/** A token's own limits; any may be absent. */
export interface TokenLimits {
  requestsPerMinute?: number;
  tokensPerMinute?: number;
  monthlyTokenBudget?: number;
}
export type TokenScope = (typeof TOKEN_SCOPES)[number];

/** Personal access tokens of an approved organization; the secret is stored only as its sha256. */
export const accessTokens = sqliteTable(
  "access_tokens",
  {
    id: text("id").primaryKey(),
    grantId: text("grant_id")
      .notNull()
      .references(() => grants.id),
    name: text("name").notNull(),
    secretHash: text("secret_hash").notNull(),
    /** The first characters of the token, shown in lists so people can tell their tokens apart. */
    displayPrefix: text("display_prefix").notNull(),
    scopes: text("scopes", { mode: "json" }).$type<TokenScope[]>().notNull(),
    /** The member who minted it; null for tokens from before members existed. */
    userId: text("user_id"),
    /** The grant's models this token may use; null: all of them. */
    models: text("models", { mode: "json" }).$type<string[]>(),
    /** Limits of this token inside its organization's; null: the organization's alone. */
    limits: text("limits", { mode: "json" }).$type<TokenLimits>(),
    createdAt: text("created_at").notNull(),
    expiresAt: text("expires_at"),
    revokedAt: text("revoked_at"),
  },
  (t) => [uniqueIndex("access_tokens_secret_hash").on(t.secretHash), index("access_tokens_grant").on(t.grantId)],
);

/** An immutable set of files of a model; `id` is a content hash over its manifest. */
export const modelRevisions = sqliteTable(
  "model_revisions",
  {
    id: text("id").primaryKey(),
    model: text("model").notNull(),
    fileCount: integer("file_count").notNull(),
    totalBytes: integer("total_bytes").notNull(),
    createdAt: text("created_at").notNull(),
  },
  (t) => [index("model_revisions_model").on(t.model, t.createdAt)],
);

/** One file of a revision: where it is in R2 and what it must hash to. */
export const modelFiles = sqliteTable(
  "model_files",
  {
    revisionId: text("revision_id")
      .notNull()
      .references(() => modelRevisions.id),
    path: text("path").notNull(),
    size: integer("size").notNull(),
    /** Computed from the bytes as they were uploaded; never taken from the uploader's word. */
    sha256: text("sha256").notNull(),
    r2Key: text("r2_key").notNull(),
    etag: text("etag").notNull(),
    contentType: text("content_type").notNull(),
  },
  (t) => [uniqueIndex("model_files_revision_path").on(t.revisionId, t.path)],
);

/** Named pointers to revisions: `main` is the newest. */
export const modelRefs = sqliteTable(
  "model_refs",
  {
    model: text("model").notNull(),
    ref: text("ref").notNull(),
    revisionId: text("revision_id")
      .notNull()
      .references(() => modelRevisions.id),
    updatedAt: text("updated_at").notNull(),
  },
  (t) => [uniqueIndex("model_refs_model_ref").on(t.model, t.ref)],
);

/** Issued download links, so that each can be capped, counted and traced. */
export const downloadLinks = sqliteTable(
  "download_links",
  {
    jti: text("jti").primaryKey(),
    grantId: text("grant_id").notNull(),
    tokenId: text("token_id").notNull(),
    model: text("model").notNull(),
    revisionId: text("revision_id").notNull(),
    path: text("path").notNull(),
    /** With the file's size, sets the link's byte budget (`linkByteBudget`). */
    maxDownloads: integer("max_downloads").notNull(),
    /** Requests that started a whole download: for the record; the cap is `bytesServed`. */
    downloads: integer("downloads").notNull().default(0),
    /** Bytes reserved by every answer with a body (the range's length, taken before it is sent). */
    bytesServed: integer("bytes_served").notNull().default(0),
    expiresAt: text("expires_at").notNull(),
    createdAt: text("created_at").notNull(),
  },
  (t) => [index("download_links_grant").on(t.grantId)],
);

/** What was served: written after the response, off the hot path. */
export const downloadEvents = sqliteTable(
  "download_events",
  {
    id: text("id").primaryKey(),
    jti: text("jti").notNull(),
    grantId: text("grant_id").notNull(),
    tokenId: text("token_id").notNull(),
    model: text("model").notNull(),
    revisionId: text("revision_id").notNull(),
    path: text("path").notNull(),
    status: integer("status").notNull(),
    rangeStart: integer("range_start"),
    rangeEnd: integer("range_end"),
    /** The whole range when complete; 0 when the client hung up (its resumed range is recorded next). */
    bytesServed: integer("bytes_served").notNull(),
    /** Whether the client read the whole answer (false when it hung up). */
    complete: integer("complete", { mode: "boolean" }).notNull(),
    at: text("at").notNull(),
    /** When the event was carried into `download_hours` (source `ledger`); null until then. */
    aggregatedAt: text("aggregated_at"),
  },
  (t) => [index("download_events_grant_at").on(t.grantId, t.at)],
);

export type AccessToken = typeof accessTokens.$inferSelect;
export type ModelFile = typeof modelFiles.$inferSelect;

/**
 * Notes reviewers leave each other on a case. Never shown to the applicant; kept apart from
 * `decisions` because a comment decides nothing and must not count towards four-eyes.
 */
export const reviewComments = sqliteTable(
  "review_comments",
  {
    id: text("id").primaryKey(),
    applicationId: text("application_id")
      .notNull()
      .references(() => applications.id),
    reviewerEmail: text("reviewer_email").notNull(),
    body: text("body").notNull(),
    createdAt: text("created_at").notNull(),
  },
  (t) => [index("review_comments_application").on(t.applicationId, t.createdAt)],
);

export type ReviewComment = typeof reviewComments.$inferSelect;

/** An organization's inference limits, overriding the deployment's defaults. */
export const organizationLimits = sqliteTable("organization_limits", {
  organizationId: text("organization_id")
    .primaryKey()
    .references(() => organizations.id),
  plan: text("plan").notNull(),
  requestsPerMinute: integer("requests_per_minute").notNull(),
  tokensPerMinute: integer("tokens_per_minute").notNull(),
  monthlyTokenBudget: integer("monthly_token_budget").notNull(),
  updatedAt: text("updated_at").notNull(),
});

/**
 * An inference server an admin added in the console, served beside the pools of
 * `INFERENCE_BACKENDS`. Its API key, when it needs one, is sealed under `INFERENCE_KEYS_SECRET`
 * (AES-GCM, bound to the row's id) and never leaves the gateway.
 */
export const inferenceBackends = sqliteTable(
  "inference_backends",
  {
    id: text("id").primaryKey(),
    model: text("model").notNull(),
    /** Base URL without `/v1`, as requests are sent to it. */
    url: text("url").notNull(),
    /** The name the server serves the model under; null: the model's id. */
    servedModel: text("served_model"),
    weight: real("weight").notNull(),
    timeoutMs: integer("timeout_ms").notNull(),
    apiKeySealed: text("api_key_sealed"),
    enabled: integer("enabled", { mode: "boolean" }).notNull(),
    createdAt: text("created_at").notNull(),
    updatedAt: text("updated_at").notNull(),
  },
  (t) => [uniqueIndex("inference_backends_model_url").on(t.model, t.url)],
);

/**
 * The last health change each inference server's URL went through, as some isolate saw it (a
 * failed request, a probe, an admin's check): how isolates tell each other that a server is down
 * or back, and what the console shows.
 */
export const inferenceBackendHealth = sqliteTable("inference_backend_health", {
  /** The server's base URL, as pools hold it. */
  url: text("url").primaryKey(),
  state: text("state", { enum: ["up", "down"] }).notNull(),
  /** Why it went down ("connect", "timeout", "status 503", "probe"); null when up. */
  reason: text("reason"),
  /** When it entered this state (ISO). */
  since: text("since").notNull(),
  /** When a down server is next probed (epoch ms); null when up. */
  downUntil: integer("down_until"),
  /** When this was seen (epoch ms): a report older than the stored one is not written. */
  seenAt: integer("seen_at").notNull(),
});

export const USAGE_OUTCOMES = ["ok", "partial", "backend_error", "client_closed", "blocked"] as const;

/** The meter events a ledger row or a billing interval is billed as: one per kind of token. */
export const METER_PARTS = ["prompt", "completion"] as const;
export type MeterPart = (typeof METER_PARTS)[number];

/**
 * One inference request's metered usage. Its id is the idempotency identifier of the billing
 * meter events it produces, so a row is billed once however often it is sent.
 */
export const usageLedger = sqliteTable(
  "usage_ledger",
  {
    id: text("id").primaryKey(),
    organizationId: text("organization_id").notNull(),
    grantId: text("grant_id").notNull(),
    tokenId: text("token_id").notNull(),
    model: text("model").notNull(),
    backend: text("backend"),
    endpoint: text("endpoint").notNull(),
    stream: integer("stream", { mode: "boolean" }).notNull(),
    promptTokens: integer("prompt_tokens").notNull(),
    completionTokens: integer("completion_tokens").notNull(),
    totalTokens: integer("total_tokens").notNull(),
    /** Whether the counts came from the backend (`true`) or were estimated from what was seen. */
    usageReported: integer("usage_reported", { mode: "boolean" }).notNull(),
    outcome: text("outcome", { enum: USAGE_OUTCOMES }).notNull(),
    partial: integer("partial", { mode: "boolean" }).notNull(),
    status: integer("status").notNull(),
    latencyMs: integer("latency_ms").notNull(),
    startedAt: text("started_at").notNull(),
    createdAt: text("created_at").notNull(),
    billedAt: text("billed_at"),
    /**
     * `pending` until Stripe accepted its meter events (`sent`); `skipped` when there was nothing
     * to bill; `dead` after the queue gave up (kept for operators to resend); `expired` when it
     * became older than Stripe accepts (35 days) before it could be sent — flagged, never dropped.
     */
    billingState: text("billing_state", { enum: ["pending", "sent", "skipped", "dead", "expired"] })
      .notNull()
      .default("pending"),
    billingAttempts: integer("billing_attempts").notNull().default(0),
    billingError: text("billing_error"),
    /**
     * The parts whose meter event Stripe accepted, each recorded as Stripe accepts it: a part
     * recorded here is never sent again (a retry, a resend days later), since Stripe rejects a
     * repeated `identifier` for about 24 hours only.
     */
    billingAcceptedParts: text("billing_accepted_parts", { mode: "json" })
      .$type<MeterPart[]>()
      .notNull()
      .default(sql`'[]'`),
    /**
     * When the row was carried into `usage_hours` (source `ledger`); null until then. Rows are
     * only written here by gateways from before the hourly aggregates; they are carried once.
     */
    aggregatedAt: text("aggregated_at"),
  },
  (t) => [
    index("usage_ledger_org_started").on(t.organizationId, t.startedAt),
    index("usage_ledger_billing_state").on(t.billingState, t.createdAt),
  ],
);

export type UsageRow = typeof usageLedger.$inferSelect;

/**
 * Metered inference per hour, organization, model, grant and token: what the console, `/v1/usage`,
 * `/v1/billing` and the CSV exports read. The hour is the one the request was recorded in (its
 * settlement, normally within a second of its last byte); the raw rows behind an hour are in the
 * quota object for `USAGE_RAW_RETENTION_HOURS` and in the usage archive in R2 for good. An hour's
 * figures are the sum of its parts (`worker/usage/hours.ts`): a quota object writes each part's
 * totals as absolute values, so a repeated write changes nothing.
 */
export const usageHours = sqliteTable(
  "usage_hours",
  {
    organizationId: text("organization_id").notNull(),
    /** `YYYY-MM-DDTHH`, UTC. */
    hour: text("hour").notNull(),
    model: text("model").notNull(),
    grantId: text("grant_id").notNull(),
    tokenId: text("token_id").notNull(),
    /** The part of the hour (`hours.ts`); `ledger` for rows carried from `usage_ledger`. */
    part: text("part").notNull(),
    requests: integer("requests").notNull(),
    promptTokens: integer("prompt_tokens").notNull(),
    completionTokens: integer("completion_tokens").notNull(),
    totalTokens: integer("total_tokens").notNull(),
    /** Requests answered with a status of 400 or above. */
    errorRequests: integer("error_requests").notNull(),
    /** Requests whose usage is partly counted by the gateway: cut off, or failed mid-answer. */
    partialRequests: integer("partial_requests").notNull(),
    latencyMsSum: integer("latency_ms_sum").notNull(),
    /** When the latest request counted here was recorded. */
    lastAt: text("last_at").notNull(),
    updatedAt: text("updated_at").notNull(),
  },
  (t) => [
    primaryKey({ columns: [t.organizationId, t.hour, t.model, t.grantId, t.tokenId, t.part] }),
    index("usage_hours_hour").on(t.hour),
    index("usage_hours_grant").on(t.grantId),
  ],
);

export type UsageHour = typeof usageHours.$inferSelect;

/**
 * One organization's usage of one closed part of an hour on its way to Stripe: one meter event per
 * price dimension (prompt, completion tokens) with the identifier `<id>:<dimension>`, so that a
 * resend is recorded once. Written by the quota object with the part's final totals, in the same
 * D1 batch; its values equal the sum of the part's `usage_hours` rows.
 */
export const billingIntervals = sqliteTable(
  "billing_intervals",
  {
    /** `<organization id>:<hour>:<part>`. */
    id: text("id").primaryKey(),
    organizationId: text("organization_id").notNull(),
    hour: text("hour").notNull(),
    requests: integer("requests").notNull(),
    promptTokens: integer("prompt_tokens").notNull(),
    completionTokens: integer("completion_tokens").notNull(),
    /** As a ledger row's `billing_state`. */
    state: text("state", { enum: ["pending", "sent", "skipped", "dead", "expired"] })
      .notNull()
      .default("pending"),
    attempts: integer("attempts").notNull().default(0),
    error: text("error"),
    /** As a ledger row's `billing_accepted_parts`. */
    acceptedParts: text("accepted_parts", { mode: "json" }).$type<MeterPart[]>().notNull().default(sql`'[]'`),
    createdAt: text("created_at").notNull(),
    billedAt: text("billed_at"),
  },
  (t) => [
    index("billing_intervals_state").on(t.state, t.createdAt),
    index("billing_intervals_org_hour").on(t.organizationId, t.hour),
  ],
);

export type BillingInterval = typeof billingIntervals.$inferSelect;

/**
 * Weight downloads per hour, organization, grant, token and model: answers, whole ones, bytes
 * served and refusals. The raw events are in the organization's quota object for a while and in
 * the usage archive in R2.
 */
export const downloadHours = sqliteTable(
  "download_hours",
  {
    organizationId: text("organization_id").notNull(),
    hour: text("hour").notNull(),
    grantId: text("grant_id").notNull(),
    tokenId: text("token_id").notNull(),
    model: text("model").notNull(),
    /** The part of the hour (`hours.ts`); `ledger` for events carried from `download_events`. */
    part: text("part").notNull(),
    requests: integer("requests").notNull(),
    completeRequests: integer("complete_requests").notNull(),
    errorRequests: integer("error_requests").notNull(),
    bytesServed: integer("bytes_served").notNull(),
    lastAt: text("last_at").notNull(),
    updatedAt: text("updated_at").notNull(),
  },
  (t) => [
    primaryKey({ columns: [t.organizationId, t.hour, t.grantId, t.tokenId, t.model, t.part] }),
    index("download_hours_hour").on(t.hour),
    index("download_hours_grant").on(t.grantId, t.hour),
  ],
);

export type DownloadHour = typeof downloadHours.$inferSelect;

export const BILLING_STATUSES = ["active", "past_due", "unpaid", "canceled", "incomplete"] as const;
export type BillingStatus = (typeof BILLING_STATUSES)[number];

/** An organization's Stripe customer and subscription, and the payment state that gates inference. */
export const billingAccounts = sqliteTable("billing_accounts", {
  organizationId: text("organization_id")
    .primaryKey()
    .references(() => organizations.id),
  stripeCustomerId: text("stripe_customer_id").notNull(),
  stripeSubscriptionId: text("stripe_subscription_id"),
  plan: text("plan").notNull(),
  status: text("status", { enum: BILLING_STATUSES }).notNull(),
  /** When payment first failed in the current episode; inference stops after the grace period. */
  paymentFailedAt: text("payment_failed_at"),
  /** Stripe `created` (seconds) of the newest subscription event applied: older ones arrive late and are ignored. */
  subscriptionEventCreated: integer("subscription_event_created").notNull().default(0),
  /** Stripe `created` (seconds) of the newest invoice event applied. */
  invoiceEventCreated: integer("invoice_event_created").notNull().default(0),
  createdAt: text("created_at").notNull(),
  updatedAt: text("updated_at").notNull(),
});

/** Stripe webhook events already applied, so a redelivery changes nothing. */
export const stripeEvents = sqliteTable(
  "stripe_events",
  {
    id: text("id").primaryKey(),
    type: text("type").notNull(),
    created: integer("created").notNull(),
    receivedAt: text("received_at").notNull(),
    /**
     * The subscription this event ended (deleted, or moved to a status it never leaves), whoever's
     * it was: an ended subscription is final, so no later event about it, however it is timed,
     * makes it an account's again.
     */
    endedSubscription: text("ended_subscription"),
  },
  (t) => [index("stripe_events_ended_subscription").on(t.endedSubscription)],
);

export type BillingAccount = typeof billingAccounts.$inferSelect;

/** What organizations' webhook endpoints may subscribe to (`worker/events/types.ts` holds each one's data). */
export const WEBHOOK_EVENT_TYPES = [
  "application.status_changed",
  "application.info_requested",
  "grant.suspended",
  "grant.reinstated",
  "grant.revoked",
  "license.reacceptance_required",
  "model.revision_published",
  "quota.threshold_reached",
  "billing.payment_failed",
] as const;
export type WebhookEventType = (typeof WEBHOOK_EVENT_TYPES)[number];

/**
 * Events on their way to organizations' webhook endpoints: written in the same batch as the change
 * they report (an outbox), then fanned out into one delivery per subscribed endpoint.
 */
export const webhookEvents = sqliteTable(
  "webhook_events",
  {
    /** The `webhook-id` every delivery of it carries: receivers deduplicate on it. */
    id: text("id").primaryKey(),
    /** The organization it concerns; null for a new model revision (every organization whose grant covers the model). */
    organizationId: text("organization_id"),
    type: text("type", { enum: WEBHOOK_EVENT_TYPES }).notNull(),
    data: text("data", { mode: "json" }).$type<Record<string, unknown>>().notNull(),
    occurredAt: text("occurred_at").notNull(),
    /** When its deliveries were made; null until then. */
    dispatchedAt: text("dispatched_at"),
  },
  (t) => [index("webhook_events_undispatched").on(t.occurredAt).where(sql`dispatched_at is null`)],
);

/** A URL an organization receives events at, and the event types it wants. */
export const webhookEndpoints = sqliteTable(
  "webhook_endpoints",
  {
    id: text("id").primaryKey(),
    organizationId: text("organization_id")
      .notNull()
      .references(() => organizations.id),
    url: text("url").notNull(),
    description: text("description"),
    eventTypes: text("event_types", { mode: "json" }).$type<WebhookEventType[]>().notNull(),
    enabled: integer("enabled", { mode: "boolean" }).notNull(),
    /** The member who added it. */
    createdBy: text("created_by").notNull(),
    createdAt: text("created_at").notNull(),
    updatedAt: text("updated_at").notNull(),
    /** Removed endpoints are kept (their deliveries refer to them) but receive nothing more. */
    deletedAt: text("deleted_at"),
  },
  (t) => [index("webhook_endpoints_organization").on(t.organizationId)],
);

/**
 * An endpoint's signing secrets (`whsec_…`): every one signs each delivery, so that a receiver
 * can move to a new secret while the old one still verifies, until the organization removes it.
 */
export const webhookSecrets = sqliteTable(
  "webhook_secrets",
  {
    id: text("id").primaryKey(),
    endpointId: text("endpoint_id")
      .notNull()
      .references(() => webhookEndpoints.id),
    secret: text("secret").notNull(),
    createdAt: text("created_at").notNull(),
  },
  (t) => [index("webhook_secrets_endpoint").on(t.endpointId)],
);

/**
 * `pending`: an attempt is due at `next_attempt_at`; `delivered`: the endpoint answered 2xx;
 * `dead`: every attempt failed (the dead letters, kept until sent again); `canceled`: the endpoint
 * was disabled or removed first.
 */
export const WEBHOOK_DELIVERY_STATUSES = ["pending", "delivered", "dead", "canceled"] as const;
export type WebhookDeliveryStatus = (typeof WEBHOOK_DELIVERY_STATUSES)[number];

/** One event on its way to one endpoint, with how its attempts went. */
export const webhookDeliveries = sqliteTable(
  "webhook_deliveries",
  {
    id: text("id").primaryKey(),
    eventId: text("event_id")
      .notNull()
      .references(() => webhookEvents.id),
    endpointId: text("endpoint_id")
      .notNull()
      .references(() => webhookEndpoints.id),
    organizationId: text("organization_id").notNull(),
    eventType: text("event_type", { enum: WEBHOOK_EVENT_TYPES }).notNull(),
    status: text("status", { enum: WEBHOOK_DELIVERY_STATUSES }).notNull(),
    attempts: integer("attempts").notNull().default(0),
    /** The HTTP status of the last answer; null when there was none (refused connection, timeout). */
    lastStatusCode: integer("last_status_code"),
    lastError: text("last_error"),
    lastAttemptAt: text("last_attempt_at"),
    nextAttemptAt: text("next_attempt_at").notNull(),
    deliveredAt: text("delivered_at"),
    createdAt: text("created_at").notNull(),
  },
  (t) => [
    uniqueIndex("webhook_deliveries_event_endpoint").on(t.eventId, t.endpointId),
    index("webhook_deliveries_endpoint").on(t.endpointId, t.createdAt),
    index("webhook_deliveries_status").on(t.status, t.nextAttemptAt),
  ],
);

export type WebhookEvent = typeof webhookEvents.$inferSelect;
export type WebhookEndpoint = typeof webhookEndpoints.$inferSelect;
export type WebhookDelivery = typeof webhookDeliveries.$inferSelect;

/**
 * What reviewers were told about a case: `new` when it reached review, `ageing:<hours>` when it
 * waited past a threshold of `REVIEW_AGEING_HOURS`. Once each: the key is the case and the kind.
 * The chat message (`REVIEWER_WEBHOOK_URL`) goes through the events queue; `chat_state` says how.
 */
export const reviewerNotices = sqliteTable(
  "reviewer_notices",
  {
    applicationId: text("application_id")
      .notNull()
      .references(() => applications.id),
    kind: text("kind").notNull(),
    createdAt: text("created_at").notNull(),
    /** `none`: no chat webhook was set; `pending`, `sent`, or `failed` after the last attempt. */
    chatState: text("chat_state", { enum: ["none", "pending", "sent", "failed"] }).notNull(),
    chatAttempts: integer("chat_attempts").notNull().default(0),
    chatError: text("chat_error"),
  },
  (t) => [primaryKey({ columns: [t.applicationId, t.kind] })],
);

/**
 * The denied-party screening list in force (the shape of the US Consolidated Screening List): one
 * row per listed party. Loading a list replaces the whole list in one batch.
 */
export const screeningEntries = sqliteTable("screening_entries", {
  id: text("id").primaryKey(),
  /** The list it comes from, e.g. `Specially Designated Nationals (SDN) - Treasury Department`. */
  source: text("source").notNull(),
  name: text("name").notNull(),
  altNames: text("alt_names", { mode: "json" }).$type<string[]>().notNull(),
  /** ISO 3166-1 alpha-2 when the list names one, else the last part of its first address. */
  country: text("country"),
  addresses: text("addresses"),
  loadedAt: text("loaded_at").notNull(),
});

/** Each listed name and alias as screening compares them (`screeningKey`), pointing at its entry. */
export const screeningNames = sqliteTable(
  "screening_names",
  {
    nameKey: text("name_key").notNull(),
    entryId: text("entry_id")
      .notNull()
      .references(() => screeningEntries.id),
  },
  (t) => [primaryKey({ columns: [t.nameKey, t.entryId] })],
);

/**
 * The countries an organization's requests came from, one row per organization, day and country,
 * written only when a country is new for the organization that day: reviewers see where an
 * organization uses the models from beside the country it declared.
 */
export const organizationCountries = sqliteTable(
  "organization_countries",
  {
    organizationId: text("organization_id")
      .notNull()
      .references(() => organizations.id),
    /** YYYY-MM-DD (UTC). */
    day: text("day").notNull(),
    /** ISO 3166-1 alpha-2, as Cloudflare observed it (`request.cf.country`). */
    country: text("country").notNull(),
    declaredCountry: text("declared_country").notNull(),
    /** Where it was first seen that day: `downloads`, `hub` or `inference`. */
    surface: text("surface").notNull(),
    /** Whether the request was refused because the country is restricted. */
    refused: integer("refused", { mode: "boolean" }).notNull(),
    firstSeenAt: text("first_seen_at").notNull(),
  },
  (t) => [primaryKey({ columns: [t.organizationId, t.day, t.country] }), index("organization_countries_day").on(t.day)],
);

export type ScreeningEntry = typeof screeningEntries.$inferSelect;

/**
 * How an organization's prompts (and, when it asks, plain answers) are screened by the guard model:
 * one row per organization that an admin set; organizations without one take `GUARD_DEFAULT_MODE`.
 */
export const organizationGuard = sqliteTable("organization_guard", {
  organizationId: text("organization_id")
    .primaryKey()
    .references(() => organizations.id),
  mode: text("mode", { enum: ["off", "log", "block"] }).notNull(),
  /** Whether flags keep the flagged text (the organization allowed it); otherwise only categories. */
  storeSamples: integer("store_samples", { mode: "boolean" }).notNull(),
  /** Whether plain (not streamed) answers are screened too, after the backend answered. */
  screenResponses: integer("screen_responses", { mode: "boolean" }).notNull(),
  updatedAt: text("updated_at").notNull(),
  updatedBy: text("updated_by").notNull(),
});

/** One request the guard model found unsafe: reviewers' queue of acceptable-use flags. */
export const guardFlags = sqliteTable(
  "guard_flags",
  {
    id: text("id").primaryKey(),
    organizationId: text("organization_id")
      .notNull()
      .references(() => organizations.id),
    grantId: text("grant_id").notNull(),
    tokenId: text("token_id"),
    /** The usage row of the request. */
    usageId: text("usage_id").notNull(),
    model: text("model").notNull(),
    /** What was screened: the `prompt`, or the backend's `response`. */
    stage: text("stage", { enum: ["prompt", "response"] }).notNull(),
    /** `logged`: the request went on; `blocked`: it was refused with `content_policy_violation`. */
    action: text("action", { enum: ["logged", "blocked"] }).notNull(),
    /** The guard's category codes (Llama Guard's S1–S14). */
    categories: text("categories", { mode: "json" }).$type<string[]>().notNull(),
    /** The screened text (at most `GUARD_SAMPLE_CHARS`), only where the organization allows it; pruned after the retention. */
    sample: text("sample"),
    createdAt: text("created_at").notNull(),
  },
  (t) => [
    index("guard_flags_organization").on(t.organizationId, t.createdAt),
    index("guard_flags_created").on(t.createdAt),
  ],
);

/**
 * A license version an organization must accept again for a grant to go on, and by when
 * (`acceptBy`): written when an operator loads a version that requires it, one pending row per
 * grant. Accepting it fills in the evidence (hashes, time, address, country, member) and moves
 * the grant to the version; a newer requirement supersedes a pending one.
 */
export const licenseReacceptances = sqliteTable(
  "license_reacceptances",
  {
    id: text("id").primaryKey(),
    grantId: text("grant_id")
      .notNull()
      .references(() => grants.id),
    organizationId: text("organization_id")
      .notNull()
      .references(() => organizations.id),
    family: text("family").notNull(),
    /** The version the grant was under when the requirement was made. */
    fromLicenseVersionId: text("from_license_version_id")
      .notNull()
      .references(() => licenseVersions.id),
    licenseVersionId: text("license_version_id")
      .notNull()
      .references(() => licenseVersions.id),
    /** From this instant on, downloads and inference stop until the version is accepted. */
    acceptBy: text("accept_by").notNull(),
    requiredAt: text("required_at").notNull(),
    supersededAt: text("superseded_at"),
    acceptedAt: text("accepted_at"),
    acceptedByUserId: text("accepted_by_user_id").references(() => users.id),
    licenseSha256: text("license_sha256"),
    aupSha256: text("aup_sha256"),
    ip: text("ip"),
    country: text("country"),
    userAgent: text("user_agent"),
  },
  (t) => [
    uniqueIndex("license_reacceptances_one_pending")
      .on(t.grantId)
      .where(sql`accepted_at is null and superseded_at is null`),
    index("license_reacceptances_organization").on(t.organizationId),
  ],
);

export type LicenseReacceptance = typeof licenseReacceptances.$inferSelect;

/**
 * The signed link of one manifest (or Hub resolve): one token opens every file of one revision.
 * Links issued before these existed (one per file) stay in `download_links` until they expire.
 */
export const downloadManifests = sqliteTable(
  "download_manifests",
  {
    jti: text("jti").primaryKey(),
    grantId: text("grant_id").notNull(),
    tokenId: text("token_id").notNull(),
    model: text("model").notNull(),
    revisionId: text("revision_id").notNull(),
    /** With a file's size, sets that file's byte budget under this link (`linkByteBudget`). */
    maxDownloads: integer("max_downloads").notNull(),
    expiresAt: text("expires_at").notNull(),
    createdAt: text("created_at").notNull(),
  },
  (t) => [index("download_manifests_grant").on(t.grantId)],
);

/** What a manifest's link has served of one file: made with the first byte served, capped by the file's budget. */
export const downloadBudgets = sqliteTable(
  "download_budgets",
  {
    jti: text("jti").notNull(),
    path: text("path").notNull(),
    /** Requests that started a whole download: for the record; the cap is `bytesServed`. */
    downloads: integer("downloads").notNull().default(0),
    /** Bytes reserved by every answer with a body (the range's length, taken before it is sent). */
    bytesServed: integer("bytes_served").notNull().default(0),
  },
  (t) => [primaryKey({ columns: [t.jti, t.path] })],
);
