import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Session } from "chdb";
import { chRows, connectChdbWarehouse, loadChdb, openSession, type ChdbWarehouse } from "../harness/chdb.ts";
import { startNats, startTestNode } from "../harness/services.ts";
import { PipelineManager } from "../../src/pipeline/manager.ts";
import { ensureDlqStream } from "../../src/bus/dead-letters.ts";
import type { RunningNode } from "../../src/node.ts";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { chExec } from "../harness/chdb.ts";
import { migrateUsersTable } from "../../src/pipeline/users/users-table.ts";
import { migrateEventsTable } from "../../src/sink/clickhouse/events-table.ts";
import { ProfileStore } from "../../src/pipeline/users/profiles.ts";
import { createTransform } from "../../src/pipeline/transform/index.ts";
import { UsersStage } from "../../src/pipeline/users/users-stage.ts";
import { PipelineStats } from "../../src/pipeline/stats.ts";
import { currentProfileQuery } from "../../src/pipeline/users/identities-table.ts";
import { resolveWarehouse } from "../../src/pipeline/users/resolve-warehouse.ts";

/**
 * Issue 16 #1, datetimes, on a server with DateTime64 (chDB, a current engine in-process; CI's
 * Debian 18.16 stores datetimes as UInt64). Events go in over HTTP to a node whose users pipeline
 * runs against chDB. Before the model check knew the calendar and the column's range,
 * "2024-13-45" or 9007199254740991 passed it, toCell threw `RangeError: Invalid Date`, and the
 * batch (and every later one touching that profile) was never acknowledged.
 */
const chdb = await loadChdb();
const KEY = "key-users-chdb-0001";
const files = {
  "customer-model.yaml": `customerModel:\n  plan: string\n  signed_up_at: datetime\n  dates: array(datetime)\n`,
  "dates.yaml": `connection: dates
source: webhook
writeKeys: ["${KEY}"]
pipelines:
  - name: users
    import: users
    transform:
      mapping:
        plan: traits.plan
        signed_up_at: traits.at
        dates: traits.dates
`,
};

