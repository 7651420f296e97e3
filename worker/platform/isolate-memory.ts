/**
 * What an isolate remembers between requests, per owner (a binding, or the client made over it)
 * so that two databases never share entries, and bounded: at `max` entries an owner's map is
 * emptied, which costs only a lookup the entries would have saved.
 */
export class IsolateMemory<V> {
  private readonly maps = new WeakMap<object, Map<string, V>>();

  constructor(private readonly max: number) {}

  get(owner: object, key: string): V | undefined {
    return this.maps.get(owner)?.get(key);
  }

  set(owner: object, key: string, value: V): void {
    let map = this.maps.get(owner);
    if (!map) {
      map = new Map();
      this.maps.set(owner, map);
    }
    if (map.size >= this.max) map.clear();
    map.set(key, value);
  }

  delete(owner: object, key: string): void {
    this.maps.get(owner)?.delete(key);
  }
}
