import type { Subprocess } from "bun";
import { openSync } from "node:fs";

export interface ManagedProcessOptions {
  name: string;
  cmd: string[];
  /** Where the process's stdout/stderr go. */
  logFile: string;
  /** Resolves once the service is usable. */
  ready: (alive: () => boolean) => Promise<void>;
}

/**
 * A local service we started and own: started, killed (for fault tests) and restarted with the
 * same data. Killed with the process group's parent, never left behind.
 */
export class ManagedProcess {
  #proc?: Subprocess;
  static readonly all = new Set<ManagedProcess>();

  constructor(readonly options: ManagedProcessOptions) {}

  get pid(): number | undefined {
    return this.#proc?.pid;
  }
  get running(): boolean {
    return this.#proc !== undefined && this.#proc.exitCode === null && this.#proc.signalCode === null;
  }

  async start(): Promise<void> {
    if (this.running) return;
    const fd = openSync(this.options.logFile, "a");
    // Its own process group: a Ctrl-C in the terminal reaches us only, and we stop the services
    // after the node has finished its in-flight writes.
    this.#proc = Bun.spawn(this.options.cmd, { stdout: fd, stderr: fd, stdin: "ignore", detached: true });
    ManagedProcess.all.add(this);
    try {
      await this.options.ready(() => this.running);
    } catch (e) {
      await this.stop();
      throw new Error(`${this.options.name} did not start (see ${this.options.logFile}): ${(e as Error).message}`);
    }
  }

  /** SIGKILL: the process gets no chance to flush, as in a crash. */
  async kill(): Promise<void> {
    if (!this.#proc) return;
    this.#proc.kill("SIGKILL");
    await this.#proc.exited;
  }

  /** SIGSTOP: the process holds its sockets but answers nothing, like a hung or overloaded server. */
  pause(): void {
    this.#proc?.kill("SIGSTOP");
  }

  resume(): void {
    this.#proc?.kill("SIGCONT");
  }

  /** SIGTERM, then SIGKILL after a grace period. */
  async stop(graceMs = 10_000): Promise<void> {
    const p = this.#proc;
    if (!p) return;
    ManagedProcess.all.delete(this);
    if (p.exitCode === null && p.signalCode === null) {
      p.kill("SIGCONT"); // a paused process cannot act on SIGTERM
      p.kill("SIGTERM");
      const t = setTimeout(() => p.kill("SIGKILL"), graceMs);
      await p.exited;
      clearTimeout(t);
    }
    this.#proc = undefined;
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** Last resort on exit: nothing we started outlives us. */
  static killAllSync(): void {
    for (const m of ManagedProcess.all) m.#proc?.kill("SIGKILL");
  }
}
