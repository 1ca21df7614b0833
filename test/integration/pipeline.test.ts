import { expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { useStack } from "../harness/stack.ts";
import { eventually, rows } from "../harness/warehouse.ts";

const yaml = (trackFilter: string) => `connection: site
source: webhook
writeKeys: ["key-site-0001"]
pipelines:
  - name: everything
    import: events
  - name: tracks only
    import: events
    filter: ${trackFilter}
`;

const stack = useStack({ "site.yaml": yaml(`type = "track"`) }, { batchMaxAgeMs: 200 });

const post = (events: unknown[]) =>
  fetch(`${stack.node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: "Bearer key-site-0001" },
    body: JSON.stringify({ batch: events }),
  });

test("events land in tributary.events with every column; each pipeline gets its own filtered rows", async () => {
  const sentAt = "2025-10-20T16:15:24.327Z";
  const r = await post([
    {
      type: "track",
      event: "Order Completed",
      userId: "u1",
      anonymousId: "a1",
      messageId: "p-1",
      timestamp: "2025-10-20T16:15:23.992Z",
      sentAt,
      properties: { total: 9.5 },
      context: {
        ip: "172.91.24.57",
        library: { name: "analytics.js", version: "5.0" },
        page: { url: "https://x.example/a?b", path: "/a" },
        userAgent: "UA/1",
        locale: "en-US",
      },
    },
    { type: "identify", userId: "u1", messageId: "p-2", traits: { email: "e@x.example" } },
    { type: "page", anonymousId: "a2", messageId: "p-3", name: "Home", category: "Docs" },
    { type: "group", userId: "u1", groupId: "g1", messageId: "p-4" },
    { type: "alias", userId: "u1", previousId: "a1", messageId: "p-5" },
  ]);
  expect(r.status).toBe(200);
  const all = await eventually<any>(
    stack.db,
    `SELECT * FROM tributary.events FINAL WHERE pipeline = 'everything' ORDER BY message_id`,
    (x) => x.length === 5,
  );
  const tracks = await eventually<any>(
    stack.db,
    `SELECT message_id FROM tributary.events FINAL WHERE pipeline = 'tracks only'`,
    (x) => x.length >= 1,
  );
  expect(tracks.map((t) => t.message_id)).toEqual(["p-1"]);
  const t = all[0];
  expect(t).toMatchObject({
    connection: "site",
    pipeline: "everything",
    message_id: "p-1",
    type: "track",
    event: "Order Completed",
    user_id: "u1",
    anonymous_id: "a1",
    context_ip: "172.91.24.57",
    context_library_name: "analytics.js",
    context_library_version: "5.0",
    context_page_url: "https://x.example/a?b",
    context_page_path: "/a",
    context_user_agent: "UA/1",
    context_locale: "en-US",
  });
  expect(JSON.parse(t.properties)).toEqual({ total: 9.5 });
  expect(JSON.parse(t.context).library.name).toBe("analytics.js");
  // Milliseconds survive on every server: skew-corrected timestamp is receivedAt − 335 ms.
  const ms = await rows<any>(
    stack.db,
    `SELECT toUInt64(received_at) - toUInt64(timestamp) AS skew, toUInt64(original_timestamp) AS o FROM tributary.events FINAL WHERE message_id = 'p-1' AND pipeline = 'everything'`,
  );
  expect(Number(ms[0].skew)).toBe(335);
  expect(Number(ms[0].o)).toBe(Date.parse("2025-10-20T16:15:23.992Z"));
  expect(all.find((x) => x.message_id === "p-3")).toMatchObject({
    type: "page",
    name: "Home",
    category: "Docs",
    anonymous_id: "a2",
    user_id: null,
  });
  expect(all.find((x) => x.message_id === "p-4").group_id).toBe("g1");
  expect(all.find((x) => x.message_id === "p-5").previous_id).toBe("a1");
  expect(JSON.parse(all.find((x) => x.message_id === "p-2").traits)).toEqual({ email: "e@x.example" });
});

test("a filter changed on disk applies to new events without a restart", async () => {
  writeFileSync(join(stack.node.config.options.dir, "site.yaml"), yaml(`type = "identify"`));
  for (
    let i = 0;
    i < 50 && stack.node.config.current.connections.get("site")!.pipelines![1]!.filter !== `type = "identify"`;
    i++
  )
    await Bun.sleep(50);
  await Bun.sleep(100);
  expect(
    (
      await post([
        { type: "identify", userId: "u2", messageId: "h-1" },
        { type: "track", event: "E", userId: "u2", messageId: "h-2" },
      ])
    ).status,
  ).toBe(200);
  const got = await eventually<any>(
    stack.db,
    `SELECT message_id FROM tributary.events FINAL WHERE pipeline = 'tracks only' AND message_id LIKE 'h-%'`,
    (x) => x.length >= 1,
  );
  await Bun.sleep(500);
  expect(
    (
      await rows<any>(
        stack.db,
        `SELECT message_id FROM tributary.events FINAL WHERE pipeline = 'tracks only' AND message_id LIKE 'h-%'`,
      )
    ).map((x) => x.message_id),
  ).toEqual(["h-1"]);
  expect(got.length).toBe(1);
});

const writeFile = async (name: string, text: string, loaded: () => boolean) => {
  writeFileSync(join(stack.node.config.options.dir, name), text);
  for (let i = 0; i < 100 && !loaded(); i++) await Bun.sleep(50);
  expect(loaded()).toBe(true);
  // The pipelines apply the new config right after the store has it.
  await (await stack.node.pipelinesReady).reload();
};
const postAs = (key: string, events: unknown[]) =>
  fetch(`${stack.node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}` },
    body: JSON.stringify({ batch: events }),
  }).then((r) => r.status);

test("a pipeline added later starts from new events; a filter that throws fails only that event, with its error recorded", async () => {
  const file = (pipelines: string) => `connection: late\nsource: webhook\nwriteKeys: ["key-late-0001"]\n${pipelines}`;
  await writeFile("late.yaml", file("pipelines: []\n"), () => stack.node.config.current.connections.has("late"));
  expect(await postAs("key-late-0001", [{ type: "track", event: "Before", userId: "u", messageId: "late-0" }])).toBe(
    200,
  );
  const added = `pipelines:\n  - name: numbers\n    import: events\n    filter: $number(properties.n) > 1\n`;
  await writeFile(
    "late.yaml",
    file(added),
    () => stack.node.config.current.connections.get("late")!.pipelines!.length === 1,
  );
  expect(
    await postAs("key-late-0001", [
      { type: "track", event: "E", userId: "u", messageId: "late-1", properties: { n: "5" } },
      { type: "track", event: "E", userId: "u", messageId: "late-2", properties: { n: "not a number" } },
      { type: "track", event: "E", userId: "u", messageId: "late-3", properties: { n: 7 } },
      { type: "track", event: "E", userId: "u", messageId: "late-4", properties: { n: 0 } },
    ]),
  ).toBe(200);
  const got = await eventually<any>(
    stack.db,
    `SELECT message_id FROM tributary.events FINAL WHERE connection = 'late' ORDER BY message_id`,
    (x) => x.length >= 2,
  );
  await Bun.sleep(500);
  // late-0 came before the pipeline existed; late-2's filter threw; late-4 was filtered out.
  expect(
    (
      await rows<any>(
        stack.db,
        `SELECT message_id FROM tributary.events FINAL WHERE connection = 'late' ORDER BY message_id`,
      )
    ).map((x) => x.message_id),
  ).toEqual(["late-1", "late-3"]);
  expect(got.length).toBe(2);
  const stats = (await (await stack.node.pipelinesReady).snapshot("late/numbers"))!;
  expect(stats).toMatchObject({ received: 4, filteredOut: 1, failed: 1, loaded: 2 });
  expect(stats.lastErrors).toHaveLength(1);
  expect(stats.lastErrors[0]!.messageId).toBe("late-2");
  expect(stats.lastErrors[0]!.error).toContain("filter failed");
});

test("enabled: false stops a pipeline and leaves its events in the stream; re-enabling resumes where it stopped", async () => {
  const file = (enabled: boolean) =>
    `connection: pausable\nsource: webhook\nwriteKeys: ["key-pausable-0001"]\npipelines:\n  - name: p\n    import: events\n    enabled: ${enabled}\n`;
  await writeFile("pausable.yaml", file(true), () => stack.node.config.current.connections.has("pausable"));
  expect(await postAs("key-pausable-0001", [{ type: "track", event: "E", userId: "u", messageId: "pz-1" }])).toBe(200);
  await eventually<any>(
    stack.db,
    `SELECT message_id FROM tributary.events FINAL WHERE connection = 'pausable'`,
    (x) => x.length === 1,
  );
  await writeFile(
    "pausable.yaml",
    file(false),
    () => stack.node.config.current.connections.get("pausable")!.pipelines![0]!.enabled === false,
  );
  expect(await (await stack.node.pipelinesReady).snapshot("pausable/p")).toBeUndefined();
  expect(
    await postAs("key-pausable-0001", [
      { type: "track", event: "E", userId: "u", messageId: "pz-2" },
      { type: "track", event: "E", userId: "u", messageId: "pz-3" },
    ]),
  ).toBe(200);
  await Bun.sleep(1000);
  expect(
    (await rows<any>(stack.db, `SELECT count() AS c FROM tributary.events FINAL WHERE connection = 'pausable'`))[0].c,
  ).toBe("1");
  await writeFile(
    "pausable.yaml",
    file(true),
    () => stack.node.config.current.connections.get("pausable")!.pipelines![0]!.enabled === true,
  );
  const all = await eventually<any>(
    stack.db,
    `SELECT message_id FROM tributary.events FINAL WHERE connection = 'pausable' ORDER BY message_id`,
    (x) => x.length === 3,
  );
  expect(all.map((x) => x.message_id)).toEqual(["pz-1", "pz-2", "pz-3"]);
});

test("a row ClickHouse refuses for its content is isolated with the reason; the rest of the batch lands", async () => {
  const { connectWarehouse } = await import("../../src/sink/clickhouse/server.ts");
  const { Inserter } = await import("../../src/sink/clickhouse/inserter.ts");
  const w = await connectWarehouse({ url: stack.ch.url, username: "default", password: "", database: "tributary" });
  try {
    await w.client.command({
      query: "CREATE TABLE tributary.strict (id String, n UInt8) ENGINE = MergeTree ORDER BY id",
    });
    const outcome = await new Inserter(w, "strict").insert([
      { id: "a", n: 1 },
      { id: "b", n: 2 },
      { id: "bad", n: "not a number" },
      { id: "c", n: 3 },
      { id: "d", n: 4 },
    ]);
    expect(outcome.inserted).toBe(4);
    expect(outcome.rejected.map((r) => r.row.id)).toEqual(["bad"]);
    expect(outcome.rejected[0]!.reason).toMatch(/Code: \d+/);
    expect((await rows<any>(stack.db, "SELECT id FROM tributary.strict ORDER BY id")).map((r) => r.id)).toEqual([
      "a",
      "b",
      "c",
      "d",
    ]);
  } finally {
    await w.close();
  }
});

test("a pipeline requiring consent purposes never loads events without them, and counts them", async () => {
  const file = `connection: consented\nsource: webhook\nwriteKeys: ["key-consent-0001"]\npipelines:\n  - name: analytics only\n    import: events\n    consents: [analytics]\n  - name: everything\n    import: events\n`;
  await writeFile("consented.yaml", file, () => stack.node.config.current.connections.has("consented"));
  const ev = (id: string, consents?: Record<string, boolean>) => ({
    type: "track",
    event: "E",
    userId: "u",
    messageId: id,
    ...(consents && { context: { consents } }),
  });
  expect(
    await postAs("key-consent-0001", [
      ev("c-1", { analytics: true }),
      ev("c-2", { analytics: false }),
      ev("c-3"),
      ev("c-4", { analytics: true, ads: false }),
    ]),
  ).toBe(200);
  await eventually<any>(
    stack.db,
    `SELECT count() AS c FROM tributary.events FINAL WHERE connection = 'consented' AND pipeline = 'everything'`,
    (x) => x[0]?.c === "4",
  );
  const got = await eventually<any>(
    stack.db,
    `SELECT message_id FROM tributary.events FINAL WHERE connection = 'consented' AND pipeline = 'analytics only' ORDER BY message_id`,
    (x) => x.length >= 2,
  );
  expect(got.map((x) => x.message_id)).toEqual(["c-1", "c-4"]);
  const stats = (await (await stack.node.pipelinesReady).snapshot("consented/analytics only"))!;
  expect(stats).toMatchObject({ received: 4, consentFailed: 2, loaded: 2 });
});
