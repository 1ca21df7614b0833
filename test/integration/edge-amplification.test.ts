import { afterAll, beforeAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { pipelinesDir, startNats } from "../harness/services.ts";
import { NodeProcess } from "../harness/node-process.ts";
import { rmSync } from "node:fs";

/**
 * Issue 16 #6, unauthenticated amplification: a request without an Authorization header may carry
 * its write key in the body, so the node must look at the body before it knows who is asking.
 * Measured on a node in its own process (its RSS is the node's alone): a legitimate sender's
 * latency and the node's memory while four senders post gzip bombs of `[{},{},…]` with no key.
 */

const KEY = "key-edge-amplification-0001";
let nats: Awaited<ReturnType<typeof startNats>>;
let node: NodeProcess;
let dir: string;

beforeAll(async () => {
  nats = await startNats();
  dir = pipelinesDir({ "edge.yaml": `connection: edge\nsource: webhook\nwriteKeys: ["${KEY}"]\n` });
  node = new NodeProcess({ NATS_URL: nats.url, TRIBUTARY_PIPELINES: dir });
  await node.start();
});
afterAll(async () => {
  await node?.stop();
  await nats?.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

const rssMiB = () => {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${node.pid}/status`, "utf8"));
  return Number(m![1]) / 1024;
};
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
let seq = 0;

/** One legitimate one-event request, header-keyed: its round trip in ms. */
async function legit(): Promise<number> {
  const t0 = performance.now();
  const r = await fetch(`${node.url}/v1/track`, {
    method: "POST",
    headers: { Authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ event: "E", userId: "u", messageId: `legit-${Date.now()}-${seq++}` }),
  });
  await r.text();
  expect(r.status).toBe(200);
  return performance.now() - t0;
}

// 5 million `{}` in an array: 15 MB inflated (under the 16 MiB request limit), about 15 KB gzipped.
const BOMB = gzipSync("[" + "{},".repeat(5_000_000) + "{}]", { level: 9 });

test("#6: unauthenticated gzip bombs of [{},{},…] get prompt 401s and do not starve a legitimate sender or grow the node's memory", async () => {
  expect(BOMB.byteLength).toBeLessThan(40_000);
  for (let i = 0; i < 10; i++) await legit(); // warm up
  const baseline: number[] = [];
  for (let i = 0; i < 30; i++) baseline.push(await legit());
  const baselineP50 = median(baseline);
  const rss0 = rssMiB();
  let rssMax = rss0;
  const sampler = setInterval(() => (rssMax = Math.max(rssMax, rssMiB())), 50);

  let attacking = true;
  const unauthorized: number[] = [];
  const statuses = new Map<number, number>();
  const attacker = async () => {
    for (let n = 0; attacking || n < 5; n++) {
      const t0 = performance.now();
      const r = await fetch(`${node.url}/v1/batch`, {
        method: "POST",
        headers: { "Content-Encoding": "gzip", "Content-Type": "application/json" },
        body: BOMB,
      });
      await r.text();
      statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
      if (r.status === 401) unauthorized.push(performance.now() - t0);
    }
  };
  const attackers = Array.from({ length: 4 }, attacker);
  await Bun.sleep(200); // the attack is under way
  const under: number[] = [];
  // 30 requests, or as many as 20 s allow (on a starved node each takes seconds).
  for (const deadline = Date.now() + 20_000; under.length < 30 && Date.now() < deadline; ) under.push(await legit());
  attacking = false;
  await Promise.all(attackers);
  clearInterval(sampler);
  rssMax = Math.max(rssMax, rssMiB());

  const underP50 = median(under);
  const bombs = [...statuses.values()].reduce((a, b) => a + b, 0);
  console.log(
    `#6 legit p50 ${baselineP50.toFixed(1)} ms alone, ${underP50.toFixed(1)} ms under ${bombs} bombs from 4 senders; ` +
      `401 p50 ${median(unauthorized).toFixed(1)} ms, max ${Math.max(...unauthorized).toFixed(1)} ms; node RSS ${rss0.toFixed(0)} → max ${rssMax.toFixed(0)} MiB`,
  );
  // Every bomb is answered 401: it carries no key.
  expect([...statuses.keys()]).toEqual([401]);
  expect(bombs).toBeGreaterThanOrEqual(20);
  expect(underP50 <= 5 * baselineP50 || underP50 < 100).toBe(true);
  expect(rssMax - rss0).toBeLessThan(512);
  // Promptly: the 401s do not queue behind each other's parsing.
  expect(median(unauthorized)).toBeLessThan(500);
}, 180_000);

test("#6: a body-keyed batch of about 500 KB (analytics-node before 3.1) is accepted; a keyless body over 1 MiB is refused with 413 before it is parsed", async () => {
  const batch = Array.from({ length: 1500 }, (_, i) => ({
    type: "track",
    event: "Bulk",
    userId: `u${i}`,
    messageId: `bulk-${Date.now()}-${i}`,
    properties: { pad: "x".repeat(230) },
  }));
  const body = JSON.stringify({ batch, writeKey: KEY, sentAt: new Date().toISOString() });
  expect(body.length).toBeGreaterThan(500_000);
  expect(body.length).toBeLessThan(512 * 1024);
  for (const encoding of ["identity", "gzip"]) {
    const r = await fetch(`${node.url}/v1/batch`, {
      method: "POST",
      headers: encoding === "gzip" ? { "Content-Encoding": "gzip" } : {},
      body: encoding === "gzip" ? gzipSync(body.replaceAll("bulk-", "bulkgz-")) : body,
    });
    expect(r.status).toBe(200);
    expect((await r.json()).accepted).toBe(1500);
  }
  // An object bomb: the key would have to be looked for in 15 MB.
  const objectBomb = gzipSync('{"writeKey":"nope-nope-nope","batch":[' + "{},".repeat(5_000_000) + "{}]}", {
    level: 9,
  });
  const r = await fetch(`${node.url}/v1/batch`, {
    method: "POST",
    headers: { "Content-Encoding": "gzip" },
    body: objectBomb,
  });
  expect(r.status).toBe(413);
  expect((await r.json()).error).toContain("without an Authorization header");
  // The same with the key in the header is a normal (authenticated) request: its events are judged.
  const withHeader = await fetch(`${node.url}/v1/batch`, {
    method: "POST",
    headers: { "Content-Encoding": "gzip", Authorization: `Bearer ${KEY}` },
    body: objectBomb,
  });
  expect(withHeader.status).toBe(413); // 5 million events, over the 20,000-event limit
  expect((await withHeader.json()).error).toContain("at most 20000 events");
}, 60_000);

test("#6: a keyless body names its key anywhere at the top level, with escapes, and the last duplicate wins as in JSON.parse", async () => {
  const send = (text: string) =>
    fetch(`${node.url}/v1/track`, { method: "POST", headers: { "Content-Type": "text/plain" }, body: text }).then(
      (r) => r.status,
    );
  const e = () => `"event":"E","userId":"u","messageId":"k-${Date.now()}-${seq++}"`;
  expect(await send(`{${e()},"properties":{"writeKey":"x","a":[1,{"b":"]}"}]},"writeKey":"${KEY}"}`)).toBe(200);
  expect(await send(` {"write\\u004bey" : "${KEY}", ${e()}}`)).toBe(200);
  expect(await send(`{"writeKey":"${KEY}",${e()},"writeKey":"wrong-key-000000"}`)).toBe(401);
  expect(await send(`{"properties":{"writeKey":"${KEY}"},${e()}}`)).toBe(401);
  expect(await send(`[{"writeKey":"${KEY}",${e()}}]`)).toBe(401);
  // Truncated: the key cannot be read without reading a whole object, so it is not.
  expect(await send(`{"writeKey":"${KEY}",${e()}`)).toBe(401);
});
