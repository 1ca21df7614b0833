// Exactly once, as queries see it (tributary.events FINAL), request by request and connection by
// connection: every event of every request answered 2xx is stored once, under the connection its
// write key names, and no messageId is there twice (uniqExact alone would let duplicates pass).
// messageIds are b-<tag>-<request number>-<index>; one row per (connection, request) keeps the
// answer small.
import type { LoadResult } from "../loadgen.ts";

export interface Verification {
  /** Events the loadgen got 2xx for, and how many of them are missing / stored twice. */
  answered2xx: number;
  missing: number;
  twice: number;
  /** Events of a 2xx request stored under another connection than its key's. */
  misrouted: number;
  /** Stored though not answered 2xx (a request cut off after the node accepted it): allowed. */
  extra: number;
  /** Events answered 2xx by connection. */
  perConnection: Record<string, number>;
}

type Query = <T>(q: string) => Promise<T[]>;

/** `connectionOf(request)`: the connection the loadgen's key rotation sent that request to. */
export async function verify(
  query: Query,
  connections: readonly string[],
  connectionOf: (request: number) => string,
  batch: number,
  loads: readonly LoadResult[],
): Promise<Verification> {
  const rows = await query<{ connection: string; tag: string; req: string; n: string; u: string }>(
    `SELECT connection, splitByChar('-', message_id)[2] AS tag, toUInt64(splitByChar('-', message_id)[3]) AS req,
            count() AS n, uniqExact(message_id) AS u
     FROM tributary.events FINAL WHERE connection IN (${connections.map((c) => `'${c}'`).join(",")})
     GROUP BY connection, tag, req`,
  );
  const stored = new Map(
    rows.map((r) => [`${r.connection}/${r.tag}/${Number(r.req)}`, { n: Number(r.n), u: Number(r.u) }]),
  );
  const v: Verification = { answered2xx: 0, missing: 0, twice: 0, misrouted: 0, extra: 0, perConnection: {} };
  for (const c of connections) v.perConnection[c] = 0;
  const expected = new Set<string>();
  const okRequests = new Set<string>();
  for (const r of loads) {
    for (const req of r.okRequests) {
      const connection = connectionOf(req);
      const key = `${connection}/${r.tag}/${req}`;
      expected.add(key);
      okRequests.add(`${r.tag}/${req}`);
      v.answered2xx += batch;
      v.perConnection[connection]! += batch;
      v.missing += batch - (stored.get(key)?.u ?? 0);
    }
  }
  for (const [key, x] of stored) {
    v.twice += x.n - x.u;
    if (expected.has(key)) continue;
    const request = key.slice(key.indexOf("/") + 1);
    if (okRequests.has(request)) v.misrouted += x.u;
    else v.extra += x.u;
  }
  return v;
}
