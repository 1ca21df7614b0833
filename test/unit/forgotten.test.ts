import { afterAll, beforeAll, expect, test } from "bun:test";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { startNats } from "../harness/services.ts";
import { compileFilter } from "../../src/expr/index.ts";
import { selectEvents } from "../../src/event/selection.ts";
import { PipelineStats } from "../../src/pipeline/stats.ts";
import {
  addTombstones,
  liftTombstones,
  openForgotten,
  tombstoneKey,
  watchForgotten,
} from "../../src/pipeline/users/forgotten.ts";

/**
 * Tombstones of forgotten users (issue 21): hashed in KV, watched by every pipeline process, and
 * checked by selection before any filter, so every pipeline (live or replayed) drops and counts
 * the events of a forgotten userId or anonymousId. End to end: test/integration/identity-forget.
 */
let nats: Awaited<ReturnType<typeof startNats>>;
let nc: NatsConnection;
beforeAll(async () => {
  nats = await startNats();
  nc = await connect({ servers: nats.url });
});
afterAll(async () => {
  await nc?.close();
  await nats?.cleanup();
});

const message = (events: unknown[]) => ({ seq: 1, json: <T>() => events as T });
const select = async (events: unknown[]) => {
  const stats = new PipelineStats();
  const kept: Record<string, unknown>[] = [];
  await selectEvents(message(events), { filter: compileFilter(undefined), takes: "events" }, stats, kept);
  return { stats, kept: kept.map((e) => e.messageId) };
};
const events = [
  { type: "track", messageId: "m1", userId: "gone" },
  { type: "track", messageId: "m2", anonymousId: "gone-device" },
  { type: "track", messageId: "m3", userId: "kept", anonymousId: "other" },
  // A forgotten id as the other kind of id is not the same id.
  { type: "track", messageId: "m4", anonymousId: "gone" },
];

test("a watched tombstone drops that id's events in every selection, counted as forgotten; lifting it lets them in", async () => {
  const kv = await openForgotten(jetstream(nc));
  expect(tombstoneKey("u", "gone")).not.toContain("gone");
  await addTombstones(kv, [
    { kind: "u", id: "gone" },
    { kind: "a", id: "gone-device" },
  ]);
  const stop = await watchForgotten(jetstream(nc));
  try {
    const r = await select(events);
    expect(r.kept).toEqual(["m3", "m4"]);
    expect({ received: r.stats.received, forgotten: r.stats.forgotten }).toEqual({ received: 2, forgotten: 2 });
    // --undo of one id lifts every tombstone of that forget.
    expect(await liftTombstones(kv, "gone-device")).toBe(2);
    for (let i = 0; i < 50 && (await select(events)).kept.length < 4; i++) await Bun.sleep(20);
    expect((await select(events)).kept).toEqual(["m1", "m2", "m3", "m4"]);
    // A new tombstone reaches a running watch.
    await addTombstones(kv, [{ kind: "u", id: "kept" }]);
    for (let i = 0; i < 50 && (await select(events)).kept.length > 3; i++) await Bun.sleep(20);
    expect((await select(events)).kept).toEqual(["m1", "m2", "m4"]);
  } finally {
    stop();
  }
  expect((await select(events)).kept).toEqual(["m1", "m2", "m3", "m4"]);
});
