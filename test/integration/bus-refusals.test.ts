import { afterAll, expect, test } from "bun:test";
import { connectBus, type BusOptions } from "../../src/bus/connection.ts";
import { freePort, waitForPort } from "../../src/services/ports.ts";
import { startNats } from "../harness/services.ts";

/**
 * What a node says when the NATS it is given cannot hold its events, told apart by nats.js's typed
 * errors and JetStream's API codes (src/bus/errors.ts), never by the wording of a message.
 */
const options = (url: string, o: Partial<BusOptions> = {}): BusOptions => ({
  url,
  streamMaxAgeHours: 1,
  streamReplicas: 1,
  dedupWindowHours: 1,
  timeoutMs: 2000,
  ...o,
});

const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups) await c();
});

test("a nats-server without JetStream is refused at once, saying to start it with -js", async () => {
  const port = await freePort();
  const p = Bun.spawn(["nats-server", "-a", "127.0.0.1", "-p", String(port)], { stdout: "ignore", stderr: "ignore" });
  cleanups.push(async () => p.kill());
  await waitForPort(port, 10_000);
  const started = Date.now();
  const err = await connectBus(options(`nats://127.0.0.1:${port}`)).catch((e) => e);
  expect(String(err?.message)).toContain("JetStream is not enabled on the NATS server (start it with -js)");
  // Not retried as if JetStream were still starting (that waits up to two minutes).
  expect(Date.now() - started).toBeLessThan(30_000);
});

test("more replicas than a single server can hold is refused, naming TRIBUTARY_STREAM_REPLICAS", async () => {
  const nats = await startNats();
  cleanups.push(() => nats.cleanup());
  const started = Date.now();
  const err = await connectBus(options(nats.url, { streamReplicas: 3 })).catch((e) => e);
  expect(String(err?.message)).toContain("TRIBUTARY_STREAM_REPLICAS=3: the NATS servers cannot hold 3 replicas");
  expect(Date.now() - started).toBeLessThan(30_000);
});
