import { expect, test } from "bun:test";
import { join } from "node:path";
import { startTestNode, webhookConnection } from "../harness/services.ts";
import { expectExactlyOnce, rows } from "../harness/warehouse.ts";
import { DEDUP_SHARDS, STREAM, streamLayout } from "../../src/bus/subjects.ts";
import { StreamLayoutError } from "../../src/bus/errors.ts";
import { useStack } from "../harness/stack.ts";
import { replay } from "../../src/pipeline/replay.ts";
import { connectWarehouse } from "../../src/sink/clickhouse/server.ts";

/**
 * Issue 22: TRIBUTARY_STREAM_PARTITIONS=3 on one nats-server. Events go to three streams by a hash
 * of (connection, shard); the pipelines read all of them; dedup, replay and the refusal of another
 * count hold. (The 3-server leader-kill test is partitions-cluster.test.ts.)
 */
const PARTITIONS = 3;
const files = {
  "shop.yaml": webhookConnection("shop", ["key-shop-0001"], "pipelines:\n  - name: all\n    import: events\n"),
  "blog.yaml": webhookConnection("blog", ["key-blog-0001"], "pipelines:\n  - name: all\n    import: events\n"),
};
const stack = useStack(files, { streamPartitions: PARTITIONS });

const post = (key: string, events: unknown[]) =>
  fetch(`${stack.node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}` },
    body: JSON.stringify({ batch: events }),
  });
const tracks = (prefix: string, n: number) =>
  Array.from({ length: n }, (_, i) => ({
    type: "track",
    event: "E",
    userId: `u${i % 7}`,
    messageId: `${prefix}-${i}`,
  }));

test("events spread over the partition streams, every one loaded once, a retried id stored once", async () => {
  const layout = streamLayout(PARTITIONS);
  const shop = tracks("shop", 200);
  const blog = tracks("blog", 200);
  for (let i = 0; i < 200; i += 50) {
    expect((await post("key-shop-0001", shop.slice(i, i + 50))).status).toBe(200);
    expect((await post("key-blog-0001", blog.slice(i, i + 50))).status).toBe(200);
  }
  // The same batches again: duplicates, whichever partition holds them.
  const again = await (await post("key-shop-0001", shop.slice(0, 50))).json();
  expect(again).toMatchObject({ accepted: 50 });
  await expectExactlyOnce(
    stack.db,
    "shop",
    shop.map((e) => e.messageId),
  );
  await expectExactlyOnce(
    stack.db,
    "blog",
    blog.map((e) => e.messageId),
  );
  const jsm = stack.node.bus.jsm;
  // No single stream: each partition's holds the shards the layout gives it, and nothing else.
  expect(await jsm.streams.info(STREAM).catch(() => undefined)).toBeUndefined();
  let stored = 0;
  for (let k = 0; k < PARTITIONS; k++) {
    const info = await jsm.streams.info(layout.streams[k]!, { subjects_filter: ">" });
    const subjects = Object.keys(info.state.subjects ?? {});
    for (const s of subjects) {
      const [, , connection, shard] = s.split(".");
      expect(layout.partitionOf(connection!, Number(shard))).toBe(k);
    }
    stored += Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
  }
  expect(stored).toBeGreaterThan(0);
  // Both connections' shards, 8 subjects over the 3 streams.
  const all = new Set<number>();
  for (const c of ["shop", "blog"]) for (let s = 0; s < DEDUP_SHARDS; s++) all.add(layout.partitionOf(c, s));
  expect(all.size).toBeGreaterThan(1);
  // The pipeline has a consumer on each partition holding some of its connection's shards.
  for (const k of layout.partitionsOf("shop"))
    expect((await jsm.consumers.info(layout.streams[k]!, "tributary-shop--all")).config.filter_subject).toBe(
      layout.consumerFilter("shop", k),
    );
});

test("a replay reads every partition the connection is stored in, in one run", async () => {
  const warehouse = await connectWarehouse({
    url: stack.ch.url,
    username: "default",
    password: "",
    database: "tributary",
  });
  const raw = async () =>
    Number(
      (await rows<{ c: string }>(stack.db, "SELECT count() AS c FROM tributary.events WHERE connection = 'blog'"))[0]!
        .c,
    );
  const before = await raw();
  const p = await replay(stack.node.bus, warehouse, stack.node.config.current, { connection: "blog", pipeline: "all" });
  expect(p.finished).toBe(true);
  expect(p.received).toBe(200);
  expect(p.done).toBe(p.total);
  // Each event written again (it collapses under FINAL), from every partition.
  expect(await raw()).toBe(before + 200);
  const layout = stack.node.bus.layout;
  // A sequence is one partition's: --from-seq without --partition is refused.
  await expect(
    replay(stack.node.bus, warehouse, stack.node.config.current, { connection: "blog", pipeline: "all", fromSeq: 1 }),
  ).rejects.toThrow("--partition");
  const k = layout.partitionsOf("blog")[0]!;
  const one = await replay(stack.node.bus, warehouse, stack.node.config.current, {
    connection: "blog",
    pipeline: "all",
    fromSeq: 1,
    partition: k,
  });
  expect(one.finished).toBe(true);
  expect(one.received).toBeGreaterThan(0);
  // Only that partition's share of the connection's events.
  if (layout.partitionsOf("blog").length > 1) expect(one.received).toBeLessThan(200);
  else expect(one.received).toBe(200);
  await warehouse.close?.();
});

test("a node started with another partition count is refused, naming both counts", async () => {
  const err = await startTestNode(stack.nats.url, files, { clickhouseUrl: stack.ch.url, streamPartitions: 1 }).then(
    async (n) => {
      await n.stop();
      return undefined;
    },
    (e) => e,
  );
  expect(err).toBeInstanceOf(StreamLayoutError);
  expect(String(err.message)).toContain("TRIBUTARY_STREAM_PARTITIONS=1");
  expect(String(err.message)).toContain("3 stream(s)");
  const err4 = await startTestNode(stack.nats.url, files, { clickhouseUrl: stack.ch.url, streamPartitions: 4 }).catch(
    (e) => e,
  );
  expect(err4).toBeInstanceOf(StreamLayoutError);
});

test("the commands read a partitioned deployment as it is, without being told its count", async () => {
  // dlq (like replay, forget and resolve) connects as a node would: with the environment's count
  // unset it must take the streams' three, not refuse them, nor create a single stream beside them.
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("TRIBUTARY_")) env[k] = v;
  const p = Bun.spawn([process.execPath, join(import.meta.dir, "../../scripts/dlq.ts"), "shop", "--json"], {
    env: {
      ...env,
      NATS_URL: stack.nats.url,
      CLICKHOUSE_URL: stack.ch.url,
      TRIBUTARY_PIPELINES: stack.node.config.options.dir,
      LOG_LEVEL: "error",
    },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [code, err] = await Promise.all([p.exited, new Response(p.stderr).text()]);
  expect(err).not.toContain("StreamLayoutError");
  expect(code).toBe(0);
  expect(await stack.node.bus.jsm.streams.info(STREAM).catch(() => undefined)).toBeUndefined();
});
