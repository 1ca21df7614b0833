import { expect, test } from "bun:test";
import { headers as natsHeaders } from "@nats-io/nats-core";
import { connectBus } from "../../src/bus/connection.ts";
import { ensureDlqStream } from "../../src/bus/dead-letters.ts";
import { shardSubject } from "../../src/bus/subjects.ts";
import { resolveDestination } from "../../src/config/destination.ts";
import { KIND_HEADER } from "../../src/event/envelope.ts";
import { ExportStage } from "../../src/pipeline/export/stage.ts";
import { ExportWorker } from "../../src/pipeline/export/worker.ts";
import { batchDefaults } from "../../src/pipeline/worker.ts";
import { startNats } from "../harness/services.ts";

// A node stopping (or reloading the pipeline) while its destination is down and the pipeline's
// queue is full must not hang: the loop waits for room in the sink, and the consumer's iterator
// closes only once the loop leaves it.
test("stop() ends within its grace while the destination is down and the queue is full", async () => {
  const nats = await startNats();
  const bus = await connectBus({
    url: nats.url,
    streamMaxAgeHours: 1,
    streamReplicas: 1,
    dedupWindowHours: 1,
    timeoutMs: 5000,
  });
  await ensureDlqStream(bus.jsm, 1);
  const d = resolveDestination({ type: "webhook", url: "http://127.0.0.1:9/in", maxQueuedEvents: 100 });
  const w = new ExportWorker(
    bus,
    "shop",
    "out",
    undefined,
    new ExportStage("shop", "out", d, "t"),
    d,
    { ...batchDefaults, ackWaitMs: 4000 },
    { ttlMs: 3000, renewMs: 500 },
  );
  w.startAfterSeq = 0;
  await w.start();
  const h = natsHeaders();
  h.set(KIND_HEADER, "events");
  for (let m = 0; m < 20; m++)
    await bus.js.publish(
      shardSubject("shop", 0),
      JSON.stringify(
        Array.from({ length: 50 }, (_, i) => ({ type: "track", event: "e", userId: `u${i}`, messageId: `m${m}-${i}` })),
      ),
      { headers: h },
    );
  await Bun.sleep(2000);
  expect(w.active).toBe(true);
  expect(w.exportStats.queued).toBeGreaterThanOrEqual(100);
  const t0 = Date.now();
  await w.stop(1000);
  expect(w.active).toBe(false);
  expect(Date.now() - t0).toBeLessThan(5000);
  await bus.close();
  await nats.cleanup();
}, 60000);
