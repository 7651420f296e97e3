/**
 * A binding's own member `key`, its methods bound to it: what a proxy over a D1, R2 or Durable
 * Object binding hands on for every member it does not replace (native objects check their
 * receiver, so an unbound method would fail).
 */
export function boundMember(target: object, key: string | symbol): unknown {
  const value = Reflect.get(target, key, target);
  return typeof value === "function" ? value.bind(target) : value;
}
