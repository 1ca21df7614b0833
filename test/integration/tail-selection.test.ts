import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import type { RunningNode } from "../../src/node.ts";
import { startNats, startTestNode, webhookConnection } from "../harness/services.ts";

/**
 * Issue 18: `tail --pipeline` selects as the pipeline does, with the one selection of
 * src/event/selection.ts. A users pipeline without a filter runs the default users filter, so tail
 * shows its identify events and not the track events it drops (before, it showed every event).
 */

const ROOT = join(import.meta.dir, "../..");
const KEY = "key-tail-people-0001";
let nats: Awaited<ReturnType<typeof startNats>>;
let node: RunningNode;

beforeAll(async () => {
  nats = await startNats();
  node = await startTestNode(nats.url, {
    "customer-model.yaml": "customerModel:\n  plan: string\n",
    "people.yaml": webhookConnection(
      "people",
      [KEY],
      "pipelines:\n  - name: profiles\n    import: users\n    transform:\n      mapping:\n        plan: traits.plan\n",
    ),
  });
});
afterAll(async () => {
  await node?.stop();
  await nats?.cleanup();
});

test("tail --pipeline <users pipeline> shows only the events that pipeline keeps (the default users filter)", async () => {
  const p = Bun.spawn([process.execPath, join(ROOT, "scripts/tail.ts"), "people", "--pipeline", "profiles", "--json"], {
    cwd: ROOT,
    env: { ...process.env, NATS_URL: nats.url, TRIBUTARY_PIPELINES: node.config.options.dir, NO_COLOR: "1" },
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
  const until = async (check: () => boolean, ms = 20_000) => {
    const deadline = Date.now() + ms;
    while (!check() && Date.now() < deadline && p.exitCode === null) await Bun.sleep(25);
    return check();
  };
  try {
    expect(await until(() => got.err.includes("tail: tributary.events.people.* on"))).toBe(true);
    const r = await fetch(`${node.url}/v1/batch`, {
      method: "POST",
      headers: { Authorization: `Bearer ${KEY}` },
      body: JSON.stringify({
        batch: [
          { type: "track", event: "Viewed", userId: "u1", messageId: "tail-track" },
          { type: "identify", userId: "u1", traits: { plan: "pro" }, messageId: "tail-identify" },
          { type: "page", name: "Home", userId: "u1", messageId: "tail-page" },
          { type: "alias", userId: "u1", previousId: "a1", messageId: "tail-alias" },
        ],
      }),
    });
    expect(r.status).toBe(200);
    expect(await until(() => got.out.includes("tail-alias"))).toBe(true);
    await Bun.sleep(200);
    const shown = got.out
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l).messageId);
    expect(shown).toEqual(["tail-identify", "tail-alias"]);
  } finally {
    p.kill();
    await p.exited;
  }
});
