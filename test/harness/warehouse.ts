import { createClient, ClickHouseLogLevel, type ClickHouseClient } from "@clickhouse/client";
import { expect } from "bun:test";

export function chClient(url: string): ClickHouseClient {
  return createClient({ url, log: { level: ClickHouseLogLevel.OFF } });
}

export async function rows<T = Record<string, any>>(c: ClickHouseClient, query: string): Promise<T[]> {
  return (await (await c.query({ query, format: "JSONEachRow" })).json()) as T[];
}

/** Polls until `check` passes on the query's rows, or fails with the last rows seen. */
export async function eventually<T>(
  c: ClickHouseClient,
  query: string,
  check: (r: T[]) => boolean,
  timeoutMs = 20_000,
): Promise<T[]> {
  const deadline = Date.now() + timeoutMs;
  let last: T[] = [];
  while (Date.now() < deadline) {
    try {
      last = await rows<T>(c, query);
      if (check(last)) return last;
    } catch {}
    await Bun.sleep(200);
  }
  throw new Error(`timed out waiting on: ${query}\nlast rows: ${JSON.stringify(last).slice(0, 2000)}`);
}

/**
 * The exactly-once check of the fault tests: waits until every accepted id is in `events FINAL`
 * for the connection, then checks none is there twice. Returns the ids loaded.
 */
export async function expectExactlyOnce(
  c: ClickHouseClient,
  connection: string,
  accepted: string[],
  timeoutMs = 60_000,
): Promise<Set<string>> {
  expect(new Set(accepted).size).toBe(accepted.length); // the load never reuses an id
  const deadline = Date.now() + timeoutMs;
  let missing: string[] = [];
  let have = new Set<string>();
  for (;;) {
    have = await rows<{ m: string }>(
      c,
      `SELECT message_id AS m FROM tributary.events FINAL WHERE connection = '${connection}'`,
    )
      .then((r) => new Set(r.map((x) => x.m)))
      .catch(() => have);
    missing = accepted.filter((id) => !have.has(id));
    if (!missing.length || Date.now() > deadline) break;
    await Bun.sleep(250);
  }
  expect({ missing: missing.length, sample: missing.slice(0, 5) }).toEqual({ missing: 0, sample: [] });
  const twice = await rows(
    c,
    `SELECT message_id, count() AS c FROM tributary.events FINAL WHERE connection = '${connection}' GROUP BY message_id HAVING c > 1 LIMIT 5`,
  );
  expect(twice).toEqual([]);
  return have;
}
