import { join } from "node:path";
import { expect } from "bun:test";
import type { ClickHouseClient } from "@clickhouse/client";
import { connect } from "@nats-io/transport-node";
import { DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { rows } from "./warehouse.ts";

/**
 * What the destination tests share: the node's public answers about a pipeline, the commands a
 * user runs (`check`, `dlq`), and ground truth read from a receiving Tributary (its ClickHouse
 * database, its JetStream stream in order).
 */

const ROOT = join(import.meta.dir, "../..");

/** Runs `scripts/<name>.ts` as `npm run <name>` would, to its end (killed after `timeout`). */
export async function runScript(
  name: string,
  args: string[],
  env: Record<string, string | undefined>,
  timeout = 60_000,
): Promise<{ code: number; out: string; err: string }> {
  const p = Bun.spawn([process.execPath, join(ROOT, "scripts", `${name}.ts`), ...args], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: "error", NO_COLOR: "1", ...env },
    stdout: "pipe",
    stderr: "pipe",
    timeout,
  });
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  return { code: await p.exited, out, err };
}

/** `dlq --json`'s letters (one JSON document per line). */
export const jsonLines = (out: string): any[] =>
  out
    .trim()
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l));

/** The messageIds a dead letter holds, whether it keeps one event or a batch of them. */
export function letterIds(letter: any): string[] {
  if (typeof letter.messageId === "string") return [letter.messageId];
  const e = letter.event ?? letter.events ?? letter.batch;
  const list = Array.isArray(e) ? e : e ? [e] : [];
  return list.map((x: any) => x?.messageId).filter((x: unknown): x is string => typeof x === "string");
}

/** One pipeline's entry of GET /v1/pipelines. */
export async function pipelineSnapshot(
  url: string,
  adminToken: string,
  connection: string,
  pipeline: string,
): Promise<Record<string, any> | undefined> {
  const r = await fetch(`${url}/v1/pipelines`, { headers: { Authorization: `Bearer ${adminToken}` } });
  const all = ((await r.json()) as { pipelines: Record<string, any>[] }).pipelines;
  return all.find((p) => p.connection === connection && p.pipeline === pipeline);
}

/** A counter of a snapshot by name, at the top level or in one nested object (`export: {sent}`). */
export function counter(snapshot: Record<string, any> | undefined, name: string): number | undefined {
  if (!snapshot) return undefined;
  if (typeof snapshot[name] === "number") return snapshot[name];
  for (const v of Object.values(snapshot))
    if (v && typeof v === "object" && !Array.isArray(v) && typeof v[name] === "number") return v[name];
  return undefined;
}

/** Polls until `check` holds (or fails with `what` and the last value seen). */
export async function waitFor<T>(
  get: () => Promise<T> | T,
  check: (v: T) => boolean,
  what: string,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  for (;;) {
    try {
      last = await get();
      if (check(last)) return last;
    } catch {}
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(last)}`);
    await Bun.sleep(200);
  }
}

/**
 * Exactly once in a receiving node's database: every id in `expected` is in `<database>.events FINAL`
 * for the connection (waiting up to `timeoutMs`), none twice, and nothing else is there.
 */
export async function expectExactlyOnceIn(
  db: ClickHouseClient,
  database: string,
  connection: string,
  expected: string[],
  o: { timeoutMs?: number } = {},
): Promise<void> {
  const timeoutMs = o.timeoutMs ?? 90_000;
  expect(new Set(expected).size).toBe(expected.length);
  const q = `SELECT message_id AS m, count() AS c FROM ${database}.events FINAL WHERE connection = '${connection}' GROUP BY m`;
  const deadline = Date.now() + timeoutMs;
  let have = new Map<string, number>();
  let missing: string[] = [];
  for (;;) {
    have = await rows<{ m: string; c: string }>(db, q)
      .then((r) => new Map(r.map((x) => [x.m, Number(x.c)])))
      .catch(() => have);
    missing = expected.filter((id) => !have.has(id));
    if (!missing.length || Date.now() > deadline) break;
    await Bun.sleep(300);
  }
  const want = new Set(expected);
  const twice = [...have].filter(([, c]) => c > 1).map(([m]) => m);
  const extra = [...have.keys()].filter((m) => !want.has(m));
  expect({
    missing: missing.length,
    sample: missing.slice(0, 5),
    twice: twice.slice(0, 5),
    extra: extra.slice(0, 5),
  }).toEqual({ missing: 0, sample: [], twice: [], extra: [] });
}

/**
 * Every event a Tributary stored for a connection, in stream order (the order its ingest accepted
 * them), read from its nats-server with an ordered consumer.
 */
export async function streamEvents(natsUrl: string, connection: string): Promise<Record<string, any>[]> {
  const nc = await connect({ servers: natsUrl });
  try {
    const jsm = await jetstreamManager(nc);
    const subject = `tributary.events.${connection}.*`;
    const info = await jsm.streams.info("TRIBUTARY_EVENTS", { subjects_filter: subject });
    const total = Object.values(info.state.subjects ?? {}).reduce((a, n) => a + (n as number), 0);
    const out: Record<string, any>[] = [];
    if (!total) return out;
    const c = await jetstream(nc).consumers.get("TRIBUTARY_EVENTS", {
      filter_subjects: subject,
      deliver_policy: DeliverPolicy.All,
    });
    const messages = await c.consume();
    let seen = 0;
    for await (const m of messages) {
      const v = m.json() as Record<string, any> | Record<string, any>[];
      out.push(...(Array.isArray(v) ? v : [v]));
      if (++seen >= total) break;
    }
    messages.stop();
    return out;
  } finally {
    await nc.close();
  }
}

/** Per user (userId, else anonymousId), the messageIds of `events` in their order. */
export function idsByUser(events: Record<string, any>[]): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const e of events) {
    const u = String(e.userId ?? e.anonymousId ?? "");
    out.set(u, [...(out.get(u) ?? []), String(e.messageId)]);
  }
  return out;
}
