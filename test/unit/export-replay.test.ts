import { afterAll, expect, test } from "bun:test";
import { headers as natsHeaders } from "@nats-io/nats-core";
import { connectBus } from "../../src/bus/connection.ts";
import { ensureDlqStream } from "../../src/bus/dead-letters.ts";
import { shardSubject } from "../../src/bus/subjects.ts";
import type { Config, LoadedConnection } from "../../src/config/loader.ts";
import { KIND_HEADER } from "../../src/event/envelope.ts";
import { replay } from "../../src/pipeline/replay.ts";
import type { Warehouse } from "../../src/sink/clickhouse/server.ts";
import { startNats } from "../harness/services.ts";

// `replay` of an export pipeline re-sends what the stream holds to its destination (a real HTTP
// receiver) with the same messageIds and Idempotency-Keys, each user's events in stream order.

const nats = await startNats();
const bus = await connectBus({
  url: nats.url,
  streamMaxAgeHours: 1,
  streamReplicas: 1,
  dedupWindowHours: 1,
  timeoutMs: 5000,
});
const got: { key: string; events: { messageId: string; userId: string; n: number }[] }[] = [];
let requests = 0;
const server = Bun.serve({
  port: 0,
  async fetch(req) {
    got.push({ key: req.headers.get("idempotency-key")!, events: await req.json() });
    // One 503 on the way (the first run's third request): retried under the same key.
    return ++requests === 3 ? new Response("later", { status: 503 }) : new Response("ok");
  },
});
afterAll(async () => {
  server.stop(true);
  await bus.close();
  await nats.cleanup();
});

test("replay re-sends the range with the same messageIds and keys, in each user's order", async () => {
  await ensureDlqStream(bus.jsm, 1);
  const h = natsHeaders();
  h.set(KIND_HEADER, "events");
  for (let m = 0; m < 4; m++) {
    const events = ["a", "b", "c"].flatMap((u) =>
      [0, 1].map((i) => ({ type: "track", event: "e", userId: u, n: m * 2 + i, messageId: `${u}-${m * 2 + i}` })),
    );
    await bus.js.publish(shardSubject("shop", m % 4), JSON.stringify(events), { headers: h });
  }
  const connection = {
    connection: "shop",
    source: "webhook",
    writeKeys: ["k-00000000"],
    file: "shop.yaml",
    pipelines: [
      {
        name: "out",
        export: "events",
        filter: 'userId != "c"',
        destination: { type: "webhook", url: `http://127.0.0.1:${server.port}/in`, batch: { maxEvents: 1 } },
      },
    ],
  } as LoadedConnection;
  const config: Config = {
    connections: new Map([["shop", connection]]),
    customerModel: {},
    customerModelMigrate: false,
    files: [],
  };
  const run = () => replay(bus, {} as Warehouse, config, { connection: "shop", pipeline: "out" });
  const first = await run();
  expect(first.finished).toBe(true);
  const once = got.splice(0);
  await run();
  const twice = got.splice(0);
  const accepted = (l: typeof once) => l.filter((_, i) => !(l === once && i === 2));
  const keysOf = (l: typeof once) => new Map(accepted(l).map((r) => [r.events[0]!.messageId, r.key]));
  expect(keysOf(once).size).toBe(16); // a and b: 8 events each; c filtered out
  expect(keysOf(twice)).toEqual(keysOf(once));
  // The 503'd request came again under its key.
  expect(once.slice(3).filter((r) => r.key === once[2]!.key)).toHaveLength(1);
  for (const l of [once, twice])
    for (const u of ["a", "b"])
      expect(
        accepted(l)
          .flatMap((r) => r.events)
          .filter((e) => e.userId === u)
          .map((e) => e.n),
      ).toEqual([...Array(8).keys()]);
}, 60_000);