describe.skipIf(!chdb)("users datetimes on a DateTime64 server (chDB)", () => {
  let dir: string;
  let session: Session;
  let w: ChdbWarehouse;
  let nats: Awaited<ReturnType<typeof startNats>>;
  let node: RunningNode;
  let manager: PipelineManager;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "tributary-users-chdb-"));
    session = openSession(chdb!, dir);
    w = await connectChdbWarehouse(session, "tributary");
    nats = await startNats();
    // No CLICKHOUSE_URL: the node ingests; its users pipeline runs here, on chDB.
    node = await startTestNode(nats.url, files);
    await ensureDlqStream(node.bus.jsm, 1);
    manager = new PipelineManager(node.bus, w, {
      maxRows: 1000,
      maxBytes: 8 * 1024 * 1024,
      maxAgeMs: 100,
      ackWaitMs: 2000,
    });
    await manager.apply(node.config.current);
    expect([...manager.workers.keys()]).toEqual(["dates/users"]);
  }, 60_000);
  afterAll(async () => {
    for (const wk of manager?.workers.values() ?? []) await wk.stop();
    await node?.stop();
    await nats?.cleanup();
    session?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  let seq = 0;
  const identify = (userId: string, traits: Record<string, unknown>, timestamp = "2025-06-01T00:00:00.000Z") => ({
    type: "identify",
    userId,
    messageId: `chdb-${++seq}`,
    timestamp,
    traits,
  });
  const post = async (events: unknown[]) => {
    const r = await fetch(`${node.url}/v1/batch`, {
      method: "POST",
      headers: { Authorization: `Bearer ${KEY}` },
      body: JSON.stringify({ batch: events }),
    });
    expect(r.status).toBe(200);
    expect(((await r.json()) as any).rejected ?? []).toEqual([]);
  };
  async function until<T>(f: () => Promise<T> | T, ok: (v: T) => boolean, timeoutMs = 60_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    let v = await f();
    while (!ok(v) && Date.now() < deadline) {
      await Bun.sleep(200);
      v = await f();
    }
    if (!ok(v)) throw new Error(`timed out; last: ${JSON.stringify(v).slice(0, 3000)}`);
    return v;
  }
  const snapshot = async () => (await manager.snapshots())[0]!;
  const users = () =>
    chRows<any>(
      w,
      `SELECT user_id, plan, toString(signed_up_at) AS at, arrayMap(d -> toString(d), dates) AS dates FROM tributary.users FINAL ORDER BY user_id`,
    );

  test("impossible or unstorable datetimes fail their event and are dead-lettered; the rest of the batch and later updates of the profile land", async () => {
    expect(w.features.dateTime64).toBe(true);
    const bad: unknown[] = [
      "2024-13-45",
      9007199254740991,
      "2023-02-29",
      "2024-06-31T00:00:00Z",
      "2024-01-01T12:60:00Z",
      "1899-12-31T23:59:59.999Z",
      "2300-01-01T00:00:00Z",
      -2208988800001,
      "2024-01-01T00:00:00+24:00",
    ];
    const refused = bad.map((v) => identify("dates-user", { at: v }));
    const inArray = identify("dates-user", { dates: ["2024-01-01", "2024-02-30"] });
    const early = identify("dates-early", { plan: "x" }, "1850-01-01T00:00:00.000Z");
    await post([
      identify("dates-user", {
        at: "2024-02-29T12:00:00.250Z",
        plan: "first",
        dates: ["1900-01-01T00:00:00Z", "2299-12-31T23:59:59.999Z", -2208988800000],
      }),
      ...refused,
      inArray,
      early,
      identify("dates-bystander", { at: 1735689600000, plan: "b" }),
    ]);
    const s = await until(snapshot, (x) => x.lag === 0 && x.failed >= bad.length + 2);
    expect(s).toMatchObject({
      failed: bad.length + 2,
      deadLettered: bad.length + 2,
      deadLetters: bad.length + 2,
      lag: 0,
    });
    refused.forEach((e, i) => {
      const err = s.lastErrors.find((x) => x.messageId === e.messageId)?.error;
      expect(`${JSON.stringify(bad[i])} → ${err}`).toContain(
        `property "signed_up_at" must be datetime, got ${JSON.stringify(bad[i])}`,
      );
    });
    expect(s.lastErrors.find((x) => x.messageId === inArray.messageId)?.error).toContain(
      `property "dates" must be array(datetime), got "2024-02-30": day 30 does not exist in 2024-02`,
    );
    expect(s.lastErrors.find((x) => x.messageId === early.messageId)?.error).toContain(
      "is outside the range the users table stores (1900-01-01T00:00:00.000Z .. 2299-12-31T23:59:59.999Z)",
    );

    // The profile is not poisoned: a later update lands.
    await post([identify("dates-user", { plan: "second" }, "2025-06-02T00:00:00.000Z")]);
    const r = await until(users, (x) => x.length === 2 && x[1]?.plan === "second");
    expect(r).toEqual([
      { user_id: "dates-bystander", plan: "b", at: "2025-01-01 00:00:00.000", dates: [] },
      {
        user_id: "dates-user",
        plan: "second",
        at: "2024-02-29 12:00:00.250",
        dates: ["1900-01-01 00:00:00.000", "2299-12-31 23:59:59.999", "1900-01-01 00:00:00.000"],
      },
    ]);
  }, 120_000);
});

/**
 * Issue 21 on a current engine: the identities and profile_map tables (created beside users),
 * rows written by a users stage with identifiers, the documented join from events to each event's
 * current profile, and `resolve` (its ALTER … DELETE and the wait on system.mutations). The same
 * run on 18.16 is test/integration/identity-*.test.ts.
 */
