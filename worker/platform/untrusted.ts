/**
 * Reading data that came from outside: request bodies, form fields, decoded JWT claims, JSON from
 * other services. Two rules keep such data from reaching the objects the gateway itself runs on:
 * a key chosen by a caller never walks into a plain object (where `__proto__` would reach
 * `Object.prototype`), and an optional property is read only when the data itself holds it (an
 * inherited property is whatever some earlier request managed to put on a prototype).
 */

/** Keys that name an object's prototype machinery rather than data. */
const PROTOTYPE_KEYS: ReadonlySet<string> = new Set(["__proto__", "constructor", "prototype"]);

/** Whether `key` would reach an object's prototype machinery if used as a property name. */
export function isPrototypeKey(key: string): boolean {
  return PROTOTYPE_KEYS.has(key);
}

/** `value[key]` when `value` is an object that holds `key` itself, else `undefined`. */
export function ownProperty(value: unknown, key: string): unknown {
  if (typeof value !== "object" || value === null) return undefined;
  return Object.hasOwn(value, key) ? (value as Record<string, unknown>)[key] : undefined;
}

/** Thrown by `parseUntrustedJson` for a document that holds a prototype key. */
export class PrototypeKeyError extends Error {
  constructor(readonly key: string) {
    super(`The key "${key}" is not allowed.`);
    this.name = "PrototypeKeyError";
  }
}

/**
 * `JSON.parse` that refuses any object key naming prototype machinery, at any depth. `JSON.parse`
 * itself only makes own properties, but the parsed value travels on into spreads, merges and
 * libraries that assign key by key; refusing such keys at the edge means none of them has to care.
 * Throws `SyntaxError` for invalid JSON and `PrototypeKeyError` for a refused key.
 */
export function parseUntrustedJson(text: string): unknown {
  return JSON.parse(text, (key, value) => {
    if (isPrototypeKey(key)) throw new PrototypeKeyError(key);
    return value;
  });
}
