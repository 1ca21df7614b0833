import { afterAll, beforeAll, expect, test } from "bun:test";
import { chmodSync, existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { join, resolve } from "node:path";
import {
  describeIsolation,
  parseSandboxOptions,
  processMemoryBytes,
} from "../../src/pipeline/transform/sandbox-isolation.ts";
import { useStack } from "../harness/stack.ts";
import { eventually } from "../harness/warehouse.ts";

/**
 * The layer beneath the interpreters, proven on its own: TRIBUTARY_SANDBOX_TEST_UNGUARDED=1 runs a
 * JavaScript transform as plain Bun code holding the host's fs, net and process, as if it had
 * escaped QuickJS. Through the public path (YAML + HTTP), that guest tries to leave a mark outside
 * its temporary directory, in the project tree, on a loopback listener, and to read the node's
 * environment. Every layer that start-up reports as active must hold; on Linux as root (CI) all of
 * them are expected to be active, so a missing bubblewrap fails here instead of skipping.
 */

const root = resolve(import.meta.dir, "../..");
const tag = `${process.pid}-${Date.now()}`;
const secret = `tributary-test-secret-${tag}`;
const target = join(root, "test", `.sandbox-target-${tag}`);
const paths = {
  hostTmp: `/tmp/tributary-escape-${tag}`,
  varTmp: `/var/tmp/tributary-escape-${tag}`,
  devShm: `/dev/shm/tributary-escape-${tag}`,
  projectRoot: join(root, `escape-${tag}`),
  projectSrc: join(root, "src", `escape-${tag}.ts`),
  target,
};

let server: Server;
let port = 0;
let connections = 0;

beforeAll(async () => {
  process.env.TRIBUTARY_SANDBOX_TEST_UNGUARDED = "1";
  process.env.TRIBUTARY_TEST_SECRET = secret;
  // A file in the project tree that even an unprivileged uid could truncate, if it could see it.
  writeFileSync(target, "original");
  chmodSync(target, 0o666);
  server = createServer((s) => {
    connections++;
    s.destroy();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  port = (server.address() as { port: number }).port;
});

const guest = `async function transform(event) {
  const t = event.traits, out = {};
  for (const [name, path] of Object.entries(t.paths)) {
    try { fs.closeSync(fs.openSync(path, "w")); out[name] = "CREATED"; } catch (e) { out[name] = "refused " + e.code; }
  }
  out.env = JSON.stringify(process.env);
  for (const pid of [t.nodePid, 1]) {
    try { out["environ" + pid] = fs.readFileSync("/proc/" + pid + "/environ", "latin1"); } catch (e) { out["environ" + pid] = "refused " + e.code; }
  }
  out.connect = await new Promise((res) => {
    const s = net.connect(t.port, "127.0.0.1");
    s.on("connect", () => { s.destroy(); res("CONNECTED"); });
    s.on("error", (e) => res("refused " + e.code));
    setTimeout(() => res("no answer"), 3000);
  });
  out.uid = process.getuid();
  if (t.spin) for (;;) {}
  if (t.hog) { const held = []; for (;;) held.push(Buffer.alloc(64 << 20, 1)); }
  out.fds = fs.readdirSync("/proc/self/fd").map((f) => { try { return f + "=" + fs.readlinkSync("/proc/self/fd/" + f); } catch { return f + "=?"; } });
  return { probe: JSON.stringify(out) };
}`;

const stack = useStack({
  "customer-model.yaml": "customerModel:\n  probe: string\n",
  "escape.yaml": `connection: escape
source: webhook
writeKeys: ["key-escape-0001"]
pipelines:
  - name: users
    import: users
    transform:
      javascript: ${JSON.stringify(guest)}
`,
});

beforeAll(() => {
  delete process.env.TRIBUTARY_SANDBOX_TEST_UNGUARDED; // read when the node built its stages
});

afterAll(() => {
  delete process.env.TRIBUTARY_TEST_SECRET;
  server?.close();
  for (const p of Object.values(paths)) if (p !== target) rmSync(p, { force: true });
  rmSync(target, { force: true });
});

test("a guest holding the host's fs, net and process leaves no mark and reads no secret", async () => {
  const layers = describeIsolation(parseSandboxOptions({ TRIBUTARY_SANDBOX_TEST_UNGUARDED: "1" }));
  if (process.platform === "linux" && process.getuid?.() === 0) {
    // What CI runs as: every layer is expected; a missing one is a failure, not a skip.
    expect(layers.missing).toEqual([]);
    expect(layers.namespaces).toEqual(expect.arrayContaining(["mount", "network", "pid"]));
    expect(layers.uid).not.toBe(0);
  }
  const r = await fetch(`${stack.node.url}/v1/identify`, {
    method: "POST",
    headers: { Authorization: "Bearer key-escape-0001" },
    body: JSON.stringify({ userId: "attacker", traits: { paths, port, nodePid: process.pid } }),
  });
  expect(r.status).toBe(200);
  const [row] = await eventually<{ probe: string }>(
    stack.db,
    "SELECT probe FROM tributary.users FINAL WHERE user_id = 'attacker'",
    (rs) => rs.length === 1 && !!rs[0]!.probe,
    60_000,
  );
  const seen = JSON.parse(row!.probe) as Record<string, unknown>;

  // The guest ran as plain code (the switch worked): it answered every probe.
  expect(Object.keys(seen)).toEqual(expect.arrayContaining([...Object.keys(paths), "env", "connect", "uid", "fds"]));
  // Nothing created or truncated outside its temporary directory, on the host or in the project.
  for (const [name, path] of Object.entries(paths)) {
    expect(seen[name]).toStartWith("refused ");
    if (path !== target) expect(existsSync(path)).toBe(false);
  }
  expect(readFileSync(target, "utf8")).toBe("original");
  // No way to the loopback listener.
  expect(seen.connect).not.toBe("CONNECTED");
  expect(connections).toBe(0);
  // No secret: an empty environment, and no view of the node's.
  expect(JSON.stringify(seen)).not.toContain(secret);
  expect(Object.keys(JSON.parse(seen.env as string))).not.toContain("TRIBUTARY_TEST_SECRET");
  if (layers.uid !== undefined) expect(seen.uid).toBe(layers.uid);
  // Inherited descriptors: the channel (0, 1) and stderr (2); the rest are Bun's own (epoll, eventfd).
  const fds = seen.fds as string[];
  for (const fd of fds) {
    const [n, link] = fd.split("=") as [string, string];
    if (Number(n) > 2)
      expect(link).toMatch(/^anon_inode:|^socket:|^pipe:|^\?$|^\/proc\/|^\/dev\/(null|urandom|random)$/);
    expect(link).not.toContain(root);
  }
}, 120_000);

test("a guest that disabled every guard and never returns: the node's own deadline kills its process; that event fails, the others land", async () => {
  const ids = ["calm-1", "spin-1", "calm-2"];
  const r = await fetch(`${stack.node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: "Bearer key-escape-0001" },
    body: JSON.stringify({
      batch: ids.map((id) => ({
        type: "identify",
        userId: id,
        messageId: id,
        traits: { paths: {}, port, nodePid: process.pid, spin: id.startsWith("spin") },
      })),
    }),
  });
  expect(r.status).toBe(200);
  const landed = await eventually<{ user_id: string }>(
    stack.db,
    "SELECT user_id FROM tributary.users FINAL WHERE user_id LIKE 'calm-%' ORDER BY user_id",
    (rs) => rs.length === 2,
    120_000,
  );
  expect(landed.map((x) => x.user_id)).toEqual(["calm-1", "calm-2"]);
  const stats = (await (await stack.node.pipelinesReady).snapshot("escape/users"))!;
  const err = stats.lastErrors.find((e: { messageId?: string }) => e.messageId === "spin-1");
  expect(err?.error).toContain("its sandbox did not stop it");
  expect(err?.error).toContain("killed and restarted");
  const spun = await eventually<{ n: number }>(
    stack.db,
    "SELECT count() AS n FROM tributary.users FINAL WHERE user_id = 'spin-1'",
    () => true,
  );
  expect(Number(spun[0]!.n)).toBe(0);
}, 180_000);

test("memory outside the interpreter's heap hits the process cap: the hog fails, the node does not grow, the others land", async () => {
  const layers = describeIsolation(parseSandboxOptions({}));
  if (process.platform === "linux" && process.getuid?.() === 0) expect(layers.memoryCap).toStartWith("cgroup");
  const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"))![1]) * 1024;
  const before = rss();
  const ids = ["fed-1", "hog-1", "fed-2"];
  const r = await fetch(`${stack.node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: "Bearer key-escape-0001" },
    body: JSON.stringify({
      batch: ids.map((id) => ({
        type: "identify",
        userId: id,
        messageId: id,
        traits: { paths: {}, port, nodePid: process.pid, hog: id.startsWith("hog") },
      })),
    }),
  });
  expect(r.status).toBe(200);
  const landed = await eventually<{ user_id: string }>(
    stack.db,
    "SELECT user_id FROM tributary.users FINAL WHERE user_id LIKE 'fed-%' ORDER BY user_id",
    (rs) => rs.length === 2,
    120_000,
  );
  expect(landed.map((x) => x.user_id)).toEqual(["fed-1", "fed-2"]);
  const stats = (await (await stack.node.pipelinesReady).snapshot("escape/users"))!;
  const err = stats.lastErrors.find((e: { messageId?: string }) => e.messageId === "hog-1");
  // Killed by the cgroup (SIGKILL) or refused by the address-space rlimit: either way, not the node's memory.
  expect(err?.error).toMatch(/sandbox process ended \(killed: it reached its memory cap|Out of memory/);
  // The sandbox ran in another process: the node (this test process) grew by far less than the cap.
  expect(rss() - before).toBeLessThan(processMemoryBytes(parseSandboxOptions({}).limits) / 2);
}, 180_000);
