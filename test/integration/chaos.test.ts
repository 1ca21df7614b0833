import { beforeAll, expect, test } from "bun:test";
import { FAULT_KINDS, formatChaos, runChaos, type ChaosResult } from "../harness/chaos-run.ts";

/**
 * `bun run chaos`, shortened: two nodes, NATS and ClickHouse under sustained load from several
 * clients while a seeded schedule kills (-9) and restarts, pauses (SIGSTOP/SIGCONT) each of
 * them and fills the stream's byte limit. Every messageId answered 2xx must be in
 * `tributary.events FINAL` exactly once. A new seed each run (printed; CHAOS_SEED replays one):
 * `bun run chaos --seed <seed>` reruns a failing schedule at full length.
 */

const seed = process.env.CHAOS_SEED ? Number(process.env.CHAOS_SEED) : Math.floor(Math.random() * 2 ** 31);
let r: ChaosResult;

beforeAll(async () => {
  r = await runChaos({ seconds: 25, seed, short: true, log: (l) => console.error(l) });
  console.error(formatChaos(r));
}, 120_000);

test(`chaos (seed ${seed}): every accepted event is in ClickHouse exactly once`, () => {
  expect(r.accepted).toBeGreaterThan(10_000);
  expect({ missing: r.missing, sample: r.missingSample }).toEqual({ missing: 0, sample: [] });
  expect({ duplicated: r.duplicated, sample: r.duplicatedSample }).toEqual({ duplicated: 0, sample: [] });
  expect(r.phantom).toBe(0);
  expect(r.anomalies).toEqual([]);
  expect(r.drained).toBe(true);
});

test(`chaos (seed ${seed}): every kind of fault ran`, () => {
  const ran = new Set(r.steps.map((s) => s.kind));
  for (const k of FAULT_KINDS) expect(ran.has(k)).toBe(true);
});

test(`chaos (seed ${seed}): a full stream is refused with 503, and acceptance resumes after every fault`, () => {
  const full = r.steps.filter((s) => s.kind === "stream-full");
  expect(full.every((s) => s.s503 > 0)).toBe(true);
  // The price of each fault is paid while it lasts, not after it.
  const stuck = r.steps.filter((s) => s.kind !== "steady" && s.kind !== "cool-down" && s.backToOkMs === undefined).map((s) => `#${s.index} ${s.label}`);
  expect(stuck).toEqual([]);
});
