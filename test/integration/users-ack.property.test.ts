import { expect, test } from "bun:test";
import fc from "fast-check";
import { useStack } from "../harness/stack.ts";
import { rows } from "../harness/warehouse.ts";

/**
 * Issue 16 #1, property: no sequence of events through a users pipeline holds back
 * acknowledgements for longer than one ack_wait. With TRIBUTARY_ACK_WAIT_MS = 2000, runs of
 * random identify / alias / track events over a small shared pool of ids (some past the id limit,
 * some with 100 KiB traits that overflow a profile, impossible datetimes, wrong types) go in over
 * HTTP, followed by a sentinel user. After each run: the sentinel is loaded, nothing is pending
 * or unacknowledged, no message was ever delivered twice (a batch left unacknowledged past
 * ack_wait is redelivered and its events counted again), and every failed event is dead-lettered.
 * Today's main (f223c8b) fails the first run that overflows a profile: the batch is never acked.
 */

const ACK_WAIT_MS = 2000;
const SEED = 160116;
const RUNS = 30;
const ADMIN = "users-ack-admin-token";
const KEY = "key-users-ack-0001";
const stack = useStack(
  {
    "customer-model.yaml": `customerModel:\n  plan: string\n  note_a: string\n  note_b: string\n  note_c: string\n  note_d: string\n  note_e: string\n  at: datetime\n  n: int\n`,
    "ack.yaml": `connection: ack
source: webhook
writeKeys: ["${KEY}"]
pipelines:
  - name: users
    import: users
    transform:
      mapping:
        plan: traits.plan
        note_a: traits.a
        note_b: traits.b
        note_c: traits.c
        note_d: traits.d
        note_e: traits.e
        at: traits.at
        n: traits.n
`,
  },
  { adminToken: ADMIN, ackWaitMs: ACK_WAIT_MS },
);

const LONG_ID = "L".repeat(1500);
// Within the 256 KiB event limit; five on one profile are past NATS' 1 MiB max_payload.
const BIG = "x".repeat(200 * 1024);
// The reproduction: five 230 kB anonymous ids linked to one user.
const HUGE_IDS = [1, 2, 3, 4, 5].map((n) => `huge-${n}-` + "h".repeat(230 * 1024));
const userIds = fc.constantFrom<string | undefined>("u1", "u1", "u2", LONG_ID, undefined);
const anonIds = fc.constantFrom<string | undefined>("a1", "a2", "a3", LONG_ID, ...HUGE_IDS, undefined);
const big = fc.constantFrom("s", BIG);
const traits = fc.record(
  {
    plan: fc.constantFrom("free", "pro", null, 42),
    a: big,
    b: big,
    c: big,
    d: big,
    e: big,
    at: fc.constantFrom<unknown>(
      "2024-02-29T00:00:00Z",
      1735689600000,
      null,
      "2024-13-45",
      "2023-02-29",
      9007199254740991,
      -1,
      "1969-12-31T23:59:59Z",
    ),
    n: fc.constantFrom<unknown>(1, -5, Number.MAX_SAFE_INTEGER, 1.5, "x"),
  },
  { requiredKeys: [] },
);
const event = fc.record({
  type: fc.constantFrom("identify", "identify", "alias", "track"),
  userId: userIds,
  anonymousId: anonIds,
  previousId: fc.constantFrom<string | undefined>("a1", "a2", "u3", LONG_ID, "never-seen", undefined),
  traits: fc.option(traits, { nil: undefined, freq: 4 }),
  day: fc.integer({ min: 1, max: 28 }),
});

let seq = 0;
let posted = 0;
const admin = (path: string) => fetch(`${stack.node.url}${path}`, { headers: { Authorization: `Bearer ${ADMIN}` } });
const pipeline = async () =>
  ((await (await admin("/v1/pipelines")).json()) as any).pipelines.find((p: any) => p.connection === "ack");

async function post(events: Record<string, unknown>[]): Promise<void> {
  const r = await fetch(`${stack.node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ batch: events }),
  });
  const body = (await r.json()) as any;
  // 400 when every event of the request was rejected at the edge (an event past 256 KiB).
  expect({ status: r.status, rejected: r.status === 400 ? body.rejected?.length : events.length }).toEqual({
    status: r.status === 400 ? 400 : 200,
    rejected: events.length,
  });
  if (r.status === 200) posted += events.length - (body.rejected?.length ?? 0);
}

test(`no sequence of events holds back acknowledgements past ack_wait (${RUNS} runs, seed ${SEED}, ack_wait ${ACK_WAIT_MS} ms)`, async () => {
  let run = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.array(event, { minLength: 1, maxLength: 10 }), { minLength: 1, maxLength: 3 }),
      async (requests) => {
        run++;
        for (const req of requests) {
          await post(
            req.map((e) => {
              const out: Record<string, unknown> = {
                type: e.type,
                messageId: `ack-${++seq}`,
                timestamp: `2025-02-${String(e.day).padStart(2, "0")}T00:00:00.000Z`,
              };
              if (e.type === "track") out.event = "Tracked";
              if (e.userId !== undefined || e.type === "alias") out.userId = e.userId ?? "u1";
              if (e.anonymousId !== undefined || e.userId === undefined) out.anonymousId = e.anonymousId ?? "a1";
              if (e.type === "alias" && e.previousId !== undefined) out.previousId = e.previousId;
              if (e.traits !== undefined) out.traits = e.traits;
              return out;
            }),
          );
        }
        const sentinel = `sentinel-${run}`;
        await post([{ type: "identify", userId: sentinel, messageId: `ack-${++seq}`, traits: { plan: "sentinel" } }]);
        // Generous deadline (busy machine): what matters is that it drains at all, and without redelivery.
        const deadline = Date.now() + 60_000;
        let p: any;
        let loaded = false;
        while (Date.now() < deadline) {
          p = await pipeline();
          loaded ||=
            (await rows(stack.db, `SELECT 1 FROM tributary.users FINAL WHERE user_id = '${sentinel}'`)).length === 1;
          if (loaded && p.lag === 0 && p.received >= posted) break;
          await Bun.sleep(200);
        }
        expect({ run, loaded, lag: p.lag }).toEqual({ run, loaded: true, lag: 0 });
        // Each event was delivered once: none sat unacknowledged past ack_wait and came back.
        expect({ run, received: p.received }).toEqual({ run, received: posted });
        expect({ run, deadLettered: p.deadLettered, deadLetters: p.deadLetters }).toEqual({
          run,
          deadLettered: p.failed,
          deadLetters: p.failed,
        });
      },
    ),
    { seed: SEED, numRuns: RUNS, endOnFailure: true },
  );
  const p = await pipeline();
  console.log(
    `users ack property: ${RUNS} runs, ${posted} events, ${p.failed} refused and dead-lettered, ${p.transformed} transformed`,
  );
  expect(p.failed).toBeGreaterThan(0);
}, 600_000);
