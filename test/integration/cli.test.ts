import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { delimiter, join } from "node:path";
import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";
import { startNats, startTestNode, webhookConnection } from "../harness/services.ts";
import type { RunningNode } from "../../src/node.ts";

/**
 * Issue 17 #2, #5, #7: the commands as a user runs them (a subprocess with NATS_URL and
 * TRIBUTARY_PIPELINES), against a real nats-server and a node: every command has --help and
 * refuses unknown flags; tail and dlq refuse unknown names; `tail --raw` prints any subject;
 * `stream` shows the streams and a pipeline consumer's lag. No ClickHouse: the node's pipeline
 * consumer exists but nothing loads, so its lag is exactly what was accepted.
 */

const ROOT = join(import.meta.dir, "../..");
const KEY = "key-cli-shop-0001";
let nats: Awaited<ReturnType<typeof startNats>>;
let node: RunningNode;
let nc: NatsConnection;

beforeAll(async () => {
  nats = await startNats();
  node = await startTestNode(nats.url, {
    "shop.yaml": webhookConnection("shop", [KEY], "pipelines:\n  - name: all\n    import: events\n"),
    "billing.yaml": webhookConnection("billing", ["key-cli-billing-0001"]),
  });
  nc = await connect({ servers: nats.url });
});
afterAll(async () => {
  await nc?.close();
  await node?.stop();
  await nats?.cleanup();
});

const env = () => ({
  ...process.env,
  NATS_URL: nats.url,
  TRIBUTARY_PIPELINES: node.config.options.dir,
  LOG_LEVEL: "error",
  NO_COLOR: "1",
});

/** Runs a command to its end; a command that does not end is killed after `timeout` (and fails the test on its code). */
async function run(
  script: string,
  args: string[],
  o: { timeout?: number; cmd?: string[]; extraEnv?: Record<string, string> } = {},
) {
  const p = Bun.spawn(o.cmd ?? [process.execPath, join(ROOT, script), ...args], {
    cwd: ROOT,
    env: { ...env(), ...o.extraEnv },
    stdout: "pipe",
    stderr: "pipe",
    timeout: o.timeout ?? 30_000,
  });
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  return { code: await p.exited, out, err };
}

/** A long-running command (tail) whose output is read as it comes. */
function start(script: string, args: string[]) {
  const p = Bun.spawn([process.execPath, join(ROOT, script), ...args], {
    cwd: ROOT,
    env: env(),
    stdout: "pipe",
    stderr: "pipe",
  });
  const got = { out: "", err: "" };
  const pump = async (s: ReadableStream<Uint8Array>, key: "out" | "err") => {
    const d = new TextDecoder();
    for await (const chunk of s) got[key] += d.decode(chunk, { stream: true });
  };
  void pump(p.stdout, "out");
  void pump(p.stderr, "err");
  return {
    got,
    async until(check: () => boolean, ms = 30_000) {
      const deadline = Date.now() + ms;
      while (!check() && Date.now() < deadline && p.exitCode === null) await Bun.sleep(25);
      return check();
    },
    async stop() {
      p.kill();
      await p.exited;
    },
  };
}

/** Runs `f` over `items`, `n` at a time (the machine's cores are shared). */
async function pool<T, R>(items: T[], n: number, f: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await f(items[i]!);
      }
    }),
  );
  return out;
}

let seq = 0;
const post = (event: Record<string, unknown>) =>
  fetch(`${node.url}/v1/events`, {
    method: "POST",
    headers: { Authorization: `Bearer ${KEY}` },
    body: JSON.stringify([{ type: "track", event: "Signed Up", userId: "u-1", messageId: `cli-${seq++}`, ...event }]),
  });

// Every `npm run` command that is a script of ours (start, test and typecheck have their own owners).
const scripts = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).scripts as Record<string, string>;
const COMMANDS = Object.entries(scripts)
  .map(([name, line]) => ({ name, file: /^bun ((?:scripts|bench)\/\S+\.ts)$/.exec(line)?.[1] }))
  .filter((c): c is { name: string; file: string } => !!c.file && c.name !== "start");

