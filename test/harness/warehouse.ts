import { createClient, ClickHouseLogLevel, type ClickHouseClient } from "@clickhouse/client";

export function chClient(url: string): ClickHouseClient {
  return createClient({ url, log: { level: ClickHouseLogLevel.OFF } });
}

export async function rows<T = Record<string, any>>(c: ClickHouseClient, query: string): Promise<T[]> {
  return (await (await c.query({ query, format: "JSONEachRow" })).json()) as T[];
}

/** Polls until `check` passes on the query's rows, or fails with the last rows seen. */
export async function eventually<T>(c: ClickHouseClient, query: string, check: (r: T[]) => boolean, timeoutMs = 20_000): Promise<T[]> {
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
