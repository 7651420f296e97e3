/**
 * Acceptable-use screening on the inference path: the prompt before it goes to a backend, and
 * (where the organization asks) a plain answer before it goes to the client, a streamed answer
 * once it ended. What happens with
 * the guard's verdict follows the organization's mode: `off` asks nothing, `log` records a flag
 * and serves, `block` records a flag and refuses with `content_policy_violation`. A guard that
 * fails lets `log` serve (logged as `guard_unavailable`) and makes `block` refuse with 503.
 */
import { AppError } from "../errors";
import type { Services } from "../services";
import { classifyConversation, contentText, type GuardTurn, type GuardVerdict } from "./classify";
import { recordGuardFlag } from "./flags";
import { cachedGuardPolicy, type GuardPolicy } from "./policy";
import { type GuardSettings, guardSettings, SAMPLE_CHARS } from "./settings";

/** One inference request as screening sees it. */
export interface GuardCall {
  services: Services;
  env: Env;
  principal: { organizationId: string; grantId: string; tokenId: string | null };
  usageId: string;
  model: string;
  fetcher: typeof fetch;
  waitUntil: (work: Promise<unknown>) => void;
}

/** The request's text as a conversation; `prompt` for the completions endpoint, `messages` for chat. */
interface ScreenedBody {
  messages?: readonly { role: string; content?: unknown }[];
  prompt?: unknown;
}

/** What screening the prompt decided; `refusal` ends the request. */
export interface PromptScreening {
  policy: GuardPolicy | undefined;
  turns: GuardTurn[];
  refusal: AppError | undefined;
}

const NOT_SCREENED: PromptScreening = { policy: undefined, turns: [], refusal: undefined };

/** The conversation the guard judges: user and assistant turns; system and tool text go in as the user's. */
export function conversationOf(body: ScreenedBody): GuardTurn[] {
  if (Array.isArray(body.messages)) {
    return body.messages
      .map((m): GuardTurn => ({ role: m.role === "assistant" ? "assistant" : "user", content: contentText(m.content) }))
      .filter((turn) => turn.content !== "");
  }
  const prompts = Array.isArray(body.prompt) ? body.prompt : [body.prompt];
  const text = prompts.filter((p): p is string => typeof p === "string").join("\n");
  return text === "" ? [] : [{ role: "user", content: text }];
}

/** Screens the prompt; in `off` mode, or without a guard in this deployment, asks nothing. */
export async function screenPrompt(call: GuardCall, body: ScreenedBody): Promise<PromptScreening> {
  const settings = guardSettings(call.env, call.services.config.inference.allowedHosts);
  if (settings.backend === undefined) return NOT_SCREENED;
  const policy = await cachedGuardPolicy(call.services, call.principal.organizationId, settings.defaultMode);
  if (policy.mode === "off") return NOT_SCREENED;
  const turns = conversationOf(body);
  if (turns.length === 0) return { policy, turns, refusal: undefined };
  const verdict = await judge(settings, turns, call.fetcher);
  return { policy, turns, refusal: act(call, policy, verdict, "prompt", turns) };
}

/** Screens a plain answer's texts, where the organization asked for its answers to be screened. */
export async function screenAnswer(
  call: GuardCall,
  screening: PromptScreening,
  texts: readonly string[] | undefined,
): Promise<AppError | undefined> {
  const { policy } = screening;
  if (!policy?.screenResponses || !texts || texts.length === 0) return undefined;
  const settings = guardSettings(call.env, call.services.config.inference.allowedHosts);
  const turns: GuardTurn[] = [...screening.turns, { role: "assistant", content: texts.join("\n") }];
  const verdict = await judge(settings, turns, call.fetcher);
  return act(call, policy, verdict, "response", turns.slice(-1));
}

/**
 * Screens a streamed answer's text after the stream ended, where the organization asked for its
 * answers to be screened. Its text already reached the client, so an unsafe answer is flagged as
 * logged whatever the mode: `block` refuses streams by their prompt only.
 */
export async function screenStreamedAnswer(
  call: GuardCall,
  screening: PromptScreening,
  text: string | undefined,
): Promise<void> {
  const { policy } = screening;
  if (!policy || !text) return;
  // Judged as a plain answer is, in `log` mode: there is nothing left to refuse, only to flag.
  await screenAnswer(call, { ...screening, policy: { ...policy, mode: "log" } }, [text]);
}

async function judge(settings: GuardSettings, turns: GuardTurn[], fetcher: typeof fetch): Promise<GuardVerdict> {
  const backend = settings.backend;
  if (backend === undefined) return { kind: "safe" };
  if ("problem" in backend) return { kind: "unavailable", reason: `GUARD_BACKEND refused: ${backend.problem}` };
  return classifyConversation(backend, turns, fetcher);
}

/** Turns a verdict into a flag and, in `block` mode, a refusal. */
function act(
  call: GuardCall,
  policy: GuardPolicy,
  verdict: GuardVerdict,
  stage: "prompt" | "response",
  turns: readonly GuardTurn[],
): AppError | undefined {
  const { services, principal } = call;
  if (verdict.kind === "safe") return undefined;
  if (verdict.kind === "unavailable") {
    services.log.warn("guard_unavailable", {
      organizationId: principal.organizationId,
      usageId: call.usageId,
      stage,
      mode: policy.mode,
      reason: verdict.reason,
    });
    if (policy.mode !== "block") return undefined;
    return new AppError("service_unavailable", "The content policy check is unavailable; retry shortly.", {
      headers: { "retry-after": "5" },
    });
  }
  const blocked = policy.mode === "block";
  const sample = policy.storeSamples
    ? turns
        .map((t) => `${t.role}: ${t.content}`)
        .join("\n")
        .slice(0, SAMPLE_CHARS)
    : null;
  call.waitUntil(
    recordGuardFlag(services, {
      id: services.ids.id("gfl"),
      organizationId: principal.organizationId,
      grantId: principal.grantId,
      tokenId: principal.tokenId,
      usageId: call.usageId,
      model: call.model,
      stage,
      action: blocked ? "blocked" : "logged",
      categories: verdict.categories,
      sample,
      createdAt: services.clock.now().toISOString(),
    }).catch((error: unknown) =>
      services.log.error("guard flag not recorded", { usageId: call.usageId, error: String(error) }),
    ),
  );
  if (!blocked) return undefined;
  const what = stage === "prompt" ? "This request" : "The model's answer";
  return new AppError(
    "validation_failed",
    `${what} was refused by the content policy (${verdict.categories.join(", ") || "unsafe"}).`,
    {
      extensions: { openaiCode: "content_policy_violation", categories: verdict.categories },
    },
  );
}
