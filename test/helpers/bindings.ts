import { env } from "cloudflare:test";

/**
 * A binding's own member `key`, its methods bound to it: what a proxy over a D1, R2 or Durable
 * Object binding hands on for every member it does not replace (native objects check their
 * receiver, so an unbound method would fail).
 */
export function boundMember(target: object, key: string | symbol): unknown {
  const value = Reflect.get(target, key, target);
  return typeof value === "function" ? value.bind(target) : value;
}

/**
 * The test database with its batches held until `release()`: a batch is where an audited write's
 * statements go once its plan has read what it decided on. `poised` settles when `count` wait.
 */
export function heldWrites(count: number) {
  let release = () => {};
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  let markPoised = () => {};
  const poised = new Promise<void>((resolve) => {
    markPoised = resolve;
  });
  let waiting = 0;
  const db = new Proxy(env.DB, {
    get(target, key) {
      if (key !== "batch") return boundMember(target, key);
      return async (statements: D1PreparedStatement[]) => {
        waiting += 1;
        if (waiting === count) markPoised();
        await released;
        return target.batch(statements);
      };
    },
  });
  return { db, poised, release };
}
