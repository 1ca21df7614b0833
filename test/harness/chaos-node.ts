import type { Subprocess } from "bun";
import { openSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { freePort, waitForPort } from "../../src/services/ports.ts";

const MAIN = join(import.meta.dir, "../../src/main.ts");
const alive = new Set<Subprocess>();
process.on("exit", () => {
  for (const p of alive) {
    try {
      p.kill("SIGCONT");
      p.kill("SIGKILL");
    } catch {}
  }
});

export type NodeState = "up" | "down" | "paused";

/**
 * `bun src/main.ts` in its own process for the chaos run and the soak: like NodeProcess, plus
 * SIGSTOP/SIGCONT, its pid (for RSS) and its output in a log file (a fault run makes nodes warn a lot).
 * Every start takes a new free port; `url` is always the current one.
 */
export class ChaosNode {
  #proc?: Subprocess;
  url = "";
  state: NodeState = "down";
  starts = 0;

  constructor(
    readonly name: string,
    readonly env: Record<string, string>,
    readonly logFile: string,
  ) {}

  get pid(): number | undefined {
    return this.#proc?.pid;
  }

  async start(): Promise<void> {
    const port = await freePort();
    const fd = openSync(this.logFile, "a");
    const proc = Bun.spawn([process.execPath, MAIN], {
      env: { ...process.env, LOG_LEVEL: "warn", HOST: "127.0.0.1", PORT: String(port), ...this.env },
      stdout: fd,
      stderr: fd,
      stdin: "ignore",
    });
    this.#proc = proc;
    alive.add(proc);
    void proc.exited.then(() => alive.delete(proc));
    await waitForPort(port, 30_000, "127.0.0.1", () => proc.exitCode === null && proc.signalCode === null);
    this.url = `http://127.0.0.1:${port}`;
    this.state = "up";
    this.starts++;
  }

  /** Resolves once /readyz says NATS and ClickHouse are reachable and the pipelines run. */
  async ready(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const r = await fetch(`${this.url}/readyz`, { signal: AbortSignal.timeout(2000) }).catch(() => undefined);
      if (r?.status === 200) return;
      await Bun.sleep(100);
    }
    throw new Error(`${this.name} at ${this.url} not ready after ${timeoutMs} ms (log: ${this.logFile})`);
  }

  /** SIGKILL: no flush, no goodbye, as in a crash. */
  async kill(): Promise<void> {
    const p = this.#proc;
    if (!p) return;
    this.state = "down";
    p.kill("SIGKILL");
    await p.exited;
  }

  pause(): void {
    this.#proc?.kill("SIGSTOP");
    this.state = "paused";
  }

  resume(): void {
    this.#proc?.kill("SIGCONT");
    if (this.state === "paused") this.state = "up";
  }

  async stop(): Promise<void> {
    const p = this.#proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    p.kill("SIGCONT");
    p.kill("SIGTERM");
    const t = setTimeout(() => p.kill("SIGKILL"), 15_000);
    await p.exited;
    clearTimeout(t);
    this.state = "down";
  }

  /** Resident set size in bytes, from /proc (undefined when not running). */
  rss(): number | undefined {
    return rssOf(this.pid);
  }
}

export function rssOf(pid: number | undefined): number | undefined {
  if (!pid) return undefined;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}