describe("#2 every command: --help, unknown flags", () => {
  test("the commands are the README's, including stream", () => {
    expect(COMMANDS.map((c) => c.name)).toEqual(
      expect.arrayContaining([
        "check",
        "tail",
        "replay",
        "dlq",
        "stream",
        "fuzz",
        "chaos",
        "jsonata:conformance",
        "bench:ingest",
        "bench:e2e",
        "bench:soak",
        "bench:capacity",
        "bench:transform",
        "bench:jsonata",
      ]),
    );
  });

  test("--help prints the usage on stdout and exits 0, starting nothing", async () => {
    const results = await pool(COMMANDS, 3, async (c) => ({ name: c.name, ...(await run(c.file, ["--help"])) }));
    for (const r of results) {
      expect({ name: r.name, code: r.code }).toEqual({ name: r.name, code: 0 });
      expect({ name: r.name, usage: r.out.startsWith("usage: ") }).toEqual({ name: r.name, usage: true });
    }
  }, 240_000);

  test("an unknown flag exits 2 with the usage, and suggests the flag meant", async () => {
    const results = await pool(COMMANDS, 3, async (c) => ({
      name: c.name,
      ...(await run(c.file, ["--no-such-flag"])),
    }));
    for (const r of results) {
      expect({ name: r.name, code: r.code }).toEqual({ name: r.name, code: 2 });
      expect(r.err).toContain("--no-such-flag");
      expect(r.err).toContain("usage: ");
    }
    const typo = await run("scripts/tail.ts", ["shop", "--pipelin", "all"]);
    expect(typo.code).toBe(2);
    expect(typo.err).toContain("did you mean --pipeline?");
  }, 240_000);

  test("npm run works without bun on PATH (npm finds it in node_modules/.bin)", async () => {
    const path = (process.env.PATH ?? "")
      .split(delimiter)
      .filter((d) => d && !existsSync(join(d, "bun")))
      .join(delimiter);
    const r = await run("", [], { cmd: ["npm", "run", "-s", "stream", "--", "--help"], extraEnv: { PATH: path } });
    expect(r.code).toBe(0);
    expect(r.out.startsWith("usage: npm run stream")).toBe(true);
  });
});

describe("#5 unknown names are errors", () => {
  test("tail <unknown connection> exits at once naming it, the known ones and the closest", async () => {
    const r = await run("scripts/tail.ts", ["shpo"], { timeout: 20_000 });
    expect(r.code).toBe(1);
    expect(r.err).toContain(`no connection "shpo". Did you mean "shop"?`);
    expect(r.err).toContain("Known connections: billing, shop");
  });

  test("tail --pipeline <unknown> names the connection's pipelines", async () => {
    const r = await run("scripts/tail.ts", ["shop", "--pipeline", "al"], { timeout: 20_000 });
    expect(r.code).toBe(1);
    expect(r.err).toContain(`no pipeline "al" of connection "shop". Did you mean "all"?`);
  });

  test("dlq <unknown connection> and dlq --pipeline <unknown> exit non-zero instead of '0 dead letters'", async () => {
    const conn = await run("scripts/dlq.ts", ["shpo"]);
    expect(conn.code).toBe(1);
    expect(conn.err).toContain(`no connection "shpo". Did you mean "shop"?`);
    expect(conn.err).not.toContain("dead letter(s)");
    const pipe = await run("scripts/dlq.ts", ["shop", "--pipeline", "nope"]);
    expect(pipe.code).toBe(1);
    expect(pipe.err).toContain(`no pipeline "nope" of connection "shop"`);
    expect(pipe.err).toContain(`Known pipelines of connection "shop": all`);
    const known = await run("scripts/dlq.ts", ["shop", "--pipeline", "all"]);
    expect(known.code).toBe(0);
    expect(known.err).toContain("0 dead letter(s)");
  });

  test("a connection no longer configured but with stored events is still known to tail", async () => {
    await jetstream(nc).publish(
      "tributary.events.retired.0",
      JSON.stringify([{ type: "track", event: "Old", messageId: "old-1" }]),
    );
    const t = start("scripts/tail.ts", ["retired"]);
    try {
      expect(await t.until(() => t.got.err.includes("tail: tributary.events.retired.* on"))).toBe(true);
      expect(t.got.err).not.toContain("no connection");
    } finally {
      await t.stop();
    }
  });
});