describe.skipIf(!chdb)("identities, profile_map and resolve on a current engine (chDB)", () => {
  let dir: string;
  let session: Session;
  let w: ChdbWarehouse;
  let nats: Awaited<ReturnType<typeof startNats>>;
  let nc: NatsConnection;
  const model = { email: "string", plan: "string" };
  const rules = { identifiers: ["email"], mergeUserIds: false };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "tributary-identity-chdb-"));
    session = openSession(chdb!, dir);
    w = await connectChdbWarehouse(session, "tributary");
    nats = await startNats();
    nc = await connect({ servers: nats.url });
  }, 60_000);
  afterAll(async () => {
    await nc?.close();
    await nats?.cleanup();
    session?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("users rows, identities, profile_map and the current-profile join; resolve splits back", async () => {
    await migrateUsersTable(w, model, false);
    await migrateEventsTable(w);
    const tables = chRows<{ name: string }>(
      w,
      "SELECT name FROM system.tables WHERE database = 'tributary' ORDER BY name",
    );
    expect(tables.map((t) => t.name)).toEqual(["events", "identities", "profile_map", "users"]);
    const profiles = await ProfileStore.open(jetstream(nc));
    const transform = await createTransform({ mapping: { email: "traits.email", plan: "traits.plan" } });
    const stage = new UsersStage("users", transform, model, profiles, w, "web", undefined, rules);
    const e = (n: number, anonymousId: string, traits: Record<string, unknown>) => ({
      type: "identify",
      messageId: `idc-${n}`,
      anonymousId,
      timestamp: new Date(Date.UTC(2026, 0, 1, 0, n)).toISOString(),
      traits,
    });
    const events = [
      e(1, "c-a1", { email: "x@example.com", plan: "free" }),
      e(2, "c-a2", { email: "x@example.com", plan: "pro" }),
    ];
    for (const ev of events) {
      const rows = await stage.toRows([ev], new PipelineStats());
      await w.client.insert({ table: "tributary.users", values: rows, format: "JSONEachRow" });
      await stage.afterInsert();
      chExec(
        w,
        `INSERT INTO tributary.events (connection, pipeline, message_id, type, anonymous_id) VALUES ('web', 'events', '${ev.messageId}', 'identify', '${ev.anonymousId}')`,
      );
    }
    const users = chRows<any>(w, "SELECT profile_id, anonymous_ids, email, plan FROM tributary.users FINAL");
    expect(users.map((u) => [u.anonymous_ids, u.email, u.plan])).toEqual([[["c-a1", "c-a2"], "x@example.com", "pro"]]);
    const ids = chRows<any>(
      w,
      "SELECT identity, identifiers, profile_id FROM tributary.identities FINAL ORDER BY identity",
    );
    expect(ids.map((i) => [i.identity, JSON.parse(i.identifiers)])).toEqual([
      ["a:c-a1", { email: "x@example.com" }],
      ["a:c-a2", { email: "x@example.com" }],
    ]);
    // c-a1's event was written while c-a1 had a profile of its own; it resolves to the merged one.
    const joined = chRows<any>(w, `${currentProfileQuery("tributary")} ORDER BY message_id`);
    expect(joined).toEqual([
      { message_id: "idc-1", profile_id: users[0].profile_id },
      { message_id: "idc-2", profile_id: users[0].profile_id },
    ]);
    // Without identifiers the two identities are two profiles again.
    const summary = await resolveWarehouse(w, jetstream(nc), await jetstreamManager(nc), model, {
      identifiers: [],
      mergeUserIds: false,
    });
    expect(summary).toMatchObject({ identities: 2, profiles: 2, profilesBefore: 1 });
    const split = chRows<any>(w, "SELECT anonymous_ids, plan FROM tributary.users FINAL ORDER BY plan");
    expect(split).toEqual([
      { anonymous_ids: ["c-a1"], plan: "free" },
      { anonymous_ids: ["c-a2"], plan: "pro" },
    ]);
    const after = chRows<any>(w, `${currentProfileQuery("tributary")} ORDER BY message_id`);
    expect(new Set(after.map((r) => r.profile_id)).size).toBe(2);
    stage.dispose();
  }, 120_000);
});
