import type { Subprocess } from "bun";
import { join } from "node:path";
import { freePort, waitForPort } from "../../src/services/ports.ts";

const MAIN = join(import.meta.dir, "../../src/main.ts");

/**
 * `bun src/main.ts` in its own process, pointed at the test's services: the node users run,
 * which a test can SIGKILL mid-batch (an in-process node can only be stopped politely).
 */
export class NodeProcess {
  #proc?: Subprocess;
  url = "";

  constructor(readonly env: Record<string, string>) {}

  /** The node's process id (its memory can be read from /proc/<pid>/status). */
  get pid(): number | undefined {
    return this.#proc?.pid;
  }

  /** On `port` when given (a restart where senders expect it), else on a free one. */
  async start(port?: number): Promise<void> {
    port ??= await freePort();
    this.#proc = Bun.spawn([process.execPath, MAIN], {
      env: { ...process.env, LOG_LEVEL: "error", HOST: "127.0.0.1", PORT: String(port), ...this.env },
      stdout: "inherit",
      stderr: "inherit",
    });
    const proc = this.#proc;
    await waitForPort(port, 30_000, "127.0.0.1", () => proc.exitCode === null);
    this.url = `http://127.0.0.1:${port}`;
  }

  /** Resolves once the node's pipelines consume (ClickHouse reachable, consumers created). */
  async ready(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const r = await fetch(`${this.url}/readyz`).catch(() => undefined);
      if (r?.status === 200) return;
      await Bun.sleep(100);
    }
    throw new Error(`node at ${this.url} not ready after ${timeoutMs} ms`);
  }

  kill(): Promise<number> {
    this.#proc?.kill("SIGKILL");
    return this.#proc?.exited ?? Promise.resolve(0);
  }

  async stop(): Promise<void> {
    if (!this.#proc || this.#proc.exitCode !== null) return;
    this.#proc.kill("SIGTERM");
    const t = setTimeout(() => this.#proc?.kill("SIGKILL"), 15_000);
    await this.#proc.exited;
    clearTimeout(t);
  }
}