describe("#7 tail --raw and stream, without the NATS CLI", () => {
  test("tail --raw SUBJECT prints any subject's messages: subject, headers, payload; --json one line each", async () => {
    const human = start("scripts/tail.ts", ["--raw", "cli-anything.>"]);
    const json = start("scripts/tail.ts", ["--raw", "cli-anything.*.b", "--json"]);
    try {
      expect(await human.until(() => human.got.err.includes("tail: cli-anything.> on"))).toBe(true);
      expect(await json.until(() => json.got.err.includes("tail: cli-anything.*.b on"))).toBe(true);
      const h = headers();
      h.set("X-Test", "yes");
      nc.publish("cli-anything.a.b", "hello raw world", { headers: h });
      nc.publish("cli-anything.binary", new Uint8Array([0xff, 0xfe, 0x00]));
      await nc.flush();
      expect(
        await human.until(
          () => human.got.out.includes("hello raw world") && human.got.out.includes("cli-anything.binary"),
        ),
      ).toBe(true);
      expect(human.got.out).toMatch(/\[#1\] .*cli-anything\.a\.b {2}15 bytes\n {2}X-Test: yes\nhello raw world\n/);
      expect(human.got.out).toContain("<3 bytes, not UTF-8; base64: //4A>");
      expect(await json.until(() => json.got.out.includes("\n"))).toBe(true);
      expect(JSON.parse(json.got.out.split("\n")[0]!)).toEqual({
        subject: "cli-anything.a.b",
        headers: { "X-Test": ["yes"] },
        size: 15,
        payload: "hello raw world",
      });
    } finally {
      await human.stop();
      await json.stop();
    }
  });

  test("tail --raw sees what the node stores on JetStream subjects, with Tributary's headers", async () => {
    const t = start("scripts/tail.ts", ["--raw", "tributary.events.shop.*", "--json"]);
    try {
      expect(await t.until(() => t.got.err.includes("tail: tributary.events.shop.* on"))).toBe(true);
      expect((await post({ messageId: "raw-seen-1" })).status).toBe(200);
      expect(await t.until(() => t.got.out.includes("raw-seen-1"))).toBe(true);
      const m = JSON.parse(t.got.out.split("\n").find((l) => l.includes("raw-seen-1"))!);
      expect(m.subject).toMatch(/^tributary\.events\.shop\.[0-3]$/);
      expect(JSON.parse(m.headers["Tributary-Ids"][0])).toEqual(["raw-seen-1"]);
      expect(JSON.parse(m.payload)[0]).toMatchObject({ type: "track", messageId: "raw-seen-1" });
    } finally {
      await t.stop();
    }
  });

  test("stream: messages, bytes and each pipeline consumer's lag once events are accepted", async () => {
    const before = await run("scripts/stream.ts", ["events", "--json"]);
    expect(before.code).toBe(0);
    const consumerOf = (out: string) =>
      (JSON.parse(out).consumers as any[]).find((c) => c.name === "tributary-shop--all");
    const lagBefore = consumerOf(before.out).lag;
    // One event per request: one message each (nothing loads them without ClickHouse).
    for (let i = 0; i < 3; i++) expect((await post({ messageId: `lag-${i}` })).status).toBe(200);

    const after = await run("scripts/stream.ts", ["events", "--json"]);
    expect(after.code).toBe(0);
    const s = JSON.parse(after.out);
    expect(s).toMatchObject({
      stream: "TRIBUTARY_EVENTS",
      exists: true,
      subjects: ["tributary.events.>"],
      replicas: 1,
      limits: { discard: "new", maxAgeSeconds: 7 * 86400 },
    });
    expect(s.messages).toBeGreaterThanOrEqual(3);
    expect(s.bytes).toBeGreaterThan(0);
    expect(s.last.seq).toBeGreaterThanOrEqual(3);
    expect(consumerOf(after.out)).toMatchObject({
      durable: true,
      filter: ["tributary.events.shop.*"],
      lag: lagBefore + 3,
      pending: lagBefore + 3,
      ackPending: 0,
      lastDelivered: { at: null },
    });

    const text = await run("scripts/stream.ts", []);
    expect(text.code).toBe(0);
    expect(text.out).toContain("TRIBUTARY_EVENTS — accepted events");
    expect(text.out).toMatch(/tributary-shop--all\s+\d+\s+\d+\s+0\s+0\s+#0\s+never/);
    // No ClickHouse yet: the dead-letter stream and the users buckets are not there, and it says so (creating nothing).
    expect(text.out).toContain("TRIBUTARY_DLQ — dead letters");
    expect(text.out).toContain("not created yet");
    expect(text.out).toContain("KV_tributary_profiles");
  });

  test("stream <unknown> exits 1 with the known names", async () => {
    const r = await run("scripts/stream.ts", ["evnts"]);
    expect(r.code).toBe(1);
    expect(r.err).toContain(`no stream "evnts". Did you mean "events"?`);
    expect(r.err).toContain("TRIBUTARY_EVENTS");
  });
});
