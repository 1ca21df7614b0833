import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Subprocess } from "bun";
import { existsSync, rmSync } from "node:fs";
import { join } from "node:path";
import { pipelinesDir, startNats, tempDir, webhookConnection } from "../harness/services.ts";
import { freePort, waitForPort } from "../../src/services/ports.ts";
import { LocalNats } from "../../src/services/nats-server.ts";
import { PortInUseError, portHolder } from "../../src/services/port-check.ts";

/**
 * Issue 17, first hour #1 and #6: `bun src/main.ts` as users run it. A second node, or a local
 * service's port held by anything else, is refused with a line saying what holds the port; a
 * terminal gets a banner and readable logs, anything else JSON lines; `--help` starts nothing.
 */

const MAIN = join(import.meta.dir, "../../src/main.ts");
const KEY = "key-startup-secret-0001";
const ADMIN = "admin-startup-token-0001";
// Nothing answers here: ingestion works without the warehouse (events wait in JetStream), and no
// test in this file needs ClickHouse.
const NO_CLICKHOUSE = "http://127.0.0.1:9";

let nats: Awaited<ReturnType<typeof startNats>>;
let pipelines: string;
const running: Subprocess[] = [];
const held: { stop(closeActive?: boolean): void }[] = [];
const dirs: string[] = [];

beforeAll(async () => {
  nats = await startNats();
  pipelines = pipelinesDir({
    "shop.yaml": webhookConnection("shop", [KEY]),
    "gh.yaml": "connection: gh\nsource: raw\ncheck: github\nsecret: gh-secret-0001\n",
  });
});

afterAll(async () => {
  for (const p of running) if (p.exitCode === null) p.kill("SIGKILL");
  await Promise.all(running.map((p) => p.exited));
  for (const l of held) l.stop(true);
  await nats?.cleanup();
  for (const d of [pipelines, ...dirs]) if (d) rmSync(d, { recursive: true, force: true });
});

/** A node process whose stdout and stderr are collected, in order of arrival. */
function spawnNode(env: Record<string, string | undefined>, args: string[] = [], cmd?: string[]) {
  const { LOG_FORMAT: _, ...inherited } = process.env; // the test preload sets it; each test says what it wants
  const proc = Bun.spawn(cmd ?? [process.execPath, MAIN, ...args], {
    // An undefined value removes the variable.
    env: Object.fromEntries(
      Object.entries({
        ...inherited,
        HOST: "127.0.0.1",
        TRIBUTARY_PIPELINES: pipelines,
        CLICKHOUSE_URL: NO_CLICKHOUSE,
        LOG_LEVEL: "info",
        ...env,
      }).filter(([, v]) => v !== undefined),
    ) as Record<string, string>,
    stdout: "pipe",
    stderr: "pipe",
    stdin: "ignore",
  });
  running.push(proc);
  let output = "";
  const decoder = new TextDecoder();
  const read = async (s: ReadableStream<Uint8Array>) => {
    for await (const chunk of s) output += decoder.decode(chunk, { stream: true });
  };
  const done = Promise.all([
    read(proc.stdout as ReadableStream<Uint8Array>),
    read(proc.stderr as ReadableStream<Uint8Array>),
  ]);
  return {
    proc,
    get output() {
      return output;
    },
    /** Until the output contains `text` (or the process ends). */
    async waitFor(text: string, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      while (!output.includes(text) && proc.exitCode === null && Date.now() < deadline) await Bun.sleep(50);
      return output.includes(text);
    },
    /** Its exit code once it has exited and its output is read, or "still running" after timeoutMs. */
    async exit(timeoutMs = 30_000): Promise<number | "still running"> {
      const code = await Promise.race([proc.exited, Bun.sleep(timeoutMs).then(() => "still running" as const)]);
      if (code !== "still running") await done;
      return code;
    },
  };
}

const jsonLines = (output: string) =>
  output
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { level: string; msg: string });

/** Something listening on a loopback port, as any other program might. */
function holdPort(port: number) {
  const l = Bun.listen({ hostname: "127.0.0.1", port, socket: { data() {} } });
  held.push(l);
  return l;
}

