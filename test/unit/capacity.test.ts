import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { StreamCapacity } from "../../src/bus/capacity.ts";
import { capacityDefaults } from "../../src/config/env.ts";
import type { JetStreamManager } from "@nats-io/jetstream";

/**
 * The back-pressure guard's thresholds, read from `capacityDefaults` (what a node runs with), and
 * the README's description of them: the two must not drift apart again (once they said 90/80 %
 * in one place and 80 % in another while the code used 0.8/0.6).
 */

const MAX = 1_000_000;

/** A JetStream manager that reports one durable consumer with `pending` messages of 100 bytes. */
function fakeJsm(state: { pending: number }): JetStreamManager {
  return {
    streams: {
      info: async () => ({
        state: {
          messages: Math.max(1, state.pending),
          bytes: Math.max(1, state.pending) * 100,
          first_seq: 1,
          last_seq: 0,
        },
      }),
      purge: async () => ({ purged: 0 }),
    },
    consumers: {
      list: () =>
        (async function* () {
          yield {
            config: { durable_name: "p", filter_subject: "s" },
            num_pending: state.pending,
            num_ack_pending: 0,
            delivered: { stream_seq: 0, consumer_seq: 0 },
            ack_floor: { stream_seq: 0, consumer_seq: 0 },
          };
        })(),
    },
  } as unknown as JetStreamManager;
}

test("the guard refuses from capacityDefaults.refuseRatio of the limit and accepts again below resumeRatio", async () => {
  const { refuseRatio, resumeRatio } = capacityDefaults;
  expect(resumeRatio).toBeLessThan(refuseRatio);
  const state = { pending: 0 };
  const guard = new StreamCapacity(fakeJsm(state), { ...capacityDefaults, maxBytes: MAX });
  // Backlog in bytes = pending messages × 100.
  const at = async (share: number) => {
    state.pending = Math.round((share * MAX) / 100);
    await guard.check();
    return guard.full;
  };
  expect(await at(refuseRatio - 0.01)).toBe(false);
  expect(await at(refuseRatio)).toBe(true);
  // Hysteresis: still refusing between the two ratios, accepting again only below resumeRatio.
  expect(await at((refuseRatio + resumeRatio) / 2)).toBe(true);
  expect(await at(resumeRatio)).toBe(true);
  expect(await at(resumeRatio - 0.01)).toBe(false);
  expect(await at((refuseRatio + resumeRatio) / 2)).toBe(false);
});

test("the README states the thresholds capacityDefaults uses", () => {
  const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8").replace(/\s+/g, " ");
  const pct = (r: number) => `${Math.round(r * 100)} %`;
  const refuse = [...readme.matchAll(/at (\d+ %) of the limit it answers 503|answers 503 at (\d+ %)/g)].map(
    (m) => m[1] ?? m[2],
  );
  const resume = [...readme.matchAll(/below (\d+ %) it accepts again/g)].map((m) => m[1]);
  expect(refuse.length).toBeGreaterThanOrEqual(2);
  expect(resume.length).toBeGreaterThanOrEqual(1);
  expect(new Set(refuse)).toEqual(new Set([pct(capacityDefaults.refuseRatio)]));
  expect(new Set(resume)).toEqual(new Set([pct(capacityDefaults.resumeRatio)]));
});

test("messages delivered above a stuck ack floor count as not yet freeable: the guard refuses before JetStream does", async () => {
  // One message a killed node never acknowledged holds the floor; 8,000 acknowledged after it
  // cannot be purged until it comes back. Only 10 are unacknowledged, but the stream is full.
  const jsm = {
    streams: {
      info: async () => ({ state: { messages: 8_010, bytes: 8_010 * 100, first_seq: 1, last_seq: 8_010 } }),
      purge: async () => ({ purged: 0 }),
    },
    consumers: {
      list: () =>
        (async function* () {
          yield {
            config: { durable_name: "p", filter_subject: "s" },
            num_pending: 0,
            num_ack_pending: 10,
            delivered: { stream_seq: 8_010, consumer_seq: 8_010 },
            ack_floor: { stream_seq: 0, consumer_seq: 0 },
          };
        })(),
    },
  } as unknown as JetStreamManager;
  const guard = new StreamCapacity(jsm, { ...capacityDefaults, maxBytes: MAX });
  await guard.check();
  expect(guard.full).toBe(true);
});

/** Streams by name, each reporting one durable consumer with its own `pending` messages of 100 bytes. */
function fakePartitions(pending: Record<string, number>): JetStreamManager {
  return {
    streams: {
      info: async (name: string) => ({
        state: {
          messages: Math.max(1, pending[name]!),
          bytes: Math.max(1, pending[name]!) * 100,
          first_seq: 1,
          last_seq: 0,
        },
      }),
      purge: async () => ({ purged: 0 }),
    },
    consumers: {
      list: (name: string) =>
        (async function* () {
          yield {
            config: { durable_name: "p", filter_subject: "s" },
            num_pending: pending[name]!,
            num_ack_pending: 0,
            delivered: { stream_seq: 0, consumer_seq: 0 },
            ack_floor: { stream_seq: 0, consumer_seq: 0 },
          };
        })(),
    },
  } as unknown as JetStreamManager;
}

test("with partitions the budget is split: one partition past its share refuses, though the total is under the limit", async () => {
  const { refuseRatio } = capacityDefaults;
  const streams = ["TRIBUTARY_EVENTS_P0", "TRIBUTARY_EVENTS_P1", "TRIBUTARY_EVENTS_P2"];
  const share = MAX / 3;
  // P0 at its refuse ratio of a third of the budget, the others empty: the total is a third of that.
  const pending = {
    TRIBUTARY_EVENTS_P0: Math.ceil((refuseRatio * share) / 100),
    TRIBUTARY_EVENTS_P1: 0,
    TRIBUTARY_EVENTS_P2: 0,
  };
  const guard = new StreamCapacity(fakePartitions(pending), { ...capacityDefaults, maxBytes: MAX }, streams);
  await guard.check();
  expect(guard.backlogBytes).toBeLessThan(refuseRatio * MAX);
  expect(guard.full).toBe(true);
  // Spread evenly at just under each share's ratio: accepted.
  const under = Math.floor(((refuseRatio - 0.02) * share) / 100);
  for (const s of streams) pending[s as keyof typeof pending] = under;
  const spread = new StreamCapacity(fakePartitions(pending), { ...capacityDefaults, maxBytes: MAX }, streams);
  await spread.check();
  expect(spread.full).toBe(false);
});
