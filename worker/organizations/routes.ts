/**
 * An organization's members and invitations, for its signed-in members (`requireMember`: a live
 * session, a live membership of the organization named by `?organization=` or
 * `x-modelgate-organization`, the route's role, and same-site writes), and the invitation page a
 * mailed link opens.
 */
import { createRoute, z } from "@hono/zod-openapi";
import { currentMember, OrganizationQuery, requireMember } from "../auth/members";
import { SESSION_SECURITY_SCHEME } from "../auth/routes";
import { currentSession, sessionRequest, setSessionCookie } from "../auth/sessions";
import { MEMBER_ROLES } from "../db/schema";
import { abuseBrake, assertSameSite } from "../http/middleware";
import { newRouter, problemResponses, readBody } from "../http/router";
import { deliverDueMail } from "../mail/outbox";
import { InvitationPage } from "../pages/invitation";
import { noStore, withRefusalPage } from "../pages/refusal";
import {
  acceptInvitation,
  assertInviterMayGive,
  inviteMember,
  listInvitations,
  pendingInvitation,
  revokeInvitation,
} from "./invitations";
import { changeMemberRole, listMembers, removeMember } from "./members";

const MemberSchema = z
  .object({
    id: z.string().openapi({ description: "The membership's id." }),
    userId: z.string(),
    email: z.string(),
    name: z.string().nullable(),
    role: z.enum(MEMBER_ROLES),
    emailVerified: z.boolean(),
    createdAt: z.string(),
  })
  .openapi("Member");

const InvitationSchema = z
  .object({
    id: z.string(),
    email: z.string(),
    role: z.enum(MEMBER_ROLES),
    invitedByUserId: z.string(),
    createdAt: z.string(),
    expiresAt: z.string(),
  })
  .openapi("Invitation");

const RoleChange = z.strictObject({ role: z.enum(MEMBER_ROLES) }).openapi("MemberRoleChange");
const NewInvitation = z
  .strictObject({ email: z.string().trim().min(3).max(254).email(), role: z.enum(MEMBER_ROLES) })
  .openapi("NewInvitation");
const AcceptForm = z.strictObject({ token: z.string().min(1).max(200) }).openapi("InvitationAcceptForm");

const IdParam = z.object({ id: z.string().min(1).max(64) });
const security = [{ [SESSION_SECURITY_SCHEME]: [] }];

function jsonBody(ref: string) {
  // By reference: the handler reads the body itself (`readBody`), after the member check.
  return {
    content: { "application/json": { schema: { $ref: `#/components/schemas/${ref}` } } },
    required: true,
  };
}

const listMembersRoute = createRoute({
  method: "get",
  path: "/v1/organization/members",
  tags: ["Organization"],
  summary: "The organization's members",
  description: "Any member (viewer and above).",
  security,
  middleware: [requireMember("viewer")] as const,
  request: { query: OrganizationQuery },
  responses: {
    200: {
      description: "Live members, oldest first",
      content: { "application/json": { schema: z.object({ members: z.array(MemberSchema) }) } },
    },
    ...problemResponses(400, 401, 403),
  },
});

const changeRoleRoute = createRoute({
  method: "patch",
  path: "/v1/organization/members/{id}",
  tags: ["Organization"],
  summary: "Change a member's role",
  description:
    "Admins and owners; only an owner may make or unmake an owner or an admin. The last owner keeps the role (409).",
  security,
  middleware: [requireMember("admin")] as const,
  request: { params: IdParam, query: OrganizationQuery, body: jsonBody("MemberRoleChange") },
  responses: {
    200: { description: "The member", content: { "application/json": { schema: MemberSchema } } },
    ...problemResponses(400, 401, 403, 404, 409, 415),
  },
});

const removeMemberRoute = createRoute({
  method: "delete",
  path: "/v1/organization/members/{id}",
  tags: ["Organization"],
  summary: "Remove a member (or leave)",
  description:
    "Any member may remove themself, except the last owner (409); removing another needs an admin, and an owner for an owner or an admin. The member's tokens of this organization are revoked at once.",
  security,
  middleware: [requireMember("viewer")] as const,
  request: { params: IdParam, query: OrganizationQuery },
  responses: {
    200: {
      description: "The removed member and how many of their tokens were revoked",
      content: {
        "application/json": { schema: z.object({ member: MemberSchema, revokedTokens: z.number().int() }) },
      },
    },
    ...problemResponses(400, 401, 403, 404, 409),
  },
});

const inviteRoute = createRoute({
  method: "post",
  path: "/v1/organization/invitations",
  tags: ["Organization"],
  summary: "Invite someone by e-mail",
  description:
    "Admins and owners; only an owner invites an owner or an admin (403). Mails a single-use link (7 days) to the address; the secret is never shown. Inviting a live member is 409; a new invitation replaces a pending one to the same address.",
  security,
  middleware: [requireMember("admin")] as const,
  request: { query: OrganizationQuery, body: jsonBody("NewInvitation") },
  responses: {
    201: { description: "The invitation", content: { "application/json": { schema: InvitationSchema } } },
    ...problemResponses(400, 401, 403, 409, 413, 415),
  },
});

