import { drizzle } from "drizzle-orm/d1";
import * as schema from "./schema";

function newDatabase(binding: D1Database) {
  return drizzle(binding, { schema });
}

export type Database = ReturnType<typeof newDatabase>;

/** One Drizzle client per binding: building one walks the whole schema, too slow for every request. */
const clients = new WeakMap<D1Database, Database>();

/** The Drizzle client over the D1 binding. */
export function createDatabase(binding: D1Database): Database {
  let db = clients.get(binding);
  if (!db) {
    db = newDatabase(binding);
    clients.set(binding, db);
  }
  return db;
}
