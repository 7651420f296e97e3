/**
 * Asks the guard model whether a conversation is safe. Llama Guard answers a chat completion whose
 * text is `safe`, or `unsafe` and on the next line the violated categories (`S1,S10`).
 */
import type { GuardBackend } from "./settings";

/** One turn of the conversation the guard judges. */
export interface GuardTurn {
  role: "user" | "assistant";
  content: string;
}

export type GuardVerdict =
  | { kind: "safe" }
  | { kind: "unsafe"; categories: string[] }
  /** The guard failed, timed out or said something else: `reason` is for the logs. */
  | { kind: "unavailable"; reason: string };

const CATEGORY = /^S\d{1,2}$/;

/** Reads Llama Guard's answer text; anything but `safe` or `unsafe` is not a verdict. */
export function readGuardAnswer(text: string): GuardVerdict {
  const [first = "", second = ""] = text.trim().split(/\r?\n/);
  const word = first.trim().toLowerCase();
  if (word === "safe") return { kind: "safe" };
  if (word !== "unsafe") return { kind: "unavailable", reason: "unreadable verdict" };
  const categories = [
    ...new Set(
      second
        .split(",")
        .map((c) => c.trim().toUpperCase())
        .filter((c) => CATEGORY.test(c)),
    ),
  ];
  return { kind: "unsafe", categories };
}

/** The text of a chat message's content: a string, or the text parts of an array of parts. */
export function contentText(content: unknown): string {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  const texts: string[] = [];
  for (const part of content) {
    if (typeof part !== "object" || part === null || !Object.hasOwn(part, "text")) continue;
    const text = (part as { text: unknown }).text;
    if (typeof text === "string") texts.push(text);
  }
  return texts.join("\n");
}

/**
 * Sends `turns` to the guard server and reads its verdict. Never throws: a failure is a verdict
 * of its own, which the organization's mode turns into serving or refusing.
 */
export async function classifyConversation(
  backend: GuardBackend,
  turns: readonly GuardTurn[],
  fetcher: typeof fetch,
): Promise<GuardVerdict> {
  const headers: Record<string, string> = { "content-type": "application/json", accept: "application/json" };
  if (backend.apiKey) headers.authorization = `Bearer ${backend.apiKey}`;
  let response: Response;
  try {
    response = await fetcher(`${backend.url}/v1/chat/completions`, {
      method: "POST",
      headers,
      body: JSON.stringify({ model: backend.servedModel, messages: turns, max_tokens: 20, temperature: 0 }),
      redirect: "manual",
      signal: AbortSignal.timeout(backend.timeoutMs),
    });
  } catch (error) {
    return {
      kind: "unavailable",
      reason: error instanceof Error && error.name === "TimeoutError" ? "timeout" : "connect",
    };
  }
  if (!response.ok) {
    await response.body?.cancel();
    return { kind: "unavailable", reason: `status ${response.status}` };
  }
  let json: unknown;
  try {
    json = await response.json();
  } catch {
    return { kind: "unavailable", reason: "unreadable answer" };
  }
  const choices = (json as { choices?: unknown } | null)?.choices;
  const first = Array.isArray(choices) ? (choices[0] as { message?: { content?: unknown } } | undefined) : undefined;
  const text = first?.message?.content;
  if (typeof text !== "string") return { kind: "unavailable", reason: "no answer text" };
  return readGuardAnswer(text);
}