describe("#1 a port already taken", () => {
  let port: number;
  let first: ReturnType<typeof spawnNode>;
  beforeAll(async () => {
    port = await freePort();
    first = spawnNode({ PORT: String(port), NATS_URL: nats.url, LOG_FORMAT: "json", TRIBUTARY_ADMIN_TOKEN: ADMIN });
    await waitForPort(port, 30_000, "127.0.0.1", () => first.proc.exitCode === null);
  });

  test("a second node on the same HTTP port exits non-zero, naming the port and the node holding it", async () => {
    const second = spawnNode({ PORT: String(port), NATS_URL: nats.url, LOG_FORMAT: "json" });
    const code = await second.exit();
    if (code === "still running") second.proc.kill("SIGKILL");
    expect(code).toBe(1);
    const records = jsonLines(second.output);
    const last = records[records.length - 1]!;
    expect(last.level).toBe("error");
    expect(last.msg).toContain(
      `port ${port} (HTTP) is already in use by another Tributary node (pid ${first.proc.pid}:`,
    );
    expect(last.msg).toContain("PORT");
    expect(last.msg).not.toContain("\n    at "); // one line, no stack
    // The first node still answers every request with the same key.
    for (let i = 0; i < 10; i++) {
      const r = await fetch(`http://127.0.0.1:${port}/v1/track`, {
        method: "POST",
        headers: { Authorization: `Bearer ${KEY}` },
        body: JSON.stringify({ event: "E", userId: "u" }),
      });
      expect(r.status).toBe(200);
    }
  }, 60_000);

  test("a local service's port held by another process: refused before anything starts, nothing logged as started", async () => {
    for (const which of ["NATS_PORT", "CLICKHOUSE_TCP_PORT"] as const) {
      const ports = {
        PORT: await freePort(),
        NATS_PORT: await freePort(),
        CLICKHOUSE_HTTP_PORT: await freePort(),
        CLICKHOUSE_TCP_PORT: await freePort(),
      };
      holdPort(ports[which]);
      const data = tempDir("startup-data");
      dirs.push(data);
      const node = spawnNode({
        ...Object.fromEntries(Object.entries(ports).map(([k, v]) => [k, String(v)])),
        NATS_URL: undefined,
        CLICKHOUSE_URL: undefined,
        TRIBUTARY_DATA: data,
        LOG_FORMAT: "json",
      });
      const code = await node.exit(90_000);
      // A node that started (it should not have) stops the services it started on SIGTERM.
      if (code === "still running") node.proc.kill("SIGTERM"), await node.exit(20_000);
      expect({ which, code }).toEqual({ which, code: 1 });
      expect(jsonLines(node.output).filter((r) => r.msg.startsWith("started"))).toEqual([]);
      const last = jsonLines(node.output).pop()!;
      const role = which === "NATS_PORT" ? "local nats-server" : "local clickhouse-server native TCP";
      expect(last.msg).toContain(
        `port ${ports[which]} (${role}) is already in use by another process (pid ${process.pid}:`,
      );
      expect(last.msg).toContain(which);
      expect(existsSync(join(data, "tributary.pid"))).toBe(false); // the data directory is released
    }
  }, 200_000);

  test("closing the terminal (SIGHUP) stops the node and the local services it started: a new start finds the ports free", async () => {
    const ports = { PORT: await freePort(), NATS_PORT: await freePort() };
    const data = tempDir("startup-data");
    dirs.push(data);
    const node = spawnNode({
      PORT: String(ports.PORT),
      NATS_PORT: String(ports.NATS_PORT),
      NATS_URL: undefined,
      TRIBUTARY_DATA: data,
      LOG_FORMAT: "json",
    });
    expect(await node.waitFor("tributary node listening", 60_000)).toBe(true);
    expect(node.output).toContain("started local nats-server");
    node.proc.kill("SIGHUP");
    expect(await node.exit(30_000)).toBe(0);
    // Nothing is left listening: the local nats-server (its own process group) was stopped too.
    const stillOpen = await Bun.connect({ hostname: "127.0.0.1", port: ports.NATS_PORT, socket: { data() {} } }).then(
      (s) => (s.end(), true),
      () => false,
    );
    expect(stillOpen).toBe(false);
    expect(existsSync(join(data, "tributary.pid"))).toBe(false);
  }, 90_000);

  test("a service whose port another process answers on is never reported as started", async () => {
    const port = await freePort();
    holdPort(port);
    const dir = tempDir("startup-nats");
    dirs.push(dir);
    const local = await LocalNats.create({ dataDir: dir, port });
    // Our listener accepts connections, so "something answers on the port" is not enough.
    const started = await local.start().then(
      () => "started",
      (e) => e,
    );
    await local.stop();
    expect(started).toBeInstanceOf(PortInUseError);
    expect((started as Error).message).toContain(
      `port ${port} (local nats-server) is already in use by another process (pid ${process.pid}:`,
    );
  }, 60_000);

  test("with LOG_FORMAT=json a node writes JSON lines only, and no banner", () => {
    const records = jsonLines(first.output);
    expect(records.some((r) => r.msg === "tributary node listening")).toBe(true);
    expect(first.output).not.toContain("Try it");
  });

  test("/debugger/auth tells the page a token is required when TRIBUTARY_ADMIN_TOKEN is set", async () => {
    expect(await (await fetch(`http://127.0.0.1:${port}/debugger/auth`)).json()).toEqual({ token: "required" });
  });
});