const listInvitationsRoute = createRoute({
  method: "get",
  path: "/v1/organization/invitations",
  tags: ["Organization"],
  summary: "Pending invitations",
  description: "Admins and owners.",
  security,
  middleware: [requireMember("admin")] as const,
  request: { query: OrganizationQuery },
  responses: {
    200: {
      description: "Pending invitations, newest first",
      content: { "application/json": { schema: z.object({ invitations: z.array(InvitationSchema) }) } },
    },
    ...problemResponses(400, 401, 403),
  },
});

const revokeInvitationRoute = createRoute({
  method: "delete",
  path: "/v1/organization/invitations/{id}",
  tags: ["Organization"],
  summary: "Revoke a pending invitation",
  description: "Admins and owners; an invitation to an owner only by an owner.",
  security,
  middleware: [requireMember("admin")] as const,
  request: { params: IdParam, query: OrganizationQuery },
  responses: {
    200: { description: "The revoked invitation", content: { "application/json": { schema: InvitationSchema } } },
    ...problemResponses(400, 401, 403, 404),
  },
});

const invitationPageRoute = createRoute({
  method: "get",
  path: "/invitations/accept",
  tags: ["Organization"],
  summary: "The page an invitation link opens",
  description: "Shows the invitation with an Accept button. Loading it never uses the link (mail scanners load links).",
  middleware: [abuseBrake()] as const,
  request: { query: z.object({ token: z.string().max(200).optional() }) },
  responses: {
    200: { description: "The page", content: { "text/html": { schema: z.string() } } },
    ...problemResponses(400, 401, 409, 429),
  },
});

const acceptRoute = createRoute({
  method: "post",
  path: "/invitations/accept",
  tags: ["Organization"],
  summary: "Accept an invitation",
  description:
    "Form field `token`. Uses the link once, makes its address's person a member, signs them in and redirects to `/account`. Refused (403) while signed in as another address; used, revoked, expired and unknown links are 401; an invitation whose inviter has left or may no longer give its role is 409 `invalid_state` and stays unused.",
  middleware: [abuseBrake()] as const,
  request: {
    body: {
      content: {
        "application/x-www-form-urlencoded": { schema: { $ref: "#/components/schemas/InvitationAcceptForm" } },
      },
      required: true,
    },
  },
  responses: {
    303: { description: "Accepted; on to /account" },
    ...problemResponses(400, 401, 403, 409, 415, 429),
  },
});

/** Members, invitations and the invitation page, mounted at `/` by the app. */
export const organizationRoutes = newRouter();
organizationRoutes.openAPIRegistry.register("MemberRoleChange", RoleChange);
organizationRoutes.openAPIRegistry.register("NewInvitation", NewInvitation);
organizationRoutes.openAPIRegistry.register("InvitationAcceptForm", AcceptForm);

organizationRoutes
  .openapi(listMembersRoute, async (c) => {
    const member = currentMember(c);
    return c.json({ members: await listMembers(c.get("services"), member.organizationId) }, 200);
  })
  .openapi(changeRoleRoute, async (c) => {
    const { role } = await readBody(c, RoleChange);
    const changed = await changeMemberRole(c.get("services"), currentMember(c), c.req.valid("param").id, role);
    return c.json(changed, 200);
  })
  .openapi(removeMemberRoute, async (c) => {
    const removed = await removeMember(c.get("services"), currentMember(c), c.req.valid("param").id);
    return c.json(removed, 200);
  })
  .openapi(inviteRoute, async (c) => {
    const services = c.get("services");
    const input = await readBody(c, NewInvitation);
    const invitation = await inviteMember(services, currentMember(c), input);
    c.executionCtx.waitUntil(deliverDueMail(services));
    return c.json(invitation, 201);
  })
  .openapi(listInvitationsRoute, async (c) => {
    const services = c.get("services");
    return c.json({ invitations: await listInvitations(services, currentMember(c).organizationId) }, 200);
  })
  .openapi(revokeInvitationRoute, async (c) => {
    const revoked = await revokeInvitation(c.get("services"), currentMember(c), c.req.valid("param").id);
    return c.json(revoked, 200);
  })
  .openapi(invitationPageRoute, (c) =>
    withRefusalPage(c, "This invitation cannot be used", async () => {
      noStore(c);
      const token = c.req.valid("query").token ?? "";
      const { invitation, organizationName } = await pendingInvitation(c.get("services"), token);
      await assertInviterMayGive(c.get("services"), invitation);
      return c.html(InvitationPage({ token, organizationName, role: invitation.role, email: invitation.email }), 200);
    }),
  )
  .openapi(acceptRoute, (c) =>
    withRefusalPage(c, "This invitation cannot be used", async () => {
      assertSameSite(c);
      noStore(c);
      const { token } = await readBody(c, AcceptForm, { form: true });
      const signedIn = await currentSession(c);
      const accepted = await acceptInvitation(c.get("services"), token, signedIn?.user ?? null, sessionRequest(c));
      if (accepted.session) setSessionCookie(c, accepted.session.secret, accepted.session.expiresAt);
      return c.redirect("/account", 303);
    }),
  );
