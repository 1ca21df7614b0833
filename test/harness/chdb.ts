import type { ClickHouseClient } from "@clickhouse/client";
import type { Session } from "chdb";
import { featuresOf, quoteIdent, type Warehouse } from "../../src/sink/clickhouse/server.ts";

/**
 * A current ClickHouse engine in-process, through chDB (the npm package `chdb`, which embeds
 * libchdb 26.x). CI's real server is Debian's 18.16, so this is where the DDL and queries written
 * for 24+ servers (DateTime64, LowCardinality) meet a current engine.
 *
 * chdb only publishes a native binding for linux-x64 (glibc) today; `loadChdb()` returns
 * undefined elsewhere so the test can skip, and throws on linux-x64, where it must work.
 */
export type Chdb = typeof import("chdb");

export async function loadChdb(): Promise<Chdb | undefined> {
  try {
    return await import("chdb");
  } catch (e) {
    if (process.platform === "linux" && process.arch === "x64") throw e;
    console.warn(
      `chdb unavailable on ${process.platform}-${process.arch}, skipping: ${(e as Error).message.split("\n")[0]}`,
    );
    return undefined;
  }
}

/** What @clickhouse/client's ClickHouseError carries: the numeric code as a string, and the type. */
export class ChdbServerError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly type: string | undefined,
  ) {
    super(message);
  }
}

function rethrow(e: unknown): never {
  const text = String((e as Error)?.message ?? e);
  const m = /Code: (\d+)\. DB::Exception: ([\s\S]*?)(?: \(([A-Z_]+)\))?\s*$/.exec(text);
  if (m) throw new ChdbServerError(m[2]!.trim(), m[1]!, m[3]);
  throw e;
}

export interface ChdbWarehouse extends Warehouse {
  session: Session;
  /** Every statement the warehouse client was given, in order (inserts without their rows). */
  statements: string[];
}

/** A Session on `path` (state persists there across queries); 64-bit integers come back as JSON numbers. */
export function openSession(chdb: Chdb, path: string): Session {
  return new chdb.Session(path, { connectionArgs: ["--output_format_json_quote_64bit_integers=0"] });
}

/**
 * What connectWarehouse does (`SELECT version()`, featuresOf, `CREATE DATABASE IF NOT EXISTS`), with
 * a client that is the subset of @clickhouse/client src/sink/clickhouse uses (command, query → json,
 * insert JSONEachRow) executed on a chdb Session, so the production functions (migrateEventsTable,
 * Inserter) run unmodified against the embedded engine.
 */
export async function connectChdbWarehouse(session: Session, database: string): Promise<ChdbWarehouse> {
  const statements: string[] = [];
  const run = (sql: string, format = "TabSeparated"): string => {
    try {
      return session.query(sql, format);
    } catch (e) {
      rethrow(e);
    }
  };
  const client = {
    async command({ query }: { query: string }) {
      statements.push(query);
      run(query);
      return {};
    },
    async query({ query, format = "JSON" }: { query: string; format?: string }) {
      statements.push(query);
      const text = run(query, format);
      return {
        text: async () => text,
        json: async () => {
          if (format === "JSONEachRow")
            return text
              .split("\n")
              .filter((l) => l.trim() !== "")
              .map((l) => JSON.parse(l));
          return JSON.parse(text);
        },
      };
    },
    async insert({
      table,
      values,
      format = "JSONCompactEachRow",
    }: {
      table: string;
      values: unknown[];
      format?: string;
    }) {
      if (format !== "JSONEachRow") throw new Error(`chdb warehouse: unsupported insert format ${format}`);
      // What @clickhouse/client sends over HTTP: the statement, then one JSON object per line.
      const query = `INSERT INTO ${table} FORMAT JSONEachRow`;
      statements.push(query);
      run(`${query}\n${values.map((v) => JSON.stringify(v)).join("\n")}`);
      return { executed: true, query_id: "" };
    },
    async close() {},
  };
  // The statements connectWarehouse issues, verbatim.
  const rows = (await (await client.query({ query: "SELECT version() AS v", format: "JSONEachRow" })).json()) as {
    v: string;
  }[];
  const features = featuresOf(rows[0]!.v);
  await client.command({ query: `CREATE DATABASE IF NOT EXISTS ${quoteIdent(database)}` });
  return {
    client: client as unknown as ClickHouseClient,
    features,
    database,
    session,
    statements,
    close: async () => {},
  };
}

/** Rows of a query, straight from the session (not recorded in `statements`). */
export function chRows<T = Record<string, any>>(w: ChdbWarehouse, sql: string): T[] {
  let text: string;
  try {
    text = w.session.query(sql, "JSONEachRow");
  } catch (e) {
    rethrow(e);
  }
  return text
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l) as T);
}

/** Runs a statement straight on the session (setup the code under test does not issue). */
export function chExec(w: ChdbWarehouse, sql: string): void {
  try {
    w.session.query(sql);
  } catch (e) {
    rethrow(e);
  }
}