describe("#6 on a terminal", () => {
  let port: number;
  let node: ReturnType<typeof spawnNode>;
  beforeAll(async () => {
    port = await freePort();
    node = spawnNode({ PORT: String(port), NATS_URL: nats.url, LOG_FORMAT: "pretty", TRIBUTARY_DEV_ADMIN: "1" });
    await waitForPort(port, 30_000, "127.0.0.1", () => node.proc.exitCode === null);
  });

  test("LOG_FORMAT=pretty: a banner with the URL, each connection's endpoint, the debugger and a curl without the key", async () => {
    expect(await node.waitFor("Try it")).toBe(true);
    await Bun.sleep(200); // the rest of the banner
    const out = node.output;
    expect(out).toContain(`is listening on http://127.0.0.1:${port}`);
    expect(out).toMatch(new RegExp(`shop +webhook +POST http://127\\.0\\.0\\.1:${port}/v1/batch`));
    expect(out).toMatch(new RegExp(`gh +raw webhook +POST http://127\\.0\\.0\\.1:${port}/v1/webhooks/gh`));
    expect(out).toContain(`Debugger     http://127.0.0.1:${port}/debugger  (TRIBUTARY_DEV_ADMIN`);
    expect(out).toContain(`curl -X POST http://127.0.0.1:${port}/v1/track`);
    expect(out).toContain("Authorization: Bearer <write key>");
    expect(out).not.toContain(KEY);
    expect(out).not.toContain("gh-secret-0001");
    // Other records are `time LEVEL msg k=v` lines, not JSON.
    expect(out).toMatch(
      /^\d\d:\d\d:\d\d INFO +tributary node listening url=http:\/\/127\.0\.0\.1:\d+ connections=\["gh","shop"\]$/m,
    );
    expect(out.split("\n").filter((l) => l.startsWith("{"))).toEqual([]);
  }, 60_000);

  test("TRIBUTARY_DEV_ADMIN: /debugger/auth tells a loopback page no token is needed, and a rebinding page nothing of the kind", async () => {
    expect(await (await fetch(`http://127.0.0.1:${port}/debugger/auth`)).json()).toEqual({ token: "none" });
    const foreign = await (
      await fetch(`http://127.0.0.1:${port}/debugger/auth`, { headers: { Host: `rebind.attacker.example:${port}` } })
    ).json();
    expect(foreign.token).toBe("off");
    expect(foreign.error).toContain("Host");
  });

  test("under a pseudo-terminal, without LOG_FORMAT, the banner is printed (and 0.0.0.0 is shown as localhost)", async () => {
    if (!existsSync("/usr/bin/script")) throw new Error("/usr/bin/script (util-linux) is needed for this test");
    const p = await freePort();
    const tty = spawnNode(
      { PORT: String(p), HOST: "0.0.0.0", NATS_URL: nats.url },
      [],
      ["/usr/bin/script", "-qfec", `${process.execPath} ${MAIN}`, "/dev/null"],
    );
    try {
      expect(await tty.waitFor("Try it")).toBe(true);
      expect(tty.output).toContain(`is listening on http://localhost:${p}`);
    } finally {
      // `script` runs the node in a session of its own: stop the node itself, found by its port.
      const pid = portHolder(p)?.pid;
      if (pid) process.kill(pid, "SIGTERM");
      tty.proc.kill("SIGTERM");
      await tty.exit(20_000);
    }
  }, 60_000);
});

test("--help prints the environment it reads and exits 0 without starting anything", async () => {
  const port = await freePort();
  // Services that are not there: a node that started would fail, not exit 0.
  const help = spawnNode({ PORT: String(port), NATS_URL: "nats://127.0.0.1:9" }, ["--help"]);
  const code = await help.exit(20_000);
  if (code === "still running") help.proc.kill("SIGKILL");
  expect(code).toBe(0);
  for (const name of [
    "Usage: npm start",
    "PORT",
    "NATS_URL",
    "CLICKHOUSE_URL",
    "TRIBUTARY_ADMIN_TOKEN",
    "TRIBUTARY_DEV_ADMIN",
    "LOG_FORMAT",
    "TRIBUTARY_DATA",
  ])
    expect(help.output).toContain(name);
  expect(help.output).not.toContain('"level"');
}, 30_000);
